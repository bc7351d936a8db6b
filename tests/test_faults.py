"""Fault scenarios of RELIABILITY.md §4.2 that no other test covers, and the map of where every one is tested.

Each test that covers a scenario carries ``@pytest.mark.fault("F…")`` (bad-input corpus cases get their ``B…``
from the case itself, in tests/conftest.py), so `pytest -m fault` runs them all and bench/reliability_report.py
counts them per group. The map:

| F   | scenario                         | where                                                                       |
|-----|----------------------------------|-----------------------------------------------------------------------------|
| F1  | random SIGKILL then resume       | test_crash_points (≈170 seeded random kills and ≈38 named, small shop), test_sync_kill (spawned, 1,000 contacts; 10,000 with RETENTION_SOAK=1) |
| F2  | crash after remote 2xx           | test_crash_points (after-remote-2xx at every write batch)                   |
| F3  | crash mid-commit                 | test_crash_points (mid-commit at every store transaction; full integrity_check after each resume) |
| F4  | power-loss copies of db + wal    | test_power_loss (12 seeded copies mid-sync, restored after a cut or after the run, user edits meanwhile; 100 with RETENTION_SOAK=1); a score whose input goes back after the lost commits: xfail, see its reason |
| F5  | 429 with Retry-After             | test_hubspot_faults (waits honoured), test_survey_connectors; past the cap: here |
| F6  | 429 storm                        | test_hubspot_faults, test_mailchimp, test_mailchimp_batches, test_survey_connectors |
| F7  | HubSpot DAILY limit              | test_hubspot_faults (no request after it), test_survey_connectors (SurveyMonkey's daily cap) |
| F8  | 5xx burst / persistent 5xx       | test_hubspot_faults, test_mailchimp, test_mailchimp_batches, test_sync (half-way failure resumes) |
| F9  | stall / read timeout             | test_hubspot_faults, test_mailchimp, test_survey_connectors                 |
| F10 | response lost after write        | test_hubspot_faults, test_mailchimp_batches                                 |
| F11 | 207 partial batch                | test_hubspot_write, test_mailchimp_batches                                  |
| F12 | whole batch 400                  | test_hubspot_write (bisection)                                              |
| F13 | 409 "already exists"             | test_hubspot_conformance (a 409 on the property group is taken as existing); the tool never creates HubSpot contacts, and Mailchimp members are upserted by PUT |
| F14 | OAuth expiry                     | test_hubspot_faults, test_google_forms_auth                                 |
| F15 | token revoked                    | test_hubspot_faults, test_hubspot_read, test_mailchimp, test_sync, test_survey_connectors, test_google_forms_auth |
| F16 | missing scope                    | test_hubspot_read (one line naming the scope; the 403 is not retried)       |
| F17 | SQLite locked                    | test_store (short lock waited out, long lock one clear line)                |
| F18 | disk full                        | here (RLIMIT_FSIZE in a forked sync: one "full" line per failing step, integrity ok, next run reaches the twin) |
| F19 | scheduler overlap, stale lease   | test_scheduler                                                              |
| F20 | clock / time zone                | here (syncs under TZ=UTC, America/Los_Angeles, Asia/Kolkata, Pacific/Chatham: UTC cursors, none ahead, same writes; syncs either side of the end of DST in Los Angeles; a computer clock an hour fast, then set back: no cursor ahead of the vendors', no edit missed), test_csv_properties (offset notations) |
| F21 | pagination drift                 | test_hubspot_read (same-second changes, window split, look-back)            |
| F22 | merge mid-sync                   | test_hubspot_read, test_hubspot_write (survivor gets the write)             |
| F23 | archived / deleted               | test_hubspot_read, test_store (tombstoned)                                  |
| F24 | consent wall                     | test_mailchimp, test_mailchimp_batches, test_sync, test_two_way, test_crash_points (status requests counted) |
| F25 | GDPR erasure                     | test_forget                                                                 |
| F26 | webhook authenticity             | not applicable: retention-sync receives no webhooks                         |
| F27 | survey-source quirks             | test_survey_connectors                                                      |
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import resource
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import time_machine
from sqlalchemy.engine import make_url
from threadpoolctl import threadpool_limits

from connectors.base import RateLimited, RetentionError
from connectors.sandbox import Fault
from sync.demo import DemoShop
from sync.pipeline import run_sync
from sync.settings import Settings
from sync.store import COMPLETE_WRITE, Store
from tests.test_crash_points import EDITS_PER_TOOL, lost_values, open_small_shop
from tests.test_sync_kill import edit_between_runs, state


@pytest.fixture
def shop(tmp_path: Path):
    shop = open_small_shop(tmp_path / "shop", datetime.now(timezone.utc) - timedelta(minutes=5))
    yield shop
    for box in shop.sandboxes.values():
        box.stop()


@pytest.mark.fault("F5")
def test_a_retry_after_past_the_cap_defers_that_tool_in_one_line_and_the_next_run_completes(shop):
    hubspot = shop.sandboxes["hubspot"]
    hubspot.faults.add(Fault(status=429, retry_after_s=600, match="/search", times=1, name="come back in 10 minutes"))
    store = Store.open(shop.settings.store_url)
    try:
        report = run_sync(shop.settings, store, endpoints=shop.endpoints)
        runs = store.recent_runs(50)
    finally:
        store.close()

    [error] = report.errors
    assert isinstance(error, RateLimited) and error.source == "hubspot"
    assert "600 s" in str(error) and "resumes" in str(error) and "\n" not in str(error)
    entries = hubspot.journal.entries()
    refused_at = next(n for n, e in enumerate(entries) if e.fault == "come back in 10 minutes")
    assert entries[refused_at + 1:] == []  # no retry, and a deferred tool is not written to
    assert [r["status"] for r in runs if r["detail"] == "read hubspot"] == ["deferred"]
    assert not any("retention_churn_risk" in c["properties"] for c in hubspot.objects["contacts"].values())

    store = Store.open(shop.settings.store_url)
    try:
        report = run_sync(shop.settings, store, endpoints=shop.endpoints)
    finally:
        store.close()
    assert not report.errors
    scored = {c["properties"]["email"] for c in hubspot.objects["contacts"].values() if c["properties"].get("retention_churn_risk")}
    assert len(scored) == report.scored  # every scored customer's risk reached HubSpot on the next run


ZONES = ("UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham")  # Chatham: +12:45/+13:45, DST


def _sync_in_zone(settings: Settings, endpoints: dict, zone: str, clock_ahead_s: float = 0.0) -> None:
    """A sync in a process whose local time zone is ``zone``, as on a computer set to it, and whose clock runs
    ``clock_ahead_s`` ahead of the vendors' (negative: behind)."""
    os.environ["TZ"] = zone
    time.tzset()
    if clock_ahead_s:
        time_machine.travel(datetime.now(timezone.utc) + timedelta(seconds=clock_ahead_s), tick=True).start()
    store = Store.open(settings.store_url)
    try:
        report = run_sync(settings, store, endpoints=endpoints)
    finally:
        store.close()
    os._exit(1 if report.errors else 0)


def sync_in_child(shop: DemoShop, zone: str = "UTC", clock_ahead_s: float = 0.0) -> None:
    child = multiprocessing.get_context("fork").Process(target=_sync_in_zone, args=(shop.settings, shop.endpoints, zone, clock_ahead_s))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0, (zone, clock_ahead_s, child.exitcode)


def saved_cursors(settings: Settings) -> dict[tuple[str, str], str]:
    with sqlite3.connect(make_url(settings.store_url).database or "") as conn:
        return {(source, stream): value for source, stream, value in conn.execute("SELECT source, stream, value FROM cursors")}


@pytest.mark.fault("F20")
def test_the_computers_time_zone_changes_no_cursor_and_no_written_value(tmp_path: Path):
    now = datetime.now(timezone.utc) - timedelta(minutes=5)  # every shop holds the very same business
    cursors, written = {}, {}
    fork = multiprocessing.get_context("fork")
    with threadpool_limits(limits=1, user_api="openmp"):  # a forked child cannot use the parent's OpenMP threads
        for zone in ZONES:
            shop = open_small_shop(tmp_path / zone.replace("/", "-"), now)
            try:
                child = fork.Process(target=_sync_in_zone, args=(shop.settings, shop.endpoints, zone))
                child.start()
                child.join(timeout=120)
                assert child.exitcode == 0, (zone, child.exitcode)
                cursors[zone], written[zone] = saved_cursors(shop.settings), state(shop)
            finally:
                for box in shop.sandboxes.values():
                    box.stop()

    # Each shop was seeded and synced a few seconds after the last, so their cursors differ by those seconds, or by the
    # look-back (10 minutes) where one run saw a change the other did not yet; a local time taken for UTC anywhere
    # would move them by the zone's offset: 5:30, 8 or 13:45 hours.
    assert cursors["UTC"] and all(cursors[zone].keys() == cursors["UTC"].keys() for zone in ZONES), cursors
    latest = datetime.now(timezone.utc) + timedelta(minutes=1)
    for zone in ZONES:
        for key, value in cursors[zone].items():
            if key[0] == "scoring":  # scored as of the end of the settings' day (then a digest of the records)
                assert value.split("|")[0] == cursors["UTC"][key].split("|")[0], (zone, value)
                continue
            moments, in_utc = cursor_times(value), cursor_times(cursors["UTC"][key])
            assert len(moments) == len(in_utc), (zone, key, value)
            for moment, utc_moment in zip(moments, in_utc):
                assert moment.utcoffset() == timedelta(0) and moment <= latest, (zone, key, value)  # UTC, not ahead
                assert abs(moment - utc_moment) < timedelta(hours=1), (zone, key, value, cursors["UTC"][key])
    assert all(written[zone] == written["UTC"] for zone in ZONES)


def vendor_cursor_times(shop: DemoShop) -> dict[tuple[str, str], list[datetime]]:
    """Each read cursor's times. Not scoring's (the day it scored as of) nor the write runs' completion marks (when a
    run began comparing, on the store's own clock like every record's change time; a clock set back makes the next
    run compare everyone): no vendor stamped those, and no search starts from them."""
    return {key: cursor_times(value) for key, value in saved_cursors(shop.settings).items()
            if key[0] not in ("scoring", COMPLETE_WRITE)}


def future_cursors(shop: DemoShop) -> list[str]:
    """Cursors ahead of the vendors' own clocks: a search from there would skip every change made before it."""
    vendor_now = min(box.clock.now() for box in shop.sandboxes.values())
    return [f"{key}: {moment.isoformat()} (vendors' time {vendor_now.isoformat(timespec='seconds')})"
            for key, moments in vendor_cursor_times(shop).items() for moment in moments if moment > vendor_now]


@pytest.mark.fault("F20")
def test_a_computer_clock_an_hour_ahead_then_set_right_leaves_no_future_cursor_and_misses_no_edit(shop):
    with threadpool_limits(limits=1, user_api="openmp"):  # a forked child cannot use the parent's OpenMP threads
        sync_in_child(shop, clock_ahead_s=3600)  # the computer's clock is an hour fast
        assert future_cursors(shop) == []
        expected: dict[tuple[str, str], str] = {}
        edit_between_runs(shop, random.Random(5), 1, expected, per_tool=EDITS_PER_TOOL)
        sync_in_child(shop)  # its clock was set right (it jumped back an hour), and the user edited meanwhile
    assert future_cursors(shop) == []
    assert lost_values(shop, state(shop), expected) == []  # every edit is in both tools


DST_ENDS_IN_LOS_ANGELES = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)  # 02:00 PDT is 01:00 PST again


@pytest.mark.fault("F20")
def test_syncs_either_side_of_the_end_of_daylight_saving_time_keep_utc_cursors_and_every_edit(tmp_path: Path):
    """In Los Angeles a sync at 01:50 PDT, then edits, then a sync at 01:10 PST twenty minutes later: the local clock
    went back by forty minutes. The same in UTC for comparison."""
    cursors = {}
    for zone in ("UTC", "America/Los_Angeles"):
        with time_machine.travel(DST_ENDS_IN_LOS_ANGELES - timedelta(minutes=10), tick=True) as traveller:
            shop = open_small_shop(tmp_path / zone.replace("/", "-"), DST_ENDS_IN_LOS_ANGELES - timedelta(minutes=15))
            try:
                expected: dict[tuple[str, str], str] = {}
                with threadpool_limits(limits=1, user_api="openmp"):
                    sync_in_child(shop, zone)
                    traveller.shift(timedelta(minutes=20))  # the computer's clock and the vendors' move on together
                    for box in shop.sandboxes.values():
                        box.clock.advance(20 * 60)
                    edit_between_runs(shop, random.Random(7), 1, expected, per_tool=EDITS_PER_TOOL)
                    sync_in_child(shop, zone)
                assert future_cursors(shop) == [], zone
                assert lost_values(shop, state(shop), expected) == [], zone  # every edit is in both tools
                cursors[zone] = vendor_cursor_times(shop)
            finally:
                for box in shop.sandboxes.values():
                    box.stop()
    assert cursors["UTC"] and cursors["America/Los_Angeles"].keys() == cursors["UTC"].keys()
    for key, moments in cursors["America/Los_Angeles"].items():
        assert len(moments) == len(cursors["UTC"][key]), key
        for moment, in_utc in zip(moments, cursors["UTC"][key]):
            # The two shops ran seconds apart; a local time taken for UTC would be 7 or 8 hours off, the repeated
            # hour taken the wrong way one hour.
            assert moment.utcoffset() == timedelta(0) and abs(moment - in_utc) < timedelta(minutes=5), (key, moment, in_utc)


def cursor_times(value: str) -> list[datetime]:
    """The ISO 8601 times a cursor holds (a HubSpot cursor is one; a Mailchimp cursor maps audiences to one each)."""
    return [datetime.fromisoformat(found) for found in re.findall(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)", value)]


def _sync_on_a_full_disk(settings: Settings, endpoints: dict, room_bytes: int, said: Path) -> None:
    """A sync in a process that may grow no file of the store by more than ``room_bytes``: its disk is full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, as on a full disk, instead of killing
    database = Path(make_url(settings.store_url).database or "")
    limit = max(path.stat().st_size for path in database.parent.glob(f"{database.name}*")) + room_bytes
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        store = Store.open(settings.store_url)
        try:
            lines = [str(error) for error in run_sync(settings, store, endpoints=endpoints).errors]
        finally:
            store.close()
    except RetentionError as exc:  # what the CLI prints as its one line
        lines = [str(exc)]
    said.write_text("\n".join(lines))
    os._exit(5 if lines else 0)


@pytest.mark.fault("F18")
def test_a_full_disk_stops_the_sync_in_one_line_and_the_next_run_loses_nothing(tmp_path: Path):
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    shop, twin = open_small_shop(tmp_path / "full", now), open_small_shop(tmp_path / "twin", now)
    said = tmp_path / "said.txt"
    try:
        Store.open(shop.settings.store_url).close()  # the store exists; then the disk fills up
        with threadpool_limits(limits=1, user_api="openmp"):
            child = multiprocessing.get_context("fork").Process(
                target=_sync_on_a_full_disk, args=(shop.settings, shop.endpoints, 150_001, said))
            child.start()
            child.join(timeout=120)
        lines = said.read_text().splitlines()
        assert child.exitcode == 5 and lines, (child.exitcode, lines)
        assert all("full" in line for line in lines), lines  # each failing step says the disk is full, in one line

        for box in (shop, twin):
            store = Store.open(box.settings.store_url)
            try:
                assert store.integrity() == "ok"
                report = run_sync(box.settings, store, endpoints=box.endpoints)
            finally:
                store.close()
            assert not report.errors, [str(e) for e in report.errors]
        assert state(shop) == state(twin)  # space freed, the next run reaches what an undisturbed run reaches
    finally:
        for box in (*shop.sandboxes.values(), *twin.sandboxes.values()):
            box.stop()
