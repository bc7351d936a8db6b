"""A whole sync against the HubSpot, Mailchimp and Typeform sandboxes seeded with one made-up shop: what is read,
scored and written, that an unchanged rerun writes nothing (no echo of our own writes), that a dry run changes
nothing anywhere, that no request ever carries a Mailchimp status, and that one failing tool does not stop the others."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mailchimp_marketing
import pytest

from connectors.base import AuthError
from connectors.hubspot.destination import default_names
from connectors.sandbox import Fault
from sync.demo import DemoShop, open_demo_shop
from sync.pipeline import run_sync
from sync.settings import Settings
from sync import views
from sync.store import Store
from tests.conftest import BACKENDS, Workspace, fresh_postgres_url
from tests.test_crash_points import shops  # noqa: F401 - a fixture: a small shop and its twin
from tests.test_sync_kill import edit_between_runs, members, state

CUSTOMERS = 300
READS = ("/search", "/batch/read", "/event-types")  # HubSpot POSTs that only read


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[DemoShop]:
    shop = open_demo_shop(Settings(data_dir=tmp_path / ".retention"), CUSTOMERS, seed=5)
    try:
        yield shop
    finally:
        for box in shop.sandboxes.values():
            box.stop()


@pytest.fixture(params=BACKENDS)
def any_shop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DemoShop]:
    """The shop, once with the SQLite store and once with PostgreSQL (where a server is available; scored in a process
    of its own there, so the server's address and credentials reach it too)."""
    settings = Settings(data_dir=tmp_path / ".retention")
    if request.param == "postgres":
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"url": fresh_postgres_url()}),
                                               "scoring": settings.scoring.model_copy(update={"own_process_from": 0})})
    shop = open_demo_shop(settings, CUSTOMERS, seed=5)
    try:
        yield shop
    finally:
        for box in shop.sandboxes.values():
            box.stop()


def sync_once(shop: DemoShop, **options: object):
    store = Store.open(shop.settings.store_url)
    try:
        return run_sync(shop.settings, store, endpoints=shop.endpoints, **options), store.checksum()
    finally:
        store.close()


def mutating_requests(shop: DemoShop) -> list[str]:
    hubspot = [f"{e.method} {e.path}" for e in shop.sandboxes["hubspot"].journal
               if e.method in ("POST", "PATCH", "PUT", "DELETE") and not any(r in e.path for r in READS)]
    mailchimp = [f"{e.method} {e.path}" for e in shop.sandboxes["mailchimp"].journal if e.method in ("POST", "PATCH", "PUT", "DELETE")]
    return hubspot + mailchimp


def clear_journals(shop: DemoShop) -> None:
    for box in shop.sandboxes.values():
        box.journal.clear()


def mailchimp_sdk(shop: DemoShop) -> mailchimp_marketing.Client:
    """What a marketer's edit in Mailchimp looks like: a call through the official client."""
    sdk = mailchimp_marketing.Client()
    sdk.set_config({"api_key": shop.endpoints["mailchimp"].credential, "server": "us6"})
    sdk.api_client.host = shop.endpoints["mailchimp"].base_url + "/3.0"
    return sdk


def test_a_sync_reads_every_tool_scores_everyone_and_writes_risk_into_hubspot_and_tags_into_mailchimp(shop):
    report, _ = sync_once(shop)

    assert not report.errors
    read = {s.name: s.counts for s in report.sources}
    assert read["hubspot"]["contact"].written == CUSTOMERS and read["hubspot"]["order"].written > CUSTOMERS
    assert read["mailchimp"]["email_event"].written > 0 and read["typeform"]["survey_response"].written > 0
    assert report.scored == CUSTOMERS
    hubspot = shop.sandboxes["hubspot"]
    contact = next(iter(hubspot.objects["contacts"].values()))["properties"]
    assert contact["retention_risk_band"] in ("low", "medium", "high", "new") and contact["retention_segment"]
    assert float(contact["retention_churn_risk"]) >= 0
    audience = next(iter(shop.sandboxes["mailchimp"].lists.values()))
    tagged = {segment["name"]: len(segment["members"]) for segment in audience["segments"].values()}
    assert any(name.startswith("rs:churn-") and count > 0 for name, count in tagged.items())
    merge_fields = [m["merge_fields"] for m in audience["members"].values() if m["status"] != "archived"]
    assert any("CHURNRISK" in fields for fields in merge_fields)
    written = next(t for t in report.targets if t.name.startswith("mailchimp/"))
    assert written.sent > 0 and written.rejected == 0
    # The riskiest customers come with reasons an owner can read.
    assert report.riskiest is not None and len(report.riskiest) == 10
    assert all(reason for reason in report.riskiest["reasons"])


@pytest.mark.fault("L2", "L3")
def test_an_unchanged_rerun_sends_no_writes_and_later_runs_do_not_echo_our_own(shop):
    sync_once(shop)
    for _ in range(2):  # runs 2 and 3: our own writes come back as changes in both tools; none is a change for us
        clear_journals(shop)
        report, _ = sync_once(shop)
        assert not report.errors
        # Nothing scores are made from changed: the day's scores stand, without scoring everyone again.
        assert "scores stand" in report.scoring and report.scored == CUSTOMERS
        assert all(t.sent == 0 for t in report.targets), [(t.name, t.sent) for t in report.targets]
        assert mutating_requests(shop) == []


def test_our_fields_overwritten_by_hand_are_written_back_once_by_the_next_sync(shop):
    """The score fields are ours (HubSpot's property description says a change there is overwritten): a user's
    edit comes back with the contacts the next sync reads anyway, differs from what the ledger confirmed, and is
    put right; the run after that sends nothing."""
    sync_once(shop)
    hubspot = shop.sandboxes["hubspot"]
    contact = next(c for c in hubspot.objects["contacts"].values() if c["properties"].get("retention_risk_band") == "low")
    ours = {name: contact["properties"][name] for name in ("retention_churn_risk", "retention_risk_band")}
    hubspot.update("contacts", contact["id"], {"retention_churn_risk": "99.5", "retention_risk_band": "high"})
    audience = next(iter(shop.sandboxes["mailchimp"].lists.values()))
    member = next(m for m in audience["members"].values() if m["merge_fields"].get("CHURNRISK") not in (None, ""))
    our_risk = member["merge_fields"]["CHURNRISK"]
    mailchimp_sdk(shop).lists.update_list_member(audience["id"], member["id"], {"merge_fields": {"CHURNRISK": our_risk + 7}})
    clear_journals(shop)

    report, _ = sync_once(shop)

    assert not report.errors
    assert {name: contact["properties"][name] for name in ours} == ours
    assert member["merge_fields"]["CHURNRISK"] == our_risk
    assert {t.name.split("/")[0]: t.sent for t in report.targets} == {"hubspot": 2, "mailchimp": 1}
    clear_journals(shop)
    report, _ = sync_once(shop)
    assert all(t.sent == 0 for t in report.targets) and mutating_requests(shop) == []


def test_a_value_typed_into_an_empty_field_of_ours_is_cleared_once(shop):
    """A field of ours we have nothing to write to (no score of that kind for this customer) and so never wrote, with
    a value in it: typed by hand, or written by us in commits a restored store lost. It is ours all the same, so the
    next sync clears it, once; the contact fields, which are the owner's as much as ours, are never cleared."""
    sync_once(shop)
    hubspot = shop.sandboxes["hubspot"]
    ours = sorted(default_names("retention").values())
    contact, name = next((c, name) for c in hubspot.objects["contacts"].values() for name in ours
                         if c["properties"].get("retention_churn_risk") and not c["properties"].get(name))
    hubspot.update("contacts", contact["id"], {name: "12", "phone": "+44 20 7946 0000"})
    box = shop.sandboxes["mailchimp"]
    audience = next(iter(box.lists.values()))
    tags = lambda member: box.member_tags(audience["id"], member["id"])  # noqa: E731
    member = next(m for m in audience["members"].values() if not any(t.startswith("rs:sentiment") for t in tags(m)))
    mailchimp_sdk(shop).lists.update_list_member_tags(
        audience["id"], member["id"], {"tags": [{"name": "rs:sentiment-negative", "status": "active"}]})
    clear_journals(shop)

    report, _ = sync_once(shop)

    assert not report.errors
    assert not contact["properties"][name] and not any(t.startswith("rs:sentiment") for t in tags(member))
    assert contact["properties"]["phone"] == "+44 20 7946 0000"
    assert {t.name.split("/")[0]: t.sent for t in report.targets}["hubspot"] >= 1
    clear_journals(shop)
    report, _ = sync_once(shop)
    assert all(t.sent == 0 for t in report.targets) and mutating_requests(shop) == []


def test_a_large_store_is_scored_in_a_process_of_its_own_with_the_same_result(shops):
    """From ``scoring.own_process_from`` records of orders, events and answers, scoring runs in a process of its own
    (its memory goes back to the system when it ends): both tools end up as the twin's, scored in the sync's own
    process, also after an order moves the scores, and the summary is the same."""
    shop, twin = shops
    scoring = shop.settings.scoring.model_copy(update={"own_process_from": 0})
    shop = replace(shop, settings=shop.settings.model_copy(update={"scoring": scoring}))
    for round_ in range(2):
        if round_:
            for each in (shop, twin):
                add_order(each, sorted(each.sandboxes["hubspot"].objects["contacts"], key=int)[0], "650")
        apart, _ = sync_once(shop)
        inside, _ = sync_once(twin)
        assert not apart.errors and not inside.errors
        assert apart.scoring_peak_mb is not None and inside.scoring_peak_mb is None
        assert apart.scoring == inside.scoring and apart.riskiest.equals(inside.riskiest)
        assert [(t.name, t.sent) for t in apart.targets] == [(t.name, t.sent) for t in inside.targets]
        assert state(shop) == state(twin)


def test_a_new_order_the_same_day_rescores_with_the_same_model_and_writes_only_what_moved(shop):
    first, _ = sync_once(shop)
    hubspot = shop.sandboxes["hubspot"]
    contact_id = next(iter(hubspot.objects["contacts"]))
    before = dict(hubspot.objects["contacts"][contact_id]["properties"])
    deal_id = hubspot.create("deals", {"dealname": "Order 99999", "amount": "4200", "pipeline": "default",
                                       "dealstage": "closedwon", "deal_currency_code": "EUR",
                                       "closedate": before["lastmodifieddate"]})
    hubspot.associations.setdefault(deal_id, set()).add(contact_id)
    clear_journals(shop)

    report, _ = sync_once(shop)

    assert "scores stand" not in report.scoring and report.scored == CUSTOMERS
    assert "reused the model fitted the same day" in report.scoring  # not refitted: no risk moves by chance
    assert hubspot.objects["contacts"][contact_id]["properties"]["retention_clv"] != before["retention_clv"]
    sent = {t.name: t.sent for t in report.targets}
    assert 0 < sent["hubspot"] < next(t.sent for t in first.targets if t.name == "hubspot") / 5  # what moved, not all
    # Mailchimp's members were read once, changed ones only: writing needs no second read of the whole audience.
    member_reads = shop.sandboxes["mailchimp"].journal.entries("GET", r"/lists/[^/]+/members\Z")
    assert member_reads and all("since_last_changed" in e.query for e in member_reads)


def add_order(shop: DemoShop, contact_id: str, amount: str) -> None:
    hubspot = shop.sandboxes["hubspot"]
    closed = hubspot.objects["contacts"][contact_id]["properties"]["lastmodifieddate"]
    deal_id = hubspot.create("deals", {"dealname": f"Order {amount}", "amount": amount, "pipeline": "default",
                                       "dealstage": "closedwon", "deal_currency_code": "EUR", "closedate": closed})
    hubspot.associations.setdefault(deal_id, set()).add(contact_id)


def test_after_a_complete_sync_only_the_people_who_changed_are_compared_and_nothing_is_left_undone(any_shop):
    shop = any_shop
    first, _ = sync_once(shop)
    assert not first.errors and (first.scoring_peak_mb is not None) == (shop.settings.scoring.own_process_from == 0)
    sync_once(shop)  # reads back what the first wrote: everyone's contact moved, so everyone is compared
    hubspot, mailchimp = shop.sandboxes["hubspot"], shop.sandboxes["mailchimp"]
    audience = next(iter(mailchimp.lists.values()))
    members = {m["email_address"].lower(): m for m in audience["members"].values() if m["status"] == "subscribed"}
    contacts = {c["properties"]["email"].lower(): c for c in hubspot.objects["contacts"].values()}
    in_both = sorted(set(members) & set(contacts))
    renamed, rephoned = contacts[in_both[0]], members[in_both[1]]
    hubspot.update("contacts", renamed["id"], {"lastname": "Okonkwo-Lindqvist"})
    rephoned["merge_fields"]["PHONE"] = "+49 40 5550123"
    mailchimp._touch(rephoned)
    clear_journals(shop)

    report, _ = sync_once(shop)

    assert not report.errors
    assert report.compared.startswith("only the ") and "whose records changed" in report.compared
    assert int(report.compared.split()[2].replace(",", "")) < 10  # the two who changed, and whoever shares an email
    assert members[in_both[0]]["merge_fields"]["LNAME"] == "Okonkwo-Lindqvist"
    assert contacts[in_both[1]]["properties"]["phone"] == "+49 40 5550123"
    # Comparing everyone finds nothing the shorter comparison missed.
    clear_journals(shop)
    full, _ = sync_once(shop, full=True)
    assert full.compared == "" and all(t.sent == 0 for t in full.targets), [(t.name, t.sent) for t in full.targets]
    assert mutating_requests(shop) == []


def contact_fields(shop: DemoShop) -> tuple[dict, dict]:
    """Name, phone and company of everyone, by email: HubSpot's properties and Mailchimp's merge fields."""
    hubspot = {c["properties"]["email"].lower(): [c["properties"].get(p) for p in ("firstname", "lastname", "phone", "company")]
               for c in shop.sandboxes["hubspot"].objects["contacts"].values()}
    mailchimp = {m["email_address"].lower(): [m["merge_fields"].get(f) for f in ("FNAME", "LNAME", "PHONE", "COMPANY")]
                 for m in members(shop).values()}
    return hubspot, mailchimp


def test_a_sync_taking_its_people_a_few_at_a_time_leaves_both_tools_as_one_taking_everyone_at_once(shops, monkeypatch):
    """A sync writes a part of the people at a time. A person's contacts in both tools, and the two HubSpot contacts
    that share an email, must be seen together wherever the parts' edges fall: two twin shops, one synced three
    people at a time, the other all at once, end each run the same."""
    parted, whole = shops
    for shop in shops:  # a second contact carrying a customer's email: its own email sorts first, the customer's later
        hubspot = shop.sandboxes["hubspot"]
        first = hubspot.objects["contacts"][min(hubspot.objects["contacts"], key=int)]
        second = hubspot.objects["contacts"][hubspot.create("contacts", {
            "email": "aa.second.address@example.org", "firstname": "Dup", "lastname": "Dup",
            "hs_additional_emails": first["properties"]["email"]})]
    for round_ in range(3):  # the first sync, one after edits in both tools, one reading our writes back
        reports = {}
        for shop, at_once in ((parted, 3), (whole, 100_000)):
            if round_ == 1:
                edit_between_runs(shop, random.Random(round_), round_, {}, per_tool=4)
            monkeypatch.setattr(views, "PEOPLE_AT_ONCE", at_once)
            reports[at_once], _ = sync_once(shop)
        assert not reports[3].errors and not reports[100_000].errors
        assert state(parted) == state(whole) and contact_fields(parted) == contact_fields(whole)
        assert reports[3].linking == reports[100_000].linking and "compared across hubspot and mailchimp" in reports[3].linking
        assert [(t.name, t.sent) for t in reports[3].targets] == [(t.name, t.sent) for t in reports[100_000].targets]
    # The customer's email is ambiguous: neither contact is written, though the second's part held only its own email.
    assert "retention_churn_risk" not in first["properties"] and "retention_churn_risk" not in second["properties"]


def test_a_customer_whose_duplicate_contact_goes_away_gets_the_scores_held_back_while_it_was_there(shop):
    """Two HubSpot contacts carrying one email are never written (which one is the customer is not guessed). When
    the duplicate drops the email, the other contact's own records have not changed, yet it is writable again."""
    sync_once(shop)
    sync_once(shop)
    hubspot = shop.sandboxes["hubspot"]
    contact_id = sorted(hubspot.objects["contacts"], key=int)[0]
    email = hubspot.objects["contacts"][contact_id]["properties"]["email"]
    duplicate = hubspot.create("contacts", {"email": "second.address@example.org", "firstname": "Dup",
                                            "hs_additional_emails": email})
    add_order(shop, contact_id, "4200")  # moves the customer's scores while their email is ambiguous
    before = dict(hubspot.objects["contacts"][contact_id]["properties"])
    sync_once(shop)  # everyone's value moves a little with one more order (the CLV model sees it): all rewritten
    sync_once(shop)  # and read back
    assert hubspot.objects["contacts"][contact_id]["properties"]["retention_clv"] == before["retention_clv"]  # held back

    hubspot.update("contacts", duplicate, {"hs_additional_emails": ""})
    report, _ = sync_once(shop)

    assert report.compared.startswith("only the ")
    assert hubspot.objects["contacts"][contact_id]["properties"]["retention_clv"] != before["retention_clv"]
    clear_journals(shop)
    full, _ = sync_once(shop, full=True)
    assert all(t.sent == 0 for t in full.targets), [(t.name, t.sent) for t in full.targets]


@pytest.mark.fault("F24")
def test_no_request_ever_carries_a_mailchimp_status_and_no_subscription_changes(shop):
    audience = next(iter(shop.sandboxes["mailchimp"].lists.values()))
    statuses_before = {h: m["status"] for h, m in audience["members"].items()}

    sync_once(shop)
    sync_once(shop, full=True)

    bodies = [e.body for e in shop.sandboxes["mailchimp"].journal if isinstance(e.body, dict)]
    assert bodies and not any("status" in body for body in bodies)
    assert {h: m["status"] for h, m in audience["members"].items()} == statuses_before
    assert {"unsubscribed", "cleaned"} <= set(statuses_before.values())


def test_a_dry_run_prints_the_plan_and_changes_neither_the_tools_nor_the_store(shop):
    store = Store.open(shop.settings.store_url)
    before = store.checksum()
    store.close()

    report, after = sync_once(shop, dry_run=True)

    assert report.dry_run and not report.errors
    hubspot = next(t for t in report.targets if t.name == "hubspot")
    assert hubspot.sent > 0 and hubspot.objects == CUSTOMERS and hubspot.sample
    assert after == before
    assert mutating_requests(shop) == []
    assert all("retention_churn_risk" not in c["properties"] for c in shop.sandboxes["hubspot"].objects["contacts"].values())


@pytest.mark.fault("F15")
def test_a_tool_that_refuses_its_credential_is_reported_and_the_others_still_sync(shop):
    shop.endpoints["mailchimp"] = replace(shop.endpoints["mailchimp"], credential="wrong-key-us6")

    report, _ = sync_once(shop)

    failed = [s for s in report.sources if s.error is not None]
    assert [s.name for s in failed] == ["mailchimp"] and isinstance(failed[0].error, AuthError)
    assert "wrong-key" not in str(failed[0].error)
    assert not any(t.name.startswith("mailchimp/") for t in report.targets)
    assert next(t for t in report.targets if t.name == "hubspot").sent > 0


@pytest.mark.fault("F15")
def test_a_token_revoked_during_the_writes_stops_them_keeps_what_was_confirmed_and_the_next_run_sends_only_the_rest(shop):
    hubspot = shop.sandboxes["hubspot"]
    journal_add, revoked = hubspot.journal.add, []

    def revoke_after_the_first_write(entry):  # the owner revokes the app the moment the first batch lands
        journal_add(entry)
        if entry.path.endswith("/batch/update") and entry.status == 200 and not revoked:
            revoked.append(hubspot.faults.add(Fault(status=401, times=None, name="token revoked")))

    hubspot.journal.add = revoke_after_the_first_write
    report, _ = sync_once(shop)

    failed = next(t for t in report.targets if t.name == "hubspot")
    assert isinstance(failed.error, AuthError) and "\n" not in str(failed.error)
    assert shop.endpoints["hubspot"].credential not in str(failed.error)
    assert next(t for t in report.targets if t.name.startswith("mailchimp/")).error is None  # the other tool goes on
    entries = hubspot.journal.entries()
    first_refusal = next(i for i, e in enumerate(entries) if e.status == 401)
    assert len(entries) - first_refusal <= 2, "at most two requests after the revocation"
    written_before = {i["id"] for e in entries[:first_refusal] if e.path.endswith("/batch/update") for i in e.body["inputs"]}
    assert 0 < len(written_before) < CUSTOMERS

    hubspot.journal.add = journal_add
    hubspot.faults.remove(revoked[0])  # reconnected
    hubspot.journal.clear()
    report, _ = sync_once(shop)

    assert not report.errors
    resent = {i["id"] for e in hubspot.journal.entries(path="/batch/update") for i in e.body["inputs"]}
    assert not resent & written_before, "values HubSpot confirmed before the revocation are not sent again"
    assert len(resent | written_before) == CUSTOMERS


@pytest.mark.fault("F8")
def test_a_tool_that_fails_half_way_keeps_what_it_read_and_the_next_run_goes_on_from_there(shop):
    hubspot = shop.sandboxes["hubspot"]
    revoked = hubspot.faults.add(Fault(status=401, match="deals/search", times=None, name="token revoked"))

    report, _ = sync_once(shop)

    failed = {s.name: s for s in report.sources}
    assert isinstance(failed["hubspot"].error, AuthError)
    assert failed["mailchimp"].error is None and failed["typeform"].error is None
    store = Store.open(shop.settings.store_url)
    try:  # the contacts read before the failure are kept, and their stream's cursor moved
        assert len(list(store.stored_records("contact", "hubspot"))) == CUSTOMERS
        assert store.cursor("hubspot", "contacts") is not None and store.cursor("hubspot", "deals") is None
    finally:
        store.close()

    hubspot.faults.remove(revoked)
    report, _ = sync_once(shop)

    read = {s.name: s.counts for s in report.sources}
    assert not report.errors and read["hubspot"]["order"].written > CUSTOMERS
    assert read["hubspot"]["contact"].read < CUSTOMERS / 10  # not all again: only the look-back window


def test_retention_demo_runs_the_whole_pipeline_and_lists_the_customers_most_at_risk(workspace: Workspace):
    result = workspace.run("demo", "--no-serve", "--customers", "200")

    assert result.exit_code == 0, result.stderr
    assert "read  hubspot:" in result.stdout and "write hubspot:" in result.stdout
    assert "The ten customers most at risk:" in result.stdout
    at_risk = result.stdout.split("The ten customers most at risk:")[1].strip().splitlines()[:10]
    assert len(at_risk) == 10 and all("@example.com" in line and "risk" in line for line in at_risk)
    assert "hubspot   sandbox: http://127.0.0.1:" in result.stdout


def test_sync_with_no_tool_enabled_says_how_to_enable_one(workspace: Workspace):
    result = workspace.run("sync")

    assert result.exit_code == 2
    assert "no tool is enabled" in result.stderr and "retention demo" in result.stderr
    assert "Traceback" not in result.stderr
