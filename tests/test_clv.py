"""Lifetime value: BG/NBD and Gamma-Gamma against published CDNOW estimates and simulated customers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.churn import ChurnModel
from scoring.clv import BetaGeoModel, GammaGammaModel, LearntValueModel, LifetimeValueModel
from scoring.features import rfm_summary
from scoring.scores import CLV_FIT_CUSTOMERS, CLV_HORIZON_DAYS, ScoringParameters, expected_value, score_customers
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


CUT = pd.Timestamp("1997-10-01", tz="UTC")
HOLDOUT_DAYS = 39 * 7


def test_on_cdnow_the_shipped_value_ranks_holdout_spend_above_bg_nbd_with_gamma_gamma_at_its_level() -> None:
    orders = cdnow_orders()
    summary = rfm_summary(orders, CUT)
    holdout = orders[(orders["at"] >= CUT) & (orders["at"] < CUT + pd.Timedelta(days=HOLDOUT_DAYS))]
    actual = holdout.groupby("customer")["amount"].sum().reindex(summary.index, fill_value=0.0)

    model = ChurnModel().fit(orders, CUT)  # as `retention score` fits it: the horizon from the purchase cycle
    shipped = pd.Series(expected_value(summary, model, HOLDOUT_DAYS, random_seed=7), index=summary.index)
    bg_gg = pd.Series(LifetimeValueModel().fit(summary).predict(summary, HOLDOUT_DAYS), index=summary.index)

    assert model.value_method_.startswith("BG/NBD x Gamma-Gamma's values, ranked by spend in the")
    assert shipped.corr(actual, method="spearman") > bg_gg.corr(actual, method="spearman")
    # The values are BG/NBD x Gamma-Gamma's (fitted as shipped, on a seeded sample), handed out in the learnt order.
    as_fitted = LifetimeValueModel(max_customers=CLV_FIT_CUSTOMERS, random_state=7).fit(summary).predict(summary, HOLDOUT_DAYS)
    np.testing.assert_array_equal(np.sort(shipped.to_numpy()), np.sort(as_fitted))


def small_shop(customers: int = 150, seed: int = 4) -> pd.DataFrame:
    """Two years of orders; each customer buys at their own pace and amount until they stop."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(customers):
        day, pace, amount = int(rng.integers(0, 150)), int(rng.choice([15, 40, 90])), float(rng.choice([15, 40, 120]))
        stop = int(rng.integers(200, 800))
        while day < stop:
            rows.append((f"c{number}", pd.Timestamp("2023-01-01", tz="UTC") + pd.Timedelta(days=day), round(amount * rng.uniform(0.5, 1.5), 2)))
            day += int(rng.exponential(pace)) + 1
    return pd.DataFrame(rows, columns=["customer", "at", "amount"])


PARAMETERS = ScoringParameters(horizon_days=None, medium_risk=0.4, high_risk=0.7, random_seed=7)
AS_OF = pd.Timestamp("2024-07-01", tz="UTC")


def test_orders_on_or_after_the_reference_date_change_no_lifetime_value() -> None:
    orders = small_shop()
    later = orders["at"] >= AS_OF
    altered = pd.concat([
        orders.assign(amount=orders["amount"].where(~later, 9_999.0)),
        pd.DataFrame({"customer": ["c1", "newcomer"], "at": [AS_OF, AS_OF + pd.Timedelta(days=30)], "amount": [5_000.0, 70.0]}),
    ])

    original, model = score_customers(orders, AS_OF, PARAMETERS)
    with_future, _ = score_customers(altered, AS_OF, PARAMETERS)

    assert model.value_method_.startswith("BG/NBD x Gamma-Gamma's values, ranked by spend")
    pd.testing.assert_series_equal(original["clv_12_months"], with_future["clv_12_months"])


def test_too_little_history_falls_back_to_bg_nbd_with_gamma_gamma_and_says_so() -> None:
    orders = small_shop()
    as_of = orders["at"].min() + pd.Timedelta(days=60)  # no 30-day stretch before the first label window

    table, model = score_customers(orders, as_of, PARAMETERS)

    summary = rfm_summary(orders, as_of)
    bg_gg = LifetimeValueModel().fit(summary).predict(summary, CLV_HORIZON_DAYS)
    assert model.value_method_ == "BG/NBD x Gamma-Gamma (too little history to learn spend from)"
    assert "; lifetime value: BG/NBD x Gamma-Gamma (too little history" in model.describe()
    np.testing.assert_array_equal(table["clv_12_months"].to_numpy(), np.round(bg_gg, 2))


def test_the_learnt_spend_needs_spenders_and_fits_a_large_history_on_a_seeded_sample() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(5_000, 3))
    spend = np.where(features[:, 0] > 0.5, np.exp(features[:, 1] + 3), 0.0)

    with pytest.raises(ValueError, match="fewer than 20 customers spent anything"):
        LearntValueModel().fit(features, np.where(np.arange(5_000) < 19, 10.0, 0.0))
    sampled = LearntValueModel(max_rows=1_000).fit(features, spend)
    again = LearntValueModel(max_rows=1_000).fit(features, spend)
    expected = rng.permutation(np.linspace(0.0, 100.0, 5_000))

    value = sampled.predict(features, expected)
    np.testing.assert_array_equal(value, again.predict(features, expected))
    np.testing.assert_array_equal(np.sort(value), np.sort(expected))
    assert pd.Series(value).corr(pd.Series(spend), method="spearman") > 0.5


def test_bg_nbd_and_gamma_gamma_fitted_on_a_seeded_sample_agree_with_the_whole() -> None:
    summary = rfm_summary(cdnow_orders(), CUT, unit=WEEK)

    whole = LifetimeValueModel().fit(summary)
    sampled = LifetimeValueModel(max_customers=10_000, random_state=7).fit(summary)

    assert LifetimeValueModel(max_customers=10_000, random_state=7).fit(summary).purchases_.params_ == sampled.purchases_.params_
    for name, value in whole.purchases_.params_.items():
        assert sampled.purchases_.params_[name] == pytest.approx(value, rel=0.15), name
    for name, value in whole.spend_.params_.items():
        assert sampled.spend_.params_[name] == pytest.approx(value, rel=0.25), name
