"""One row per customer: churn probability, risk band, reasons, segment and 12-month value, as of a date."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.churn import ChurnModel
from scoring.clv import LifetimeValueModel
from scoring.explain import reasons, risk_bands
from scoring.features import rfm_summary
from scoring.segments import RfmSegmenter

CLV_HORIZON_DAYS = 365
MIN_CUSTOMERS = 20


@dataclass(frozen=True)
class ScoringParameters:
    horizon_days: int | None  # None: derived from the purchase cycle
    medium_risk: float
    high_risk: float
    random_seed: int


def score_customers(orders: pd.DataFrame, as_of: pd.Timestamp, parameters: ScoringParameters) -> tuple[pd.DataFrame, ChurnModel]:
    """Scores for every customer with an order before ``as_of``; nothing on or after ``as_of`` is read."""
    known = orders[orders["at"] < as_of]
    customers = known["customer"].nunique()
    if customers < MIN_CUSTOMERS:
        # Every model here learns from the customer base as a whole; a handful of customers makes any number a guess.
        raise ValueError(f"only {customers} customers have completed orders by then; scoring needs at least {MIN_CUSTOMERS}")
    churn = ChurnModel(parameters.horizon_days, random_state=parameters.random_seed).fit(known, as_of)
    probability = churn.predict_proba(known, as_of)
    summary = rfm_summary(known, as_of)
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
