"""One row per customer: churn probability, risk band, reasons, segment and 12-month value, as of a date."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from connectors.records import Score
from scoring.churn import FEATURES, MODEL_VERSION, ChurnModel
from scoring.clv import LifetimeValueModel
from scoring.explain import reasons, risk_bands
from scoring.features import rfm_summary, survey_summary
from scoring.segments import RfmSegmenter

CLV_HORIZON_DAYS = 365
MIN_CUSTOMERS = 20


class NotEnoughCustomers(ValueError):
    """Too few customers for any model here to say something honest."""


@dataclass(frozen=True)
class ScoringParameters:
    horizon_days: int | None  # None: derived from the purchase cycle
    medium_risk: float
    high_risk: float
    random_seed: int


def score_customers(
    orders: pd.DataFrame, as_of: pd.Timestamp, parameters: ScoringParameters, responses: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, ChurnModel]:
    """Scores for every customer with an order before ``as_of``; nothing on or after ``as_of`` is read.
    ``responses`` (optional) adds NPS and sentiment to the model and the reasons."""
    known = orders[orders["at"] < as_of]
    customers = known["customer"].nunique()
    if customers < MIN_CUSTOMERS:
        # Every model here learns from the customer base as a whole; a handful of customers makes any number a guess.
        raise NotEnoughCustomers(f"only {customers} customers have completed orders by then; scoring needs at least {MIN_CUSTOMERS}")
    churn = ChurnModel(parameters.horizon_days, random_state=parameters.random_seed).fit(known, as_of, responses)
    summary = rfm_summary(known, as_of)
    survey = survey_summary(responses, as_of) if churn.uses_survey_ else None
    probability = churn.predict_summary(summary, survey)
    if survey is not None:  # for the reasons
        summary = summary.join(survey, how="left")
    try:
        value = LifetimeValueModel().fit(summary).predict(summary, CLV_HORIZON_DAYS)
    except ValueError:  # fewer than 10 repeat customers: no honest spend model
        value = np.full(len(summary), np.nan)
    segments = RfmSegmenter().fit(summary).transform(summary)
    table = pd.DataFrame(
        {
            "churn_probability": probability.round(4),
            "risk_band": risk_bands(probability, summary, churn.horizon_days_, parameters.medium_risk, parameters.high_risk),
            "reasons": reasons(summary, churn.horizon_days_),
            "segment": segments["segment"],
            "clv_12_months": np.round(value, 2),
            "orders": (summary["frequency"] + 1).astype(int),
            "last_order": (as_of.floor("D") - pd.to_timedelta(summary["days_since_last"], unit="D")).dt.strftime("%Y-%m-%d"),
        },
        index=summary.index,
    )
    too_new = table["risk_band"] == "new"
    table.loc[too_new, "reasons"] = "first order " + summary.loc[too_new, "days_since_last"].astype(int).astype(str) + " days ago: too early to judge"
    table.index.name = "customer"
    return table, churn


def as_score_records(table: pd.DataFrame, scored_at: pd.Timestamp, currency: str | None, model_version: str) -> list[Score]:
    """The table as canonical Score records (source "scoring", id = the customer key), ready for the store.

    ``scored_at`` is the reference time, not the clock: scoring the same data as of the same date gives the same
    records, so the store writes nothing and nothing is re-sent."""
    records = []
    for customer, row in table.iterrows():
        value = None if pd.isna(row["clv_12_months"]) else Decimal(f"{row['clv_12_months']:.2f}")
        records.append(Score(
            source="scoring", source_id=str(customer), churn_probability=float(row["churn_probability"]),
            risk_band=row["risk_band"], scored_at=scored_at.to_pydatetime(), top_reasons=tuple(row["reasons"].split("; ")),
            segment=row["segment"], clv=value, clv_currency=currency if value is not None else None, model_version=model_version,
        ))
    return records


def save_model(model: ChurnModel, directory: Path, as_of: pd.Timestamp, customers: int) -> Path:
    """The fitted model and what it is (version, method, horizon, window, backtest, features), 0600."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    model_path = directory / "churn-model.joblib"
    metadata = {
        "version": MODEL_VERSION,
        "method": model.method_,
        "horizon_days": model.horizon_days_,
        "training_window": [model.training_window_[0].isoformat(), model.training_window_[1].isoformat()],
        "as_of": as_of.isoformat(),
        "customers": customers,
        "features": list(FEATURES),
        "backtest": {
            "roc_auc": model.backtest_.get("roc_auc", {}),
            "validated_at": str(model.backtest_.get("validated_at", "")),
            "trained_on": [str(cutoff) for cutoff in model.backtest_.get("trained_on", [])],
        },
    }
    for path, write in ((model_path, lambda handle: joblib.dump(model, handle)),
                        (directory / "churn-model.json", lambda handle: handle.write(json.dumps(metadata, indent=2).encode()))):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            write(handle)
    return model_path
