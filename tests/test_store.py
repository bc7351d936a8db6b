"""The state store, against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from connectors.base import StoreError
from connectors.records import Contact, EmailAddress, Order, from_payload
from sync import schema
from sync.store import RunCounts, Store

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def contact(source_id: str, email: str, first_name: str = "Ann") -> Contact:
    return Contact(source="test", source_id=source_id, email=EmailAddress.parse(email), first_name=first_name)


def write(store: Store, records: list) -> RunCounts:
    counts = RunCounts()
    with store.transaction() as conn:
        run_id = store.begin_run(conn, "test", "test", NOW)
        store.upsert_records(conn, records, counts)
        store.finish_run(conn, run_id, "succeeded", counts)
    return counts


def test_upsert_counts_new_changed_and_unchanged_records(store_url: str) -> None:
    store = Store.open(store_url)
    first = write(store, [contact("1", "ann@example.com"), contact("2", "bob@example.com")])
    second = write(store, [contact("1", "ann@example.com"), contact("2", "bob@example.com", first_name="Robert")])

    assert (first["contact"].written, first["contact"].unchanged) == (2, 0)
    assert (second["contact"].written, second["contact"].unchanged) == (1, 1)
    stored = {source_id: from_payload("contact", payload) for source_id, payload in store.stored_records("contact")}
    assert stored["2"].first_name == "Robert"
    store.close()


def test_rewriting_identical_records_leaves_the_state_checksum_alone(store_url: str) -> None:
    store = Store.open(store_url)
    records = [contact(str(i), f"p{i}@example.com") for i in range(50)]
    write(store, records)
    before = store.checksum()

    counts = write(store, records)

    assert counts["contact"].written == 0 and counts["contact"].unchanged == 50
    assert store.checksum() == before
    store.close()


def test_a_failed_transaction_leaves_the_store_as_it_was(store_url: str) -> None:
    store = Store.open(store_url)
    write(store, [contact("1", "ann@example.com")])
    before, runs_before = store.checksum(), len(store.recent_runs(100))

    with pytest.raises(RuntimeError):
        with store.transaction() as conn:
            store.begin_run(conn, "test", "doomed", NOW)
            store.upsert_records(conn, [contact("9", "zed@example.com")], RunCounts())
            raise RuntimeError("the source failed half-way")

    assert store.checksum() == before
    assert len(store.recent_runs(100)) == runs_before
    store.close()


def test_contacts_are_linked_to_every_email_and_merged_ids_alias_the_survivor(store_url: str) -> None:
    store = Store.open(store_url)
    survivor = Contact(
        source="hub", source_id="200", email=EmailAddress.parse("Ann@Example.com"),
        additional_emails=(EmailAddress.parse("ann.old@example.com"),), merged_ids=("100",),
    )
    write(store, [survivor])
    with store.engine.connect() as conn:
        links = conn.execute(
            text("SELECT email, source_id, is_primary, alias_of FROM identities ORDER BY source_id, email")
        ).fetchall()
    assert [tuple(row) for row in links] == [
        ("ann@example.com", "100", False, "200"),
        ("ann.old@example.com", "200", False, None),
        ("ann@example.com", "200", True, None),
    ]
    store.close()


def test_orders_round_trip_with_decimal_amounts_and_utc_times(store_url: str) -> None:
    store = Store.open(store_url)
    order = Order(source="shop", source_id="#1001", amount="19.99", currency="eur", status="won",
                  created_at=datetime(2024, 3, 5, 10, 22, tzinfo=timezone.utc), customer_email=EmailAddress.parse("a@example.com"))
    write(store, [order])

    [(source_id, payload)] = list(store.stored_records("order"))
    assert from_payload("order", payload) == order
    assert str(from_payload("order", payload).amount) == "19.99"
    store.close()


def test_cursors_and_the_ledger_keep_what_was_committed(store_url: str) -> None:
    store = Store.open(store_url)
    with store.transaction() as conn:
        run_id = store.begin_run(conn, "sync", "test", NOW)
        store.save_cursor(conn, "hubspot", "contacts", "2024-05-01T00:00:00Z")
        store.record_intent(conn, "hubspot", "42", "churn_risk", "0.7", run_id)
    assert store.cursor("hubspot", "contacts") == "2024-05-01T00:00:00Z"
    assert store.confirmed_value("hubspot", "42", "churn_risk") is None, "an intent is not a confirmed write"

    with store.transaction() as conn:
        store.confirm_write(conn, "hubspot", "42", "churn_risk")
        store.save_cursor(conn, "hubspot", "contacts", "2024-05-02T00:00:00Z")
    assert store.confirmed_value("hubspot", "42", "churn_risk") == "0.7"
    assert store.cursor("hubspot", "contacts") == "2024-05-02T00:00:00Z"
    store.close()


def test_a_contact_read_counts_against_a_confirmed_write_only_once_stored_after_it(store_url: str) -> None:
    """What the write path asks before it takes a tool's value over the ledger's: was it read after our write?"""
    store = Store.open(store_url)
    write(store, [contact("42", "ann@example.com")])  # a sync reads first...
    with store.transaction() as conn:  # ...then writes
        run_id = store.begin_run(conn, "sync", "test", NOW)
        store.record_intent(conn, "hubspot", "42", "churn_risk", "0.7", run_id)
        store.confirm_write(conn, "hubspot", "42", "churn_risk")
    reads = {("42", "churn_risk"): ("test", "42"), ("42", "segment"): ("test", "42")}  # segment: never confirmed

    assert store.read_after_confirmed("hubspot", reads) == set()
    write(store, [contact("42", "ann@example.com")])  # read again, the same: the stored record is the earlier read's
    assert store.read_after_confirmed("hubspot", reads) == set()
    write(store, [contact("42", "ann@example.com", first_name="Anna")])
    assert store.read_after_confirmed("hubspot", reads) == {("42", "churn_risk")}
    store.close()


def test_a_first_release_ledger_gains_the_refused_value_columns_and_keeps_its_rows(store_url: str) -> None:
    store = Store.open(store_url)
    with store.transaction() as conn:
        run_id = store.begin_run(conn, "sync", "test", NOW)
        store.record_intent(conn, "hubspot", "42", "churn_risk", "0.7", run_id)
        store.confirm_write(conn, "hubspot", "42", "churn_risk")
    with store.engine.begin() as conn:  # what the first release made: no refused-value columns, version 1
        conn.execute(text("ALTER TABLE ledger DROP COLUMN rejected_value"))
        conn.execute(text("ALTER TABLE ledger DROP COLUMN rejected_reason"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
    store.close()

    upgraded = Store.open(store_url)

    assert upgraded.version() == schema.SCHEMA_VERSION
    row = upgraded.ledger_rows("hubspot")[("42", "churn_risk")]
    assert row.confirmed and row.confirmed_value == "0.7" and row.rejected_value is None
    with upgraded.transaction() as conn:
        run_id = upgraded.begin_run(conn, "sync", "test", NOW)
        upgraded.record_intent(conn, "hubspot", "42", "churn_risk", "bad", run_id)
        upgraded.reject_write(conn, "hubspot", "42", "churn_risk", "INVALID_OPTION")
    row = upgraded.ledger_rows("hubspot")[("42", "churn_risk")]
    assert (row.rejected_value, row.rejected_reason, row.confirmed_value) == ("bad", "INVALID_OPTION", "0.7")
    upgraded.close()


def test_a_store_at_schema_version_1_upgrades_to_the_current_schema(store_url: str) -> None:
    store = Store(Store.open(store_url).engine)
    with store.engine.begin() as conn:  # start again from nothing, then build version 1 only
        schema.metadata.drop_all(conn)
    store._migrate(target=1)
    with store.engine.begin() as conn:
        conn.execute(insert(schema.cursors).values(source="csv", stream="orders", value="v1", updated_at=NOW))

    upgraded = Store.open(store_url)

    assert upgraded.version() == schema.SCHEMA_VERSION
    assert upgraded.cursor("csv", "orders") == "v1"
    with upgraded.engine.connect() as conn:
        tables = set(conn.dialect.get_table_names(conn))
    assert {t.name for t in schema.metadata.sorted_tables} <= tables
    upgraded.close()


def test_a_version_2_store_gains_the_lease_and_erasure_tables_and_keeps_its_run_history(store_url: str) -> None:
    store = Store.open(store_url)
    write(store, [contact("1", "ann@example.com")])
    with store.engine.begin() as conn:  # what version 2 made: no leases, tombstones, salt or forgotten counts
        for name in ("leases", "forgotten", "erasure_salt"):
            conn.execute(text(f"DROP TABLE {name}"))
        conn.execute(text("ALTER TABLE run_counts DROP COLUMN forgotten"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 2"))
    store.close()

    upgraded = Store.open(store_url)

    assert upgraded.version() == schema.SCHEMA_VERSION
    [run] = upgraded.recent_runs(10)
    assert run["counts"]["contact"] == {"read": 1, "written": 1, "unchanged": 0, "quarantined": 0, "forgotten": 0}
    with upgraded.engine.connect() as conn:
        [salt] = conn.execute(text("SELECT salt FROM erasure_salt")).scalars().all()
    assert len(salt) == 64
    with upgraded.lease("sync", ttl_s=30) as lease:
        assert lease.is_held
    upgraded.close()


def test_a_store_from_a_newer_version_is_refused_with_one_line(store_url: str) -> None:
    store = Store.open(store_url)
    with store.engine.begin() as conn:
        conn.execute(insert(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1, applied_at=NOW))
    store.close()

    with pytest.raises(StoreError, match=r"made by a newer retention-sync .* upgrade retention-sync"):
        Store.open(store_url)


@pytest.mark.fault("SEC-permissions")
def test_sqlite_files_are_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store.open(f"sqlite:///{tmp_path / 'data' / 'retention.db'}")
        write(store, [contact("1", "ann@example.com")])
        with store.engine.connect() as conn:  # keep a connection open so -wal and -shm exist
            conn.exec_driver_sql("SELECT count(*) FROM records").fetchall()
            files = sorted((tmp_path / "data").iterdir())
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        store.close()
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert {"retention.db", "retention.db-wal", "retention.db-shm"} <= modes.keys()
    assert set(modes.values()) == {0o600}, modes


def test_a_store_in_a_shared_sticky_directory_leaves_that_directory_open_to_others(tmp_path: Path) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: tightening it would lock every other user and service out

    store = Store.open(f"sqlite:///{shared / 'retention.db'}")
    store.close()

    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "retention.db").stat().st_mode) == 0o600


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'retention.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    store.close()


def test_a_damaged_sqlite_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "retention.db"
    path.write_bytes(b"this is not a database, it is a shopping list" * 100)

    with pytest.raises(StoreError, match="not a readable store .* move it aside or restore a backup"):
        Store.open(f"sqlite:///{path}")


def test_a_foreign_sqlite_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")

    with pytest.raises(StoreError, match="holds other tables, not a retention-sync store"):
        Store.open(f"sqlite:///{path}")


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process takes the store's write lock for ``seconds``; returns once it holds it."""
    script = (
        "import sqlite3, sys, time\n"
        f"conn = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "conn.rollback()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.fault("F17")
def test_a_store_locked_longer_than_the_busy_timeout_gives_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'retention.db'}"
    store = Store.open(url, busy_timeout_s=0.2)
    holder = hold_write_lock(tmp_path / "retention.db", 5)
    try:
        with pytest.raises(StoreError, match="locked by another retention process — wait for it to finish"):
            write(store, [contact("1", "ann@example.com")])
    finally:
        holder.kill()
        holder.wait()
    assert store.integrity() == "ok"
    store.close()


@pytest.mark.fault("F17")
def test_a_writer_waits_for_a_short_lock_instead_of_failing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'retention.db'}"
    store = Store.open(url, busy_timeout_s=10)
    holder = hold_write_lock(tmp_path / "retention.db", 0.5)

    counts = write(store, [contact("1", "ann@example.com")])

    holder.wait()
    assert counts["contact"].written == 1
    store.close()


@pytest.mark.fault("F23")
def test_records_a_source_archived_are_tombstoned_and_revived_when_they_return(store_url: str) -> None:
    from connectors.base import Page, Stream
    from sync.engine import run_source_once

    class Vendor:  # a source as a connector presents it: pages of records, and the ids it archived
        name = "vendor"

        def __init__(self, pages: list[Page]) -> None:
            self.pages = pages

        def streams(self) -> list[Stream]:
            return [Stream("contacts", "contact", lambda cursor: iter(self.pages))]

    ann = Contact(source="vendor", source_id="1", email=EmailAddress.parse("ann@example.com"))
    bob = Contact(source="vendor", source_id="2", email=EmailAddress.parse("bob@example.com"))
    store = Store.open(store_url)
    run_source_once(store, Vendor([Page([ann, bob], "c1")]), "sync", "test")
    run_source_once(store, Vendor([Page([], "c2", deleted=["2"])]), "sync", "test")
    assert [source_id for source_id, _ in store.stored_records("contact", "vendor")] == ["1"]

    run_source_once(store, Vendor([Page([bob], "c3")]), "sync", "test")  # unarchived, unchanged
    assert sorted(source_id for source_id, _ in store.stored_records("contact", "vendor")) == ["1", "2"]
