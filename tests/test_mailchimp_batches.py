"""Merge fields through Mailchimp's batch operations: few calls, per-member outcomes, consent untouched."""

from __future__ import annotations

import json

import pytest

from connectors.base import SourceError
from connectors.mailchimp.destination import MailchimpDestination
from connectors.mailchimp.mapping import WRITABLE_MERGE_FIELDS, desired_from_scores, subscriber_hash
from connectors.mailchimp.sandbox import PROBLEM
from connectors.mailchimp.seed import LIST_ID, member_email
from connectors.sandbox import Fault
from sync.engine import push_changes
from tests.test_mailchimp import all_emails, make_client, sandbox, scores_for, statuses, store, writes  # noqa: F401

BATCH_OPERATION = "batch-operation"


def members(sandbox):
    return sandbox.lists[LIST_ID]["members"]


def reachable(sandbox, emails: list[str]) -> list[str]:
    return [e for e in emails if members(sandbox)[subscriber_hash(e)]["status"] != "archived"]


def compliance_problem(email: str) -> dict:
    return {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": "Member In Compliance State",
        "status": 400,
        "detail": f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review.",
        "instance": "batch",
    }


@pytest.mark.fault("F24")
def test_2000_members_merge_fields_go_in_4_batches_and_no_request_carries_a_status(sandbox, store):
    emails = all_emails(2_000)
    before = statuses(sandbox)
    destination = MailchimpDestination(make_client(sandbox), LIST_ID)
    result = push_changes(store, destination, desired_from_scores(scores_for(emails)))

    written = reachable(sandbox, emails)
    assert len(sandbox.journal.entries("POST", r"/3\.0/batches\Z")) == 4
    assert len(sandbox.journal.entries("GET", r"/3\.0/batches/")) <= 4 * 3  # pending, then finished: a few polls
    assert not [e for e in sandbox.journal.entries("PATCH") if e.fault != BATCH_OPERATION]  # no single PATCH
    operations = [e for e in sandbox.journal if e.fault == BATCH_OPERATION]
    assert sorted(e.path.rsplit("/", 1)[1] for e in operations) == sorted(subscriber_hash(e) for e in written)
    for entry in writes(sandbox):
        assert not (isinstance(entry.body, dict) and ("status" in entry.body or "status_if_new" in entry.body)), entry
    for entry in sandbox.journal.entries("POST", r"/3\.0/batches\Z"):
        assert all(set(json.loads(op["body"])) == {"merge_fields"} for op in entry.body["operations"])
    assert statuses(sandbox) == before
    assert all(members(sandbox)[subscriber_hash(e)]["merge_fields"]["CHURNRISK"] == 80 for e in written)
    assert all("archived" in r.reason for r in result.rejected)
    # Each POST /batches is one write call, as a segment call is: tags, merge fields created, 4 batches.
    segment_writes = len(sandbox.journal.entries("POST", r"/segments"))
    merge_field_writes = len(sandbox.journal.entries("POST", r"/merge-fields\Z"))
    assert destination.write_calls == segment_writes + merge_field_writes + 4

    sandbox.journal.clear()
    again = MailchimpDestination(make_client(sandbox), LIST_ID)
    rerun = push_changes(store, again, desired_from_scores(scores_for(emails)))
    assert writes(sandbox) == [] and again.write_calls == 0 and rerun.sent == 0


@pytest.mark.fault("F11")
def test_a_refusal_inside_a_batch_is_that_members_receipt_and_the_rest_are_confirmed(sandbox, store):
    emails = reachable(sandbox, all_emails(300))
    walled, missing, flaky, down = emails[10], emails[20], emails[30], emails[40]
    faults = sandbox.operation_faults
    faults.add(Fault(status=400, match=subscriber_hash(walled), body=compliance_problem(walled), content_type=PROBLEM))
    faults.add(Fault(status=404, match=subscriber_hash(missing)))  # the sandbox's own Resource Not Found
    faults.add(Fault(status=503, match=subscriber_hash(flaky), times=1))  # fine in the retry batch
    faults.add(Fault(status=503, match=subscriber_hash(down), times=2))  # fails in the retry batch too
    desired = desired_from_scores(scores_for(emails))
    result = push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)

    merge_refusals = [r for r in result.rejected if r.change.field_name in WRITABLE_MERGE_FIELDS]
    by_member = {r.change.object_id: r for r in merge_refusals}
    assert set(by_member) == {walled, missing, down}
    assert all("\n" not in r.reason and r.change.object_id in r.reason for r in merge_refusals)
    assert by_member[walled].permanent and "Member In Compliance State" in by_member[walled].reason
    assert not by_member[missing].permanent and "Resource Not Found" in by_member[missing].reason
    assert not by_member[down].permanent and "in two batches" in by_member[down].reason
    # The retry batch carried only the two members whose operations failed on Mailchimp's side.
    first, retry = sandbox.journal.entries("POST", r"/3\.0/batches\Z")
    assert {op["operation_id"] for op in retry.body["operations"]} == {subscriber_hash(flaky), subscriber_hash(down)}
    confirmed = set(emails) - {walled, missing, down}
    assert all(members(sandbox)[subscriber_hash(e)]["merge_fields"].get("SEGMENT") == "Champions" for e in confirmed)
    # Their tags went through the segment calls as everyone's did; only their merge fields were refused.
    assert result.sent == sum(len(fields) for fields in desired.values()) - len(merge_refusals)
    assert len(merge_refusals) == 3 * len([f for f in desired[walled] if f in WRITABLE_MERGE_FIELDS])


@pytest.mark.fault("F6", "F8", "F10")
def test_batch_requests_are_retried_through_429_5xx_and_a_dropped_answer(sandbox, store):
    sandbox.faults.add(Fault(status=429, times=1, match=r"POST /3\.0/batches\Z"))
    sandbox.faults.add(Fault(status=503, times=2, match=r"GET /3\.0/batches/"))
    sandbox.faults.add(Fault(status=503, times=1, match="GET /batch-results/"))
    # The batch is submitted and runs, but the answer is lost: the client submits it again, which changes nothing.
    sandbox.faults.add(Fault(kind="drop", times=1, match=r"POST /3\.0/batches\Z"))
    emails = all_emails(1_200)
    result = push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired_from_scores(scores_for(emails)))
    assert all("archived" in r.reason for r in result.rejected)
    assert {e.fault for e in sandbox.journal if e.fault} >= {"status 429", "status 503", "drop"}
    assert all(members(sandbox)[subscriber_hash(e)]["merge_fields"]["SEGMENT"] == "Champions" for e in reachable(sandbox, emails))


def test_a_batch_that_never_finishes_is_an_error_naming_it(sandbox):
    sandbox.batch_pending_polls = 1_000_000
    client = make_client(sandbox)
    client.batch_wait_s = 120.0
    operation = {"method": "GET", "path": f"/lists/{LIST_ID}/members/{subscriber_hash(member_email(1))}"}
    started = sandbox.clock.monotonic()
    with pytest.raises(SourceError) as raised:
        client.run_batches([[operation]])
    [batch_id] = sandbox.batches
    assert f"batch {batch_id} did not finish within 120 s" in str(raised.value) and raised.value.retryable
    assert 60 <= sandbox.clock.monotonic() - started <= 240  # waited in sandbox seconds, polls backing off
    assert len(sandbox.journal.entries("GET", r"/3\.0/batches/")) <= 10


def test_fewer_than_20_members_go_as_single_patches(sandbox, store):
    emails = reachable(sandbox, all_emails(30))[:19]
    push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired_from_scores(scores_for(emails)))
    assert not sandbox.journal.entries("POST", r"/3\.0/batches\Z")
    patches = sandbox.journal.entries("PATCH")
    assert len(patches) == 19 and all(set(e.body) == {"merge_fields"} for e in patches)


@pytest.mark.fault("F2")
def test_a_batch_an_interrupted_run_left_running_is_waited_for_and_its_members_are_not_written_again(sandbox, store):
    # Mailchimp runs a batch some time after accepting it. The first run submits its batches and stops before they
    # run (it gives up waiting here; a kill leaves the same): its intents stay in doubt, its batches still pending.
    sandbox.batch_operations_deferred = True
    sandbox.batch_pending_polls = 1_000_000
    emails = reachable(sandbox, all_emails(1_200))
    desired = desired_from_scores(scores_for(emails))
    impatient = make_client(sandbox)
    impatient.batch_wait_s = 60.0
    with pytest.raises(SourceError, match="did not finish"):
        push_changes(store, MailchimpDestination(impatient, LIST_ID), desired)
    submitted = sandbox.journal.entries("POST", r"/3\.0/batches\Z")
    assert len(submitted) == 3 and not any(members(sandbox)[subscriber_hash(e)]["merge_fields"].get("CHURNRISK") for e in emails)

    # The batches finish a few looks later. The next run reads the members back only once they have: every
    # intent is found applied, and no member's merge fields are sent again.
    sandbox.batch_pending_polls = max(batch["_polls"] for batch in sandbox.batches.values()) + 2
    result = push_changes(store, MailchimpDestination(make_client(sandbox), LIST_ID), desired)
    assert len(sandbox.journal.entries("POST", r"/3\.0/batches\Z")) == len(submitted)  # nothing sent again
    assert result.sent == 0 and result.reconciled >= 3 * len(emails)  # at least the 3 merge fields of each
    assert not store.ledger_rows(f"mailchimp/{LIST_ID}", pending=True)
    assert all(members(sandbox)[subscriber_hash(e)]["merge_fields"]["CHURNRISK"] == 80 for e in emails)
