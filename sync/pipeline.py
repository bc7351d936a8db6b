"""One sync run: read every enabled tool into the store, score everyone, write back only what changed.

Vendor-neutral: each connector registers how it connects (connectors.base.register_connector); this module only
runs the steps in order. Reads commit per source with their cursors (sync.engine.run_source_once); writes go
through the ledger-first path (sync.engine.push_changes). A tool that fails is reported and the others go on; the
run as a whole then ends non-zero, and the next run resumes each tool from its last committed cursor.

Scoring is sync.scoring_stage's: here for a small store, in a process of its own for a large one.

A dry run does all of this against a scratch copy of the store, and plans the writes instead of sending them, so
neither the tools nor the real store change.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import itertools
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import pandas as pd
from sqlalchemy.engine import make_url

from connectors.base import (
    CONNECTOR_MODULES,
    Change,
    ConfigError,
    Connection,
    Endpoint,
    RetentionError,
    ScoreView,
    Target,
    registered_connectors,
)
from connectors.records import normalise_email
from scoring import MODEL_VERSION
from sync.crash_points import crash_point
from sync.engine import plan_changes, push_changes, run_source_once
from sync.linking import remember_agreed
from sync.scoring_stage import score_for_sync
from sync.settings import Settings
from sync.store import COMPLETE_WRITE, RunCounts, Store
from sync.views import Agreement, People, views

log = logging.getLogger(__name__)
SAMPLE_CHANGES = 5  # changes a dry run shows per target
T = TypeVar("T")


@dataclass
class SourceOutcome:
    name: str
    counts: RunCounts | None = None
    error: RetentionError | None = None
    seconds: float = 0.0


@dataclass
class TargetOutcome:
    name: str
    sent: int = 0  # field writes sent (planned, in a dry run) and acknowledged
    objects: int = 0  # objects the planned writes touch (dry run)
    unchanged: int = 0
    held_back: int = 0  # refused before with the same value: not re-sent until it changes
    reconciled: int = 0
    rejected: int = 0
    calls: int | None = None  # write requests, where the destination counts them
    sample: list[Change] = field(default_factory=list)
    error: RetentionError | None = None
    seconds: float = 0.0


@dataclass
class SyncReport:
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    sources: list[SourceOutcome] = field(default_factory=list)
    targets: list[TargetOutcome] = field(default_factory=list)
    scoring: str = ""  # one line saying what scoring did
    scoring_seconds: float = 0.0
    linking: str = ""  # one line saying what keeping contact fields the same across tools found
    compared: str = ""  # one line saying whose values were compared, when not everyone's
    scored: int = 0
    riskiest: pd.DataFrame | None = None  # the customers most at risk, with reasons and value
    scoring_peak_mb: float | None = None  # the scoring process's peak RSS, where it ran in one of its own

    @property
    def errors(self) -> list[RetentionError]:
        return [o.error for o in [*self.sources, *self.targets] if o.error is not None]


def connect_enabled(settings: Settings, only: Sequence[str] | None = None,
                    endpoints: Mapping[str, Endpoint] | None = None) -> tuple[list[Connection], list[SourceOutcome]]:
    """The enabled connectors (or those in ``only``), connected; a connector that cannot connect is an outcome."""
    names = [name for name in CONNECTOR_MODULES if getattr(settings, name).enabled]
    if only:
        unknown = [name for name in only if name not in CONNECTOR_MODULES]
        if unknown:
            raise ConfigError(f"--only: unknown tool {unknown[0]!r}; choose from {', '.join(CONNECTOR_MODULES)}")
        disabled = [name for name in only if name not in names]
        if disabled:
            raise ConfigError(f"--only: {disabled[0]} is not enabled; set {disabled[0]}.enabled = true in settings.toml")
        names = [name for name in names if name in only]
    if not names:
        raise ConfigError("no tool is enabled: set enabled = true in the hubspot, mailchimp or a survey tool's section "
                          "of settings.toml (or try `retention demo`)")
    connections, failed = [], []
    for name in names:
        importlib.import_module(CONNECTOR_MODULES[name])
        try:
            connections.append(registered_connectors()[name](settings, (endpoints or {}).get(name)))
        except RetentionError as exc:
            failed.append(SourceOutcome(name, error=exc))
    return connections, failed


def run_sync(settings: Settings, store: Store, *, dry_run: bool = False, full: bool = False, only: Sequence[str] | None = None,
             endpoints: Mapping[str, Endpoint] | None = None, step: Callable[[str], None] | None = None) -> SyncReport:
    """Read, score and write back once. ``step`` is told what is starting (the CLI shows it as progress)."""
    _glibc.tune()
    report = SyncReport(dry_run=dry_run, started_at=datetime.now(timezone.utc))
    connections, report.sources = connect_enabled(settings, only, endpoints)
    say = step or (lambda _: None)
    try:
        if dry_run and store.is_sqlite:
            with scratch_copy(store, settings) as scratch:
                _run_steps(settings, scratch, connections, report, dry_run=True, full=full, say=say)
        elif dry_run:  # a PostgreSQL store cannot be copied aside cheaply: plan from what it holds, read nothing
            _run_steps(settings, store, connections, report, dry_run=True, full=full, say=say, read=False)
        else:
            _run_steps(settings, store, connections, report, dry_run=False, full=full, say=say)
    finally:
        for connection in connections:
            connection.close()
    report.finished_at = datetime.now(timezone.utc)
    return report


class _Glibc:
    """glibc's allocator, for a run of stages that each build and drop a few hundred MB (reading, scoring,
    writing). glibc gives each thread an arena of its own and keeps what a thread freed there; and it keeps the
    free pages inside its heaps until told. Nothing is done off Linux, on another C library, or (for the arenas)
    where the user set MALLOC_ARENA_MAX."""

    M_ARENA_MAX = -8  # glibc's malloc.h

    def __init__(self) -> None:
        self.libc = None
        if sys.platform != "linux":
            return
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.malloc_trim  # noqa: B018 - musl has no malloc_trim: treat it as "not glibc"
        except (OSError, AttributeError):
            self.libc = None

    def tune(self) -> None:
        """At most two arenas, as MALLOC_ARENA_MAX=2 would set: with the tools read and written side by side,
        the threads' own arenas kept ~200 MB more at the peak for 20,000 customers (715 MB against 517)."""
        if self.libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
            self.libc.mallopt(self.M_ARENA_MAX, 2)

    def give_back(self) -> None:
        """Return the free pages of every arena to the system between stages (malloc_trim(0))."""
        if self.libc is not None:
            self.libc.malloc_trim(0)


_glibc = _Glibc()


def _release_read_memory(store: Store) -> None:
    """What reading kept that the stages after it do not use: the emails checked while reading (a cache of 65,536,
    12 MB full; scoring and writing rebuild records from the store, whose emails are checked already) and the page
    caches of the reading threads' connections."""
    normalise_email.cache_clear()
    store.release_connections()
    _glibc.give_back()


def _run_steps(settings: Settings, store: Store, connections: list[Connection], report: SyncReport, *, dry_run: bool,
               full: bool, say: Callable[[str], None], read: bool = True) -> None:
    failed_tools = {outcome.name for outcome in report.sources}
    reading = [c for c in connections if c.source is not None and read]
    if reading:
        say(f"reading {', '.join(c.name for c in reading)}")
    # Each tool has its own limits, so the tools are read side by side: the run takes as long as the slowest tool,
    # not the sum of them. Pages commit one by one, so no tool waits for another's lock.
    for outcome in in_parallel({c.name: (lambda c=c: _read_source(store, c, full)) for c in reading}).values():
        report.sources.append(outcome)
        if outcome.error is not None:
            failed_tools.add(outcome.name)
    _release_read_memory(store)
    say("scoring")
    started = time.monotonic()
    scored = score_for_sync(settings, store, report, keep=not dry_run)
    report.scoring_seconds = time.monotonic() - started
    store.release_connections()
    _glibc.give_back()
    crash_point("after-score")
    writing = [c for c in connections if c.name not in failed_tools and c.targets]
    # A failed tool is not written: what we know of it is stale, and its credential or service just failed.
    comparing_from = datetime.now(timezone.utc)  # the store holds everything this run writes from, as of now
    people = None if full else _changed_people(settings, store, writing, len(scored.customers), report)
    agreement = Agreement(settings, store, writing, dry_run)
    if not scored.customers and not agreement.tools:
        return  # nothing scored (too few customers) and no contact field to keep the same: nothing to write
    everyone = People(store, writing, scored, people)
    last_nps = scored.last_nps
    del scored  # each part's scores are read back from the store: not all held through the writes
    if writing:
        say(f"writing {', '.join(t.destination.name for c in writing for t in c.targets)}")
    # Tools are written side by side too; one tool's targets (a Mailchimp account's audiences) one after another,
    # as they share that tool's connection limit. Each target's one write run takes its values a part of the
    # people at a time (sync.views), so no run holds every contact, linked value and score at once.
    by_tool = in_parallel({c.name: (lambda c=c: [_write_target(store, target, views(everyone, agreement, c.name, last_nps), dry_run)
                                                 for target in c.targets]) for c in writing})
    report.linking = agreement.summary()
    written: dict[tuple[str, str], str] = {}  # (person, contact field) → value a tool confirmed holding now
    for outcomes in by_tool.values():
        for outcome, confirmed in outcomes:
            report.targets.append(outcome)
            written.update(confirmed)
    if written:
        # The tool that lost now holds the winner's value: from here on, that is the value both had agreed on.
        remember_agreed(store, written)
    if not dry_run:
        complete = [t for t in report.targets if t.error is None]
        mark = json.dumps({"from": comparing_from.isoformat(), "settings": _settings_digest(settings)})
        with store.transaction() as conn:
            for outcome in complete:
                store.save_cursor(conn, COMPLETE_WRITE, outcome.name, mark)


# --- comparing only what changed -----------------------------------------------------------------------------------
#
# Every run compares each person's desired values with the ledger: at 100,000 people, ~1.3 million values, which
# is most of a run where 1% of them changed. Desired values are a function of the store's records (contacts of every
# tool, scores, survey answers, orders), the settings and this code; the ledger moves only by write runs. So when
# every target's last write run completed, and began from the store as it was at some moment, only the people a
# record changed for since that moment can want anything new. Everyone else's values stand as that run left them.
# A new day rescores everyone (scored_at moves), so a full comparison runs at least daily regardless.


def _changed_people(settings: Settings, store: Store, writing: list[Connection], scored: int,
                    report: SyncReport) -> set[str] | None:
    """The people (normalised emails and customer keys) whose records changed since every target's last complete
    write run began comparing; None where everyone must be compared."""
    targets = [t.destination.name for c in writing for t in c.targets]
    marks = [store.cursor(COMPLETE_WRITE, name) for name in targets]
    if not targets or None in marks:
        return None
    marks_read = [json.loads(mark) for mark in marks if mark is not None]
    since = min(datetime.fromisoformat(mark["from"]) for mark in marks_read)
    if any(mark["settings"] != _settings_digest(settings) for mark in marks_read) or since > datetime.now(timezone.utc):
        return None  # the settings (or this release) changed what is written, or the clock went back: compare all
    people = store.people_changed_since(since)
    if len(people) * 4 > scored:
        return None  # most people changed (a new day's scores): reading them one set at a time would be slower
    report.compared = (f"only the {len(people):,} {'person' if len(people) == 1 else 'people'} whose records changed since "
                       f"the last complete sync began ({since:%Y-%m-%d %H:%M} UTC) compared; the others' values stand "
                       f"(--full compares everyone)")
    return people


def _settings_digest(settings: Settings) -> str:
    try:
        release = package_metadata.version("retention-sync")
    except package_metadata.PackageNotFoundError:
        release = "unknown"
    return hashlib.sha256("|".join([settings.model_dump_json(warnings=False), MODEL_VERSION, release]).encode()).hexdigest()


def _read_source(store: Store, connection: Connection, full: bool) -> SourceOutcome:
    outcome, started = SourceOutcome(connection.name), time.monotonic()
    try:
        outcome.counts = run_source_once(store, connection.source, "sync", f"read {connection.name}", full=full,
                                         atomic=False).counts
        crash_point("after-read")
    except RetentionError as exc:  # this tool failed; the others go on; it keeps what it read, its cursor where it was
        outcome.error = exc
    outcome.seconds = time.monotonic() - started
    return outcome


def in_parallel(tasks: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Each task in its own thread; their results by name, in the order given. An exception a task raised is
    raised here. Daemon threads: Ctrl-C ends the run at once, which is safe, as a kill is (ledger first)."""
    results: dict[str, T] = {}
    failures: dict[str, BaseException] = {}

    def run(name: str, task: Callable[[], T]) -> None:
        try:
            results[name] = task()
        except BaseException as exc:  # handed to the caller's thread below
            failures[name] = exc

    threads = [threading.Thread(target=run, args=item, name=f"retention-{item[0]}", daemon=True) for item in tasks.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in tasks:
        if name in failures:
            raise failures[name]
    return {name: results[name] for name in tasks}


def _write_target(store: Store, target: Target, views: Iterable[ScoreView],
                  dry_run: bool) -> tuple[TargetOutcome, dict[tuple[str, str], str]]:
    """What was written, and the contact fields the target confirmed holding now: (person, field) → value.
    ``views``: what the target is shown, part by part; it asks for the next part only as it needs it."""
    destination = target.destination
    outcome, written, started = TargetOutcome(destination.name), {}, time.monotonic()
    try:
        desired = itertools.chain.from_iterable(target.desired(view) for view in views)
        live = frozenset(target.contact_fields.values())
        if dry_run:
            changes, result = plan_changes(store, destination, desired, target.companions, live)
            outcome.sent, outcome.objects = len(changes), len({c.object_id for c in changes})
            outcome.sample = changes[:SAMPLE_CHANGES]
        else:
            calls_before = getattr(destination, "write_calls", None)
            result = push_changes(store, destination, desired, command="sync", companions=target.companions, live=live)
            outcome.sent, outcome.reconciled, outcome.rejected = result.sent, result.reconciled, len(result.rejected)
            canonical = {own: name for name, own in target.contact_fields.items()}
            for change in result.confirmed_live:
                person = target.person_of(change.object_id)
                if person is not None and change.value is not None:
                    written[(person, canonical[change.field_name])] = change.value
            if calls_before is not None:
                outcome.calls = getattr(destination, "write_calls") - calls_before
        outcome.unchanged, outcome.held_back = result.unchanged, result.held_back
    except RetentionError as exc:
        outcome.error = exc
    outcome.seconds = time.monotonic() - started
    return outcome, written


# --- the dry run's scratch store --------------------------------------------------------------------------------


class scratch_copy:  # noqa: N801 - used as a context manager, like tempfile's
    """A private copy of a SQLite store that a dry run may change freely; removed afterwards.

    Copied with SQLite's online backup, which is consistent even while another process writes."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.settings = settings
        self.directory: Path | None = None
        self.copy: Store | None = None

    def __enter__(self) -> Store:
        self.directory = Path(tempfile.mkdtemp(prefix="retention-dry-run-"))  # 0700
        target = self.directory / "retention.db"
        with sqlite3.connect(make_url(self.settings.store_url).database or "") as live, sqlite3.connect(target) as copy:
            live.backup(copy)
        self.copy = Store.open(f"sqlite:///{target}")
        return self.copy

    def __exit__(self, *exc: object) -> None:
        if self.copy is not None:
            self.copy.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
