"""The store keeps one row per scoring run: band and segment counts, the spread of risk, and how customers moved
between bands and segments since the scores the run replaced. Older stores gain the table on open."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from connectors.records import Score
from sync import schema
from sync.scoring_stage import keep_scores
from sync.score_history import NOT_SCORED, recent_score_runs
from sync.store import Store

DAY_ONE = datetime(2024, 5, 1, tzinfo=timezone.utc)


def scores(at: datetime, bands: dict[str, tuple[str, str, float]]) -> list[Score]:
    return [Score(source="scoring", source_id=customer, churn_probability=probability, risk_band=band, scored_at=at,
                  segment=segment) for customer, (band, segment, probability) in bands.items()]


def test_each_scoring_run_records_its_counts_and_the_flows_from_the_scores_it_replaced(store_url: str) -> None:
    store = Store.open(store_url)
    keep_scores(store, scores(DAY_ONE, {"ann": ("low", "Loyal", 0.1), "bob": ("high", "At risk", 0.9)}), "score", "day one")
    keep_scores(store, scores(DAY_ONE + timedelta(days=1), {"ann": ("high", "At risk", 0.75), "bob": ("high", "Lost", 0.99),
                                                            "cy": ("new", "", 0.5)}), "score", "day two")

    first, second = recent_score_runs(store)
    assert first.customers == 2 and first.bands == {"low": 1, "high": 1}
    assert first.band_flows == {(NOT_SCORED, "low"): 1, (NOT_SCORED, "high"): 1}
    assert second.bands == {"high": 2, "new": 1} and second.segments == {"At risk": 1, "Lost": 1, "(none)": 1}
    assert second.band_flows == {("low", "high"): 1, ("high", "high"): 1, (NOT_SCORED, "new"): 1}
    assert second.segment_flows == {("Loyal", "At risk"): 1, ("At risk", "Lost"): 1, (NOT_SCORED, "(none)"): 1}
    assert sum(second.probability_histogram) == 3 and second.probability_histogram[-1] == 1  # 0.99 in the top slice
    store.close()


def test_a_version_3_store_gains_the_score_history_and_keeps_its_scores(store_url: str) -> None:
    store = Store.open(store_url)
    keep_scores(store, scores(DAY_ONE, {"ann": ("low", "Loyal", 0.1)}), "score", "before the upgrade")
    with store.engine.begin() as conn:  # what version 3 made: no score_runs table
        conn.execute(text("DROP TABLE score_runs"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 3"))
    store.close()

    upgraded = Store.open(store_url)

    assert upgraded.version() == schema.SCHEMA_VERSION == 5
    assert recent_score_runs(upgraded) == []  # history starts at the next run
    keep_scores(upgraded, scores(DAY_ONE + timedelta(days=1), {"ann": ("medium", "Loyal", 0.5)}), "score", "after")
    [run] = recent_score_runs(upgraded)
    assert run.band_flows == {("low", "medium"): 1}  # the flow starts from the scores kept before the upgrade
    upgraded.close()


def test_the_report_gathers_its_figures_from_either_backend(store_url: str, tmp_path) -> None:
    from sync.report import gather_figures
    from sync.settings import Settings

    store = Store.open(store_url)
    keep_scores(store, scores(DAY_ONE, {"ann": ("high", "At risk", 0.9), "bob": ("low", "Loyal", 0.1)}), "score", "day one")
    keep_scores(store, scores(DAY_ONE + timedelta(days=1), {"ann": ("high", "Lost", 0.95), "bob": ("high", "At risk", 0.8)}),
                "score", "day two")

    figures = gather_figures(store, Settings(data_dir=tmp_path), "test store")

    assert figures.bands == {"high": 2, "medium": 0, "low": 0, "new": 0} and figures.segments == {"Lost": 1, "At risk": 1}
    assert [c.customer for c in figures.at_risk] == ["ann", "bob"]
    assert [run.customers for run in figures.score_runs] == [2, 2]
    assert figures.score_runs[-1].band_flows == {("high", "high"): 1, ("low", "high"): 1}
    assert figures.model is None and "no completed orders" in figures.model_note
    store.close()
