"""One row per customer: churn probability, risk band, reasons, segment and 12-month value, as of a date."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from connectors.records import Score
from scoring.churn import ChurnModel, activity_frame, model_inputs
from scoring.clv import LifetimeValueModel
from scoring.explain import reasons, risk_bands
from scoring.features import engagement_summary, rfm_summary, survey_summary
from scoring.model_file import ModelFit, load_model, save_model
from scoring.segments import RfmSegmenter

CLV_HORIZON_DAYS = 365
MIN_CUSTOMERS = 20
# BG/NBD and Gamma-Gamma's population parameters are fitted on a seeded sample of at most this many customers,
# about ten times the 2,357 the published CDNOW estimates rest on: the fit's cost stops growing with the business.
CLV_FIT_CUSTOMERS = 20_000


class NotEnoughCustomers(ValueError):
    """Too few customers for any model here to say something honest."""


@dataclass(frozen=True)
class ScoringParameters:
    horizon_days: int | None  # None: derived from the purchase cycle
    medium_risk: float
    high_risk: float
    random_seed: int


def score_customers(
    orders: pd.DataFrame, as_of: pd.Timestamp, parameters: ScoringParameters, responses: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None, model: ChurnModel | None = None,
) -> tuple[pd.DataFrame, ChurnModel]:
    """Scores for every customer with an order before ``as_of``, or, for a business with no orders at all, for
    everyone who opened or clicked an email or answered a survey; nothing on or after ``as_of`` is read.

    ``responses`` and ``events`` (optional) add NPS, sentiment and email engagement to the model and the reasons.
    ``model``: a fitted model to score with (scoring.model_file.load_model); one is fitted when it is None or was
    fitted on other kinds of input."""
    inputs = model_inputs(orders, as_of, responses, events)
    activity = activity_frame(orders, inputs, responses, events)
    known = activity[activity["at"] < as_of]
    customers = known["customer"].nunique()
    if customers < MIN_CUSTOMERS:
        # Every model here learns from the customer base as a whole; a handful of customers makes any number a guess.
        who = ("customers have completed orders" if inputs.activity == "orders"
               else "contacts have opened or clicked an email or answered a survey (and no one has ordered)")
        raise NotEnoughCustomers(f"only {customers} {who} by then; scoring needs at least {MIN_CUSTOMERS}")
    if model is None or model.inputs_ != inputs:
        model = ChurnModel(parameters.horizon_days, random_state=parameters.random_seed).fit(orders, as_of, responses, events)
    summary = rfm_summary(known, as_of)
    survey = survey_summary(responses, as_of) if inputs.uses_survey else None
    engagement = engagement_summary(events, as_of) if inputs.uses_email else None
    probability = model.predict_summary(summary, survey, engagement)
    described = summary.join([part for part in (survey, engagement) if part is not None], how="left") \
        if survey is not None or engagement is not None else summary
    has_orders = inputs.activity == "orders"
    table = pd.DataFrame(
        {
            "churn_probability": probability.round(4),
            "risk_band": risk_bands(probability, summary, model.horizon_days_, parameters.medium_risk, parameters.high_risk),
            "reasons": reasons(described, model.horizon_days_, inputs.activity),
            "segment": RfmSegmenter().fit(summary).transform(summary)["segment"] if has_orders else "",
            "clv_12_months": np.round(expected_value(summary, model, CLV_HORIZON_DAYS, parameters.random_seed, survey, engagement), 2)
            if has_orders else np.nan,
            "orders": (summary["frequency"] + 1).astype(int) if has_orders else 0,
            "last_order": (as_of.floor("D") - pd.to_timedelta(summary["days_since_last"], unit="D")).dt.strftime("%Y-%m-%d")
            if has_orders else "",
        },
        index=summary.index,
    )
    too_new = table["risk_band"] == "new"
    first = "first order " if has_orders else "first opened, clicked or answered "
    table.loc[too_new, "reasons"] = first + summary.loc[too_new, "days_since_last"].astype(int).astype(str) + " days ago: too early to judge"
    table.index.name = "customer"
    return table, model


def expected_value(summary: pd.DataFrame, model: ChurnModel, horizon_days: int, random_seed: int,
                   survey: pd.DataFrame | None = None, engagement: pd.DataFrame | None = None) -> np.ndarray:
    """Expected spend over ``horizon_days`` per customer of ``summary`` (in days): BG/NBD x Gamma-Gamma's values,
    handed out in the order of the spend ``model`` learnt (``model.value_method_`` says how); NaN without a spend model."""
    try:
        expected = LifetimeValueModel(max_customers=CLV_FIT_CUSTOMERS, random_state=random_seed).fit(summary).predict(summary, horizon_days)
    except ValueError:  # fewer than 10 repeat customers: no honest spend model
        return np.full(len(summary), np.nan)
    return model.predict_value(summary, expected, survey, engagement)


def score_with_saved_model(
    orders: pd.DataFrame, as_of: pd.Timestamp, parameters: ScoringParameters, responses: pd.DataFrame | None,
    events: pd.DataFrame | None, directory: Path, retrain_days: int, *, retrain: bool = False, keep: bool = True,
) -> tuple[pd.DataFrame, ChurnModel, str]:
    """score_customers with the model saved in ``directory`` while it is young and fits (scoring.model_file);
    otherwise a model is fitted, and saved when ``keep``. Also says, in words, which of the two happened."""
    fit = ModelFit(parameters.horizon_days, parameters.random_seed, model_inputs(orders, as_of, responses, events))
    saved, why = (None, "--retrain") if retrain else load_model(directory, as_of, fit, retrain_days)
    table, model = score_customers(orders, as_of, parameters, responses, events, model=saved)
    if model is saved:
        return table, model, why
    if keep:
        save_model(model, directory, as_of, len(table), fit)
    return table, model, f"fitted a new model ({why})"


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
            segment=row["segment"] or None, clv=value, clv_currency=currency if value is not None else None, model_version=model_version,
        ))
    return records
