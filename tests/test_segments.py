"""RFM segments: documented rules, stable edges, and segments that mean something on real data."""

from __future__ import annotations

import pandas as pd

from scoring.features import rfm_summary
from scoring.segments import SEGMENTS, RfmSegmenter
from tests.test_clv import cdnow_orders


def base(days_since_last: list[float], frequency: list[int], total: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"days_since_last": days_since_last, "frequency": frequency, "total": total},
                        index=[f"c{i}" for i in range(len(total))])


def test_the_best_and_worst_customers_land_in_champions_and_lost() -> None:
    customers = base(
        days_since_last=[1, 10, 20, 30, 40, 50, 60, 70, 80, 400],
        frequency=[20, 9, 8, 7, 6, 5, 4, 3, 2, 0],
        total=[2000, 900, 800, 700, 600, 500, 400, 300, 200, 10],
    )

    segments = RfmSegmenter().fit(customers).transform(customers)

    assert segments.loc["c0", "segment"] == "Champions"
    assert (segments.loc["c0", ["r_score", "f_score", "m_score"]] == 5).all()
    assert segments.loc["c9", "segment"] == "Lost"


def test_customers_tied_at_one_purchase_share_the_lowest_frequency_score() -> None:
    customers = base(days_since_last=list(range(10)), frequency=[0] * 7 + [1, 2, 5], total=[10.0] * 10)

    scores = RfmSegmenter().fit(customers).transform(customers)

    assert set(scores["f_score"][:7]) == {1}


def test_new_customers_are_scored_against_the_fitted_edges() -> None:
    known = base(days_since_last=[5, 50, 100, 200, 300], frequency=[4, 3, 2, 1, 0], total=[500, 300, 200, 100, 50])
    segmenter = RfmSegmenter().fit(known)

    newcomer = segmenter.transform(base(days_since_last=[2], frequency=[0], total=[30]))

    assert newcomer.iloc[0]["segment"] == "New"


def test_every_segment_is_reachable_and_named_as_documented() -> None:
    assert SEGMENTS == ("New", "Potential loyalists", "Champions", "Promising", "Loyal", "About to sleep",
                        "Need attention", "Hibernating", "At risk", "Can't lose them", "Lost")


def test_on_cdnow_champions_buy_again_far_more_often_than_lost_customers() -> None:
    orders = cdnow_orders()
    cut = pd.Timestamp("1997-10-01", tz="UTC")
    summary = rfm_summary(orders, cut)
    bought_again = orders[orders["at"] >= cut].groupby("customer").size().reindex(summary.index, fill_value=0) > 0

    segments = RfmSegmenter().fit(summary).transform(summary)
    rate = bought_again.groupby(segments["segment"]).mean()

    assert rate["Champions"] > 0.5 > 0.2 > rate["Lost"]
    assert rate["Champions"] > rate["Loyal"] > rate["Hibernating"]
