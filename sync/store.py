"""The state store: records, identities, cursors, the write ledger, run history and the quarantine.

SQLAlchemy Core over SQLite by default (one file under the data directory); a PostgreSQL URL works with the
same code. SQLite runs in WAL mode with a busy timeout, foreign keys on, ``BEGIN IMMEDIATE`` for writes and an
integrity check at open; its files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from operator import itemgetter
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError

from connectors.base import InputError, Rejected, StoreError
from connectors.records import RECORD_TYPES, Contact, Record, to_payload
from sync.crash_points import crash_point
from sync.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STATE_TABLES,
    cursors,
    identities,
    ledger,
    quarantine,
    records,
    run_counts,
    runs,
    schema_version,
    sqlite_datetime,
)
from sync.tombstones import forgotten_keys, read_salt, record_keys

if TYPE_CHECKING:
    from sync.lease import Lease

UTC = timezone.utc
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "glusterfs"}


@dataclass
class KindCounts:
    read: int = 0
    written: int = 0
    unchanged: int = 0
    quarantined: int = 0
    forgotten: int = 0  # skipped because the person was erased on request (`retention forget`)


@dataclass
class RunCounts:
    by_kind: dict[str, KindCounts] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> KindCounts:
        return self.by_kind.setdefault(kind, KindCounts())


LEDGER_CHUNK = 5_000  # parameter sets per statement when the ledger takes a whole batch at once


_new_tuple = tuple.__new__


class LedgerRow(NamedTuple):  # one per field written, read on every run: a tuple is the cheapest to build
    """What we know about one field of one object in a target."""

    confirmed: bool  # we wrote confirmed_value and the target acknowledged it
    confirmed_value: str | None
    pending: bool  # an intent was recorded and never confirmed: the call may or may not have landed
    pending_value: str | None
    rejected_value: str | None  # the target refused this value (not re-sent while the desired value is the same)
    rejected_reason: str | None


# Cursor source of each target's last write run that completed: when that sync began comparing, and the settings
# it compared by (see sync.pipeline). Dropped whenever a write run starts, or a refusal is cleared for a retry.
COMPLETE_WRITE = "complete-write"

# SQLite's page cache, per connection. Past ~500k records the default 2 MB thrashes the indexes: an import of a
# million rows runs ~2.5x faster with 64 MiB than with 16. A sync holds a connection per tool read side by side,
# and its writes are rate-limited anyway, so it keeps 16 MiB each.
SYNC_CACHE_MIB, IMPORT_CACHE_MIB = 16, 64


class Store:
    """One open store. Writes happen inside ``transaction()``; everything in it commits or nothing does."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._sqlite_upsert: tuple[str, Any] | None = None
        # SQLite has one writer at a time. A sync's threads (one per tool) take turns here, in the process, rather
        # than in SQLite's busy wait: on a loaded machine a thread that waited out busy_timeout for its own sibling
        # failed as if another process held the store. Other processes still meet busy_timeout and the lease.
        self._one_writer = threading.RLock() if self.is_sqlite else nullcontext()

    # --- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, busy_timeout_s: float = 10.0, password: str | None = None,
             cache_mib: int = SYNC_CACHE_MIB) -> Store:
        """``cache_mib``: SQLite's page cache per connection (a sync's threads each hold one; an import writing a
        million rows wants a larger one, IMPORT_CACHE_MIB)."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed.database or "", busy_timeout_s, cache_mib)
        else:
            if password:
                parsed = parsed.set(password=password)
            engine = create_engine(parsed, pool_pre_ping=True)
        store = cls(engine)
        store._check_integrity()
        store._migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def release_connections(self) -> None:
        """Close the pooled connections, and with them SQLite's page cache in each (up to SYNC_CACHE_MIB): a
        sync's stages (reading, scoring, writing) each open again what they use. A connection in use stays open."""
        self.engine.dispose()

    def _check_integrity(self) -> None:
        """Refuse a damaged store at open. SQLite's quick check (every page and record, not whether each index
        agrees with its table): a full check reads the whole file, ~4 s a 300 MB store, on every run; `retention
        doctor` runs the full one."""
        if not self.is_sqlite:  # an unreachable server is reported by the first transaction, with its own words
            return
        try:
            verdict = self.integrity(quick=True)
        except DatabaseError as exc:
            raise StoreError(f"{self._where()}: not a readable store ({_short(exc)}) — move it aside or restore a backup") from None
        if verdict != "ok":
            raise StoreError(f"{self._where()}: the store is damaged ({verdict}) — restore a backup or move it aside")

    def _migrate(self, target: int = SCHEMA_VERSION) -> None:
        with self.transaction() as conn:
            current = self._version(conn)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._where()}: made by a newer retention-sync (schema {current}, this one knows {SCHEMA_VERSION})"
                    " — upgrade retention-sync"
                )
            for version in range(current + 1, target + 1):
                MIGRATIONS[version](conn)
                conn.execute(insert(schema_version).values(version=version, applied_at=_now()))

    def _version(self, conn: Connection) -> int:
        names = set(conn.dialect.get_table_names(conn))
        if "schema_version" not in names:
            if names:
                raise StoreError(f"{self._where()}: this database holds other tables, not a retention-sync store")
            schema_version.create(conn)
            return 0
        return conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()

    def version(self) -> int:
        with self.engine.connect() as conn:
            return self._version(conn)

    def _where(self) -> str:
        return self.engine.url.database if self.is_sqlite else self.engine.url.render_as_string(hide_password=True)

    # --- transactions and the run lease --------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self._one_writer, self.engine.connect().execution_options(write=True) as conn, conn.begin():
                yield conn
                crash_point("mid-commit")
        except OperationalError as exc:
            raise StoreError(f"{self._where()}: {_explain_operational(exc)}") from None

    def lease(self, name: str, *, ttl_s: float, holder: str | None = None) -> AbstractContextManager[Lease]:
        """Hold the lease ``name`` ("sync") while the block runs, renewed in the background; raises LeaseHeld at
        once when another live process holds it. See sync/lease.py."""
        from sync.lease import hold_lease

        return hold_lease(self, name, ttl_s=ttl_s, holder=holder)

    # --- records -------------------------------------------------------------------------------------------

    def upsert_records(self, conn: Connection, batch: Sequence[Record], counts: RunCounts) -> None:
        """Insert new records, update changed ones, leave identical ones untouched; count each. Records of a
        forgotten person are never written: they are counted as ``forgotten`` and dropped here."""
        latest: dict[tuple[str, str, str], Record] = {}
        for record in batch:
            latest[(record.kind, record.source, record.source_id)] = record
        for key in self._of_forgotten_people(conn, latest):
            del latest[key]
            counts[key[0]].read += 1
            counts[key[0]].forgotten += 1
        if not latest:
            return
        now = _now()
        # SQLite rows go to the driver as they are (see _write_sqlite), so their times are stored strings.
        as_stored = sqlite_datetime if self.is_sqlite else _unchanged
        stored_now = as_stored(now)
        rows = {}
        for key, record in latest.items():
            payload = to_payload(record)
            rows[key] = {
                "kind": key[0], "source": key[1], "source_id": key[2], "match_email": record.match_email,
                "occurred_at": as_stored(_occurred_at(record)), "payload": payload,
                "payload_hash": hashlib.sha256(payload.encode()).hexdigest(),
                "first_seen_at": stored_now, "changed_at": stored_now,
            }
        written = self._write_sqlite(conn, rows) if self.is_sqlite else self._write_postgres(conn, rows)
        for key in latest:
            kind_counts = counts[key[0]]
            kind_counts.read += 1
            if key in written:
                kind_counts.written += 1
            else:
                kind_counts.unchanged += 1
        contacts = [latest[key] for key in written if key[0] == "contact"]
        if contacts:
            self._link_identities(conn, contacts, now)

    def _of_forgotten_people(self, conn: Connection, latest: dict[tuple[str, str, str], Record]) -> list[tuple[str, str, str]]:
        tombstones = forgotten_keys(conn) if latest else set()
        if not tombstones:
            return []
        salt = read_salt(conn)
        return [key for key, record in latest.items() if not tombstones.isdisjoint(record_keys(salt, record))]

    def _upsert_statement(self) -> Any:
        """INSERT, or on a key conflict UPDATE everything but first_seen_at, clearing any tombstone."""
        statement = (sqlite_insert if self.is_sqlite else postgresql_insert)(records)
        return statement.on_conflict_do_update(
            index_elements=[records.c.kind, records.c.source, records.c.source_id],
            set_={name: statement.excluded[name] for name in ("match_email", "occurred_at", "payload", "payload_hash", "changed_at")}
            | {"deleted_at": null()},
            where=(records.c.payload_hash != statement.excluded.payload_hash) | records.c.deleted_at.is_not(None),
        )

    def _write_postgres(self, conn: Connection, rows: dict[tuple[str, str, str], dict[str, Any]]) -> set[tuple[str, str, str]]:
        """One statement resolved through the unique index; the conflict clause skips identical rows and only
        written rows come back. (Looking hashes up first is slow here: the prepared plan for a long IN list
        on a table without statistics yet is a scan.)"""
        returning = self._upsert_statement().returning(records.c.kind, records.c.source, records.c.source_id)
        return {tuple(row) for row in conn.execute(returning, list(rows.values()))}

    def _write_sqlite(self, conn: Connection, rows: dict[tuple[str, str, str], dict[str, Any]]) -> set[tuple[str, str, str]]:
        """Look the stored hashes up (an index range per source), then send only new or changed rows, as one
        executemany straight to the driver with SQL compiled once: SQLAlchemy's per-row parameter handling
        costs more than SQLite's own work, and SQLite's upsert with RETURNING would go row by row."""
        known = self._known_hashes(conn, rows)
        changed = [row for key, row in rows.items() if known.get(key) != row["payload_hash"]]
        if changed:
            if self._sqlite_upsert is None:
                compiled = self._upsert_statement().compile(dialect=self.engine.dialect, column_keys=list(changed[0]))
                self._sqlite_upsert = (str(compiled), itemgetter(*compiled.positiontup))
            sql, as_parameters = self._sqlite_upsert
            conn.exec_driver_sql(sql, list(map(as_parameters, changed)))
        return {(row["kind"], row["source"], row["source_id"]) for row in changed}

    def _known_hashes(self, conn: Connection, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        ids_by_stream: dict[tuple[str, str], list[str]] = {}
        for kind, source, source_id in keys:
            ids_by_stream.setdefault((kind, source), []).append(source_id)
        known: dict[tuple[str, str, str], str] = {}
        for (kind, source), source_ids in ids_by_stream.items():
            for start in range(0, len(source_ids), 1000):
                query = select(records.c.source_id, records.c.payload_hash).where(
                    records.c.kind == kind, records.c.source == source, records.c.source_id.in_(source_ids[start : start + 1000]),
                    records.c.deleted_at.is_(None),  # a tombstoned record that comes back is written, which revives it
                )
                known.update(((kind, source, source_id), payload_hash) for source_id, payload_hash in conn.execute(query))
        return known

    def _link_identities(self, conn: Connection, contacts: list[Contact], now: datetime) -> None:
        ids_by_source: dict[str, list[str]] = {}
        dropped: set[str] = set()  # emails these contacts were linked by, before this change
        for contact in contacts:
            ids_by_source.setdefault(contact.source, []).append(contact.source_id)
        for source, source_ids in ids_by_source.items():  # source = and source_id IN: an index range
            # A survivor's alias links carry the absorbed ids as source_id: drop them with the survivor's own links.
            linked = or_(identities.c.source_id.in_(source_ids), identities.c.alias_of.in_(source_ids))
            dropped.update(conn.execute(select(identities.c.email).where(identities.c.source == source, linked)).scalars())
            conn.execute(delete(identities).where(identities.c.source == source, linked))
        links = []
        for contact in contacts:
            emails = ([contact.email] if contact.email else []) + list(contact.additional_emails)
            seen: set[str] = set()
            for position, address in enumerate(emails):
                if address.normalised in seen:
                    continue
                seen.add(address.normalised)
                links.append(
                    {
                        "email": address.normalised,
                        "source": contact.source,
                        "source_id": contact.source_id,
                        "is_primary": position == 0 and contact.email is not None,
                        "alias_of": None,
                        "first_seen_at": now,
                    }
                )
            for merged_id in contact.merged_ids:
                for address in emails[:1]:
                    links.append(
                        {
                            "email": address.normalised,
                            "source": contact.source,
                            "source_id": merged_id,
                            "is_primary": False,
                            "alias_of": contact.source_id,
                            "first_seen_at": now,
                        }
                    )
        if links:
            conn.execute(insert(identities), links)
        dropped -= {link["email"] for link in links}
        if dropped:
            # The other contacts still carrying an email these ones gave up count as changed: one of them may be the
            # sole holder now (a duplicate resolved), and a sync comparing only what changed must look at them.
            holders = select(identities.c.source, identities.c.source_id).where(identities.c.email.in_(sorted(dropped)))
            for source, source_id in conn.execute(holders).all():
                conn.execute(update(records).where(records.c.kind == "contact", records.c.source == source,
                                                   records.c.source_id == source_id).values(changed_at=now))

    # --- quarantine, runs, cursors, ledger -----------------------------------------------------------------

    def mark_deleted(self, conn: Connection, kind: str, source: str, source_ids: Sequence[str]) -> int:
        """Tombstone records the source archived or deleted: kept (history, ledger) but no longer current."""
        count = 0
        for start in range(0, len(source_ids), 1000):
            count += conn.execute(
                update(records)
                .where(
                    records.c.kind == kind, records.c.source == source,
                    records.c.source_id.in_(source_ids[start : start + 1000]), records.c.deleted_at.is_(None),
                )
                .values(deleted_at=_now())
            ).rowcount
        return count

    def quarantine_rejects(self, conn: Connection, source: str, kind: str, rejects: Iterable[Rejected], run_id: int) -> int:
        now = _now()
        count = 0
        for reject in rejects:
            raw = _json(reject.raw)
            fingerprint = hashlib.sha256(f"{reject.reason}\x00{raw}".encode()).hexdigest()
            existing = conn.execute(
                select(quarantine.c.id).where(
                    quarantine.c.source == source, quarantine.c.kind == kind, quarantine.c.fingerprint == fingerprint
                )
            ).scalar()
            if existing is None:
                conn.execute(
                    insert(quarantine).values(
                        source=source, kind=kind, record_ref=reject.record_ref, fingerprint=fingerprint,
                        reason=reject.reason, raw=raw, first_seen_at=now, last_seen_at=now, last_run_id=run_id,
                    )
                )
            else:
                conn.execute(
                    update(quarantine)
                    .where(quarantine.c.id == existing)
                    .values(record_ref=reject.record_ref, last_seen_at=now, last_run_id=run_id)
                )
            count += 1
        return count

    def begin_run(self, conn: Connection, command: str, detail: str, started_at: datetime) -> int:
        return conn.execute(
            insert(runs).values(command=command, detail=detail, started_at=started_at, status="running")
        ).inserted_primary_key[0]

    def finish_run(self, conn: Connection, run_id: int, status: str, counts: RunCounts) -> None:
        conn.execute(update(runs).where(runs.c.id == run_id).values(status=status, ended_at=_now()))
        if counts.by_kind:
            conn.execute(
                insert(run_counts),
                [{"run_id": run_id, "kind": kind, **vars(c)} for kind, c in sorted(counts.by_kind.items())],
            )

    def cursor(self, source: str, stream: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(cursors.c.value).where(cursors.c.source == source, cursors.c.stream == stream)
            ).scalar()

    def kinds_fingerprint(self, kinds: Sequence[str]) -> str:
        """A digest that moves whenever a record of ``kinds`` is added, changed, deleted or erased: per kind, its
        count, latest change and tombstones, each an index lookup, so a run can tell cheaply whether anything it
        derives from them can have changed (one aggregate scan took 1.5 s at 100,000 customers)."""
        def of_kind(kind: str) -> Any:
            where = records.c.kind == kind
            return select(
                select(func.count()).where(where).scalar_subquery(),
                select(func.max(records.c.changed_at)).where(where).scalar_subquery(),
                select(func.max(records.c.deleted_at)).where(where).scalar_subquery(),
                select(func.count()).where(where, records.c.deleted_at.is_not(None)).scalar_subquery(),
            )
        with self.engine.connect() as conn:
            rows = [(kind, *conn.execute(of_kind(kind)).one()) for kind in sorted(kinds)]
        return hashlib.sha256(repr([tuple(str(value) for value in row) for row in rows]).encode()).hexdigest()

    def count_records(self, kinds: Sequence[str]) -> int:
        """How many records of ``kinds`` the store holds, deleted ones included (an index count per kind)."""
        with self.engine.connect() as conn:
            return sum(conn.execute(select(func.count()).where(records.c.kind == kind)).scalar_one() for kind in kinds)

    def drop_cursor(self, conn: Connection, source: str, stream: str) -> None:
        conn.execute(delete(cursors).where(cursors.c.source == source, cursors.c.stream == stream))

    def save_cursor(self, conn: Connection, source: str, stream: str, value: str) -> None:
        updated = conn.execute(
            update(cursors).where(cursors.c.source == source, cursors.c.stream == stream).values(value=value, updated_at=_now())
        )
        if updated.rowcount == 0:
            conn.execute(insert(cursors).values(source=source, stream=stream, value=value, updated_at=_now()))

    def record_intent(self, conn: Connection, target: str, object_id: str, field_name: str, value: str | None, run_id: int) -> None:
        key = and_(ledger.c.target == target, ledger.c.object_id == object_id, ledger.c.field == field_name)
        if conn.execute(update(ledger).where(key).values(pending_value=value, pending_run_id=run_id)).rowcount == 0:
            conn.execute(
                insert(ledger).values(target=target, object_id=object_id, field=field_name, pending_value=value, pending_run_id=run_id)
            )

    def record_intents(self, conn: Connection, target: str, changes: Sequence[tuple[str, str, str | None]], run_id: int) -> None:
        """``record_intent`` for a whole batch of (object id, field, value) in one statement: the write path's
        ledger cost must stay small beside the vendor call it guards."""
        if not changes:
            return
        statement = (sqlite_insert if self.is_sqlite else postgresql_insert)(ledger)
        statement = statement.on_conflict_do_update(
            index_elements=[ledger.c.target, ledger.c.object_id, ledger.c.field],
            set_={"pending_value": statement.excluded.pending_value, "pending_run_id": statement.excluded.pending_run_id},
        )
        for start in range(0, len(changes), LEDGER_CHUNK):  # chunked: a first sync's batch is 200k parameter sets
            conn.execute(
                statement,
                [{"target": target, "object_id": o, "field": f, "pending_value": v, "pending_run_id": run_id}
                 for o, f, v in changes[start : start + LEDGER_CHUNK]],
            )

    def confirm_writes(self, conn: Connection, target: str, keys: Sequence[tuple[str, str]]) -> None:
        """``confirm_write`` for a batch of (object id, field)."""
        if not keys:
            return
        key = and_(ledger.c.target == target, ledger.c.object_id == bindparam("b_object_id"), ledger.c.field == bindparam("b_field"))
        statement = update(ledger).where(key).values(
            confirmed_value=ledger.c.pending_value, confirmed_at=_now(), pending_value=None, pending_run_id=None,
            rejected_value=None, rejected_reason=None,
        )
        for start in range(0, len(keys), LEDGER_CHUNK):
            conn.execute(statement, [{"b_object_id": o, "b_field": f} for o, f in keys[start : start + LEDGER_CHUNK]])

    def confirm_write(self, conn: Connection, target: str, object_id: str, field_name: str) -> None:
        key = and_(ledger.c.target == target, ledger.c.object_id == object_id, ledger.c.field == field_name)
        conn.execute(
            update(ledger)
            .where(key)
            .values(
                confirmed_value=ledger.c.pending_value, confirmed_at=_now(), pending_value=None, pending_run_id=None,
                rejected_value=None, rejected_reason=None,
            )
        )

    def reject_write(self, conn: Connection, target: str, object_id: str, field_name: str, reason: str) -> None:
        """The target refused the pending value: remember it (not re-sent until the input changes) and why."""
        key = and_(ledger.c.target == target, ledger.c.object_id == object_id, ledger.c.field == field_name)
        conn.execute(
            update(ledger)
            .where(key)
            .values(rejected_value=ledger.c.pending_value, rejected_reason=reason, pending_value=None, pending_run_id=None)
        )

    def drop_intent(self, conn: Connection, target: str, object_id: str, field_name: str) -> None:
        """A pending write turned out not to have reached the target: forget it; the diff sends it again."""
        key = and_(ledger.c.target == target, ledger.c.object_id == object_id, ledger.c.field == field_name)
        conn.execute(update(ledger).where(key).values(pending_value=None, pending_run_id=None))

    def clear_refusals(self, quarantine_id: int) -> tuple[str, str]:
        """Forget a target's refusals of the object a write quarantine entry names, and every quarantine entry of
        that object (the dashboard's retry: the next push finds its values unsent). Returns (target, object id)."""
        with self.transaction() as conn:
            entry = conn.execute(select(quarantine).where(quarantine.c.id == quarantine_id)).first()
            if entry is None:
                raise InputError(f"quarantine entry #{quarantine_id} does not exist (any more)")
            if entry.kind != "write":
                raise InputError(f"quarantine entry #{quarantine_id} is a record refused on reading: fix it in "
                                 f"{entry.source} or its file; the next import or sync reads it again")
            object_id = str(json.loads(entry.raw)["object_id"])
            conn.execute(update(ledger).where(ledger.c.target == entry.source, ledger.c.object_id == object_id,
                                              ledger.c.rejected_reason.is_not(None)).values(rejected_value=None, rejected_reason=None))
            same_target = conn.execute(select(quarantine.c.id, quarantine.c.raw).where(
                quarantine.c.source == entry.source, quarantine.c.kind == "write")).all()
            of_object = [row.id for row in same_target if str(json.loads(row.raw).get("object_id")) == object_id]
            conn.execute(delete(quarantine).where(quarantine.c.id.in_(of_object)))
            # The object's inputs did not change: only a sync comparing everything finds its values unsent.
            self.drop_cursor(conn, COMPLETE_WRITE, entry.source)
        return entry.source, object_id

    def ledger_rows(self, target: str, object_ids: Sequence[str] | None = None, *,
                    pending: bool = False) -> dict[tuple[str, str], LedgerRow]:
        """The ledger rows of ``target`` by (object id, field): all of them, those of ``object_ids`` (a write run
        diffs a few thousand objects at a time, so a large audience's ledger is never in memory whole), or
        only the intents still ``pending``."""
        query = select(
            # Whether confirmed, not when: parsing a time per row cost a third of reading a ledger.
            ledger.c.object_id, ledger.c.field, ledger.c.confirmed_at.is_not(None), ledger.c.confirmed_value,
            ledger.c.pending_run_id.is_not(None), ledger.c.pending_value, ledger.c.rejected_value, ledger.c.rejected_reason,
        ).where(ledger.c.target == target)
        if object_ids is not None:
            query = query.where(ledger.c.object_id.in_(object_ids))
        if pending:
            query = query.where(ledger.c.pending_run_id.is_not(None))
        with self.engine.connect() as conn:
            # tuple.__new__ builds each row in C: LedgerRow(...) runs a Python __new__ per row, which was 40% of
            # reading 1.6 million rows. The two flags come back from SQL as 0/1, which test as the booleans do.
            return {(row[0], row[1]): _new_tuple(LedgerRow, row[2:]) for row in conn.execute(query)}

    def confirmed_value(self, target: str, object_id: str, field_name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(ledger.c.confirmed_value).where(
                    ledger.c.target == target, ledger.c.object_id == object_id, ledger.c.field == field_name
                )
            ).scalar()

    def read_after_confirmed(self, target: str, reads: Mapping[tuple[str, str], tuple[str, str]]) -> set[tuple[str, str]]:
        """Of ``reads`` ((object id, field) of ``target`` → (source, source_id) of the contact record its value was
        read into), those whose record last changed after the ledger confirmed the field: what the record holds was
        read after our write. (A record changes only when a read brings something new, and a sync reads before it
        writes, so a record read before our write is older than the confirmation.) Asked of few fields, so the times
        are parsed here rather than in ``ledger_rows``."""
        object_ids = sorted({object_id for object_id, _ in reads})
        record_ids: dict[str, list[str]] = {}
        for source, source_id in set(reads.values()):
            record_ids.setdefault(source, []).append(source_id)
        confirmed_at, changed_at = {}, {}
        with self.engine.connect() as conn:
            for start in range(0, len(object_ids), LEDGER_CHUNK):
                confirmed_at.update(((row[0], row[1]), row[2]) for row in conn.execute(
                    select(ledger.c.object_id, ledger.c.field, ledger.c.confirmed_at).where(
                        ledger.c.target == target, ledger.c.object_id.in_(object_ids[start : start + LEDGER_CHUNK]),
                        ledger.c.confirmed_at.is_not(None))))
            for source, source_ids in record_ids.items():
                for start in range(0, len(source_ids), LEDGER_CHUNK):
                    changed_at.update(((source, row[0]), row[1]) for row in conn.execute(
                        select(records.c.source_id, records.c.changed_at).where(
                            records.c.kind == "contact", records.c.source == source,
                            records.c.source_id.in_(source_ids[start : start + LEDGER_CHUNK]))))
        return {key for key, record in reads.items()
                if key in confirmed_at and record in changed_at and changed_at[record] > confirmed_at[key]}

    # --- reading back ----------------------------------------------------------------------------------------

    def record_counts(self) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            query = (
                select(records.c.kind, records.c.source, func.count())
                .where(records.c.deleted_at.is_(None))
                .group_by(records.c.kind, records.c.source)
                .order_by(records.c.kind, records.c.source)
            )
            return [tuple(row) for row in conn.execute(query)]

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            found = conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings().all()
            counts = conn.execute(
                select(run_counts).where(run_counts.c.run_id.in_([r["id"] for r in found]))
            ).mappings().all()
        return [
            {**run, "counts": {c["kind"]: {k: c[k] for k in ("read", "written", "unchanged", "quarantined", "forgotten")} for c in counts if c["run_id"] == run["id"]}}
            for run in found
        ]

    def quarantined(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = select(quarantine).order_by(quarantine.c.last_seen_at.desc(), quarantine.c.id.desc())
            return [dict(row) for row in conn.execute(query.limit(limit) if limit else query).mappings()]

    def quarantine_size(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(quarantine)).scalar_one()

    def people_changed_since(self, since: datetime) -> set[str]:
        """Everyone a record of any kind was added, changed or deleted for after ``since``: normalised emails (for a
        contact, every email it is linked by) and the customer keys of scores."""
        people: set[str] = set()
        with self.engine.connect() as conn:
            contacts: dict[str, list[str]] = {}
            moved = or_(*(and_(records.c.kind == kind, or_(records.c.changed_at > since, records.c.deleted_at > since))
                          for kind in RECORD_TYPES))  # by kind: the indexes lead with it
            for kind, source, source_id, email in conn.execute(
                    select(records.c.kind, records.c.source, records.c.source_id, records.c.match_email).where(moved)):
                if email is not None:
                    people.add(email)
                if kind == "score":
                    people.add(source_id)
                elif kind == "contact":
                    contacts.setdefault(source, []).append(source_id)
            for source, source_ids in contacts.items():
                people |= self._emails_linked(conn, source, source_ids)
        return people

    def contacts_of(self, sources: Sequence[str], people: set[str]) -> dict[str, list[tuple[str, str]]]:
        """Source → (source_id, payload) of its live contacts linked to any of ``people`` (normalised emails, or
        contact ids), and of everyone else those contacts are linked to in any of ``sources`` (every holder of
        each email they carry: whether an email is shared is part of what is written, and a person's contact
        fields are decided across the tools), in the order they were first stored."""
        found: dict[str, dict[str, tuple[int, str]]] = {source: {} for source in sources}
        wanted, asked = set(people), set()
        with self.engine.connect() as conn:
            while keys := sorted(wanted - asked):
                asked.update(keys)
                for source in sources:
                    new = self._contacts_linked(conn, source, keys, found[source])
                    wanted |= self._emails_linked(conn, source, new)
        return {source: [(source_id, payload) for source_id, (_, payload) in sorted(held.items(), key=lambda item: item[1][0])]
                for source, held in found.items()}

    @staticmethod
    def _emails_linked(conn: Connection, source: str, source_ids: Sequence[str]) -> set[str]:
        """The normalised emails the contacts ``source_ids`` of ``source`` are linked by."""
        emails: set[str] = set()
        for start in range(0, len(source_ids), LEDGER_CHUNK):
            emails.update(conn.execute(select(identities.c.email).where(
                identities.c.source == source, identities.c.source_id.in_(source_ids[start : start + LEDGER_CHUNK]))).scalars())
        return emails

    @staticmethod
    def _contacts_linked(conn: Connection, source: str, keys: list[str], found: dict[str, tuple[int, str]]) -> list[str]:
        """Add to ``found`` the live contacts of ``source`` carrying one of ``keys`` (emails or ids); their ids."""
        new: list[str] = []
        for start in range(0, len(keys), 1000):
            part = keys[start : start + 1000]
            linked = select(identities.c.source_id).where(identities.c.source == source, identities.c.email.in_(part))
            query = select(records.c.source_id, records.c.id, records.c.payload).where(
                records.c.kind == "contact", records.c.source == source, records.c.deleted_at.is_(None),
                or_(records.c.source_id.in_(linked), records.c.source_id.in_(part)))
            for source_id, row_id, payload in conn.execute(query):
                if source_id not in found:
                    found[source_id] = (row_id, payload)
                    new.append(source_id)
        return new

    def records_named(self, kind: str, source: str, source_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(source_id, payload) of the live records of one kind and source named in ``source_ids``, in the order
        they were first stored."""
        names = sorted(set(source_ids))
        found: list[tuple[int, str, str]] = []
        with self.engine.connect() as conn:
            for start in range(0, len(names), 1000):
                found.extend(conn.execute(select(records.c.id, records.c.source_id, records.c.payload).where(
                    records.c.kind == kind, records.c.source == source, records.c.deleted_at.is_(None),
                    records.c.source_id.in_(names[start : start + 1000]))).all())
        return [(source_id, payload) for _, source_id, payload in sorted(found)]

    def emails_of(self, sources: Sequence[str]) -> set[str]:
        """Every normalised email the contacts of ``sources`` are linked by (a tombstoned one's too: that person then
        finds no live contact)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(identities.c.email).where(identities.c.source.in_(sources)).distinct()).scalars())

    def stored_records(self, kind: str, source: str | None = None) -> Iterator[tuple[str, str]]:
        """(source_id, payload) of live records of one kind, streamed."""
        query = select(records.c.source_id, records.c.payload).where(records.c.kind == kind, records.c.deleted_at.is_(None))
        if source is not None:
            query = query.where(records.c.source == source)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=5000).execute(query.order_by(records.c.id)):
                yield row[0], row[1]
            if self.is_sqlite:
                conn.exec_driver_sql("PRAGMA shrink_memory")  # a whole kind was read: give the page cache back

    def checksum(self) -> str:
        """A digest of every state table; equal digests mean an input left the state exactly as it was."""
        digest = hashlib.sha256()
        with self.engine.connect() as conn:
            for table in STATE_TABLES:
                digest.update(table.name.encode())
                order = [c for c in table.primary_key.columns] or list(table.columns)
                for row in conn.execution_options(yield_per=5000).execute(select(table).order_by(*order)):
                    digest.update(repr(tuple(row)).encode())
        return digest.hexdigest()

    def integrity(self, *, quick: bool = False) -> str:
        """"ok", or SQLite's first complaint (PostgreSQL checks its own pages: there, answering is the check)."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT 1"))
                return "ok"
            verdict = conn.exec_driver_sql(f"PRAGMA {'quick_check' if quick else 'integrity_check'}").fetchall()[0][0]
            conn.exec_driver_sql("PRAGMA shrink_memory")  # the check read every page: give the cache back
            return verdict


# --- helpers ----------------------------------------------------------------------------------------------------


def _sqlite_engine(database: str, busy_timeout_s: float, cache_mib: int) -> Engine:
    if sqlite3.sqlite_version_info < (3, 35):
        raise StoreError(f"this Python's SQLite is {sqlite3.sqlite_version}; the store needs 3.35 or newer — use Python 3.11 from python.org or your distribution")
    if not database or database == ":memory:":
        raise StoreError("the SQLite store needs a file path; set data_dir or store.url")
    path = Path(database).expanduser()
    _prepare_private_file(path)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin, so we can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")  # the ledger must survive power loss, not only crashes
        cursor.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that later upgrades can fail with SQLITE_BUSY.
        # Readers never block anyone in WAL mode.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def _prepare_private_file(path: Path) -> None:
    """Data directory 0700, database file 0600 (SQLite gives -wal and -shm the database file's mode)."""
    directory = path.parent
    fs_type = _filesystem_type(directory if directory.exists() else directory.parent)
    if fs_type in NETWORK_FILESYSTEMS:
        raise StoreError(f"{directory}: on a network filesystem ({fs_type}); SQLite's WAL needs a local disk — choose a local data_dir")
    old_umask = os.umask(0o077)
    try:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
        elif directory.stat().st_mode & 0o1000:
            # A shared sticky directory such as /tmp: never tighten it (that locks every other user out); the
            # store's own files are still 0600.
            pass
        elif directory.stat().st_uid == os.getuid():
            os.chmod(directory, 0o700)
        for suffix in ("", "-wal", "-shm"):
            sidecar = Path(f"{path}{suffix}")
            if suffix == "":
                os.close(os.open(sidecar, os.O_CREAT | os.O_RDWR, 0o600))
            if sidecar.exists():
                os.chmod(sidecar, 0o600)
    except PermissionError as exc:
        raise StoreError(f"{directory}: cannot create the store here ({exc.strerror}) — choose another data_dir") from None
    finally:
        os.umask(old_umask)


def _filesystem_type(path: Path) -> str | None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    best = ("", None)
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and resolved.startswith(parts[1]) and len(parts[1]) > len(best[0]):
            best = (parts[1], parts[2])
    return best[1]


def _unchanged(value: Any) -> Any:
    return value


def _occurred_at(record: Record) -> datetime | None:
    for name in ("created_at", "occurred_at", "submitted_at", "scored_at"):
        value = getattr(record, name, None)
        if value is not None:
            return value
    return getattr(record, "updated_at", None)


def _json(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a quarantined vendor payload with half a surrogate pair: keep it, escaped
            text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)
    return text


def _now() -> datetime:
    return datetime.now(UTC)


def _short(exc: Exception) -> str:
    return str(getattr(exc, "orig", exc)).splitlines()[0][:200]


def _explain_operational(exc: OperationalError) -> str:
    message = _short(exc)
    if "locked" in message or "busy" in message:
        return "the store is locked by another retention process — wait for it to finish, then run this again"
    if "full" in message:
        return "the disk holding the store is full; nothing was saved — free some space and run this again"
    if "readonly" in message or "read-only" in message:
        return "the store is read-only — check the permissions of the data directory"
    return f"the store could not be written ({message})"
