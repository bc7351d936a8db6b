"""The Mailchimp sandbox behaves as Mailchimp does where consent and limits are at stake (official SDK, loopback),
and the mapping turns its recorded payloads into records."""

from __future__ import annotations

import io
import json
import tarfile

import mailchimp_marketing
import pytest
import requests
from mailchimp_marketing.api_client import ApiClientError

from connectors.mailchimp.mapping import (
    activity_to_events,
    member_to_contact,
    order_to_record,
    subscriber_hash,
)
from connectors.mailchimp.sandbox import MailchimpSandbox, demo
from connectors.mailchimp.seed import (
    LIST_ID,
    STORE_ID,
    member_email,
    seed_audience,
    status_for,
)

KEY = "sandboxtest-us6"


@pytest.fixture(scope="module")
def box():
    sandbox = MailchimpSandbox(api_key=KEY)
    seed_audience(sandbox, 1_000, seed=2, orders=20)
    with sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def sdk(box):
    client = mailchimp_marketing.Client()
    client.set_config({"api_key": KEY, "server": "us6", "timeout": 10})
    client.api_client.host = box.url + "/3.0"
    return client


def refusal(call) -> dict:
    with pytest.raises(ApiClientError) as raised:
        call()
    return {"status": raised.value.status_code, **json.loads(raised.value.text)}


def first_with(status: str, size: int = 1_000) -> str:
    return next(member_email(i) for i in range(size) if status_for(i, size) == status)


def test_subscribing_an_unsubscribed_or_cleaned_member_is_a_compliance_refusal(box, sdk):
    for status in ("unsubscribed", "cleaned"):
        email = first_with(status)
        for write in (sdk.lists.update_list_member, sdk.lists.set_list_member):
            problem = refusal(
                lambda write=write, email=email: write(
                    LIST_ID,
                    subscriber_hash(email),
                    {"email_address": email, "status": "subscribed"},
                )
            )
            assert (problem["status"], problem["title"]) == (
                400,
                "Member In Compliance State",
            )
        assert box.lists[LIST_ID]["members"][subscriber_hash(email)]["status"] == status


def test_put_applies_status_if_new_only_to_new_members(box, sdk):
    email = first_with("unsubscribed")
    sdk.lists.set_list_member(
        LIST_ID,
        subscriber_hash(email),
        {"email_address": email, "status_if_new": "subscribed"},
    )
    assert box.lists[LIST_ID]["members"][subscriber_hash(email)]["status"] == "unsubscribed"
    created = sdk.lists.set_list_member(
        LIST_ID,
        subscriber_hash("brand.new@example.com"),
        {"email_address": "brand.new@example.com", "status_if_new": "pending"},
    )
    assert created["status"] == "pending"


def test_post_of_an_existing_member_is_member_exists_and_forgotten_addresses_stay_out(box, sdk):
    email = first_with("subscribed")
    problem = refusal(lambda: sdk.lists.add_list_member(LIST_ID, {"email_address": email, "status": "subscribed"}))
    assert problem["title"] == "Member Exists"
    gone = member_email(999)
    sdk.lists.delete_list_member_permanent(LIST_ID, subscriber_hash(gone))
    for add in (
        lambda: sdk.lists.add_list_member(LIST_ID, {"email_address": gone, "status": "pending"}),
        lambda: sdk.lists.set_list_member(
            LIST_ID,
            subscriber_hash(gone),
            {"email_address": gone, "status_if_new": "pending"},
        ),
    ):
        assert refusal(add)["title"] == "Forgotten Email Not Subscribed"
    assert subscriber_hash(gone) not in box.lists[LIST_ID]["members"]


def test_segment_batches_take_at_most_500_emails_and_report_strangers(box, sdk):
    segment = sdk.lists.create_segment(LIST_ID, {"name": "batch-check", "static_segment": []})
    too_many = [member_email(i) for i in range(501)]
    assert (
        refusal(lambda: sdk.lists.batch_segment_members({"members_to_add": too_many}, LIST_ID, str(segment["id"])))[
            "status"
        ]
        == 400
    )
    answer = sdk.lists.batch_segment_members(
        {"members_to_add": [member_email(900), "nobody@example.com"]},
        LIST_ID,
        str(segment["id"]),
    )
    assert answer["total_added"] == 1 and answer["errors"][0]["email_addresses"] == ["nobody@example.com"]


def test_merge_fields_follow_mailchimps_tag_and_type_rules(box, sdk):
    for bad in (
        {"name": "Too long", "tag": "ELEVENCHARS", "type": "text"},
        {"name": "Lower", "tag": "lower", "type": "text"},
        {"name": "Odd type", "tag": "ODD", "type": "colour"},
    ):
        assert refusal(lambda bad=bad: sdk.lists.add_list_merge_field(LIST_ID, bad))["status"] == 400
    sdk.lists.add_list_merge_field(LIST_ID, {"name": "Score", "tag": "SCORETEST", "type": "number"})
    email = first_with("subscribed")
    problem = refusal(
        lambda: sdk.lists.update_list_member(LIST_ID, subscriber_hash(email), {"merge_fields": {"SCORETEST": "high"}})
    )
    assert problem["status"] == 400 and problem["errors"][0]["field"] == "merge_fields.SCORETEST"
    assert (
        refusal(lambda: sdk.lists.update_list_member(LIST_ID, subscriber_hash(email), {"merge_fields": {"NOPE": 1}}))[
            "status"
        ]
        == 400
    )


def test_a_batch_runs_each_operation_as_the_single_call_would_and_journals_it(box, sdk):
    unsubscribed, subscribed = first_with("unsubscribed"), first_with("subscribed")
    operations = [
        {  # the compliance wall holds inside a batch too
            "method": "PATCH",
            "path": f"/lists/{LIST_ID}/members/{subscriber_hash(unsubscribed)}",
            "operation_id": "wall",
            "body": json.dumps({"status": "subscribed"}),
        },
        {
            "method": "PATCH",
            "path": f"/lists/{LIST_ID}/members/{subscriber_hash(subscribed)}",
            "operation_id": "fine",
            "body": json.dumps({"merge_fields": {"FNAME": "Batched"}}),
        },
        {"method": "GET", "path": f"/lists/{LIST_ID}/members", "operation_id": "page", "params": {"count": 2}},
    ]
    started = sdk.batches.start({"operations": operations})
    assert (started["status"], started["total_operations"], started["response_body_url"]) == ("pending", 3, "")
    assert sdk.batches.status(started["id"])["status"] == "pending"  # the first poll
    finished = sdk.batches.status(started["id"])
    assert (finished["status"], finished["finished_operations"], finished["errored_operations"]) == ("finished", 3, 1)
    assert finished["completed_at"] >= finished["submitted_at"]
    download = requests.get(finished["response_body_url"], timeout=5)  # no credentials, as Mailchimp's link
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        results = {
            r["operation_id"]: r
            for entry in archive
            if entry.isfile()
            for r in json.load(archive.extractfile(entry))
        }
    assert results["wall"]["status_code"] == 400
    assert json.loads(results["wall"]["response"])["title"] == "Member In Compliance State"
    assert results["fine"]["status_code"] == 200 and json.loads(results["page"]["response"])["total_items"] == 1_000
    assert box.lists[LIST_ID]["members"][subscriber_hash(unsubscribed)]["status"] == "unsubscribed"
    assert box.lists[LIST_ID]["members"][subscriber_hash(subscribed)]["merge_fields"]["FNAME"] == "Batched"
    inner = [e for e in box.journal if e.fault == "batch-operation"][-3:]
    assert [(e.method, e.status) for e in inner] == [("PATCH", 400), ("PATCH", 200), ("GET", 200)]
    assert inner[0].body == {"status": "subscribed"} and inner[2].query == {"count": ["2"]}


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "operations"),  # no operations at all
        ({"operations": []}, "operations"),  # an empty list
        ({"operations": [{"method": "PATCH", "path": "/lists", "body": {"a": 1}}]}, "operations[0].body"),  # not a string
        ({"operations": [{"method": "TRACE", "path": "/lists"}]}, "operations[0].method"),  # not a method
        ({"operations": [{"method": "GET", "path": "lists"}]}, "operations[0].path"),  # not a path
    ],
)
def test_a_bad_batch_is_a_problem_document_naming_the_field(box, body, field):
    response = requests.post(f"{box.url}/3.0/batches", json=body, auth=("any", KEY), timeout=5)
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]]


def test_an_unknown_batch_or_results_link_is_not_found(box, sdk):
    assert refusal(lambda: sdk.batches.status("nosuchbatch"))["status"] == 404
    assert requests.get(f"{box.url}/batch-results/0123abcd.tar.gz", timeout=5).status_code == 404
    assert requests.get(f"{box.url}/3.0/batches/x", timeout=5).status_code == 401  # the API itself still needs a key


def test_member_pages_cap_count_at_1000_and_honour_status_and_fields(box, sdk):
    # The SDK itself refuses count > 1000 before sending; a raw request shows the server does too.
    raw = requests.get(
        f"{box.url}/3.0/lists/{LIST_ID}/members",
        params={"count": 1001},
        auth=("user", KEY),
        timeout=10,
    )
    assert raw.status_code == 400 and raw.headers["Content-Type"].startswith("application/problem+json")
    page = sdk.lists.get_list_members_info(
        LIST_ID,
        count=1000,
        status="cleaned",
        fields=["members.email_address,total_items"],
    )
    assert page["total_items"] == 20 and set(page["members"][0]) == {"email_address"}


def test_demo_seeds_the_documented_status_mix():
    sandbox = demo(10_000, seed=1)
    statuses = [m["status"] for m in sandbox.lists[LIST_ID]["members"].values()]
    assert [statuses.count(s) for s in ("unsubscribed", "cleaned", "archived")] == [
        500,
        200,
        50,
    ]
    assert sandbox.campaigns and sandbox.stores[STORE_ID]["_orders"]


def test_mapping_turns_recorded_payloads_into_records(box, sdk):
    email = first_with("unsubscribed")
    contact = member_to_contact(sdk.lists.get_list_member(LIST_ID, subscriber_hash(email)), LIST_ID)
    assert (
        contact.is_unsubscribed
        and contact.match_email == email
        and contact.source_id == f"{LIST_ID}/{subscriber_hash(email)}"
    )
    assert contact.properties["mailchimp_status"] == "unsubscribed" and contact.updated_at.tzinfo is not None
    row = sdk.reports.get_email_activity_for_campaign("cmp0001", count=1)["emails"][0]
    assert [e.event.value for e in activity_to_events(row, "cmp0001")] == [a["action"] for a in row["activity"]]
    order = order_to_record(sdk.ecommerce.get_store_orders(STORE_ID, count=1)["orders"][0], STORE_ID)
    assert order.customer_email is not None and order.currency == "EUR" and order.amount > 0
