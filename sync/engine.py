"""The engine: reads sources into the store and writes desired values to destinations, ledger first.

The engine, not the source, owns state: a page is written in one transaction together with its quarantine
entries and the cursor it carries; an import commits whole or leaves the store as it was; a sync's read commits
page by page, so the cursor never passes what is stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Connection

from connectors.base import Change, Desired, Destination, Held, RateLimited, Receipt, Rejected, Source
from sync.crash_points import crash_point
from sync.store import COMPLETE_WRITE, LedgerRow, RunCounts, Store

SHOWN_REJECTS = 5  # how many quarantined rows a summary quotes; the rest are in `retention quarantine`


@dataclass
class RunResult:
    run_id: int
    source: str
    counts: RunCounts
    first_rejects: list[Rejected] = field(default_factory=list)


def run_source_once(store: Store, source: Source, command: str, detail: str, *, full: bool = False,
                    atomic: bool = True) -> RunResult:
    """Read every stream of ``source`` into the store.

    ``atomic`` (an import of a file): all in one transaction, or nothing if anything fails. Otherwise (a sync's
    long remote read) each page commits on its own, with the cursor it carries, so other tools read beside this
    one without waiting for its lock, and a crash keeps what was read: the cursor still never passes what is
    stored, and the next run reads again from it (upserts make the re-read harmless).
    ``full`` reads everything again instead of resuming from the saved cursors (which the run then replaces)."""
    started_at = datetime.now(timezone.utc)
    counts = RunCounts()
    first_rejects: list[Rejected] = []
    streams = [(stream, None if full else store.cursor(source.name, stream.name)) for stream in source.streams()]

    def read_streams(run_id: int, page_transaction: Callable[[], AbstractContextManager[Connection]]) -> None:
        for stream, saved_cursor in streams:
            kind_counts = counts[stream.record_kind]
            for page in stream.read(saved_cursor):
                with page_transaction() as conn:
                    store.upsert_records(conn, page.records, counts)
                    if page.deleted:
                        store.mark_deleted(conn, stream.record_kind, source.name, page.deleted)
                    quarantined = store.quarantine_rejects(conn, source.name, stream.record_kind, page.rejected, run_id)
                    if page.cursor_after is not None:
                        store.save_cursor(conn, source.name, stream.name, page.cursor_after)
                if page.cursor_after is not None:
                    crash_point("after-cursor")
                kind_counts.read += quarantined
                kind_counts.quarantined += quarantined
                first_rejects.extend(page.rejected[: SHOWN_REJECTS - len(first_rejects)])

    if atomic:
        with store.transaction() as conn:
            run_id = store.begin_run(conn, command, detail, started_at)
            read_streams(run_id, lambda: nullcontext(conn))
            store.finish_run(conn, run_id, "succeeded", counts)
    else:
        with store.transaction() as conn:
            run_id = store.begin_run(conn, command, detail, started_at)
        try:
            read_streams(run_id, store.transaction)
        except BaseException as exc:
            with store.transaction() as conn:
                store.finish_run(conn, run_id, _ended(exc), counts)
            raise
        with store.transaction() as conn:
            store.finish_run(conn, run_id, "succeeded", counts)
    return RunResult(run_id=run_id, source=source.name, counts=counts, first_rejects=first_rejects)


def _ended(exc: BaseException) -> str:
    """A run's status in the history when ``exc`` stopped it: "deferred" when the tool asked us to come back later
    than we wait within a run (its Retry-After is past the cap, or a daily limit), else "failed"."""
    return "deferred" if isinstance(exc, RateLimited) else "failed"


# --- the write path ---------------------------------------------------------------------------------------------


@dataclass
class PushResult:
    run_id: int
    target: str
    sent: int = 0  # field writes the target acknowledged
    unchanged: int = 0  # desired value equals the last confirmed one: nothing sent
    held_back: int = 0  # refused before with this very value: not re-sent until it changes
    reconciled: int = 0  # intents left by an interrupted run, found applied when read back
    rejected: list[Receipt] = field(default_factory=list)
    confirmed_live: list[Change] = field(default_factory=list)  # ``live`` fields the target acknowledged


def push_changes(
    store: Store, destination: Destination, desired: Desired, *, command: str = "push",
    companions: frozenset[str] = frozenset(), live: frozenset[str] = frozenset(),
) -> PushResult:
    """Write ``desired`` (object id → field → value, or such pairs streamed) to ``destination``, sending only what
    changed.

    Ledger first: the intent of each batch is committed before the call and confirmed (or marked refused) after
    the response, so a crash anywhere leaves at most one batch in doubt. Doubtful intents from an interrupted run
    are settled first by reading the target back: found applied, they are confirmed and not sent again.
    ``live`` fields were just read from the target and differ there: they are sent whatever the ledger remembers.
    """
    target = destination.name
    started_at = datetime.now(timezone.utc)
    with store.transaction() as conn:
        # Until this run completes, the target's last complete write is not the state it is in: see sync.pipeline.
        store.drop_cursor(conn, COMPLETE_WRITE, target)
        run_id = store.begin_run(conn, command, target, started_at)
    result = PushResult(run_id=run_id, target=target)
    try:
        _settle_interrupted(store, destination, result)
        step = max(1, destination.objects_per_apply)
        waiting: dict[str, list[Change]] = {}  # object id → its changes, in the order found, not sent yet
        for chunk, known in _with_ledger(store, destination, desired):
            for change in _diff(destination, chunk, known, result, companions, live):
                waiting.setdefault(change.object_id, []).append(change)
            while len(waiting) >= step:  # full batches only: a chunk's end must not cost a part-filled call
                _apply_batch(store, destination, _take(waiting, step), run_id, result, live)
        while waiting:
            _apply_batch(store, destination, _take(waiting, step), run_id, result, live)
    except BaseException as exc:
        with store.transaction() as conn:
            store.finish_run(conn, run_id, _ended(exc), RunCounts())
        raise
    # The run history counts field values per write run, so the report's sync health can show what each one sent.
    counts = RunCounts()
    values = counts["value"]
    values.written, values.unchanged, values.quarantined = result.sent, result.unchanged + result.held_back, len(result.rejected)
    values.read = values.written + values.unchanged + values.quarantined
    with store.transaction() as conn:
        store.finish_run(conn, run_id, "succeeded", counts)
    return result


def _settle_interrupted(store: Store, destination: Destination, result: PushResult) -> None:
    doubtful = store.ledger_rows(destination.name, pending=True)
    if not doubtful:
        return
    object_ids = sorted({object_id for object_id, _ in doubtful})
    field_names = sorted({field_name for _, field_name in doubtful})
    current = destination.current(object_ids, field_names)
    with store.transaction() as conn:
        for (object_id, field_name), row in doubtful.items():
            if object_id in current and current[object_id].get(field_name) == row.pending_value:
                store.confirm_write(conn, target=destination.name, object_id=object_id, field_name=field_name)
                result.reconciled += 1
            else:
                store.drop_intent(conn, destination.name, object_id, field_name)


LEDGER_OBJECTS = 5_000  # objects whose ledger rows are in memory at once during a write run


@dataclass
class Known:
    """What the diff compares one part of the desired values with."""

    ledger: dict[tuple[str, str], LedgerRow]  # as far as the target agrees with it (``_as_held``)
    strays: dict[tuple[str, str], str]  # a value in a field of ours that the ledger has no record of writing


def _with_ledger(store: Store, destination: Destination, desired: Desired
                 ) -> Iterator[tuple[dict[str, Mapping[str, str | None]], Known]]:
    """``desired`` a few thousand objects at a time, each part with what its objects' ledger rows and the target's
    held values make known. A target's ``desired`` streams its objects, so neither its values nor its ledger are
    ever in memory whole."""
    pairs = iter(desired.items() if isinstance(desired, Mapping) else desired)
    while True:
        part: dict[str, Mapping[str, str | None]] = {}
        held: dict[str, Held] = {}
        for object_id, fields in itertools.islice(pairs, LEDGER_OBJECTS):
            part[object_id] = fields
            # Asked as each object comes: a target shown its people a part at a time knows only the current part's.
            held.update(destination.held([object_id]))
        if not part:
            return
        ledger = store.ledger_rows(destination.name, list(part))
        strays = {(object_id, field_name): value for object_id, h in held.items() for field_name, value in h.values.items()
                  if value is not None and field_name in destination.owned and (object_id, field_name) not in ledger}
        yield part, Known(_as_held(store, destination, held, ledger), strays)


def _as_held(store: Store, destination: Destination, held_by_object: Mapping[str, Held],
             ledger: dict[tuple[str, str], LedgerRow]) -> dict[tuple[str, str], LedgerRow]:
    """``ledger``, with each confirmed value the target was read holding otherwise since replaced by what it holds.

    The ledger remembers what we wrote; the target may hold something else since: a store restored from an older
    copy remembers values that the lost commits overwrote, and a user may type over our fields. The diff must
    compare with what the target holds, or it keeps it. Only a read after the confirmation counts: a sync reads
    before it writes, so a contact not read again since our write (a tool may leave an object's modified time alone
    for some changes, as Mailchimp does for tags set in bulk) still shows the value we replaced, and taking that for
    the truth would send the same write on every run."""
    differing: dict[tuple[str, str], str | None] = {}  # (object id, field) → what the target was read holding
    reads: dict[tuple[str, str], tuple[str, str]] = {}
    for object_id, held in held_by_object.items():
        for field_name, value in held.values.items():
            row = ledger.get((object_id, field_name))
            if row is not None and row.confirmed and value != row.confirmed_value:
                differing[(object_id, field_name)], reads[(object_id, field_name)] = value, held.record
    for key in store.read_after_confirmed(destination.name, reads) if reads else ():
        ledger[key] = ledger[key]._replace(confirmed_value=differing[key])
    return ledger


def _take(waiting: dict[str, list[Change]], objects: int) -> list[Change]:
    """The changes of the first ``objects`` objects waiting, removed from ``waiting``."""
    batch = []
    for object_id in list(itertools.islice(waiting, objects)):
        batch.extend(waiting.pop(object_id))
    return batch


def plan_changes(store: Store, destination: Destination, desired: Desired,
                 companions: frozenset[str] = frozenset(), live: frozenset[str] = frozenset()) -> tuple[list[Change], PushResult]:
    """What ``push_changes`` would send, without sending or storing anything (``retention sync --dry-run``).

    Intents an interrupted run left in doubt count as not confirmed here: the real run reads them back first."""
    result = PushResult(run_id=0, target=destination.name)
    changes = [change for chunk, known in _with_ledger(store, destination, desired)
               for change in _diff(destination, chunk, known, result, companions, live)]
    return changes, result


def _diff(destination: Destination, desired: Mapping[str, Mapping[str, str | None]], known: Known,
          result: PushResult, companions: frozenset[str] = frozenset(), live: frozenset[str] = frozenset()) -> list[Change]:
    ledger = known.ledger
    changes = []
    for object_id, fields in desired.items():
        if _refused_for_good(ledger, object_id):
            result.held_back += len(fields)
            continue
        wanted_changes = []
        for field_name, wanted in fields.items():
            value = destination.coerce(field_name, wanted)
            row = ledger.get((object_id, field_name))
            if value is None and row is None:
                stray = known.strays.get((object_id, field_name))
                if stray is not None:  # ours, though the ledger never saw it written: cleared like any value of ours
                    wanted_changes.append(Change(object_id, field_name, None, previous=stray))
                continue  # else nothing of ours to clear: what the target holds there may be the owner's
            if row is not None and row.confirmed and row.confirmed_value == value and field_name not in live:
                result.unchanged += 1
            elif row is not None and row.rejected_reason is not None and row.rejected_value == value:
                result.held_back += 1
            else:
                previous = row.confirmed_value if row is not None and row.confirmed else None
                wanted_changes.append(Change(object_id, field_name, value, previous=previous))
        if all(change.field_name in companions | live for change in wanted_changes):
            # Only a stamp moved (the values it stamps are the same), beside any contact field that must go.
            stamps = [change for change in wanted_changes if change.field_name not in live]
            result.unchanged += len(stamps)
            wanted_changes = [change for change in wanted_changes if change.field_name in live]
        changes.extend(wanted_changes)
    return changes


WHOLE_OBJECT = "*"  # the ledger field that marks an object the target refuses for good, whatever the value


def _refused_for_good(ledger: Mapping[tuple[str, str], LedgerRow], object_id: str) -> bool:
    row = ledger.get((object_id, WHOLE_OBJECT))
    return row is not None and row.rejected_reason is not None


def _apply_batch(store: Store, destination: Destination, batch: list[Change], run_id: int, result: PushResult,
                 live: frozenset[str] = frozenset()) -> None:
    target = destination.name
    with store.transaction() as conn:
        store.record_intents(conn, target, [(c.object_id, c.field_name, c.value) for c in batch], run_id)
    receipts = destination.apply(batch)
    crash_point("after-remote-2xx")
    with store.transaction() as conn:
        confirmed = [(r.change.object_id, r.change.field_name) for r in receipts if r.ok]
        store.confirm_writes(conn, target, confirmed)
        result.sent += len(confirmed)
        result.confirmed_live.extend(r.change for r in receipts if r.ok and r.change.field_name in live)
        refused = []
        refused_for_good: set[str] = set()
        for receipt in receipts:
            change = receipt.change
            if not receipt.ok:
                reason = receipt.reason or "refused without a reason"
                store.reject_write(conn, target, change.object_id, change.field_name, reason)
                result.rejected.append(receipt)
                if receipt.permanent:
                    if change.object_id in refused_for_good:
                        continue  # one quarantine entry per object, not one per field
                    refused_for_good.add(change.object_id)
                    store.record_intents(conn, target, [(change.object_id, WHOLE_OBJECT, None)], run_id)
                    store.reject_write(conn, target, change.object_id, WHOLE_OBJECT, reason)
                    refused.append(Rejected(record_ref=f"{target} object {change.object_id}", reason=reason,
                                            raw={"object_id": change.object_id}))
                    continue
                refused.append(
                    Rejected(
                        record_ref=f"{target} object {change.object_id} field {change.field_name}",
                        reason=reason,
                        raw={"object_id": change.object_id, "field": change.field_name, "value": change.value},
                    )
                )
        store.quarantine_rejects(conn, target, "write", refused, run_id)


def mark_for_retry(store: Store, quarantine_id: int) -> str:
    """Let the next sync send again the writes a target refused for one object (the dashboard's retry action).

    Nothing is sent here: the object's refusals are cleared from the ledger, so the next push's diff finds its
    values unsent and sends them through the usual ledger-first path, and its quarantine entries go (a second
    refusal brings them back). The whole object, not the one field: a vendor refuses an object's input whole
    (HubSpot quarantines each of its fields with the one reason), so retrying a single field would leave the
    others held back. Returns what was marked, in words."""
    target, object_id = store.clear_refusals(quarantine_id)
    return f"{target} object {object_id}: marked for retry on the next sync"
