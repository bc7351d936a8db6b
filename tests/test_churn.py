"""Churn risk learnt from the business's own history."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.churn import ChurnModel, horizon_from_history
from scoring.evaluation import churn_metrics
from scoring.features import rfm_summary
from tests.test_clv import cdnow_orders

CUT = pd.Timestamp("1997-10-01", tz="UTC")


def labels(orders: pd.DataFrame, customers: pd.Index, horizon_days: int) -> np.ndarray:
    window = orders[(orders["at"] >= CUT) & (orders["at"] < CUT + pd.Timedelta(days=horizon_days))]
    return (~customers.isin(window["customer"])).astype(int)


def test_on_cdnow_the_learnt_model_beats_recency_and_is_calibrated() -> None:
    orders = cdnow_orders()
    model = ChurnModel(horizon_days=90).fit(orders, CUT)

    probability = model.predict_proba(orders, CUT)
    churned = labels(orders, probability.index, 90)
    recency = rfm_summary(orders, CUT)["days_since_last"].reindex(probability.index)

    learnt, baseline = churn_metrics(churned, probability), churn_metrics(churned, recency, is_probability=False)
    assert learnt["roc_auc"] > baseline["roc_auc"]
    assert learnt["ece"] <= 0.03
    # Every label window the model learnt or was validated on closed before the reference date.
    assert model.backtest_["validated_at"] + pd.Timedelta(days=90) <= CUT
    assert all(cutoff < model.backtest_["validated_at"] for cutoff in model.backtest_["trained_on"])


def test_orders_after_the_reference_date_change_nothing() -> None:
    orders = cdnow_orders()
    later = orders["at"] >= CUT
    altered = pd.concat([
        orders.assign(amount=orders["amount"].where(~later, 9_999.0)),
        pd.DataFrame({"customer": ["00001", "99999"], "at": pd.to_datetime(["1997-10-02", "1998-01-01"], utc=True), "amount": [5.0, 5.0]}),
    ])

    original = ChurnModel(horizon_days=90).fit(orders, CUT).predict_proba(orders, CUT)
    with_future = ChurnModel(horizon_days=90).fit(altered, CUT).predict_proba(altered, CUT)

    pd.testing.assert_series_equal(original, with_future)


def test_scoring_the_same_input_twice_gives_identical_output() -> None:
    orders = cdnow_orders()
    first = ChurnModel(horizon_days=90).fit(orders, CUT).predict_proba(orders, CUT)
    second = ChurnModel(horizon_days=90).fit(orders, CUT).predict_proba(orders, CUT)
    assert first.equals(second)


def test_too_little_history_falls_back_to_bg_nbd_and_says_so() -> None:
    rng = np.random.default_rng(3)
    at = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 40, size=400), unit="D")
    orders = pd.DataFrame({"customer": rng.integers(0, 120, size=400).astype(str), "at": at, "amount": 10.0})
    as_of = pd.Timestamp("2024-04-15", tz="UTC")

    model = ChurnModel(horizon_days=60).fit(orders, as_of)
    probability = model.predict_proba(orders, as_of)

    assert model.method_.startswith("BG/NBD (too little history")
    assert probability.between(0, 1).all() and len(probability) == orders["customer"].nunique()


def test_the_horizon_follows_the_purchase_cycle() -> None:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    every_20_days = pd.DataFrame({
        "customer": [f"c{c}" for c in range(30) for _ in range(6)],
        "at": [start + pd.Timedelta(days=c + 20 * k) for c in range(30) for k in range(6)],
        "amount": 12.0,
    })
    assert horizon_from_history(every_20_days, start + pd.Timedelta(days=200)) == 40  # twice the usual gap
    assert horizon_from_history(every_20_days.assign(amount=1.0).iloc[::6], start + pd.Timedelta(days=200)) == 365
