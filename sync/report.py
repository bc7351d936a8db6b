"""The owner report's figures, gathered from the store: who is at risk and why, bands and segments and how they
moved between scoring runs, NPS and sentiment over time, the model's backtest, and the sync's health.

Everything shown is read here, once, into ``ReportFigures``; sync/report_html.py only draws it. The report and the
dashboard (sync/ui.py) show the same figures, and the tests compare them with the store.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from connectors.base import ConfigError, StoreError
from connectors.records import from_payload
from sync.export import write_csv
from sync.score_history import NO_SEGMENT, ScoreRunSummary, recent_score_runs
from sync.settings import Settings
from sync.store import Store

BANDS = ("high", "medium", "low", "new")
SHOWN_AT_RISK = 500  # rows of the at-risk table in the page; the CSV has them all
SHOWN_RUNS = 30
SHOWN_QUARANTINE = 200
SCORE_RUNS = 12
THEMES = 10
QUOTES = 5
AT_RISK_HEADER = ("customer", "churn_probability", "risk_band", "segment", "clv_12_months", "currency", "reasons", "scored_at")


@dataclass(frozen=True)
class AtRiskCustomer:
    customer: str  # the identity key: the normalised email, or the source's id
    churn_probability: float
    segment: str
    clv: float | None
    currency: str | None
    reasons: str
    scored_at: datetime


@dataclass(frozen=True)
class MonthOfAnswers:
    month: str  # "2026-05"
    answers: int
    nps_answers: int
    nps: float | None  # % promoters - % detractors, of the answers with an NPS
    texts: int
    mean_sentiment: float | None  # -1..1 over the free-text answers


@dataclass(frozen=True)
class SurveyFigures:
    months: list[MonthOfAnswers]
    negative_themes: list[tuple[str, int]]  # word or two-word phrase, negative answers mentioning it
    quotes: list[tuple[str, str, float]]  # (day, text, sentiment) of negative answers, most negative first


@dataclass(frozen=True)
class ModelQuality:
    method: str
    scored_at: str  # the backtest scores as of this day and compares with what happened since
    horizon_days: int
    customers: int  # customers the backtest scored
    sampled_from: int  # customers with orders; more than ``customers`` when a sample was drawn
    metrics: dict[str, dict[str, float]]
    calibration: list[tuple[float, float, int]]
    lift_by_decile: list[float]


@dataclass
class ReportFigures:
    generated_at: datetime
    store_label: str
    scored: int  # customers with a score in the store
    scored_at: datetime | None  # the latest scores' as-of moment
    bands: dict[str, int]
    segments: dict[str, int]
    probabilities: np.ndarray
    at_risk: list[AtRiskCustomer]  # every high-risk customer, riskiest (then most valuable) first
    score_runs: list[ScoreRunSummary]
    survey: SurveyFigures | None
    model: ModelQuality | None
    model_note: str  # why there is no backtest, when there is none
    runs: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    quarantine_total: int
    quarantine_reasons: list[tuple[str, int]] = field(default_factory=list)


class NothingToReport(StoreError):
    """No scores in the store yet."""


def gather_figures(store: Store, settings: Settings, store_label: str, *, with_backtest: bool = True) -> ReportFigures:
    """Everything the report and the dashboard show, read from ``store``."""
    scores = _score_table(store)
    if scores.empty:
        raise NothingToReport("the store holds no scores yet — run `retention demo`, `retention sync` or `retention score` first")
    at_risk = _at_risk(scores)
    model, note = (_model_quality(store, settings) if with_backtest else (None, "not computed"))
    quarantined = store.quarantined()
    return ReportFigures(
        generated_at=datetime.now(timezone.utc), store_label=store_label, scored=len(scores),
        scored_at=scores["scored_at"].max().to_pydatetime(),
        bands={band: int((scores["risk_band"] == band).sum()) for band in BANDS},
        segments={str(k): int(v) for k, v in scores["segment"].value_counts().items()},
        probabilities=scores["churn_probability"].to_numpy(), at_risk=at_risk,
        score_runs=recent_score_runs(store, SCORE_RUNS), survey=_survey_figures(store), model=model, model_note=note,
        runs=store.recent_runs(SHOWN_RUNS), quarantine=quarantined[:SHOWN_QUARANTINE], quarantine_total=len(quarantined),
        quarantine_reasons=Counter(_reason_kind(entry["reason"]) for entry in quarantined).most_common(),
    )


def _score_table(store: Store) -> pd.DataFrame:
    """The live score records as a frame (decoded with orjson alone: 100k Score objects would take seconds)."""
    rows = [orjson.loads(payload) | {"customer": customer} for customer, payload in store.stored_records("score", "scoring")]
    frame = pd.DataFrame(rows, columns=["customer", "churn_probability", "risk_band", "segment", "clv", "clv_currency",
                                        "top_reasons", "scored_at"])
    frame["segment"] = frame["segment"].fillna(NO_SEGMENT).replace("", NO_SEGMENT)
    frame["scored_at"] = pd.to_datetime(frame["scored_at"], utc=True, format="ISO8601")
    frame["clv"] = pd.to_numeric(frame["clv"], errors="coerce")
    return frame


def _at_risk(scores: pd.DataFrame) -> list[AtRiskCustomer]:
    # The order of `retention demo`'s list: most at risk first, and among equal risks the most to lose first.
    high = scores[scores["risk_band"] == "high"]
    high = high.assign(_value=high["clv"].fillna(0.0))  # (assigning all scores' values would re-grow an empty frame)
    high = high.sort_values(["churn_probability", "_value", "customer"], ascending=[False, False, True], kind="stable")
    return [AtRiskCustomer(row.customer, float(row.churn_probability), row.segment, None if pd.isna(row.clv) else float(row.clv),
                           row.clv_currency, "; ".join(row.top_reasons or ()), row.scored_at.to_pydatetime())
            for row in high.itertuples(index=False)]


def write_at_risk_csv(path: Path, figures: ReportFigures) -> int:
    """Every high-risk customer, in the report's order; formula-like cells neutralised (sync.export)."""
    rows = ([c.customer, f"{c.churn_probability:.4f}", "high", c.segment, "" if c.clv is None else f"{c.clv:.2f}",
             c.currency or "", c.reasons, c.scored_at.strftime("%Y-%m-%d")] for c in figures.at_risk)
    try:
        return write_csv(path, AT_RISK_HEADER, rows)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the at-risk list ({exc.strerror})") from None


# --- survey answers -------------------------------------------------------------------------------------------


def _survey_figures(store: Store) -> SurveyFigures | None:
    from scoring.sentiment import SentimentModel, sentiment_label

    rows = []
    for _, payload in store.stored_records("survey_response"):
        response = from_payload("survey_response", payload)
        answers = response.answers.values()
        nps = next((float(a.value) for a in answers if a.answer_kind.value == "nps"), None)
        text = ". ".join(str(a.value) for a in answers if a.answer_kind.value == "text" and str(a.value).strip())
        rows.append((response.submitted_at, nps, text))
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["at", "nps", "text"])
    frame["at"] = pd.to_datetime(frame["at"], utc=True)
    frame["month"] = frame["at"].dt.strftime("%Y-%m")
    has_text = frame["text"] != ""
    frame["sentiment"] = np.nan
    if has_text.any():
        frame.loc[has_text, "sentiment"] = SentimentModel().score(frame.loc[has_text, "text"].tolist())
    months = [_month(name, group) for name, group in frame.groupby("month", sort=True)]
    negative = frame[has_text & (frame["sentiment"].map(lambda s: not pd.isna(s) and sentiment_label(s) == "negative"))]
    # One example per distinct answer (surveys repeat stock phrases), the most negative first, the latest of each.
    distinct = negative.sort_values(["sentiment", "at"], ascending=[True, False], kind="stable").drop_duplicates("text")
    quotes = [(at.strftime("%Y-%m-%d"), text, round(float(s), 3))
              for at, text, s in distinct[["at", "text", "sentiment"]].head(QUOTES).itertuples(index=False)]
    return SurveyFigures(months, _themes(negative["text"].tolist()), quotes)


def _month(name: str, group: pd.DataFrame) -> MonthOfAnswers:
    rated = group["nps"].dropna()
    nps = None if rated.empty else round(float(((rated >= 9).mean() - (rated <= 6).mean()) * 100), 1)
    texts = group["sentiment"].dropna()
    return MonthOfAnswers(name, len(group), len(rated), nps, len(texts), None if texts.empty else round(float(texts.mean()), 3))


def _themes(texts: Sequence[str]) -> list[tuple[str, int]]:
    """The words and two-word phrases most negative answers mention (each answer counts once per phrase)."""
    if len(texts) < 2:
        return []
    from sklearn.feature_extraction.text import CountVectorizer

    vectoriser = CountVectorizer(stop_words="english", ngram_range=(1, 2), min_df=2, binary=True)
    try:
        counts = vectoriser.fit_transform(texts)
    except ValueError:  # nothing but stop words
        return []
    totals = np.asarray(counts.sum(axis=0)).ravel()
    names = vectoriser.get_feature_names_out()
    ranked = sorted(zip(names, totals), key=lambda item: (-item[1], item[0]))
    return [(str(name), int(total)) for name, total in ranked[:THEMES]]


# --- the backtest -----------------------------------------------------------------------------------------------


BACKTEST_CACHE = "report-backtest.json"
BACKTEST_CUSTOMERS = 20_000


def _model_quality(store: Store, settings: Settings) -> tuple[ModelQuality | None, str]:
    """The backtest of `retention score --backtest` on the store's orders, as of today. It refits a model, so its
    result is kept beside the saved model and reused until the orders, the day or the settings change."""
    from threadpoolctl import threadpool_limits

    from scoring.churn import NothingToCompare, backtest
    from scoring.scores import NotEnoughCustomers
    from sync.scoring_stage import score_as_of

    as_of = score_as_of(settings)
    key = "|".join([as_of.isoformat(), settings.scoring.what_scores_depend_on(), store.kinds_fingerprint(("order",))])
    cache = settings.data_dir / "models" / BACKTEST_CACHE
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    orders = _completed_orders(store)
    if orders.empty:
        return None, "no completed orders: the backtest measures how well order churn was foreseen"
    # The backtest refits the model; on a seeded random sample of customers it costs a fraction of that at 100k,
    # and 20,000 customers still put hundreds in every calibration bin and thousands in every tenth.
    everyone = orders["customer"].unique()
    if len(everyone) > BACKTEST_CUSTOMERS:
        sample = np.random.default_rng(settings.scoring.random_seed).choice(everyone, BACKTEST_CUSTOMERS, replace=False)
        orders = orders[orders["customer"].isin(sample)]
    try:
        # One OpenMP thread: gradient boosting's threads spin while they wait, and on a busy 2-core machine that
        # made the demo's backtest 1.5 s alone and 9.5 s beside other work.
        with threadpool_limits(limits=1):
            result = backtest(orders, as_of, settings.scoring.horizon_days or None, settings.scoring.random_seed)
    except (NothingToCompare, NotEnoughCustomers, ValueError) as exc:
        return None, f"no backtest: {exc}"
    quality = ModelQuality(result.model_method, f"{result.scored_at:%Y-%m-%d}", int(result.horizon_days),
                           min(len(everyone), BACKTEST_CUSTOMERS), len(everyone),
                           {m: {k: float(v) for k, v in values.items()} for m, values in result.metrics.items()},
                           result.calibration, result.lift_by_decile)
    _write_cache(cache, key, quality)
    return quality, ""


def _completed_orders(store: Store) -> pd.DataFrame:
    """sync.scoring_stage.orders_frame's (customer, at, amount) of the won orders, decoded with orjson alone: building
    400k Order records first takes most of a 100k-customer report's time."""
    rows = []
    for _, payload in store.stored_records("order"):
        data = orjson.loads(payload)
        if data["status"] == "won":
            email = data.get("customer_email")
            rows.append((email["normalised"] if email else data["customer_source_id"], data["created_at"], float(data["amount"])))
    frame = pd.DataFrame(rows, columns=["customer", "at", "amount"])
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="ISO8601")
    return frame


def _read_cache(path: Path, key: str) -> tuple[ModelQuality, str] | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        return None
    quality = saved["quality"]
    quality["calibration"] = [tuple(point) for point in quality["calibration"]]
    try:
        return ModelQuality(**quality), ""
    except TypeError:  # written by another version: computed again
        return None


def _write_cache(path: Path, key: str, quality: ModelQuality) -> None:
    with suppress(OSError):  # a read-only models directory costs a recomputation next time, nothing more
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps({"key": key, "quality": vars(quality)}, default=_plain_number))


def _plain_number(value: Any) -> float:
    return float(value)  # numpy scalars, which json cannot write


_NUMBERS = re.compile(r"\d+")


def _reason_kind(reason: str) -> str:
    """A quarantine reason with its numbers and quoted values taken out, so like refusals group together."""
    general = re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)
    return _NUMBERS.sub("N", general)[:160]
