"""Churn risk learnt from the business's own history."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.churn import ChurnModel, horizon_from_history
from scoring.evaluation import churn_metrics
from scoring.features import engagement_summary, rfm_summary
from scoring.scores import ScoringParameters, score_customers
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


AS_OF = pd.Timestamp("2024-07-01", tz="UTC")


def small_shop(seed: int = 11, customers: int = 160) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Orders, email events and survey answers of a made-up shop whose customers drift away at their own pace: a
    customer who stops buying stops opening emails a little before, and some unsubscribe."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-01-01", tz="UTC")
    orders, events, answers = [], [], []
    for number in range(customers):
        who = f"c{number}@example.com"
        pace = rng.choice([20, 40, 80])
        leaves = start + pd.Timedelta(days=int(rng.integers(150, 700)))
        day = start + pd.Timedelta(days=int(rng.integers(0, 120)))
        while day < min(leaves, AS_OF + pd.Timedelta(days=200)):
            orders.append((who, day, float(rng.integers(10, 90))))
            day += pd.Timedelta(days=int(rng.exponential(pace)) + 1)
        for week in range(0, 80):
            sent = start + pd.Timedelta(weeks=week, hours=int(rng.integers(0, 48)))
            if sent < leaves - pd.Timedelta(days=30) and rng.random() < 0.6:
                events.append((who, sent, "open"))
                if rng.random() < 0.3:
                    events.append((who, sent + pd.Timedelta(minutes=5), "click"))
        if rng.random() < 0.2:
            events.append((who, leaves - pd.Timedelta(days=20), "unsubscribe"))
        if number % 3 == 0:
            answers.append((who, start + pd.Timedelta(days=200), 9.0, 0.5))
            answers.append((who, leaves - pd.Timedelta(days=10), float(rng.integers(0, 11)), float(rng.uniform(-1, 1))))
    return (pd.DataFrame(orders, columns=["customer", "at", "amount"]), pd.DataFrame(events, columns=["customer", "at", "event"]),
            pd.DataFrame(answers, columns=["customer", "at", "nps", "sentiment"]))


PARAMETERS = ScoringParameters(horizon_days=60, medium_risk=0.4, high_risk=0.7, random_seed=7)


def test_email_events_after_the_reference_date_change_nothing() -> None:
    orders, events, answers = small_shop()
    later = events["at"] >= AS_OF
    altered = pd.concat([
        events.assign(event=events["event"].where(~later, "unsubscribe")),
        pd.DataFrame({"customer": ["c1@example.com", "c2@example.com"], "at": [AS_OF, AS_OF + pd.Timedelta(days=3)], "event": ["bounce", "open"]}),
    ])

    original, _ = score_customers(orders, AS_OF, PARAMETERS, answers, events)
    with_future, _ = score_customers(orders, AS_OF, PARAMETERS, answers, altered)

    pd.testing.assert_frame_equal(original, with_future)
    pd.testing.assert_frame_equal(engagement_summary(events, AS_OF), engagement_summary(altered, AS_OF))


def test_email_engagement_is_a_model_input_and_a_reason_in_plain_words() -> None:
    orders, events, answers = small_shop()

    table, model = score_customers(orders, AS_OF, PARAMETERS, answers, events)

    assert model.inputs_.uses_email and "has_unsubscribed" in model.features_
    unsubscribed = events[(events["event"] == "unsubscribe") & (events["at"] < AS_OF)].groupby("customer")["at"].min()
    for customer, at in unsubscribed.items():
        if customer in table.index and table.at[customer, "risk_band"] != "new" and at >= AS_OF - pd.Timedelta(days=365):
            assert f"unsubscribed from emails on {at.day} {at:%B %Y}" in table.at[customer, "reasons"]
    stopped = table["reasons"].str.extract(r"stopped opening emails in (\w+ \d{4})")[0].dropna()
    assert len(stopped) > 0 and unsubscribed.index.isin(table.index).sum() > 5
    last_open = events[(events["event"] == "open") & (events["at"] < AS_OF)].groupby("customer")["at"].max()
    assert all(month == f"{last_open[customer]:%B %Y}" for customer, month in stopped.items())


def test_a_business_with_no_orders_is_scored_from_engagement_and_answers_alone_and_says_so() -> None:
    _, events, answers = small_shop()
    no_orders = pd.DataFrame({"customer": pd.Series(dtype=object), "at": pd.Series(dtype="datetime64[ns, UTC]"), "amount": pd.Series(dtype=float)})

    table, model = score_customers(no_orders, AS_OF, PARAMETERS, answers, events)

    engaged = pd.concat([events.loc[events["event"].isin(["open", "click"]), ["customer", "at"]], answers[["customer", "at"]]])
    assert set(table.index) == set(engaged.loc[engaged["at"] < AS_OF, "customer"])
    assert model.label_ == "no email open, click or survey answer"
    assert "from email and survey engagement alone (no orders yet)" in model.method_
    assert not set(model.features_) & {"log_total", "log_monetary", "log_first_value"}
    assert table["churn_probability"].between(0.005, 0.995).all() and table["clv_12_months"].isna().all()
    scored = table[table["risk_band"] != "new"]
    assert scored["reasons"].str.contains("scored from email and survey engagement alone").all()
    # Label = no engagement in the next H days: the learnt risks rank who went quiet.
    window = engaged[(engaged["at"] >= AS_OF) & (engaged["at"] < AS_OF + pd.Timedelta(days=60))]
    quiet = (~table.index.isin(window["customer"])).astype(int)
    assert churn_metrics(quiet, table["churn_probability"])["roc_auc"] > 0.75


def test_one_recent_order_gets_the_band_new_instead_of_a_guess() -> None:
    orders, events, answers = small_shop()
    newcomer = pd.DataFrame({"customer": ["new@example.com"], "at": [AS_OF - pd.Timedelta(days=6)], "amount": [30.0]})

    table, _ = score_customers(pd.concat([orders, newcomer]), AS_OF, PARAMETERS, answers, events)

    assert table.at["new@example.com", "risk_band"] == "new"
    assert table.at["new@example.com", "reasons"] == "first order 6 days ago: too early to judge"


def test_scoring_runs_one_native_thread_when_other_programs_keep_the_cores_busy(monkeypatch):
    import os

    from threadpoolctl import threadpool_info

    from scoring.threads import scoring_threads

    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1), 0.0, 0.0))
    with scoring_threads() as limit:
        assert limit == 1
        openmp = [pool for pool in threadpool_info() if pool["user_api"] == "openmp"]  # gradient boosting's threads
        assert openmp and all(pool["num_threads"] == 1 for pool in openmp)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    with scoring_threads() as limit:
        assert limit is None  # a quiet machine: the libraries' own default, every core
