"""Lifetime value: BG/NBD and Gamma-Gamma against published CDNOW estimates and simulated customers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.clv import BetaGeoModel, GammaGammaModel, LifetimeValueModel
from scoring.features import rfm_summary
from tests.conftest import shared_file

WEEK = pd.Timedelta(weeks=1)
# Fader, Hardie & Lee (2005): BG/NBD and Gamma-Gamma fitted on the 2,357-customer CDNOW sample, 39 weeks.
PUBLISHED_BG_NBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def cdnow_orders() -> pd.DataFrame:
    raw = pd.read_csv(shared_file("cdnow_master.csv"), dtype={"customer_id": str})
    return pd.DataFrame({"customer": raw["customer_id"], "at": pd.to_datetime(raw["date"], utc=True), "amount": raw["amount"]})


def test_the_published_worked_example_is_reproduced() -> None:
    model = BetaGeoModel()
    model.params_ = dict(PUBLISHED_BG_NBD)
    # The BG/NBD paper's example customer: 2 repeat purchases, the last at week 30.43, observed for 38.86 weeks.
    assert model.expected_purchases(39, [2], [30.43], [38.86])[0] == pytest.approx(1.226, abs=0.0005)


def test_cdnow_calibration_recovers_the_published_estimates() -> None:
    # The published figures come from a random 1/10 sample of this cohort, so they agree to sampling error only.
    summary = rfm_summary(cdnow_orders(), pd.Timestamp("1997-10-01", tz="UTC"), unit=WEEK)

    purchases = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["age"])
    spend = GammaGammaModel().fit(summary["frequency"], summary["monetary"])

    assert len(summary) == 23_570
    for name, published in PUBLISHED_BG_NBD.items():
        assert purchases.params_[name] == pytest.approx(published, rel=0.12), name
    for name, published in PUBLISHED_GAMMA_GAMMA.items():
        assert spend.params_[name] == pytest.approx(published, rel=0.08), name


def simulate(count: int, r: float, alpha: float, a: float, b: float, age: float, seed: int) -> pd.DataFrame:
    """Customers drawn from the BG/NBD story itself: a Poisson rate each, a drop-out chance after each purchase."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(shape=r, scale=1 / alpha, size=count)
    dropouts = rng.beta(a, b, size=count)
    rows = []
    for rate, dropout in zip(rates, dropouts):
        moment, purchases, last = 0.0, 0, 0.0
        while True:
            moment += rng.exponential(1 / rate)
            if moment > age:
                break
            purchases, last = purchases + 1, moment
            if rng.random() < dropout:
                break
        rows.append((purchases, last, age))
    return pd.DataFrame(rows, columns=["frequency", "recency", "age"])


def test_known_parameters_are_recovered_from_simulated_customers() -> None:
    truth = {"r": 0.5, "alpha": 6.0, "a": 0.8, "b": 2.5}
    customers = simulate(8_000, **truth, age=52.0, seed=11)

    fitted = BetaGeoModel().fit(customers["frequency"], customers["recency"], customers["age"]).params_

    # The purchase rate (r, alpha) is pinned down tightly; the drop-out mix (a, b) is the harder half to identify.
    tolerance = {"r": 0.10, "alpha": 0.10, "a": 0.20, "b": 0.20}
    for name, value in truth.items():
        assert fitted[name] == pytest.approx(value, rel=tolerance[name]), name


def test_lifetime_value_ranks_cdnow_holdout_spend_better_than_chance_and_is_deterministic() -> None:
    orders = cdnow_orders()
    cut = pd.Timestamp("1997-10-01", tz="UTC")
    summary = rfm_summary(orders, cut, unit=WEEK)
    actual = orders[orders["at"] >= cut].groupby("customer")["amount"].sum().reindex(summary.index, fill_value=0)

    first = LifetimeValueModel().fit(summary).predict(summary, horizon=39)
    second = LifetimeValueModel().fit(summary).predict(summary, horizon=39)

    assert np.array_equal(first, second), "the same input must give the same values, bit for bit"
    assert pd.Series(first, index=summary.index).corr(actual, method="spearman") > 0.3
    assert np.all(np.isfinite(first)) and np.all(first >= 0)


def test_nothing_after_the_reference_date_changes_the_summary() -> None:
    at = pd.to_datetime(["2024-01-05", "2024-02-10", "2024-03-01", "2024-06-01"], utc=True)
    orders = pd.DataFrame({"customer": ["a", "a", "b", "a"], "at": at, "amount": [10.0, 20.0, 5.0, 99.0]})
    as_of = pd.Timestamp("2024-04-01", tz="UTC")
    later = pd.DataFrame({"customer": ["a", "c"], "at": pd.to_datetime(["2024-04-01", "2024-05-01"], utc=True), "amount": [1e6, 7.0]})

    before = rfm_summary(orders, as_of)
    after = rfm_summary(pd.concat([orders.assign(amount=orders["amount"].where(orders["at"] < as_of, -1.0)), later]), as_of)

    pd.testing.assert_frame_equal(before, after)
    assert list(before.index) == ["a", "b"]
    assert before.loc["a", "frequency"] == 1 and before.loc["a", "recency"] == 36 and before.loc["a", "age"] == 87
    assert before.loc["a", "monetary"] == 20.0 and before.loc["a", "days_since_last"] == 51


def test_several_orders_on_one_day_are_one_purchase() -> None:
    at = pd.to_datetime(["2024-01-05 09:00", "2024-01-05 17:00", "2024-01-20 10:00"], utc=True)
    orders = pd.DataFrame({"customer": ["a", "a", "a"], "at": at, "amount": [10.0, 5.0, 7.0]})

    summary = rfm_summary(orders, pd.Timestamp("2024-02-01", tz="UTC"))

    assert summary.loc["a", "frequency"] == 1
    assert summary.loc["a", "first_value"] == 15.0 and summary.loc["a", "total"] == 22.0
