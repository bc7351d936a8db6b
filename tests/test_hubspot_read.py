"""Reading HubSpot through the official SDK against the sandbox: full and incremental reads, the 10k cap, merges,
archived objects, deals as orders, and the one-line errors a user sees for a bad token or a missing scope."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from connectors.base import AuthError, RecordRejected
from connectors.hubspot.client import HubSpotClient
from connectors.hubspot.destination import HubSpotDestination
from connectors.hubspot.sandbox import HubSpotSandbox
from connectors.hubspot.seed import bulk_load, seed_business
from connectors.hubspot.source import HubSpotSource
from connectors.records import from_payload
from connectors.retry import RetryPolicy
from connectors.sandbox import Clock
from sync.engine import run_source_once
from sync.settings import HubSpotSettings
from sync.store import Store
from tests.canary import HUBSPOT_CANARY

TOKEN = HUBSPOT_CANARY  # the session's canary credential (tests/canary.py): it must leak nowhere


@contextmanager
def hubspot_sandbox(contacts: int = 0, *, speed: float = 100.0, token: str = TOKEN, **limits: object) -> Iterator[HubSpotSandbox]:
    """A seeded sandbox on loopback whose clock runs ``speed`` times faster than real time."""
    box = HubSpotSandbox(token=token, clock=Clock(speed=speed), seed=3, **{"requests_per_10s": 1_000, "searches_per_s": 60, **limits})
    seed_business(box, contacts=contacts, seed=3)
    with box:
        yield box


def make_client(box: HubSpotSandbox, token: str = TOKEN, policy: RetryPolicy | None = None, rng: random.Random | None = None,
                oauth: object = None, **overrides: object) -> HubSpotClient:
    settings = HubSpotSettings(**{"requests_per_10s": 900, "searches_per_s": 50, "lookback_minutes": 0, **overrides})
    return HubSpotClient(token, settings, host=box.url, clock=box.clock, policy=policy, rng=rng or random.Random(0), oauth=oauth)


def stored(store: Store, kind: str) -> dict[str, object]:
    return {source_id: from_payload(kind, payload) for source_id, payload in store.stored_records(kind, "hubspot")}


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/r.db")


def test_full_read_then_one_percent_changed_reads_only_the_changed_objects(store):
    with hubspot_sandbox(10_000) as box:
        source = HubSpotSource(make_client(box))
        first = run_source_once(store, source, "sync", "hubspot")
        assert first.counts["contact"].written == len(box.objects["contacts"])
        assert first.counts["order"].written == len(box.objects["deals"]) >= 19_000
        assert first.counts["company"].written == len(box.objects["companies"])

        changed_contacts = sorted(box.objects["contacts"])[::100]
        changed_deals = sorted(box.objects["deals"])[::100]
        # The cursor is inclusive (GTE): objects stamped with the very millisecond the cursor holds are read again.
        at_cursor = {t: sum(1 for k in box.index[t] if k[0] == box.index[t][-1][0]) for t in ("contacts", "companies", "deals")}
        for contact_id in changed_contacts:
            box.update("contacts", contact_id, {"lifecyclestage": "evangelist"})
        for deal_id in changed_deals:
            box.update("deals", deal_id, {"amount": "999.00"})
        box.journal.clear()
        second = run_source_once(store, source, "sync", "hubspot")

        assert second.counts["contact"].read == len(changed_contacts) + at_cursor["contacts"]
        assert second.counts["contact"].written == len(changed_contacts)
        assert second.counts["order"].read == len(changed_deals) + at_cursor["deals"]
        assert second.counts["company"].read == at_cursor["companies"] and second.counts["company"].written == 0
        assert stored(store, "contact")[changed_contacts[0]].lifecycle_stage == "evangelist"
        assert str(stored(store, "order")[changed_deals[0]].amount) == "999.00"
        # Every search of the second run asked only for objects modified since the first run's cursor.
        searches = box.journal.entries(method="POST", path="/contacts/search")
        assert len(searches) == 1 and int(searches[0].body["filterGroups"][0]["filters"][0]["value"]) > 0


@pytest.mark.fault("F21")
def test_twenty_five_thousand_contacts_modified_in_the_same_second_are_all_read(store):
    with hubspot_sandbox(200) as box:
        same_ms = box.now_ms() - 3_600_000
        rows = [({"email": f"bulk{n}@example.com", "firstname": "Bulk"}, same_ms - 86_400_000, same_ms) for n in range(25_000)]
        bulk_ids = bulk_load(box, "contacts", rows)
        result = run_source_once(store, HubSpotSource(make_client(box)), "sync", "hubspot")

        contacts = stored(store, "contact")
        assert set(bulk_ids) <= set(contacts)
        assert result.counts["contact"].written == len(box.objects["contacts"])
        searches = box.journal.entries(method="POST", path="/contacts/search")
        assert all(e.status == 200 for e in searches)  # never paged past the 10,000-result cap
        keyset = [e for e in searches if any(f["propertyName"] == "hs_object_id" for g in e.body["filterGroups"] for f in g["filters"])]
        assert len(keyset) >= 25_000 // 200  # the crowded millisecond was paged by object id


def test_paging_past_ten_thousand_search_results_is_refused_by_the_sandbox():
    with hubspot_sandbox(0) as box:
        client = make_client(box)
        with pytest.raises(RecordRejected) as caught:
            client.search("contacts", {"limit": 100, "after": "10000"})
        assert "10,000" in str(caught.value)


@pytest.mark.fault("F22")
def test_merged_contacts_become_aliases_of_the_survivor(store):
    with hubspot_sandbox(50) as box:
        source = HubSpotSource(make_client(box))
        run_source_once(store, source, "sync", "hubspot")
        survivor, absorbed = sorted(box.objects["contacts"])[:2]
        absorbed_email = box.objects["contacts"][absorbed]["properties"]["email"]
        box.merge(survivor, absorbed)
        run_source_once(store, source, "sync", "hubspot")

        contact = stored(store, "contact")[survivor]
        assert absorbed in contact.merged_ids
        assert absorbed_email in {e.normalised for e in contact.additional_emails}


def test_a_survivor_changed_again_keeps_its_aliases(store):
    with hubspot_sandbox(50) as box:
        source = HubSpotSource(make_client(box))
        survivor, absorbed = sorted(box.objects["contacts"])[:2]
        box.merge(survivor, absorbed)
        run_source_once(store, source, "sync", "hubspot")
        box.update("contacts", survivor, {"firstname": "Renamed"})
        run_source_once(store, source, "sync", "hubspot")
        assert stored(store, "contact")[survivor].first_name == "Renamed"


@pytest.mark.fault("F23")
def test_the_contact_read_brings_what_hubspot_holds_in_our_properties_once_they_exist(store):
    """The write path compares these with what the ledger confirmed; before our first write HubSpot has no such
    property, leaves it out of its answer, and nothing is known of it (not taken for an empty value)."""
    with hubspot_sandbox(5) as box:
        client = make_client(box)
        destination = HubSpotDestination(client)
        written = (destination.names["churn_risk"], destination.names["risk_band"])
        source = HubSpotSource(client, written=written)
        run_source_once(store, source, "sync", "hubspot")
        assert all(contact.properties == {} for contact in stored(store, "contact").values())

        destination.ensure_properties()
        contact_id = sorted(box.objects["contacts"])[0]
        box.update("contacts", contact_id, {written[0]: "12.5"})
        run_source_once(store, source, "sync", "hubspot")

        assert stored(store, "contact")[contact_id].properties == {written[0]: "12.5", written[1]: ""}
        assert destination.held([contact_id]) == {}  # not told the contacts read (a write outside a sync): nothing known
        destination.know_contacts(stored(store, "contact").values())
        assert destination.held([contact_id])[contact_id].values == {written[0]: "12.5", written[1]: None}


def test_archived_objects_are_read_separately_as_tombstones(store):
    with hubspot_sandbox(30) as box:
        source = HubSpotSource(make_client(box))
        run_source_once(store, source, "sync", "hubspot")
        gone = sorted(box.objects["contacts"])[3]
        box.archive("contacts", gone)
        run_source_once(store, source, "sync", "hubspot")

        assert gone not in stored(store, "contact"), "an archived contact is no longer a current record"
        assert set(stored(store, "contact")) == set(box.objects["contacts"]), "the store holds exactly the live contacts"
        assert box.journal.entries(method="GET", path="/crm/v3/objects/contacts$")


def test_deals_become_orders_with_status_from_the_pipeline_and_the_contacts_email(store):
    with hubspot_sandbox(40) as box:
        run_source_once(store, HubSpotSource(make_client(box)), "sync", "hubspot")
        orders = stored(store, "order")
        for deal_id, item in box.objects["deals"].items():
            order = orders[deal_id]
            stage = item["properties"]["dealstage"]
            expected = {"closedwon": "won", "closedlost": "lost"}.get(stage, "open")
            assert order.status.value == expected
            contact_id = next(iter(box.associations[deal_id]))
            assert order.customer_source_id == contact_id
            assert order.customer_email.normalised == box.objects["contacts"][contact_id]["properties"]["email"]


@pytest.mark.fault("F15")
def test_a_wrong_token_stops_with_one_line_saying_how_to_fix_it(store):
    with hubspot_sandbox(5) as box:
        with pytest.raises(AuthError) as caught:
            run_source_once(store, HubSpotSource(make_client(box, token="pat-wrong")), "sync", "hubspot")
        message = str(caught.value)
        assert "401" in message and "RETENTION_HUBSPOT_TOKEN" in message and "\n" not in message
        assert "pat-wrong" not in message
        assert store.cursor("hubspot", "contacts") is None  # nothing committed, nothing half-saved


@pytest.mark.fault("F16")
def test_a_missing_scope_names_the_scope_to_add(store):
    with hubspot_sandbox(5) as box:
        box.missing_scopes.add("deals")
        with pytest.raises(AuthError) as caught:
            run_source_once(store, HubSpotSource(make_client(box)), "sync", "hubspot")
        assert "403" in str(caught.value) and "crm.objects.deals.read" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert len(box.journal.entries(path="/deals")) == 1  # a missing scope is not retried: only the user can add it


@pytest.mark.fault("F21")
def test_a_window_past_the_search_cap_is_split_without_losing_or_wasting_requests(store):
    with hubspot_sandbox(10_600) as box:
        box.missing_scopes.update({"deals", "companies"})  # contacts only: the split is what this test watches
        source = HubSpotSource(make_client(box))
        contacts = next(s for s in source.streams() if s.name == "contacts")
        read = [r.source_id for page in contacts.read(None) for r in page.records]

        assert sorted(read) == sorted(box.objects["contacts"])  # every contact once, repeats at the split dropped
        searches = box.journal.entries(method="POST", path="/contacts/search")
        assert all(e.status == 200 for e in searches)
        assert len(searches) <= len(read) // 200 + 3


def test_doctor_check_without_a_token_says_where_to_put_one(monkeypatch):
    import connectors.hubspot.client  # noqa: F401 - registers the check
    from connectors.base import registered_checks
    from sync.settings import Settings

    check = registered_checks()["hubspot"]
    monkeypatch.delenv("RETENTION_HUBSPOT_TOKEN", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")  # no keyring entry either
    with pytest.raises(AuthError, match="RETENTION_HUBSPOT_TOKEN"):
        check(Settings())


def test_marketing_email_events_are_read_with_the_contacts_email_then_only_new_ones(store):
    with hubspot_sandbox(400) as box:
        source = HubSpotSource(make_client(box))
        first = run_source_once(store, source, "sync", "hubspot")
        events = stored(store, "email_event")
        assert first.counts["email_event"].written == len(box.events) == len(events) > 100
        kinds = {e.event.value for e in events.values()}
        assert {"open", "click"} <= kinds
        for raw in box.events[:50]:
            contact = box.objects["contacts"][raw["objectId"]]["properties"]
            assert events[raw["id"]].email.normalised == contact["email"].lower()

        box.clock.advance(60)
        contact_id = sorted(box.objects["contacts"])[5]
        new_id = box.add_event(contact_id, "e_marketing_email_clicked", properties={"hs_email_campaign_id": "autumn", "hs_url": "https://shop.example/a"})
        box.journal.clear()
        second = run_source_once(store, source, "sync", "hubspot")
        assert second.counts["email_event"].written == 1
        assert stored(store, "email_event")[new_id].url == "https://shop.example/a"
        # Every event page of the second run asked only for events since the first run's newest one.
        pages = box.journal.entries(method="GET", path="/events/v3/events")
        assert pages and all(e.status == 200 for e in pages)
        assert second.counts["email_event"].read <= 5


def test_an_account_without_event_analytics_is_read_without_email_events_and_says_so(store, caplog):
    with hubspot_sandbox(50) as box, caplog.at_level("INFO"):
        box.missing_scopes.add("events")
        result = run_source_once(store, HubSpotSource(make_client(box)), "sync", "hubspot")
        assert result.counts["contact"].written == len(box.objects["contacts"])
        assert result.counts["email_event"].read == 0
        assert "marketing email events are not read" in caplog.text
        assert store.cursor("hubspot", "email_events") is None  # nothing to resume from: the next run asks again


@pytest.mark.fault("F21")
def test_the_look_back_re_reads_recent_changes_but_not_a_large_write_long_past(store):
    with hubspot_sandbox(2_000) as box:  # the clock runs 100x: minutes pass in seconds
        client = make_client(box, lookback_minutes=10)
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        everyone = sorted(box.objects["contacts"])
        for contact_id in everyone:  # a large write (ours, say): every contact modified within a few seconds
            box.update("contacts", contact_id, {"jobtitle": "Buyer"})

        soon = run_source_once(store, HubSpotSource(client), "sync", "hubspot")  # within the look-back: all again
        assert soon.counts["contact"].read == len(everyone)
        box.clock.advance(25 * 60)  # 25 minutes without a change: the write is long indexed
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        box.update("contacts", everyone[0], {"jobtitle": "Owner"})
        later = run_source_once(store, HubSpotSource(client), "sync", "hubspot")

        assert later.counts["contact"].read == 1  # the one change, not the old write's contacts again
