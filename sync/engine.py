"""The engine: runs sources into the store. Today that is one-shot imports; scheduled sync builds on it.

The engine, not the source, owns state: every page of a run is written inside one transaction together with
its quarantine entries, its cursor and its run-history row, so a run commits whole or leaves the store as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from connectors.base import Rejected, Source
from sync.store import RunCounts, Store

SHOWN_REJECTS = 5  # how many quarantined rows a summary quotes; the rest are in `retention quarantine`


@dataclass
class RunResult:
    run_id: int
    source: str
    counts: RunCounts
    first_rejects: list[Rejected] = field(default_factory=list)


def run_source_once(store: Store, source: Source, command: str, detail: str) -> RunResult:
    """Read every stream of ``source`` and commit it all in one transaction, or nothing if anything fails."""
    started_at = datetime.now(timezone.utc)
    counts = RunCounts()
    first_rejects: list[Rejected] = []
    streams = [(stream, store.cursor(source.name, stream.name)) for stream in source.streams()]
    with store.transaction() as conn:
        run_id = store.begin_run(conn, command, detail, started_at)
        for stream, saved_cursor in streams:
            kind_counts = counts[stream.record_kind]
            for page in stream.read(saved_cursor):
                store.upsert_records(conn, page.records, counts)
                quarantined = store.quarantine_rejects(conn, source.name, stream.record_kind, page.rejected, run_id)
                kind_counts.read += quarantined
                kind_counts.quarantined += quarantined
                first_rejects.extend(page.rejected[: SHOWN_REJECTS - len(first_rejects)])
                if page.cursor_after is not None:
                    store.save_cursor(conn, source.name, stream.name, page.cursor_after)
        store.finish_run(conn, run_id, "succeeded", counts)
    return RunResult(run_id=run_id, source=source.name, counts=counts, first_rejects=first_rejects)
