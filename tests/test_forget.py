"""`retention forget`: every trace of a person erased from the store and its files, a tombstone that keeps them out,
and propagation to HubSpot and Mailchimp through the official SDKs against the sandboxes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import mailchimp_marketing
import pytest
from mailchimp_marketing.api_client import ApiClientError
from sqlalchemy import select

from connectors.base import Rejected
from connectors.hubspot.client import erase_person as erase_from_hubspot
from connectors.hubspot.sandbox import HubSpotSandbox
from connectors.mailchimp.client import MailchimpClient
from connectors.mailchimp.client import erase_person as erase_from_mailchimp
from connectors.mailchimp.mapping import subscriber_hash
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.records import Contact, EmailAddress, EmailEvent, Score
from connectors.retry import RetryPolicy
from connectors.sandbox import Clock
from sync import schema
from sync.forget import forget_person, is_forgotten, propagate
from sync.settings import HubSpotSettings, MailchimpSettings, Settings
from sync.store import RunCounts, Store
from sync.tombstones import email_key
from tests.conftest import Workspace
from tests.test_hubspot_read import make_client as make_hubspot_client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TYPED = "Grace@Example.COM"  # as a user would type it; the customers export has GRACE@Example.com
ADDRESS = "grace@example.com"
SUBSCRIBER_HASH = hashlib.md5(ADDRESS.encode()).hexdigest()
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def import_examples(workspace: Workspace) -> None:
    for name, kind in (("shop_customers.csv", "contacts"), ("shop_orders.csv", "orders"), ("feedback_survey.csv", "responses")):
        result = workspace.run("import", str(EXAMPLES / name), "--kind", kind)
        assert result.exit_code == 0, result.stderr


def add_vendor_traces(store: Store) -> None:
    """What syncs leave besides CSV imports: a merged HubSpot contact with a second address, an email event, a
    score keyed by the address, ledger rows for both tools, and a quarantined row quoting the address."""
    hubspot_contact = Contact(source="hubspot", source_id="501", email=EmailAddress.parse("GRACE@example.com"),
                              additional_emails=(EmailAddress.parse("g.hopper@navy.example"),), merged_ids=("377",))
    event = EmailEvent(source="mailchimp", source_id=f"{SUBSCRIBER_HASH}:open:1", email=EmailAddress.parse(ADDRESS),
                       event="open", occurred_at=NOW)
    score = Score(source="scoring", source_id=ADDRESS, churn_probability=0.8, risk_band="high", scored_at=NOW)
    with store.transaction() as conn:
        run_id = store.begin_run(conn, "sync", "test", NOW)
        store.upsert_records(conn, [hubspot_contact, event, score], RunCounts())
        store.record_intents(conn, "hubspot", [("501", "retention_churn_risk", "80")], run_id)
        store.record_intents(conn, "mailchimp:list1", [(ADDRESS, "tags", "rs:churn-high")], run_id)
        store.quarantine_rejects(conn, "csv:shop", "order", [Rejected("orders.csv line 9", "amount 'abc' is not a number",
                                                                       {"Email": "Grace@Example.com", "Total": "abc"})], run_id)
        store.finish_run(conn, run_id, "succeeded", RunCounts())


def store_files(workspace: Workspace) -> bytes:
    database = workspace.root / ".retention" / "retention.db"
    return b"".join(Path(f"{database}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm") if Path(f"{database}{suffix}").exists())


def traces(data: bytes | str) -> list[str]:
    """Which forms of the address appear (case-insensitive): the address itself, its MD5, the second address."""
    text = (data.decode("latin-1") if isinstance(data, bytes) else data).lower()
    return [form for form in (ADDRESS, SUBSCRIBER_HASH, "g.hopper@navy.example") if form in text]


@pytest.mark.fault("F25")
def test_forget_erases_every_trace_from_the_store_files_the_logs_and_the_exports(workspace: Workspace) -> None:
    import_examples(workspace)
    store = workspace.open_store()
    add_vendor_traces(store)
    store.close()
    assert traces(store_files(workspace)) == [ADDRESS, SUBSCRIBER_HASH, "g.hopper@navy.example"]
    others_before = workspace.run("status", "--json")

    result = workspace.run("--debug", "forget", TYPED)

    assert result.exit_code == 0, result.stderr
    assert "Forgot 1 person: erased" in result.stdout and "tombstone #1" in result.stdout
    assert traces(result.stdout + result.stderr) == []
    assert traces(store_files(workspace)) == []
    status = workspace.run("status", "--json")
    assert traces(status.stdout) == []
    records_before = {(r["kind"], r["source"]): r["count"] for r in json.loads(others_before.stdout)["records"]}
    records_after = {(r["kind"], r["source"]): r["count"] for r in json.loads(status.stdout)["records"]}
    assert records_after[("contact", "csv:shopify")] == records_before[("contact", "csv:shopify")] - 1  # Ada stays
    [forget_run] = [run for run in json.loads(status.stdout)["runs"] if run["command"] == "forget"]
    assert forget_run["detail"].startswith("tombstone #1: erased ") and forget_run["status"] == "succeeded"
    export = workspace.root / "quarantine.csv"
    workspace.run("quarantine", "--export", str(export))
    assert traces(export.read_text()) == []


def test_while_the_store_stays_open_neither_the_database_nor_its_wal_holds_the_address(workspace: Workspace) -> None:
    import_examples(workspace)
    store = workspace.open_store()
    add_vendor_traces(store)
    for first_name in ("Gracie", "G.", "Grace"):  # updates leave old copies of her row in free space and in the WAL
        with store.transaction() as conn:
            store.upsert_records(conn, [Contact(source="crm", source_id="9", email=EmailAddress.parse(ADDRESS), first_name=first_name)], RunCounts())
    database = workspace.root / ".retention" / "retention.db"
    assert Path(f"{database}-wal").stat().st_size > 0 and ADDRESS in traces(store_files(workspace))

    erasure = forget_person(store, TYPED)

    assert erasure.records >= 6 and not erasure.was_forgotten_before
    assert Path(f"{database}-wal").stat().st_size == 0  # checkpointed and truncated while still open
    assert traces(store_files(workspace)) == []
    store.close()


def test_the_tombstone_is_a_salted_hash_of_the_normalised_address(workspace: Workspace) -> None:
    workspace.run("forget", TYPED)

    store = workspace.open_store()
    with store.engine.connect() as conn:
        salt = conn.execute(select(schema.erasure_salt.c.salt)).scalar_one()
        keys = set(conn.execute(select(schema.forgotten.c.key_hash)).scalars())
    assert keys == {email_key(salt, ADDRESS)} and email_key(salt, ADDRESS) != hashlib.sha256(ADDRESS.encode()).hexdigest()
    assert is_forgotten(store, "  GRACE@example.com ") and not is_forgotten(store, "ada@example.com")
    store.close()


@pytest.mark.fault("F25")
def test_importing_the_same_exports_three_times_after_forget_never_brings_the_person_back(workspace: Workspace) -> None:
    import_examples(workspace)
    assert workspace.run("forget", TYPED).exit_code == 0

    for _ in range(3):
        result = workspace.run("import", str(EXAMPLES / "shop_customers.csv"), "--kind", "contacts")
        assert result.exit_code == 0 and "1 skipped (forgotten on request)" in result.stdout
        import_examples(workspace)
        assert traces(store_files(workspace)) == []

    runs = json.loads(workspace.run("status", "--json").stdout)["runs"]
    assert runs[0]["counts"]["survey_response"]["forgotten"] == 1


def test_an_address_not_yet_imported_is_tombstoned_so_it_is_never_imported(workspace: Workspace) -> None:
    result = workspace.run("forget", TYPED)

    assert result.exit_code == 0 and "That address was not in the store; it is remembered as a salted hash" in result.stdout
    import_examples(workspace)
    assert traces(store_files(workspace)) == []


def test_forgetting_twice_says_so_and_keeps_one_tombstone(workspace: Workspace) -> None:
    workspace.run("forget", TYPED)

    again = workspace.run("forget", ADDRESS)

    assert again.exit_code == 0 and "That address was already forgotten" in again.stdout and "tombstone #1" in again.stdout


def test_an_invalid_address_is_one_line_with_exit_code_2_and_changes_nothing(workspace: Workspace) -> None:
    import_examples(workspace)
    before, runs_before = workspace.checksum(), workspace.run_count()

    result = workspace.run("forget", "grace@example")

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "forget: that is not a valid email address" in result.stderr
    assert workspace.checksum() == before and workspace.run_count() == runs_before


def test_forget_waits_for_no_one_while_a_sync_holds_the_lease(workspace: Workspace) -> None:
    import_examples(workspace)
    store = workspace.open_store()
    with store.lease("sync", ttl_s=60, holder="shop-server:4242:abc123"):
        result = workspace.run("forget", TYPED)
    store.close()

    assert result.exit_code == 4 and "shop-server:4242:abc123" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert ADDRESS in traces(store_files(workspace))


def test_forget_erases_the_person_on_either_backend(any_workspace: Workspace) -> None:
    import_examples(any_workspace)
    store = any_workspace.open_store()
    add_vendor_traces(store)
    quarantined_before, contacts_before = store.quarantine_size(), len(list(store.stored_records("contact")))
    store.close()

    assert any_workspace.run("forget", TYPED).exit_code == 0

    store = any_workspace.open_store()
    with store.engine.connect() as conn:
        dump = "\n".join(repr(tuple(row)) for table in schema.metadata.sorted_tables for row in conn.execute(select(table)))
    assert traces(dump) == []
    assert store.ledger_rows("hubspot") == {} and store.quarantine_size() == quarantined_before - 1
    assert len(list(store.stored_records("contact"))) == contacts_before - 2  # her shop and HubSpot contacts only
    store.close()


# --- propagation -----------------------------------------------------------------------------------------------------


@pytest.mark.fault("F25")
def test_propagation_calls_hubspot_gdpr_delete_and_mailchimp_delete_permanent_once_each() -> None:
    hubspot_box = HubSpotSandbox(token="hub-token", clock=Clock(speed=100))
    mailchimp_box = MailchimpSandbox(api_key="mc-key-us6", clock=Clock(speed=100))
    contact_id = hubspot_box.create("contacts", {"email": "GRACE@example.com", "firstname": "Grace"})
    other_id = hubspot_box.create("contacts", {"email": "ada@example.com"})
    audiences = (mailchimp_box.add_list("Shop", "list1"), mailchimp_box.add_list("News", "list2"))
    mailchimp_box.add_member("list1", "Grace@Example.com")
    settings = Settings(hubspot=HubSpotSettings(enabled=True), mailchimp=MailchimpSettings(enabled=True, audiences=audiences))
    with hubspot_box, mailchimp_box:
        mailchimp_client = MailchimpClient(settings.mailchimp, api_key="mc-key-us6", base_url=mailchimp_box.url,
                                           clock=mailchimp_box.clock, policy=RetryPolicy(base_delay_s=0.1, max_delay_s=1.0))
        erasers = {
            "hubspot": lambda email: erase_from_hubspot(settings, email, client=make_hubspot_client(hubspot_box, token="hub-token")),
            "mailchimp": lambda email: erase_from_mailchimp(settings, email, client=mailchimp_client),
        }

        results = propagate(TYPED, erasers)

        assert [(r.connector, r.error) for r in results] == [("hubspot", None), ("mailchimp", None)]
        assert results[1].outcomes == ["audience list1: member permanently deleted; Mailchimp refuses to re-add the address",
                                       "audience list2: not a member, nothing to delete"]
        [gdpr_call] = hubspot_box.journal.entries(method="POST", path="/gdpr-delete")
        assert gdpr_call.body == {"idProperty": "email", "objectId": ADDRESS} and gdpr_call.status == 204
        assert contact_id not in hubspot_box.objects["contacts"] and other_id in hubspot_box.objects["contacts"]
        assert ADDRESS in hubspot_box.blocklist
        deletes = mailchimp_box.journal.entries(method="POST", path="/actions/delete-permanent")
        assert [entry.path for entry in deletes] == [f"/3.0/lists/{list_id}/members/{SUBSCRIBER_HASH}/actions/delete-permanent"
                                                     for list_id in audiences]
        with pytest.raises(ApiClientError) as refused:  # Mailchimp: a permanently deleted address cannot be re-added
            sdk = mailchimp_marketing.Client()
            sdk.set_config({"api_key": "mc-key-us6", "server": "us6"})
            sdk.api_client.host = mailchimp_box.url + "/3.0"
            sdk.lists.set_list_member("list1", subscriber_hash(ADDRESS), {"email_address": ADDRESS, "status_if_new": "pending"})
        assert "Forgotten Email Not Subscribed" in refused.value.text
        mailchimp_client.close()


def test_a_tool_failing_during_propagation_is_one_line_without_the_address(workspace: Workspace) -> None:
    import_examples(workspace)
    settings = workspace.root / "settings.toml"
    settings.write_text(settings.read_text() + "\n[hubspot]\nenabled = true\n\n[typeform]\nenabled = true\n")

    # No HubSpot token (the session's canary one is unset here): the tool fails before any request.
    result = workspace.run("forget", TYPED, "--propagate", env={"RETENTION_HUBSPOT_TOKEN": ""})

    assert result.exit_code == 6
    assert "Forgot 1 person" in result.stdout and "typeform: retention-sync has no erasure call for it" in result.stdout
    assert "retention: hubspot: no HubSpot token found" in result.stderr and "run the same command again" in result.stderr
    assert traces(result.stdout + result.stderr) == []
