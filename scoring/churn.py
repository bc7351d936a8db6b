"""Churn risk learnt from the business's own history: owners have no churn labels, so we make them.

Method (README, "Churn risk"):
1. Horizon H: how long without an order counts as gone. From settings, or derived from the purchase cycle:
   twice the median gap between a repeat customer's purchases, kept between 30 and 365 days.
2. Labelled snapshots: at past cut-off dates c = as_of - H, as_of - 1.5H, as_of - 2H, ... (while there is
   history before c), each customer who had bought before c is described as of c (scoring.features) and
   labelled 1 if they placed no order in [c, c + H). Only cut-offs whose whole label window lies before as_of
   are used, so nothing the model learns comes from after the reference date.
3. Backtest: each candidate (regularised logistic regression; histogram gradient boosting; the average of the
   two, whose errors differ: the linear model extrapolates recency smoothly, the trees catch thresholds) is trained on
   the older snapshots and scored on the newest. The best ROC-AUC wins; a tie (within 0.0005) goes to the simpler model.
4. Final fit: the winner is refitted on every snapshot, the newest included, since that window is the most like
   the present. Its probabilities are calibrated by Platt scaling (a logistic map of the log-odds) learnt where the
   backtest left off: the older-snapshots model's scores of the newest window against what those customers did,
   which captures how the churn rate drifted from older windows to newer ones. A monotone map with two parameters
   keeps the model's ranking (isotonic steps tied customers it had ranked apart: 0.774 against 0.776 ROC-AUC on the
   90-day CDNOW check) and needs no cross-validation folds, so it works on a store with a handful of churners.
   (Before: refit on the older snapshots plus half the newest window, isotonic on the other half.)
5. With fewer than two usable cut-offs there is nothing to learn from: BG/NBD's probability of no purchase in
   the horizon is used instead, and the model says so (``method_``).
6. A business with no orders at all is scored from engagement alone: email opens and clicks and survey answers
   take the place of orders, churn is no engagement in the next H days, and the model says so (``label_``).
7. Lifetime value learns from the same windows (scoring.clv.LearntValueModel): what each customer spent in the H
   days after each cut-off, from the same features. Where churn falls back to BG/NBD, or too few customers spent
   anything in those windows, BG/NBD x Gamma-Gamma alone gives the value, and the model says so (``value_method_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scoring.clv import BetaGeoModel, LearntValueModel
from scoring.features import engagement_activity, engagement_summary, rfm_summary, survey_summary

MIN_HORIZON_DAYS, MAX_HORIZON_DAYS = 30, 365
PROBABILITY_FLOOR = 0.005
TIE_ROC_AUC = 0.0005  # backtest ROC-AUCs closer than this are a tie, won by the simpler model
# Purchase history; survey answers and email engagement join them where the business has them (below).
# Protected attributes (gender, age, ethnicity) are never model inputs.
FEATURES = ("days_since_last", "log_frequency", "log_total", "log_monetary", "log_first_value", "age_days",
            "mean_gap_days", "gap_spread_days", "gap_ratio", "purchases_last_30d", "purchases_last_90d",
            "purchases_last_180d")


class NothingToCompare(ValueError):
    """A backtest where everyone churned, or no one did: no measure of ranking exists."""


def horizon_from_history(orders: pd.DataFrame, as_of: pd.Timestamp) -> int:
    """Twice the median gap between purchases of repeat customers, in days, within [30, 365]."""
    summary = rfm_summary(orders, as_of)
    gaps = summary["mean_gap_days"].dropna()
    if gaps.empty:
        return MAX_HORIZON_DAYS
    return int(np.clip(round(2 * gaps.median()), MIN_HORIZON_DAYS, MAX_HORIZON_DAYS))


SURVEY_FEATURES = ("latest_nps", "nps_change", "recent_sentiment")
EMAIL_FEATURES = ("days_since_open", "days_since_click", "log_opens", "log_opens_last_90d", "log_opens_prev_90d",
                  "log_clicks_last_90d", "bounces", "has_unsubscribed")
MONEY_FEATURES = ("log_total", "log_monetary", "log_first_value")  # left out when the activity is engagement
ALL_FEATURES = FEATURES + SURVEY_FEATURES + EMAIL_FEATURES


@dataclass(frozen=True)
class ModelInputs:
    """What a model learns from: orders (or, for a business with none, engagement), and whether survey answers and
    email events are among its inputs. A saved model is reused only for data with the same inputs."""

    activity: str  # "orders" or "engagement"
    uses_survey: bool
    uses_email: bool

    @property
    def churn_means(self) -> str:
        return "no order" if self.activity == "orders" else "no email open, click or survey answer"


def model_inputs(orders: pd.DataFrame, as_of: pd.Timestamp, responses: pd.DataFrame | None = None,
                 events: pd.DataFrame | None = None) -> ModelInputs:
    """The inputs a model fitted as of ``as_of`` on this data uses."""
    def any_before(frame: pd.DataFrame | None) -> bool:
        return frame is not None and bool((frame["at"] < as_of).any())

    return ModelInputs("orders" if any_before(orders) else "engagement", any_before(responses), any_before(events))


def activity_frame(orders: pd.DataFrame, inputs: ModelInputs, responses: pd.DataFrame | None,
                   events: pd.DataFrame | None) -> pd.DataFrame:
    """The activity whose absence counts as churn: orders, or engagement for a business with none."""
    return orders if inputs.activity == "orders" else engagement_activity(events, responses)


def model_features(summary: pd.DataFrame, survey: pd.DataFrame | None = None, engagement: pd.DataFrame | None = None,
                   with_money: bool = True) -> pd.DataFrame:
    """The model's inputs; with ``survey`` (scoring.features.survey_summary), NPS and sentiment join them, and
    with ``engagement`` (scoring.features.engagement_summary), email opens, clicks, bounces and unsubscribes."""
    frame = pd.DataFrame(
        {
            "days_since_last": summary["days_since_last"],
            "log_frequency": np.log1p(summary["frequency"]),
            "log_total": np.log1p(summary["total"].clip(lower=0)),
            "log_monetary": np.log1p(summary["monetary"].clip(lower=0)),
            "log_first_value": np.log1p(summary["first_value"].clip(lower=0)),
            "age_days": summary["age"],
            "mean_gap_days": summary["mean_gap_days"],
            "gap_spread_days": summary["gap_spread_days"],
            "gap_ratio": summary["gap_ratio"],
            "purchases_last_30d": summary["purchases_last_30d"],
            "purchases_last_90d": summary["purchases_last_90d"],
            "purchases_last_180d": summary["purchases_last_180d"],
        },
        index=summary.index,
    )[[name for name in FEATURES if with_money or name not in MONEY_FEATURES]]
    if survey is not None:
        frame = frame.join(survey[list(SURVEY_FEATURES)], how="left")
    if engagement is not None:
        email = pd.DataFrame({
            "days_since_open": engagement["days_since_open"],
            "days_since_click": engagement["days_since_click"],
            **{f"log_{name}": np.log1p(engagement[name]) for name in ("opens", "opens_last_90d", "opens_prev_90d", "clicks_last_90d")},
            "bounces": engagement["bounces"],
            "has_unsubscribed": engagement["has_unsubscribed"],
        }, index=engagement.index)
        frame = frame.join(email[list(EMAIL_FEATURES)], how="left")
    return frame


@dataclass(frozen=True)
class Snapshot:
    cutoff: pd.Timestamp
    features: pd.DataFrame
    churned: pd.Series  # 1 = no order in [cutoff, cutoff + horizon)
    spend: pd.Series  # what each customer spent in [cutoff, cutoff + horizon): what lifetime value learns from


def labelled_snapshots(
    orders: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int, count: int, responses: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None, with_money: bool = True,
) -> list[Snapshot]:
    """Newest first. Cut-offs step back by half a horizon and stop where no customer had bought yet.
    ``orders`` is the activity whose absence is churn (scoring.features.engagement_activity without orders)."""
    known = orders[orders["at"] < as_of]
    horizon = pd.Timedelta(days=horizon_days)
    first_order = known["at"].min()
    snapshots = []
    cutoff = (as_of - horizon).floor("D")
    while len(snapshots) < count and cutoff - first_order >= pd.Timedelta(days=MIN_HORIZON_DAYS):
        summary = rfm_summary(known, cutoff)
        window = known[(known["at"] >= cutoff) & (known["at"] < cutoff + horizon)]
        churned = pd.Series((~summary.index.isin(window["customer"])).astype(int), index=summary.index)
        spend = window.groupby("customer")["amount"].sum().reindex(summary.index, fill_value=0.0)
        survey = survey_summary(responses, cutoff) if responses is not None else None
        engagement = engagement_summary(events, cutoff) if events is not None else None
        snapshots.append(Snapshot(cutoff, model_features(summary, survey, engagement, with_money), churned, spend))
        cutoff = (cutoff - horizon / 2).floor("D")
    return snapshots


def feature_matrix(frames: list[pd.DataFrame], columns: list[str]) -> np.ndarray:
    """The frames' ``columns``, stacked in order, as one C-contiguous float64 array. Both estimators work in
    float64 (logistic regression's lbfgs converts to it, gradient boosting bins from it), so this is the only copy
    they need: concatenating frames, selecting columns and converting to an array made three."""
    matrix = np.empty((sum(len(frame) for frame in frames), len(columns)))
    start = 0
    for frame in frames:
        for position, column in enumerate(columns):
            matrix[start:start + len(frame), position] = frame[column].to_numpy(dtype=float, na_value=np.nan)
        start += len(frame)
    return matrix


BLEND = "average of logistic regression and gradient boosting"
VALUE_FALLBACK = "BG/NBD x Gamma-Gamma"


def candidate_models(random_state: int) -> dict[str, object]:
    """The models the backtest compares, simplest first: a tie goes to the earlier one."""
    def logistic() -> object:
        return make_pipeline(
            # keep_empty_features: a survey column with no answers yet in some window stays (as 0), no warning
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler(),
            LogisticRegression(C=1.0, max_iter=2000),
        )

    def boosting() -> object:
        return HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0, random_state=random_state
        )

    return {
        "logistic regression": logistic(),
        "gradient boosting": boosting(),
        BLEND: VotingClassifier([("logistic", logistic()), ("boosting", boosting())], voting="soft"),
    }


def _log_odds(probability: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped)).reshape(-1, 1)


class ChurnModel:
    """fit(orders, as_of) learns from history before as_of; predict_proba(orders, as_of) scores every customer."""

    def __init__(self, horizon_days: int | None = None, snapshots: int = 4, random_state: int = 7) -> None:
        self.horizon_days = horizon_days
        self.snapshots = snapshots
        self.random_state = random_state

    def fit(self, orders: pd.DataFrame, as_of: pd.Timestamp, responses: pd.DataFrame | None = None,
            events: pd.DataFrame | None = None) -> ChurnModel:
        """``responses`` (optional): survey answers as scoring.features.RESPONSE_COLUMNS; ``events`` (optional):
        email events as scoring.features.EVENT_COLUMNS; each used when any came before ``as_of``. Without any order
        before ``as_of``, opens, clicks and answers stand in for orders."""
        self.inputs_ = model_inputs(orders, as_of, responses, events)
        self.label_ = self.inputs_.churn_means
        activity = activity_frame(orders, self.inputs_, responses, events)
        self.horizon_days_ = self.horizon_days or horizon_from_history(activity, as_of)
        history = labelled_snapshots(activity, as_of, self.horizon_days_, self.snapshots,
                                     responses if self.inputs_.uses_survey else None,
                                     events if self.inputs_.uses_email else None, self.inputs_.activity == "orders")
        self.training_window_ = (activity["at"].min(), as_of)
        alone = "" if self.inputs_.activity == "orders" else " from email and survey engagement alone (no orders yet)"
        if len(history) < 2:
            return self._fit_fallback(activity, as_of, f"BG/NBD{alone} (too little history to learn churn from this business's own data)")
        cutoffs = [s.cutoff for s in history]
        # Rows: the older windows, oldest last, then the newest, as the final fit takes them; the backtest trains
        # on the leading rows and scores the trailing ones, both views of one matrix, so nothing is concatenated.
        ordered = history[1:] + history[:1]
        newest_rows = len(history[0].features)
        labels = np.concatenate([s.churned.to_numpy() for s in ordered])
        spend = np.concatenate([s.spend.to_numpy() for s in ordered])
        train_y, newest_churned = labels[:-newest_rows], labels[-newest_rows:]
        if any(len(np.unique(part)) < 2 for part in (train_y, newest_churned)):
            # Every customer of a past window churned (or every one stayed): a classifier cannot be fitted or
            # validated on one class, so the history-only model answers instead, and says why.
            return self._fit_fallback(activity, as_of, f"BG/NBD{alone} (in the past windows every customer did the same thing, "
                                                       "so there is nothing to learn churn from)")
        # A survey column with no value at all in the training windows (say, no one had answered twice yet)
        # teaches nothing and breaks gradient boosting's binning: the model leaves it out, and remembers so.
        self.features_ = [column for column in history[0].features.columns
                          if column in FEATURES or any(s.features[column].notna().any() for s in history[1:])]
        matrix = feature_matrix([s.features for s in ordered], self.features_)
        del history, ordered  # the windows' frames: the matrix holds all the fits need
        train_x, newest_x = matrix[:-newest_rows], matrix[-newest_rows:]
        scores, newest_probability = {}, {}
        for name, estimator in candidate_models(self.random_state).items():
            if name == BLEND:  # the mean of the two fitted above, as soft voting computes it: no second fit
                newest_probability[name] = (newest_probability["logistic regression"] + newest_probability["gradient boosting"]) / 2
            else:
                newest_probability[name] = estimator.fit(train_x, train_y).predict_proba(newest_x)[:, 1]
            scores[name] = roc_auc_score(newest_churned, newest_probability[name])
        # The simplest candidate within TIE_ROC_AUC of the best wins. (Rounding to three decimals, as before, made
        # 0.7515 and 0.7524 a tie but not 0.7514 and 0.7516.)
        best = next(name for name, score in scores.items() if score >= max(scores.values()) - TIE_ROC_AUC)
        self.backtest_ = {"roc_auc": scores, "validated_at": cutoffs[0], "trained_on": cutoffs[1:]}
        self.estimator_ = candidate_models(self.random_state)[best].fit(matrix, labels)
        # Platt scaling. Its light default penalty is nothing beside thousands of customers, but keeps a small store
        # whose newest window the scores happen to split cleanly from a map that says 0 or 1 outright.
        self.calibration_ = LogisticRegression(C=1.0).fit(_log_odds(newest_probability[best]), newest_churned)
        self.method_ = (f"{best}{alone}, learnt from windows up to {cutoffs[0]:%Y-%m-%d} and calibrated on how "
                        "the older windows' model scored that one")
        self._fit_value(matrix, spend, cutoffs[0])
        return self

    def _fit_value(self, matrix: np.ndarray, spend: np.ndarray, newest_cutoff: pd.Timestamp) -> None:
        """Lifetime value's ranking, learnt from the windows the churn model learnt from (none without orders)."""
        self.value_model_, self.value_method_ = None, None
        if self.inputs_.activity != "orders":
            return
        try:
            self.value_model_ = LearntValueModel(random_state=self.random_state).fit(matrix, spend)
        except ValueError as exc:  # too few customers spent anything in the past windows
            self.value_method_ = f"{VALUE_FALLBACK} ({exc})"
            return
        self.value_method_ = (f"{VALUE_FALLBACK}'s values, ranked by spend in the {self.horizon_days_} days after past "
                              f"cut-offs up to {newest_cutoff:%Y-%m-%d}")

    def _fit_fallback(self, activity: pd.DataFrame, as_of: pd.Timestamp, method: str) -> ChurnModel:
        self.method_ = method
        self.features_ = []
        self.value_model_ = None
        self.value_method_ = f"{VALUE_FALLBACK} (too little history to learn spend from)" if self.inputs_.activity == "orders" else None
        summary = rfm_summary(activity, as_of)
        self.fallback_ = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["age"])
        self.backtest_ = {}
        return self

    def predict_proba(self, orders: pd.DataFrame, as_of: pd.Timestamp, responses: pd.DataFrame | None = None,
                      events: pd.DataFrame | None = None) -> pd.Series:
        """P(``label_`` in the next ``horizon_days_``) for every customer with activity before ``as_of``: everyone
        who bought, or, for a model of engagement, everyone who opened, clicked or answered."""
        activity = activity_frame(orders, self.inputs_, responses, events)
        survey = survey_summary(responses, as_of) if self.inputs_.uses_survey and responses is not None else None
        engagement = engagement_summary(events, as_of) if self.inputs_.uses_email and events is not None else None
        return self.predict_summary(rfm_summary(activity, as_of), survey, engagement)

    def predict_summary(self, summary: pd.DataFrame, survey: pd.DataFrame | None = None,
                        engagement: pd.DataFrame | None = None) -> pd.Series:
        """The same, from the summaries the caller has already built."""
        if hasattr(self, "fallback_"):  # fitted in days, like the summary
            probability = self.fallback_.probability_no_purchase(self.horizon_days_, summary["frequency"], summary["recency"], summary["age"])
        else:
            features = model_features(summary, survey, engagement, self.inputs_.activity == "orders")
            raw = self.estimator_.predict_proba(feature_matrix([features], self.features_))[:, 1]
            probability = self.calibration_.predict_proba(_log_odds(raw))[:, 1]
        # No purchase history makes anything certain: the extremes stay just short of 0 and 1.
        probability = np.clip(probability, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return pd.Series(probability, index=summary.index, name="churn_probability")

    def describe(self) -> str:
        """The churn method and, where there are orders, lifetime value's, in words."""
        return self.method_ if self.value_method_ is None else f"{self.method_}; lifetime value: {self.value_method_}"

    def predict_value(self, summary: pd.DataFrame, expected: np.ndarray, survey: pd.DataFrame | None = None,
                      engagement: pd.DataFrame | None = None) -> np.ndarray:
        """Expected spend per customer of ``summary``: ``expected`` (BG/NBD x Gamma-Gamma's over the horizon)
        shared out by the learnt spend, or ``expected`` itself where none was learnt (``value_method_`` says)."""
        if self.value_model_ is None:
            return np.asarray(expected, dtype=float)
        features = model_features(summary, survey, engagement, self.inputs_.activity == "orders")
        return self.value_model_.predict(feature_matrix([features], self.features_), expected)


@dataclass(frozen=True)
class Backtest:
    horizon_days: int
    scored_at: pd.Timestamp
    model_method: str
    metrics: dict[str, dict[str, float]]  # "model", "recency", "BG/NBD" -> churn_metrics
    calibration: list[tuple[float, float, int]] = field(default_factory=list)  # the model's, scoring.evaluation.calibration_bins
    lift_by_decile: list[float] = field(default_factory=list)  # the model's, riskiest tenth first


def backtest(orders: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int | None, random_state: int = 7) -> Backtest:
    """Out of time: fit as of one horizon before ``as_of``, score then, and compare with what happened since,
    beside the recency and BG/NBD baselines."""
    from scoring.evaluation import calibration_bins, churn_metrics, lift_by_decile  # evaluation is only needed here

    horizon = horizon_days or horizon_from_history(orders, as_of)
    then = (as_of - pd.Timedelta(days=horizon)).floor("D")
    model = ChurnModel(horizon, random_state=random_state).fit(orders, then)
    probability = model.predict_proba(orders, then)
    summary = rfm_summary(orders, then).reindex(probability.index)
    since = orders[(orders["at"] >= then) & (orders["at"] < as_of)]
    churned = (~probability.index.isin(since["customer"])).astype(int)
    if churned.min() == churned.max():
        raise NothingToCompare("every customer did the same thing since the backtest date; nothing to compare")
    bg_nbd = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["age"])
    return Backtest(horizon, then, model.method_, {
        "model": churn_metrics(churned, probability),
        "recency": churn_metrics(churned, summary["days_since_last"], is_probability=False),
        "BG/NBD": churn_metrics(churned, bg_nbd.probability_no_purchase(horizon, summary["frequency"], summary["recency"], summary["age"])),
    }, calibration_bins(churned, probability), lift_by_decile(churned, probability))
