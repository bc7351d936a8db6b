"""Fault scenarios of RELIABILITY.md §4.2 that no other test covers, and the map of where every one is tested.

Each test that covers a scenario carries ``@pytest.mark.fault("F…")`` (bad-input corpus cases get their ``B…``
from the case itself, in tests/conftest.py), so `pytest -m fault` runs them all and bench/reliability_report.py
counts them per group. The map:

| F   | scenario                         | where                                                                       |
|-----|----------------------------------|-----------------------------------------------------------------------------|
| F1  | random SIGKILL then resume       | test_crash_points (≈180 seeded kills, small shop), test_sync_kill (spawned, 1,000 contacts; 10,000 with RETENTION_SOAK=1) |
| F2  | crash after remote 2xx           | test_crash_points (after-remote-2xx at every write batch)                   |
| F3  | crash mid-commit                 | test_crash_points (mid-commit at every store transaction; full integrity_check after each resume) |
| F4  | power-loss copies of db + wal    | not yet tested                                                              |
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
| F16 | missing scope                    | test_hubspot_read                                                           |
| F17 | SQLite locked                    | test_store (short lock waited out, long lock one clear line)                |
| F18 | disk full                        | not yet tested (the store's "disk is full" line exists in sync/store.py)    |
| F19 | scheduler overlap, stale lease   | test_scheduler                                                              |
| F20 | clock / time zone                | test_csv_properties (every offset notation, Pacific/Chatham) — runs under other TZ values not yet |
| F21 | pagination drift                 | test_hubspot_read (same-second changes, window split, look-back)            |
| F22 | merge mid-sync                   | test_hubspot_read, test_hubspot_write (survivor gets the write)             |
| F23 | archived / deleted               | test_hubspot_read, test_store (tombstoned)                                  |
| F24 | consent wall                     | test_mailchimp, test_mailchimp_batches, test_sync, test_two_way, test_crash_points (status requests counted) |
| F25 | GDPR erasure                     | test_forget                                                                 |
| F26 | webhook authenticity             | not applicable: retention-sync receives no webhooks                         |
| F27 | survey-source quirks             | test_survey_connectors                                                      |
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connectors.base import RateLimited
from connectors.sandbox import Fault
from sync.pipeline import run_sync
from sync.store import Store
from tests.test_crash_points import open_small_shop


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
