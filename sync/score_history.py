"""The history of scoring runs: per run, how many customers fell in each band and segment, the spread of churn
probabilities, and how customers moved between bands and segments since the scores the run replaced.

Written by the scoring step (sync.scoring_stage.keep_scores) into the store's ``score_runs`` table; read by the owner
report. Aggregates only: no customer key is kept, so erasing a person (`retention forget`) has nothing to do here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from connectors.records import Score
from sync.schema import score_runs
from sync.store import Store

HISTOGRAM_BINS = 20  # churn probability in steps of 5 points
NOT_SCORED = "(not scored)"  # a customer without a score on one side of a flow
NO_SEGMENT = "(none)"  # scored from engagement alone: no orders, so no RFM segment


@dataclass(frozen=True)
class ScoreRunSummary:
    """One scoring run as the report shows it."""

    run_id: int
    scored_at: datetime
    customers: int
    bands: dict[str, int]
    segments: dict[str, int]
    probability_histogram: list[int]  # customers per HISTOGRAM_BINS-wide slice of 0..1
    band_flows: dict[tuple[str, str], int]  # (band before, band now) -> customers; NOT_SCORED for either side
    segment_flows: dict[tuple[str, str], int]


def stored_bands(store: Store) -> dict[str, tuple[str, str]]:
    """Each customer's band and segment as the store holds them now (the scores a new run replaces)."""
    held = {}
    for customer, payload in store.stored_records("score", "scoring"):
        data = orjson.loads(payload)
        held[customer] = (data["risk_band"], data.get("segment") or NO_SEGMENT)
    return held


def summarise_run(previous: Mapping[str, tuple[str, str]], scores: Sequence[Score]) -> dict[str, object]:
    """The aggregates of one run's scores, with the flows from ``previous`` (stored_bands before the run)."""
    now = {s.source_id: (s.risk_band.value, s.segment or NO_SEGMENT) for s in scores}
    histogram = [0] * HISTOGRAM_BINS
    for score in scores:
        histogram[min(int(score.churn_probability * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    band_flows: Counter[tuple[str, str]] = Counter()
    segment_flows: Counter[tuple[str, str]] = Counter()
    for customer in now.keys() | previous.keys():
        before, after = previous.get(customer, (NOT_SCORED, NOT_SCORED)), now.get(customer, (NOT_SCORED, NOT_SCORED))
        band_flows[(before[0], after[0])] += 1
        segment_flows[(before[1], after[1])] += 1
    return {
        "bands": dict(Counter(band for band, _ in now.values())),
        "segments": dict(Counter(segment for _, segment in now.values())),
        "probability_histogram": histogram,
        "band_flows": _as_rows(band_flows),
        "segment_flows": _as_rows(segment_flows),
    }


def record_run(conn: Connection, run_id: int, scored_at: datetime, customers: int, summary: Mapping[str, object]) -> None:
    conn.execute(insert(score_runs).values(run_id=run_id, scored_at=scored_at, customers=customers,
                                           summary=json.dumps(summary, sort_keys=True)))


def recent_score_runs(store: Store, limit: int = 12) -> list[ScoreRunSummary]:
    """The last ``limit`` scoring runs, oldest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(score_runs).order_by(score_runs.c.run_id.desc()).limit(limit)).all()
    found = []
    for row in reversed(rows):
        summary = json.loads(row.summary)
        found.append(ScoreRunSummary(
            run_id=row.run_id, scored_at=row.scored_at, customers=row.customers, bands=summary["bands"],
            segments=summary["segments"], probability_histogram=summary["probability_histogram"],
            band_flows=_from_rows(summary["band_flows"]), segment_flows=_from_rows(summary["segment_flows"]),
        ))
    return found


def _as_rows(flows: Counter[tuple[str, str]]) -> list[list[object]]:
    # JSON has no tuple keys: [before, after, customers], largest first.
    return [[before, after, count] for (before, after), count in flows.most_common()]


def _from_rows(rows: Iterable[list[object]]) -> dict[tuple[str, str], int]:
    return {(str(before), str(after)): int(count) for before, after, count in rows}  # type: ignore[call-overload]
