"""The Mailchimp connector through the official SDK against the sandbox over loopback."""

from __future__ import annotations

import functools
import http.server
import logging
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.base import AuthError, RecordRejected, SourceError
from connectors.mailchimp.client import MailchimpClient
from connectors.mailchimp.destination import MailchimpDestination
from connectors.mailchimp.mapping import desired_from_scores, subscriber_hash
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID, member_email, seed_audience
from connectors.mailchimp.source import MailchimpSource
from connectors.records import Score, from_payload
from connectors.retry import RetryPolicy
from connectors.sandbox import Clock, Fault
from sync.engine import push_changes, run_source_once
from sync.settings import MailchimpSettings
from sync.store import Store
from tests.canary import MAILCHIMP_CANARY

KEY = MAILCHIMP_CANARY  # the session's canary (tests/canary.py): it must appear nowhere but in the Authorization header
SIZE = 10_000
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def sandbox():
    box = MailchimpSandbox(api_key=KEY, clock=Clock(speed=200), seed=3)
    seed_audience(box, SIZE, seed=7, orders=500)
    with box:
        yield box


def make_client(sandbox: MailchimpSandbox, api_key: str = KEY, **overrides) -> MailchimpClient:
    settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,), **overrides)
    return MailchimpClient(
        settings,
        api_key=api_key,
        base_url=sandbox.url,
        clock=sandbox.clock,
        policy=RetryPolicy(base_delay_s=0.5, max_delay_s=5.0),
    )


def scores_for(emails, band="high", segment="Champions"):
    return [
        Score(
            source="scoring",
            source_id=email,
            churn_probability=0.8 if band == "high" else 0.1,
            risk_band=band,
            scored_at=AS_OF,
            segment=segment,
            clv=Decimal("120.50"),
            clv_currency="EUR",
            sentiment=-0.4,
        )
        for email in emails
    ]


def all_emails(size: int = SIZE) -> list[str]:
    return [member_email(i) for i in range(size)]


def statuses(sandbox: MailchimpSandbox) -> dict[str, str]:
    return {h: m["status"] for h, m in sandbox.lists[LIST_ID]["members"].items()}


def shop_tags(sandbox: MailchimpSandbox) -> dict[str, list[str]]:
    return {
        h: [t for t in sandbox.member_tags(LIST_ID, h) if not t.startswith("rs:")]
        for h in sandbox.lists[LIST_ID]["members"]
    }


def writes(sandbox: MailchimpSandbox):
    return [e for e in sandbox.journal if e.method != "GET"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path}/r.db")


# --- read path ---------------------------------------------------------------------------------------------------


def test_members_activity_and_orders_of_the_allowed_audience_reach_the_store(sandbox, store):
    other = sandbox.add_list("Not allowed")
    sandbox.add_member(other, "secret@example.com")
    result = run_source_once(store, MailchimpSource(make_client(sandbox)), "sync", "mailchimp")
    contacts = dict(store.stored_records("contact", "mailchimp"))
    assert len(contacts) == SIZE
    assert not any("secret@example.com" in payload for payload in contacts.values())
    assert not any(e.path.startswith(f"/3.0/lists/{other}") for e in sandbox.journal)
    opted_out = sum('"is_unsubscribed":true' in payload for payload in contacts.values())
    assert opted_out == 500 + 200  # unsubscribed and cleaned; archived members were removed by the marketer
    assert result.counts["email_event"].read > 0 and result.counts["order"].read == 500
    events = [p for _, p in store.stored_records("email_event", "mailchimp")]
    assert {
        kind for kind in ("open", "click", "bounce", "unsubscribe") if any(f'"event":"{kind}"' in p for p in events)
    } == {"open", "click", "bounce", "unsubscribe"}


def test_second_read_asks_only_for_members_changed_since_the_cursor_minus_lookback(sandbox, store):
    source = MailchimpSource(make_client(sandbox))
    run_source_once(store, source, "sync", "mailchimp")
    sandbox.journal.clear()
    run_source_once(store, source, "sync", "mailchimp")
    member_reads = sandbox.journal.entries("GET", r"/lists/[^/]+/members\Z")
    assert member_reads and all("since_last_changed" in e.query for e in member_reads)
    assert len(member_reads) == 1  # only the newest few members fall inside the look-back window


# --- write path --------------------------------------------------------------------------------------------------


def test_after_a_write_to_the_whole_audience_later_reads_do_not_read_it_all_again(sandbox, store):
    source = MailchimpSource(make_client(sandbox))
    run_source_once(store, source, "sync", "mailchimp")
    for member in sandbox.lists[LIST_ID]["members"].values():
        sandbox._touch(member)  # as our tags on everyone would
    assert run_source_once(store, source, "sync", "mailchimp").counts["contact"].read == SIZE  # read back once

    sandbox.clock.advance(25 * 60)  # two look-back windows (10 minutes each) and more, with no change
    run_source_once(store, source, "sync", "mailchimp")
    later = run_source_once(store, source, "sync", "mailchimp")

    assert later.counts["contact"].read == 0


@pytest.mark.fault("F24")
def test_scores_reach_every_reachable_member_and_never_touch_consent_or_shop_tags(sandbox, store):
    before_status, before_tags = statuses(sandbox), shop_tags(sandbox)
    destination = MailchimpDestination(make_client(sandbox), LIST_ID)
    # Tags for all 10k (merge fields go through batch operations: their own tests, in test_mailchimp_batches.py).
    result = push_changes(
        store,
        destination,
        desired_from_scores(scores_for(all_emails()), include_merge_fields=False),
    )
    members = sandbox.lists[LIST_ID]["members"]
    archived = {h for h, m in members.items() if m["status"] == "archived"}
    assert len(archived) == 50
    for member_hash in members:
        tags = sandbox.member_tags(LIST_ID, member_hash)
        if member_hash in archived:
            assert not any(t.startswith("rs:") for t in tags)
        else:
            assert {
                "rs:churn-high",
                "rs:segment-champions",
                "rs:sentiment-negative",
            } <= set(tags)
    assert statuses(sandbox) == before_status
    assert shop_tags(sandbox) == before_tags
    existing = {m["email_address"] for m in members.values()}
    for entry in writes(sandbox):
        assert not (isinstance(entry.body, dict) and ("status" in entry.body or "status_if_new" in entry.body)), entry
    assert not sandbox.journal.entries("PUT") and not sandbox.journal.entries("POST", r"/members\Z")
    assert len({r.change.object_id for r in result.rejected}) == 50  # the archived ones, each reported
    assert all("archived" in r.reason for r in result.rejected)
    assert existing  # the scan above covered real members


def test_merge_fields_are_created_with_mailchimps_rules_and_written_without_status(sandbox, store):
    emails = all_emails(1_000)[400:700]  # includes unsubscribed, cleaned and archived members
    push_changes(
        store,
        MailchimpDestination(make_client(sandbox), LIST_ID),
        desired_from_scores(scores_for(emails)),
    )
    fields = sandbox.lists[LIST_ID]["merge_fields"]
    assert (
        fields["CHURNRISK"]["type"],
        fields["SEGMENT"]["type"],
        fields["CLV"]["type"],
    ) == ("number", "text", "number")
    patches = sandbox.journal.entries("PATCH")
    assert patches and all(set(e.body) == {"merge_fields"} for e in patches)
    for email in emails:
        member = sandbox.lists[LIST_ID]["members"][subscriber_hash(email)]
        if member["status"] == "archived":
            assert "CHURNRISK" not in member["merge_fields"]
        else:
            assert (
                member["merge_fields"]["CHURNRISK"],
                member["merge_fields"]["SEGMENT"],
                member["merge_fields"]["CLV"],
            ) == (80, "Champions", 120.5)


@pytest.mark.fault("L2")
def test_second_run_writes_nothing_and_a_changed_score_swaps_only_that_members_tool_tags(sandbox, store):
    emails = all_emails(600)
    push_changes(
        store,
        MailchimpDestination(make_client(sandbox), LIST_ID),
        desired_from_scores(scores_for(emails)),
    )
    sandbox.journal.clear()
    again = push_changes(
        store,
        MailchimpDestination(make_client(sandbox), LIST_ID),
        desired_from_scores(scores_for(emails)),
    )
    assert writes(sandbox) == [] and again.sent == 0
    changed = member_email(500)
    desired = desired_from_scores(scores_for(emails))
    desired.update(desired_from_scores(scores_for([changed], band="low")))
    before = {h: sandbox.member_tags(LIST_ID, h) for h in sandbox.lists[LIST_ID]["members"]}
    push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)
    after = {h: sandbox.member_tags(LIST_ID, h) for h in sandbox.lists[LIST_ID]["members"]}
    changed_hash = subscriber_hash(changed)
    assert {h for h in after if after[h] != before[h]} == {changed_hash}
    assert set(before[changed_hash]) - set(after[changed_hash]) == {"rs:churn-high"}
    assert set(after[changed_hash]) - set(before[changed_hash]) == {"rs:churn-low"}
    for entry in writes(sandbox):
        touched = (
            entry.body.get("members_to_add", []) + entry.body.get("members_to_remove", [])
            if "members_to_add" in entry.body
            else [changed]
        )
        assert touched == [changed] or entry.path.endswith(changed_hash)


@pytest.mark.fault("L3")
def test_a_member_is_taken_to_hold_something_else_than_we_wrote_only_when_read_after_our_write(sandbox, store):
    """The members a sync read (before its writes) still show the tags they had: that is no reason to send ours
    again, even while Mailchimp, which does not stamp a tag change, gives no reason to read that member again. A
    member read after our write without our tag (removed by hand) has it written back, once."""
    source = MailchimpSource(make_client(sandbox))
    email = next(m["email_address"] for m in sandbox.lists[LIST_ID]["members"].values() if m["status"] == "subscribed")
    desired = desired_from_scores(scores_for([email]), include_merge_fields=False)

    def push_as_read() -> int:
        """A write run as a sync makes one: the destination knows the members as the store holds them."""
        destination = MailchimpDestination(make_client(sandbox), LIST_ID)
        destination.know_members(from_payload("contact", payload) for _, payload in store.stored_records("contact", "mailchimp"))
        return push_changes(store, destination, desired).sent

    run_source_once(store, source, "sync", "mailchimp")
    assert push_as_read() == 3  # churn, segment and sentiment tags
    assert push_as_read() == 0  # the member as read before that write has none of them: known, not a difference
    client = make_client(sandbox)
    client.sdk.lists.update_list_member_tags(LIST_ID, subscriber_hash(email), {"tags": [{"name": "rs:churn-high", "status": "inactive"}]})
    run_source_once(store, source, "sync", "mailchimp")
    assert push_as_read() == 1 and "rs:churn-high" in sandbox.member_tags(LIST_ID, subscriber_hash(email))
    run_source_once(store, source, "sync", "mailchimp")
    assert push_as_read() == 0


def test_a_non_number_typed_into_a_number_merge_field_does_not_stop_settling_an_interrupted_run(sandbox, store):
    """Reading back what an interrupted run may have written, a CLV a user set to "n/a" is not ours: that intent is
    dropped and the value is sent again, instead of the settling failing and with it every later run."""
    email = next(m["email_address"] for m in sandbox.lists[LIST_ID]["members"].values() if m["status"] == "subscribed")
    desired = desired_from_scores(scores_for([email]))
    sandbox.faults.add(Fault(status=401, match="PATCH "))  # the run stops at its merge field write: intents in doubt
    with pytest.raises(AuthError):
        push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)
    assert (email, "CLV") in store.ledger_rows(f"mailchimp/{LIST_ID}", pending=True)
    client = make_client(sandbox)
    client.sdk.lists.update_list_member(LIST_ID, subscriber_hash(email), {"merge_fields": {"CLV": "n/a"}},
                                        skip_merge_validation="true")
    assert sandbox.lists[LIST_ID]["members"][subscriber_hash(email)]["merge_fields"]["CLV"] == "n/a"

    push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)
    assert not store.ledger_rows(f"mailchimp/{LIST_ID}", pending=True)
    assert sandbox.lists[LIST_ID]["members"][subscriber_hash(email)]["merge_fields"]["CLV"] == 120.5


@pytest.mark.fault("F24")
def test_a_forgotten_address_is_never_re_added_and_reported_once(sandbox, store):
    client = make_client(sandbox, add_new_contacts=True)
    forgotten = member_email(9_999)
    client.call(
        "forgetting",
        client.sdk.lists.delete_list_member_permanent,
        LIST_ID,
        subscriber_hash(forgotten),
    )
    newcomer = "new.customer@example.org"
    desired = desired_from_scores(scores_for([forgotten, newcomer, member_email(9_000)]))
    first = push_changes(store, MailchimpDestination(client, LIST_ID), desired)
    assert subscriber_hash(forgotten) not in sandbox.lists[LIST_ID]["members"]
    refused = {r.change.object_id for r in first.rejected}
    assert refused == {forgotten}
    assert any("Forgotten Email Not Subscribed" in r.reason and forgotten in r.reason for r in first.rejected)
    assert sandbox.lists[LIST_ID]["members"][subscriber_hash(newcomer)]["status"] == "pending"
    puts = sandbox.journal.entries("PUT")
    assert [e.body.get("status_if_new") for e in puts] == [
        "pending",
        "pending",
    ] and all("status" not in e.body for e in puts)
    sandbox.journal.clear()
    second = push_changes(
        store,
        MailchimpDestination(make_client(sandbox, add_new_contacts=True), LIST_ID),
        desired,
    )
    assert second.rejected == [] and second.held_back > 0
    assert writes(sandbox) == []
    # A new score for that person is not a reason to try again: Mailchimp's refusal is for good.
    sandbox.journal.clear()
    changed = desired_from_scores(scores_for([forgotten], band="low", segment="Lost"))
    third = push_changes(store, MailchimpDestination(make_client(sandbox, add_new_contacts=True), LIST_ID), changed)
    assert third.rejected == [] and third.held_back == len(changed[forgotten])
    assert sandbox.journal.entries() == []
    assert len([row for row in store.quarantined() if forgotten in str(row)]) == 1  # reported once


@pytest.mark.fault("F24")
def test_without_add_new_contacts_strangers_are_refused_without_a_request(sandbox, store):
    result = push_changes(
        store,
        MailchimpDestination(make_client(sandbox), LIST_ID),
        desired_from_scores(scores_for(["stranger@example.net"])),
    )
    assert {r.change.object_id for r in result.rejected} == {"stranger@example.net"}
    assert "add_new_contacts" in result.rejected[0].reason
    assert writes(sandbox) == []


# --- limits and faults ----------------------------------------------------------------------------------------------


@pytest.mark.fault("L6")
def test_concurrency_never_exceeds_max_connections(sandbox, store):
    sandbox.max_concurrent = 3  # a stricter account: any 4th connection would be refused with 429
    sandbox.faults.add(Fault(kind="stall", stall_s=0.02, times=None, match="POST "))  # so requests overlap
    client = make_client(sandbox, max_connections=3)
    push_changes(
        store,
        MailchimpDestination(client, LIST_ID),
        desired_from_scores(scores_for(all_emails(600))),
    )
    assert 1 < sandbox.max_seen_concurrent <= 3
    assert not [e for e in sandbox.journal if e.fault == "concurrency"]


@pytest.mark.fault("F6", "F8")
def test_rate_limits_and_server_errors_are_retried_until_everything_is_written(sandbox, store):
    sandbox.faults.random(0.2, status=429)
    sandbox.faults.add(Fault(status=503, times=4, match="POST /3.0/lists/.*/segments/"))
    sandbox.faults.add(Fault(kind="drop", times=1, match="POST /3.0/batches"))
    desired = desired_from_scores(scores_for(all_emails(1_500)), include_merge_fields=False)
    desired.update(desired_from_scores(scores_for(all_emails(1_000)[900:])))  # and a batch of merge fields
    result = push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)
    assert result.rejected and all("archived" in r.reason for r in result.rejected)  # nothing refused but those
    assert [e for e in sandbox.journal if e.status == 429] and [e for e in sandbox.journal if e.status == 503]
    assert [e for e in sandbox.journal if e.fault == "drop"]
    assert all(
        "rs:churn-high" in sandbox.member_tags(LIST_ID, subscriber_hash(e))
        for e in all_emails(1_500)
        if sandbox.lists[LIST_ID]["members"][subscriber_hash(e)]["status"] != "archived"
    )


@pytest.mark.fault("F9")
def test_a_stalled_request_times_out_and_is_retried(sandbox):
    sandbox.faults.add(Fault(kind="stall", stall_s=1.5, times=1, match="GET /3.0/lists/[^/]+\\Z"))
    client = make_client(sandbox, timeout_s=1.0)
    body = client.call("reading the audience", client.sdk.lists.get_list, LIST_ID)
    assert body["id"] == LIST_ID
    # The answer came from the retry: the stalled request is still held by the sandbox, so not yet journaled.
    [answered] = sandbox.journal.entries("GET", r"/lists/[^/]+\Z")
    assert answered.fault is None and answered.status == 200


def test_a_problem_document_becomes_one_line_naming_the_member(sandbox):
    client = make_client(sandbox)
    email = member_email(4_000)
    with pytest.raises(RecordRejected) as raised:
        client.call(
            "writing merge fields",
            client.sdk.lists.update_list_member,
            LIST_ID,
            subscriber_hash(email),
            {"merge_fields": {"NOSUCH": 1}},
            member=email,
        )
    text = str(raised.value)
    assert "\n" not in text and email in text and "NOSUCH" in text and raised.value.record_id == email


@pytest.mark.fault("F15")
def test_a_wrong_key_is_an_auth_error_that_says_what_to_do(sandbox):
    client = make_client(sandbox, api_key="wrongkey-us6")
    with pytest.raises(AuthError, match="check the API key"):
        client.call("reading the audience", client.sdk.lists.get_list, LIST_ID)


def test_an_oauth_token_finds_its_data_centre_through_the_metadata_endpoint(sandbox):
    sandbox.oauth_token = "oauth-canary-token"
    settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,))
    client = MailchimpClient(
        settings,
        oauth_token="oauth-canary-token",
        base_url=sandbox.url,
        metadata_url=f"{sandbox.url}/oauth2/metadata",
        clock=sandbox.clock,
    )
    assert client.sdk.api_client.server == "us6"
    assert client.call("reading the audience", client.sdk.lists.get_list, LIST_ID)["id"] == LIST_ID


def test_a_refused_oauth_token_or_a_metadata_page_that_is_not_json_is_one_line(sandbox, tmp_path):
    sandbox.oauth_token = "the-current-token"
    settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,))
    with pytest.raises(AuthError) as refused:
        MailchimpClient(settings, oauth_token="oauth-canary-revoked", base_url=sandbox.url,
                        metadata_url=f"{sandbox.url}/oauth2/metadata")
    assert str(refused.value) == "mailchimp: the OAuth token was refused; connect the account again"
    # A proxy or captive portal answering 200 with an HTML page instead of Mailchimp's JSON.
    (tmp_path / "index.html").write_text("<html><body>Sign in to the hotel Wi-Fi</body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    portal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SourceError) as not_json:
            MailchimpClient(settings, oauth_token="oauth-canary-revoked", base_url=sandbox.url,
                            metadata_url=f"http://127.0.0.1:{portal.server_port}/")
    finally:
        portal.shutdown()
        portal.server_close()
    assert str(not_json.value) == "mailchimp: the OAuth metadata endpoint answered 200 without a data centre"


@pytest.mark.fault("SEC-secrets")
def test_the_api_key_appears_nowhere(sandbox, store, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(sandbox)
    run_source_once(store, MailchimpSource(client), "sync", "mailchimp")
    push_changes(
        store,
        MailchimpDestination(client, LIST_ID),
        desired_from_scores(scores_for(all_emails(300) + ["x@y.org"])),
    )
    sandbox.faults.add(Fault(status=500, times=None, match="GET "))
    with pytest.raises(Exception) as raised:
        client.call("reading the audience", client.sdk.lists.get_list, LIST_ID)
    secret = KEY.split("-")[0]
    assert secret not in caplog.text
    assert secret not in str(raised.value) and secret not in repr(raised.value.__cause__)
    assert secret not in repr(list(sandbox.journal))
    assert all(secret.encode() not in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())


def test_doctor_check_reports_reachable_audiences_and_a_refused_key(sandbox, monkeypatch):
    from connectors.mailchimp.client import check_mailchimp
    from sync.settings import Settings

    settings = Settings(mailchimp=MailchimpSettings(enabled=True, audiences=(LIST_ID,)))
    monkeypatch.setenv("RETENTION_MAILCHIMP_API_KEY", KEY)
    healthy = check_mailchimp(settings, base_url=sandbox.url)
    assert healthy.ok and "Sandbox Shop customers" in healthy.detail
    monkeypatch.setenv("RETENTION_MAILCHIMP_API_KEY", "revoked-us6")
    refused = check_mailchimp(settings, base_url=sandbox.url)
    assert not refused.ok and "check the API key" in refused.detail and "revoked" not in refused.detail


def test_the_connectors_load_without_the_scoring_models_libraries():
    # The bench's 512 MB budget: scikit-learn and TextBlob cost over 100 MB and a connector only needs a label.
    code = "import sys, connectors.mailchimp.destination, connectors.hubspot.destination; print(sorted(m for m in ('sklearn', 'textblob') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert loaded.stdout.strip() == "[]"
