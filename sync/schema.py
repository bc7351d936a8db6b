"""The store's tables and their migrations. ``sync/store.py`` reads and writes them.

Each schema version is one entry in ``MIGRATIONS``; a store is upgraded one version at a time, in a transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    insert,
    select,
)
from sqlalchemy.engine import Connection

UTC = timezone.utc
SCHEMA_VERSION = 5


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on SQLite (which has no time zones) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_datetime(value: datetime | None) -> str | None:
    """What UtcDateTime stores in SQLite (SQLAlchemy's own SQLite format, in UTC), for the driver-level fast path."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # records hold UTC already; anything else is converted first
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", UtcDateTime, nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("source", String(200), nullable=False),
    Column("source_id", String(500), nullable=False),
    Column("match_email", String(320)),
    Column("occurred_at", UtcDateTime),
    Column("payload", Text, nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
    Column("deleted_at", UtcDateTime),  # tombstone: the source archived or deleted it
    UniqueConstraint("kind", "source", "source_id", name="uq_records_key"),
)
Index("ix_records_match_email", records.c.match_email)
# What changed, per kind, since a time (a sync whose last write run completed compares only the people whose
# records moved) and whether anything did (the scoring inputs' fingerprint): index lookups, not table scans.
Index("ix_records_kind_changed_at", records.c.kind, records.c.changed_at)
Index("ix_records_kind_deleted_at", records.c.kind, records.c.deleted_at)

identities = Table(
    "identities",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),  # normalised
    Column("source", String(200), nullable=False),
    Column("source_id", String(500), nullable=False),
    Column("is_primary", Boolean, nullable=False),
    Column("alias_of", String(500)),  # for a merged-away id: the survivor's source_id in the same source
    Column("first_seen_at", UtcDateTime, nullable=False),
    UniqueConstraint("source", "source_id", "email", name="uq_identities_link"),
)
Index("ix_identities_email", identities.c.email)

cursors = Table(
    "cursors",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("stream", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("target", String(100), primary_key=True),
    Column("object_id", String(500), primary_key=True),
    Column("field", String(200), primary_key=True),
    Column("confirmed_value", Text),  # what the target is known to hold because we wrote it
    Column("confirmed_at", UtcDateTime),
    Column("pending_value", Text),  # intent recorded before the call, cleared when confirmed
    Column("pending_run_id", Integer, ForeignKey("runs.id")),
    # The value the target refused, and why: not re-sent until the desired value changes (schema 2).
    Column("rejected_value", Text),
    Column("rejected_reason", Text),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("command", String(50), nullable=False),  # import, sync, ...
    Column("detail", Text, nullable=False),  # e.g. the file imported; never a secret
    Column("started_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime),
    Column("status", String(20), nullable=False),  # running, succeeded, partial, failed, deferred (asked to come back later)
)

run_counts = Table(
    "run_counts",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("read", Integer, nullable=False, default=0),
    Column("written", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column("forgotten", Integer, nullable=False, default=0),  # skipped: the person was forgotten (schema 3)
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("record_ref", String(500), nullable=False),  # "orders.csv line 17" or a vendor id
    Column("fingerprint", String(64), nullable=False),  # same bad input seen again = same row
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("last_run_id", Integer, ForeignKey("runs.id")),
    UniqueConstraint("source", "kind", "fingerprint", name="uq_quarantine_input"),
)

# Who may run a sync now: one row per lease name, taken atomically and renewed while the run lives (schema 3).
leases = Table(
    "leases",
    metadata,
    Column("name", String(50), primary_key=True),  # "sync"
    Column("holder", String(200), nullable=False),  # host:pid:random of the process holding it
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),  # past this, a holder that stopped renewing has lost it
)

# People erased on request: salted hashes of their addresses and per-source ids, never the values (schema 3).
forgotten = Table(
    "forgotten",
    metadata,
    Column("key_hash", String(64), primary_key=True),  # sha256(salt + normalised email) or of a source id
    Column("tombstone", Integer, nullable=False),  # one number per erasure request, for the run history
    Column("forgotten_at", UtcDateTime, nullable=False),
)

# The store's own random salt for those hashes: without it, a hash cannot be checked against a guessed address.
erasure_salt = Table(
    "erasure_salt",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("salt", String(64), nullable=False),
)

# One row per scoring run that kept scores: the run's aggregates, and how customers moved from the scores it
# replaced (schema 4). Per-run aggregates, not per-customer history: a daily sync of 100k customers would add 36M
# rows a year, while the report only needs counts, a histogram and the flows. The previous run's per-customer band
# and segment are the score records this run replaces, so the flows are computed as they are written.
score_runs = Table(
    "score_runs",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("scored_at", UtcDateTime, nullable=False),  # the as-of moment the scores are for
    Column("customers", Integer, nullable=False),
    Column("summary", Text, nullable=False),  # JSON: bands, segments, probability histogram, band and segment flows
)

# The state a rejected input must leave untouched; run history is an append-only log and is not part of it.
STATE_TABLES = (records, identities, cursors, ledger, quarantine, forgotten)


def _migrate_to_1(conn: Connection) -> None:
    # Version 1 is the tables above. A later version appends a function that alters them, and freezes the
    # version-1 definitions here first so that old stores still upgrade step by step.
    metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t is not schema_version])


def _migrate_to_2(conn: Connection) -> None:
    # Ledger rows remember a refused value. A store created by this version already has the columns (version 1
    # builds today's tables), so only stores made by the first release need them added.
    present = {column["name"] for column in conn.dialect.get_columns(conn, "ledger")}
    for name in ("rejected_value", "rejected_reason"):
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE ledger ADD COLUMN {name} TEXT")


def _migrate_to_3(conn: Connection) -> None:
    # Leases, the erasure tombstones and their salt, and a forgotten count per run. As in version 2, a store
    # created by this version already has the tables and column from version 1; older ones gain them here.
    metadata.create_all(conn, tables=[leases, forgotten, erasure_salt], checkfirst=True)
    if "forgotten" not in {column["name"] for column in conn.dialect.get_columns(conn, "run_counts")}:
        conn.exec_driver_sql("ALTER TABLE run_counts ADD COLUMN forgotten INTEGER NOT NULL DEFAULT 0")
    if conn.execute(select(erasure_salt.c.id)).first() is None:
        conn.execute(insert(erasure_salt).values(id=1, salt=secrets.token_hex(32)))


def _migrate_to_4(conn: Connection) -> None:
    # The per-scoring-run aggregates for the owner report. Older stores start their history at the next run.
    metadata.create_all(conn, tables=[score_runs], checkfirst=True)


def _migrate_to_5(conn: Connection) -> None:
    # The records' change-time indexes (a store created by this version has them from version 1).
    for index in records.indexes:
        if index.name in ("ix_records_kind_changed_at", "ix_records_kind_deleted_at"):
            index.create(conn, checkfirst=True)


MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4, 5: _migrate_to_5}
