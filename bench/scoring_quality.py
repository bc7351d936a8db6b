"""Scoring quality on real data: churn and lifetime-value baselines under the CDNOW protocol.

Protocol (../shared/data/README.md): purchases merged to one per customer per day; calibration 1997-01-01 to
1997-09-30 (39 weeks), holdout 1997-10-01 to 1998-06-30 (39 weeks); churn label = no purchase in the holdout;
CLV target = actual holdout spend. Every score is computed from the calibration window only.

Rows printed today are the baselines the shipped churn model must beat (issue 8): recency alone, BG/NBD
P(no purchase in 39 weeks), and a logistic regression on recency, frequency and monetary value (5-fold
cross-validated predictions on the evaluation cohort, as the reference figure was made). CLV: a historic-average
baseline and BG/NBD with Gamma-Gamma against the shipped value, which must beat both on Spearman.

Run: python bench/scoring_quality.py   (needs ../shared/data beside the repository)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scoring.churn import BLEND, ChurnModel, backtest, candidate_models, model_features
from scoring.clv import BetaGeoModel, GammaGammaModel
from scoring.evaluation import churn_metrics, value_metrics
from scoring.features import rfm_summary
from scoring.scores import expected_value
from scoring.sentence_encoder import is_encoder_installed
from scoring.sentiment import SentimentModel
from scoring.sentiment_bands import sentiment_label
from tables import print_table

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CUT = pd.Timestamp("1997-10-01", tz="UTC")
END = pd.Timestamp("1998-07-01", tz="UTC")
HORIZON_WEEKS = 39
WEEK = pd.Timedelta(weeks=1)
SEED = 7


def load_cdnow() -> pd.DataFrame:
    raw = pd.read_csv(DATA / "cdnow_master.csv", dtype={"customer_id": str})
    return pd.DataFrame({"customer": raw["customer_id"], "at": pd.to_datetime(raw["date"], utc=True), "amount": raw["amount"]})


def rfm_matrix(summary: pd.DataFrame) -> np.ndarray:
    return np.column_stack([summary["days_since_last"], np.log1p(summary["frequency"]), np.log1p(summary["total"])])


def churn_table(orders: pd.DataFrame, summary: pd.DataFrame) -> tuple[list[tuple[str, dict[str, float]]], float]:
    holdout = orders[(orders["at"] >= CUT) & (orders["at"] < END)]
    churned = (~summary.index.isin(holdout["customer"])).astype(int)
    weekly = summary[["frequency", "recency", "age"]]
    bg_nbd = BetaGeoModel().fit(weekly["frequency"], weekly["recency"], weekly["age"])
    logistic = make_pipeline(StandardScaler(), LogisticRegression(C=1.0))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    logistic_probability = cross_val_predict(logistic, rfm_matrix(summary), churned, cv=folds, method="predict_proba")[:, 1]
    return [
        ("recency (days since last purchase)", churn_metrics(churned, summary["days_since_last"], is_probability=False)),
        ("BG/NBD P(no purchase in 39 weeks)", churn_metrics(churned, bg_nbd.probability_no_purchase(HORIZON_WEEKS, weekly["frequency"], weekly["recency"], weekly["age"]))),
        ("logistic regression on RFM (5-fold)", churn_metrics(churned, logistic_probability)),
    ], churned.mean()


def churn_90_day_table(orders: pd.DataFrame) -> tuple[list[tuple[str, dict[str, float]]], float, str]:
    """The README's 90-day variant (holdout cut at 1997-12-29): the learnt model can be trained here, because
    the 39-week calibration window holds earlier 90-day windows to learn labels from."""
    horizon_days = 90
    summary = rfm_summary(orders, CUT)
    window = orders[(orders["at"] >= CUT) & (orders["at"] < CUT + pd.Timedelta(days=horizon_days))]
    churned = (~summary.index.isin(window["customer"])).astype(int)
    bg_nbd = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["age"])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    logistic = make_pipeline(StandardScaler(), LogisticRegression(C=1.0))
    logistic_probability = cross_val_predict(logistic, rfm_matrix(summary), churned, cv=folds, method="predict_proba")[:, 1]
    model = ChurnModel(horizon_days=horizon_days, random_state=SEED).fit(orders, CUT)
    learnt = model.predict_proba(orders, CUT).reindex(summary.index)
    # Not a method anyone could ship: the shipped model's average of logistic regression and gradient boosting,
    # on its own features, cross-validated on the evaluation cohort's own labels. What the purchase history
    # holds about this window, as a yardstick for the target.
    blend = candidate_models(SEED)[BLEND]
    ceiling = cross_val_predict(blend, model_features(summary), churned, cv=folds, method="predict_proba")[:, 1]
    return [
        ("recency (days since last purchase)", churn_metrics(churned, summary["days_since_last"], is_probability=False)),
        ("BG/NBD P(no purchase in 90 days)", churn_metrics(churned, bg_nbd.probability_no_purchase(horizon_days, summary["frequency"], summary["recency"], summary["age"]))),
        ("logistic regression on RFM (5-fold)", churn_metrics(churned, logistic_probability)),
        ("shipped model (scoring.churn)", churn_metrics(churned, learnt)),
        ("yardstick: shipped blend, 5-fold on these labels", churn_metrics(churned, ceiling)),
    ], churned.mean(), model.method_


def churn_out_of_time_rows(orders: pd.DataFrame) -> list[tuple[str, dict[str, float]]]:
    """`retention score --backtest` as of later dates: the model fitted one horizon (derived from the purchase
    cycle) before each date, scored then, and compared with what happened up to it. A second look, on cut-offs
    the 90-day check does not use, that the model's choices were not made for one date."""
    rows = []
    for as_of in ("1997-12-31", "1998-03-31", "1998-06-30"):
        result = backtest(orders, pd.Timestamp(as_of, tz="UTC"), None, random_state=SEED)
        for method in ("recency", "BG/NBD", "model"):
            rows.append((f"{result.scored_at:%Y-%m-%d} +{result.horizon_days} d: {method}", result.metrics[method]))
    return rows


def clv_table(orders: pd.DataFrame, summary: pd.DataFrame) -> tuple[list[tuple[str, dict[str, float]]], str]:
    """The baselines, and the shipped value (scoring.scores.expected_value over the 39 weeks, from the model
    `retention score` fits as of the cut: horizon from the purchase cycle, learnt only from windows before it)."""
    holdout = orders[(orders["at"] >= CUT) & (orders["at"] < END)]
    actual = holdout.groupby("customer")["amount"].sum().reindex(summary.index, fill_value=0.0)
    historic = summary["total"] / summary["age"] * HORIZON_WEEKS  # spend per week so far, carried forward
    purchases = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["age"])
    spend = GammaGammaModel().fit(summary["frequency"], summary["monetary"])
    expected = purchases.expected_purchases(HORIZON_WEEKS, summary["frequency"], summary["recency"], summary["age"])
    bg_gg = expected * spend.expected_spend(summary["frequency"], summary["monetary"])
    model = ChurnModel(random_state=SEED).fit(orders, CUT)
    in_days = rfm_summary(orders, CUT)
    shipped = pd.Series(expected_value(in_days, model, HORIZON_WEEKS * 7, SEED), index=in_days.index).reindex(summary.index)
    return [
        ("historic average spend per week x 39", value_metrics(actual, historic)),
        ("BG/NBD x Gamma-Gamma", value_metrics(actual, bg_gg)),
        ("shipped (scoring.scores.expected_value)", value_metrics(actual, shipped)),
    ], model.value_method_


def load_sentences(name: str) -> tuple[list[str], list[int]]:
    # One "sentence<TAB>label" per line, no quoting: split on the last tab (../shared/data/README.md).
    path = DATA / f"{name}_{'cells_' if name == 'amazon' else ''}labelled.txt"
    pairs = [line.rstrip("\n").rsplit("\t", 1) for line in path.open(encoding="utf-8") if line.strip()]
    return [text for text, _ in pairs], [int(label) for _, label in pairs]


def sentiment_table() -> tuple[list[tuple[str, dict[str, float]]], list[str]]:
    """TextBlob, VADER and the shipped methods (positive when the score is above 0), and the verdict per data set.

    A learnt method is always fitted on the other data set, never on the one it is measured on."""
    from sklearn.metrics import accuracy_score, f1_score
    from textblob import TextBlob
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    data = {name: load_sentences(name) for name in ("amazon", "yelp")}
    rows, verdicts = [], []
    for name, other in (("amazon", "yelp"), ("yelp", "amazon")):
        texts, truth = data[name]
        methods = {
            "TextBlob": [TextBlob(t).sentiment.polarity for t in texts],
            "VADER": [vader.polarity_scores(t)["compound"] for t in texts],
            "shipped, default": list(SentimentModel().score(texts)),
            f"shipped, lexicon learnt on {other}": list(SentimentModel(method="lexicon").fit(*data[other]).score(texts)),
        }
        if is_encoder_installed():
            methods[f"shipped, encoder learnt on {other}"] = list(SentimentModel(method="encoder").fit(*data[other]).score(texts))
        measured = {}
        truth_labels = ["positive" if label else "negative" for label in truth]
        for method, scores in methods.items():
            predicted = [int(score > 0) for score in scores]
            # What a user is shown: positive, neutral or negative (scoring.sentiment_bands, the same band for
            # every method). Every sentence here is positive or negative, so a neutral label is a miss.
            shown = [sentiment_label(score) for score in scores]
            measured[method] = {"accuracy": accuracy_score(truth, predicted), "macro_f1": f1_score(truth, predicted, average="macro"),
                                "label_accuracy": accuracy_score(truth_labels, shown),
                                "neutral_share": sum(label == "neutral" for label in shown) / len(shown)}
            rows.append((f"{name}: {method}", measured[method]))
        target = max(measured["TextBlob"]["accuracy"], measured["VADER"]["accuracy"]) + 0.05
        best_method = max((m for m in measured if m.startswith("shipped")), key=lambda m: measured[m]["accuracy"])
        best = measured[best_method]["accuracy"]
        verdicts.append(f"{name}: target accuracy >= {target:.3f} (better of TextBlob and VADER + 0.05); best shipped "
                        f"({best_method}) {best:.3f}: {'PASS' if best >= target else 'MISS'}")
    if not is_encoder_installed():
        verdicts.append("the encoder method was not measured: its extra is not installed (pip install 'retention-sync[encoder]')")
    verdicts.append("accuracy: score > 0 counts as positive, as the issue's reference figures were made; three labels: "
                    "the positive / neutral / negative label a user sees, a neutral label counted as a miss")
    verdicts.append("three-class accuracy on answers that are truly neutral: not measured; ../shared/data holds no sentence "
                    "labelled neutral")
    return rows, verdicts


CHURN_HEADER = ("method", "ROC-AUC", "PR-AUC", "Brier", "ECE", "top-10% precision", "top-10% recall", "lift")
_CHURN_MEASURES = ("roc_auc", "pr_auc", "brier", "ece", "top10_precision", "top10_recall", "lift")


def churn_cells(rows: list[tuple[str, dict[str, float]]]) -> list[tuple[str, ...]]:
    """A row of three-decimal figures per method; '-' where a ranking has no probability to judge."""
    return [(name, *("-" if np.isnan(m[k]) else f"{m[k]:.3f}" for k in _CHURN_MEASURES)) for name, m in rows]


def main() -> None:
    if not (DATA / "cdnow_master.csv").is_file():
        sys.exit(f"{DATA / 'cdnow_master.csv'} is absent: this bench needs ../shared/data beside the repository")
    started = time.perf_counter()
    orders = load_cdnow()
    summary = rfm_summary(orders, CUT, unit=WEEK)
    summary["days_since_last"] = summary["days_since_last"].astype(float)
    churn_rows, churn_rate = churn_table(orders, summary)
    print(f"CDNOW: {len(summary):,} customers, calibration 39 weeks, holdout 39 weeks, churn rate {churn_rate:.1%}")
    print_table(CHURN_HEADER, churn_cells(churn_rows), title="Churn (label: no purchase in the holdout)")
    print("The shipped model cannot be trained for this horizon: 39 weeks of history hold no earlier 39-week window.")
    rows_90, rate_90, method = churn_90_day_table(orders)
    print_table(CHURN_HEADER, churn_cells(rows_90),
                title=f"Churn, 90-day variant (label: no purchase 1997-10-01..1997-12-29; churn rate {rate_90:.1%})")
    best_baseline = max(rows_90[0][1]["roc_auc"], rows_90[1][1]["roc_auc"]) + 0.02
    shipped = rows_90[3][1]
    print(f"shipped model: {method}")
    # Four decimals: the shipped model and the RFM logistic regression are that close.
    print(f"targets (issue 8), shipped ROC-AUC {shipped['roc_auc']:.4f}: >= {best_baseline:.4f} (best of recency and BG/NBD + 0.02): "
          f"{'PASS' if shipped['roc_auc'] >= best_baseline else 'MISS'}; >= RFM logistic {rows_90[2][1]['roc_auc']:.4f}: "
          f"{'PASS' if shipped['roc_auc'] >= rows_90[2][1]['roc_auc'] else 'MISS'}; ECE <= 0.03: {'PASS' if shipped['ece'] <= 0.03 else 'MISS'}")
    print(f"yardstick: the shipped blend cross-validated on this window's own labels (which no shipped model can see) "
          f"reaches {rows_90[4][1]['roc_auc']:.4f} ROC-AUC from the same purchase history")
    print_table(CHURN_HEADER, churn_cells(churn_out_of_time_rows(orders)),
                title="Churn, out-of-time backtests (retention score --backtest as of 1997-12-31, 1998-03-31, 1998-06-30)")
    clv_rows, value_method = clv_table(orders, summary)
    print_table(("method", "Spearman", "MAE"), [(name, f"{m['spearman']:.3f}", f"{m['mae']:.2f}") for name, m in clv_rows],
                title="Lifetime value (39-week holdout spend)")
    print(f"shipped value: {value_method}")
    historic, bg_gg, shipped = (m["spearman"] for _, m in clv_rows)
    print(f"target (issue 8), shipped Spearman {shipped:.4f}: > historic average {historic:.4f}: {'PASS' if shipped > historic else 'MISS'}; "
          f"> BG/NBD x Gamma-Gamma {bg_gg:.4f}: {'PASS' if shipped > bg_gg else 'MISS'}")
    sentiment_rows, sentiment_verdicts = sentiment_table()
    print_table(("data: method", "accuracy", "macro-F1", "three labels: accuracy", "labelled neutral"),
                [(name, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['label_accuracy']:.3f}", f"{m['neutral_share']:.1%}")
                 for name, m in sentiment_rows],
                title="Sentiment (binary labelled sentences; target: 5 points above the better of TextBlob and VADER)")
    print("\n".join(sentiment_verdicts))
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
