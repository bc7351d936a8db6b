"""Erasure on request (GDPR Art. 17 and 19, CCPA §7022): forget one person here, and optionally in the tools.

``forget_person`` deletes, in one transaction, every record, identity link, ledger row, quarantine entry and cursor
that names the person: their address, the other addresses and per-source ids the identity map links to it, and
anything whose text mentions the address or its MD5 (Mailchimp's subscriber hash). It keeps only salted hashes
(sync/tombstones.py) so imports and syncs skip the person from then on, and a run-history row that refers to the
erasure by tombstone number. On SQLite the erase runs with ``secure_delete``, then VACUUM and a truncating WAL
checkpoint, so the address is left in neither the database file nor its ``-wal``.

``propagate`` asks each enabled connector that has an erasure call to erase the person there too, once each.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from connectors.base import ConfigError, RetentionError, StoreError
from connectors.records import normalise_email
from sync.schema import cursors, forgotten, identities, ledger, quarantine, records, runs
from sync.settings import Settings
from sync.store import RunCounts, Store
from sync.tombstones import email_key, read_salt, source_id_key

UTC = timezone.utc
HIDDEN = "<the address>"
# Connectors whose client module offers ``erase_person(settings, email) -> list[str]``.
ERASURE_MODULES = {"hubspot": "connectors.hubspot.client", "mailchimp": "connectors.mailchimp.client"}
Eraser = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class Erasure:
    """What ``forget_person`` did, without the address."""

    tombstone: int
    run_id: int
    records: int
    identity_links: int
    ledger_rows: int
    quarantine_entries: int
    was_forgotten_before: bool

    @property
    def was_known(self) -> bool:
        return self.records + self.identity_links + self.ledger_rows + self.quarantine_entries > 0


@dataclass(frozen=True)
class Propagation:
    connector: str
    outcomes: Sequence[str]  # what the tool did, one line each
    error: str | None = None  # why it failed, with the address hidden
    exit_code: int = 0  # the failure's code in the documented table (5 tool failed, 6 credentials refused)


def parse_address(typed: str) -> str:
    """The normalised address, or a ConfigError (exit 2) that does not repeat what was typed."""
    try:
        return normalise_email(typed)
    except ValueError as exc:
        raise ConfigError(f"forget: that is not a valid email address ({exc}); nothing was changed") from None


def is_forgotten(store: Store, email: str) -> bool:
    """Whether ``email`` (any form) belongs to someone erased on request. Imports check this themselves."""
    with store.engine.connect() as conn:
        key = email_key(read_salt(conn), normalise_email(email))
        return conn.execute(select(forgotten.c.key_hash).where(forgotten.c.key_hash == key)).first() is not None


def forget_person(store: Store, typed: str) -> Erasure:
    """Erase everything the store holds about the owner of ``typed``; keep only their tombstone."""
    normalised = parse_address(typed)
    started_at = datetime.now(UTC)
    with store.transaction() as conn:
        if store.is_sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")  # deleted cells are zeroed, not just unlinked
        emails, source_ids = _the_person(conn, normalised)
        needles = sorted({typed.strip().lower(), *emails, *(hashlib.md5(e.encode()).hexdigest() for e in emails)})
        counts = {
            "records": _delete_records(conn, emails, source_ids, needles),
            "identity_links": _delete_identities(conn, emails, source_ids),
            "ledger_rows": conn.execute(delete(ledger).where(or_(
                ledger.c.object_id.in_([*emails, *needles, *(i for _, i in source_ids)]),
                _mentions([ledger.c.object_id, ledger.c.confirmed_value, ledger.c.pending_value, ledger.c.rejected_value,
                            ledger.c.rejected_reason], needles)))).rowcount,
            "quarantine_entries": conn.execute(delete(quarantine).where(
                _mentions([quarantine.c.raw, quarantine.c.record_ref, quarantine.c.reason], needles))).rowcount,
        }
        conn.execute(delete(cursors).where(_mentions([cursors.c.value], needles)))  # a lost cursor only means a full read
        conn.execute(update(runs).where(_mentions([runs.c.detail], needles)).values(detail="(detail erased on request)"))
        tombstone, was_forgotten_before = _tombstone(conn, emails, source_ids, normalised, started_at)
        detail = (f"tombstone #{tombstone}: erased {counts['records']} records, {counts['identity_links']} identity links, "
                  f"{counts['ledger_rows']} ledger rows, {counts['quarantine_entries']} quarantine entries")
        run_id = store.begin_run(conn, "forget", detail, started_at)
        store.finish_run(conn, run_id, "succeeded", RunCounts())
    _scrub_files(store)
    return Erasure(tombstone, run_id, was_forgotten_before=was_forgotten_before, **counts)


def _the_person(conn: Connection, normalised: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The person's addresses and (source, id) pairs: the contacts linked to the address, the ids merged into them,
    and every address those contacts carry. One step only: a shared address does not pull in a second person."""
    linked = conn.execute(select(identities.c.source, identities.c.source_id, identities.c.alias_of)
                          .where(identities.c.email == normalised)).all()
    source_ids = {(s, i) for s, i, _ in linked} | {(s, alias) for s, _, alias in linked if alias}
    emails = {normalised}
    if source_ids:
        theirs = conn.execute(select(identities.c.email, identities.c.source, identities.c.source_id).where(
            or_(*(and_(identities.c.source == s, or_(identities.c.source_id == i, identities.c.alias_of == i)) for s, i in source_ids))))
        for email, source, source_id in theirs:
            emails.add(email)
            source_ids.add((source, source_id))
    return emails, source_ids


def _delete_records(conn: Connection, emails: set[str], source_ids: set[tuple[str, str]], needles: list[str]) -> int:
    ids = {i for _, i in source_ids}
    conditions = [
        records.c.match_email.in_(emails),
        and_(records.c.kind == "score", records.c.source_id.in_(emails | ids)),  # scores are keyed by email or customer id
        _mentions([records.c.payload, records.c.source_id], needles),
    ]
    for source, source_id in source_ids:
        conditions.append(and_(records.c.kind == "contact", records.c.source == source, records.c.source_id == source_id))
        customer = f'"customer_source_id":{json.dumps(source_id)}'  # payloads are compact canonical JSON
        conditions.append(and_(records.c.kind == "order", records.c.source == source, records.c.payload.contains(customer, autoescape=True)))
    return conn.execute(delete(records).where(or_(*conditions))).rowcount


def _delete_identities(conn: Connection, emails: set[str], source_ids: set[tuple[str, str]]) -> int:
    conditions = [identities.c.email.in_(emails)]
    for source, source_id in source_ids:
        conditions.append(and_(identities.c.source == source, or_(identities.c.source_id == source_id, identities.c.alias_of == source_id)))
    return conn.execute(delete(identities).where(or_(*conditions))).rowcount


def _mentions(columns: Sequence[ColumnElement], needles: Sequence[str]) -> ColumnElement:
    """Any of the columns contains any of the needles, in any case."""
    return or_(*(func.lower(column).contains(needle, autoescape=True) for column in columns for needle in needles))


def _tombstone(conn: Connection, emails: set[str], source_ids: set[tuple[str, str]], normalised: str, now: datetime) -> tuple[int, bool]:
    salt = read_salt(conn)
    keys = {email_key(salt, e) for e in emails} | {source_id_key(salt, s, i) for s, i in source_ids}
    existing = dict(conn.execute(select(forgotten.c.key_hash, forgotten.c.tombstone).where(forgotten.c.key_hash.in_(keys))).all())
    own_key = email_key(salt, normalised)
    if own_key in existing:
        number, was_forgotten_before = existing[own_key], True
    else:
        number = conn.execute(select(func.coalesce(func.max(forgotten.c.tombstone), 0))).scalar_one() + 1
        was_forgotten_before = False
    new_keys = sorted(keys - set(existing))
    if new_keys:
        conn.execute(insert(forgotten), [{"key_hash": key, "tombstone": number, "forgotten_at": now} for key in new_keys])
    return number, was_forgotten_before


def _scrub_files(store: Store) -> None:
    """Leave no copy of the erased rows in the files: SQLite keeps old page images in the database file (free
    space from earlier updates) and in the WAL until a checkpoint, so rebuild the file and empty the WAL."""
    if not store.is_sqlite:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM records, identities, ledger, quarantine, cursors, runs")
        return
    raw = store.engine.raw_connection()  # the driver's own connection: VACUUM cannot run inside a transaction
    try:
        cursor = raw.cursor()
        cursor.execute("VACUUM")
        busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    if busy:
        raise StoreError("the person was erased, but another process is reading the store, so old copies remain in its "
                         "-wal file until it stops — stop other retention processes and run the same `retention forget` again")


def erasers_from_settings(settings: Settings) -> tuple[dict[str, Eraser], list[str]]:
    """The erasure call of each enabled connector that has one, and the enabled connectors that have none."""
    erasers: dict[str, Eraser] = {}
    without: list[str] = []
    for name, section in settings:
        if not getattr(section, "enabled", False):
            continue
        if name in ERASURE_MODULES:
            erasers[name] = partial(importlib.import_module(ERASURE_MODULES[name]).erase_person, settings)
        else:
            without.append(name)
    return erasers, without


def propagate(typed: str, erasers: Mapping[str, Eraser]) -> list[Propagation]:
    """Call each eraser once with the normalised address; a failure is kept (without the address), not raised,
    so one tool failing does not stop the others."""
    normalised = parse_address(typed)
    hidden = re.compile("|".join(re.escape(text) for text in (typed.strip(), normalised, hashlib.md5(normalised.encode()).hexdigest())), re.IGNORECASE)
    results = []
    for name, erase in erasers.items():
        try:
            results.append(Propagation(name, list(erase(normalised))))
        except RetentionError as exc:  # the vendor's words may quote the address: hide every form of it
            results.append(Propagation(name, [], hidden.sub(HIDDEN, str(exc)), exc.exit_code))
    return results
