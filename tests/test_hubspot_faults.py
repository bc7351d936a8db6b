"""HubSpot under faults and limits: 429 storms, outages, HTML error pages, the daily limit, stalls, dropped responses,
and the credential never leaking into logs, the store, errors or the journal."""

from __future__ import annotations

import logging
import random
import re
import uuid

import pytest

from connectors.base import AuthError, RateLimited, SourceError
from connectors.hubspot.destination import HubSpotDestination, default_names
from connectors.hubspot.source import HubSpotSource
from connectors.sandbox import Fault
from sync.engine import push_changes, run_source_once
from sync.store import Store
from tests.test_hubspot_read import hubspot_sandbox, make_client, stored

HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>cloudflare</body></html>"
NAMES = default_names("retention")


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/r.db")


@pytest.mark.fault("F5", "F6", "F8")
def test_random_429s_and_a_60_second_outage_lose_nothing_and_honour_retry_after(store):
    with hubspot_sandbox(2_000, speed=400) as box:
        box.faults.outage(60, status=502, body=HTML_502, content_type="text/html")
        box.faults.add(Fault(status=429, times=None, probability=0.12, retry_after_s=2.0, name="429 with Retry-After"))
        box.faults.add(Fault(status=429, times=None, probability=0.09, name="429 without Retry-After"))
        client = make_client(box, rng=random.Random(5))
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")

        assert set(stored(store, "contact")) == set(box.objects["contacts"])
        assert set(stored(store, "order")) == set(box.objects["deals"])
        entries = box.journal.entries()
        assert sum(e.status == 502 for e in entries) >= 2 and entries[-1].monotonic - entries[0].monotonic >= 60
        throttled = [n for n, e in enumerate(entries) if e.fault == "429 with Retry-After"]
        assert len(throttled) >= 10 and sum(e.fault == "429 without Retry-After" for e in entries) >= 5
        for n in throttled:
            if n + 1 < len(entries):
                assert entries[n + 1].monotonic - entries[n].monotonic >= 2.0  # never earlier than the server asked


@pytest.mark.fault("F8")
def test_a_persistent_html_gateway_error_ends_in_one_short_line_with_status_and_correlation_id(store):
    with hubspot_sandbox(10, speed=2_000) as box:
        box.faults.add(Fault(status=502, times=None, body=HTML_502, content_type="text/html", match="/search"))
        with pytest.raises(SourceError) as caught:
            run_source_once(store, HubSpotSource(make_client(box, rng=random.Random(1))), "sync", "hubspot")
        message = str(caught.value)
        assert re.search(r"502 \(non-JSON error page, correlation id [0-9a-f-]{36}\)", message)
        assert "<html" not in message and "\n" not in message and len(message) < 300
        assert caught.value.retryable


@pytest.mark.fault("F7")
def test_the_daily_limit_stops_the_run_with_a_checkpoint_and_one_line(store):
    with hubspot_sandbox(300, daily_limit=3) as box:
        with pytest.raises(RateLimited) as caught:
            run_source_once(store, HubSpotSource(make_client(box)), "sync", "hubspot")
        assert "DAILY" in str(caught.value) and "resumes" in str(caught.value) and "\n" not in str(caught.value)
        assert store.cursor("hubspot", "contacts") is None  # nothing half-committed: the next run starts from the checkpoint
        assert len(box.journal) == 4  # the three allowed requests and the refused one: no retry loop on a daily limit


@pytest.mark.fault("F9")
def test_a_stalled_search_times_out_and_is_retried(store):
    with hubspot_sandbox(30) as box:
        box.faults.add(Fault(kind="stall", stall_s=1.5, match="contacts/search", times=1))
        run_source_once(store, HubSpotSource(make_client(box, timeout_s=1.0, rng=random.Random(2))), "sync", "hubspot")
        assert set(stored(store, "contact")) == set(box.objects["contacts"])


@pytest.mark.fault("F10")
def test_a_write_applied_but_its_response_dropped_is_confirmed_on_retry(store):
    with hubspot_sandbox(150) as box:
        box.faults.add(Fault(kind="drop", match="batch/update", times=1))
        ids = sorted(box.objects["contacts"])
        desired = {i: {NAMES["risk_band"]: "high"} for i in ids}
        result = push_changes(store, HubSpotDestination(make_client(box, rng=random.Random(3))), desired)
        assert result.sent == len(ids) and not result.rejected
        assert all(box.objects["contacts"][i]["properties"][NAMES["risk_band"]] == "high" for i in ids)
        assert [e.status for e in box.journal.entries(path="batch/update")][:2] == [0, 200]


@pytest.mark.fault("SEC-secrets")
def test_a_canary_token_appears_nowhere(tmp_path, caplog):
    canary = f"pat-na1-canary-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    store = Store.open(f"sqlite:///{tmp_path}/r.db")
    errors = []
    with hubspot_sandbox(60, token=canary) as box:
        box.faults.add(Fault(status=503, times=2))
        client = make_client(box, token=canary, rng=random.Random(4))
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        push_changes(store, HubSpotDestination(client), {i: {NAMES["segment"]: "Nope"} for i in sorted(box.objects["contacts"])[:3]})
        box.token = "pat-na1-rotated"  # the canary is now refused: the error path must not echo it either
        for failing in (lambda: run_source_once(store, HubSpotSource(client), "sync", "hubspot"),):
            with pytest.raises(AuthError) as caught:
                failing()
            errors.append(caught.value)
        journal_text = repr(box.journal.entries())

    assert canary not in caplog.text
    assert all(canary not in f"{e!s} {e!r} {e.__cause__!r} {e.__context__!r}" for e in errors)
    assert canary not in journal_text
    for path in tmp_path.iterdir():
        assert canary.encode() not in path.read_bytes(), path.name


def oauth_client(box, refresh_token: str = "refresh-1"):
    from connectors.hubspot.client import OAuthGrant

    box.oauth_client = ("app-1", "app-secret")
    box.refresh_tokens.add("refresh-1")
    return make_client(box, token="", oauth=OAuthGrant("app-1", "app-secret", refresh_token))


@pytest.mark.fault("F14")
def test_oauth_refreshes_before_expiry_and_once_after_an_early_expiry(store):
    with hubspot_sandbox(400, speed=200) as box:
        box.access_token_lifetime_s = 120.0  # short-lived tokens, so a read outlives several of them
        box.faults.add(Fault(status=429, times=None, probability=0.3, retry_after_s=20.0, match="/search"))  # slow the read down
        client = oauth_client(box)
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        refreshes = box.journal.entries(path="/oauth/v1/token")
        assert len(refreshes) >= 2 and all(e.status == 200 for e in refreshes)
        assert not [e for e in box.journal.entries() if e.status == 401]  # refreshed in time: no call met an expired token

        box.faults.clear()
        box.clock.set_speed(1.0)  # from here on, the token's 120 s cannot run out while the test looks
        client.refresh_access_token()  # a fresh token the client trusts for two minutes...
        box.access_tokens = {token: 0.0 for token in box.access_tokens}  # ...which HubSpot expires early
        box.journal.clear()
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        statuses = [(e.path, e.status) for e in box.journal.entries()][:3]
        assert statuses[0][1] == 401 and statuses[1] == ("/oauth/v1/token", 200) and statuses[2][1] == 200


@pytest.mark.fault("F15")
def test_a_revoked_oauth_grant_stops_with_one_line_after_at_most_two_requests(store):
    with hubspot_sandbox(20) as box:
        client = oauth_client(box, refresh_token="refresh-revoked")
        with pytest.raises(AuthError) as caught:
            run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        assert "reconnect" in str(caught.value) and "refresh-revoked" not in str(caught.value) and "app-secret" not in str(caught.value)
        assert len(box.journal) <= 2 and "refresh-revoked" not in repr(box.journal.entries())
