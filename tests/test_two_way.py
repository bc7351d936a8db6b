"""HubSpot <-> Mailchimp both ways, through the sandboxes and the official SDKs: a name, phone or company changed in
one tool reaches the other on the next sync and is not echoed back; when both changed, the later change wins; an
empty value never erases a filled one; a Mailchimp unsubscribe shows in HubSpot; new HubSpot contacts reach
Mailchimp only with add_new_contacts, as pending, and never someone who opted out."""

from __future__ import annotations

import pytest

from connectors.mailchimp.mapping import subscriber_hash
from tests.test_sync import clear_journals, mailchimp_sdk, mutating_requests, shop, sync_once  # noqa: F401 - shop is a fixture


def audience(shop):
    return next(iter(shop.sandboxes["mailchimp"].lists.values()))


def linked_pair(shop) -> tuple[str, dict, dict]:
    """A subscribed customer found in both tools: (email, HubSpot contact, Mailchimp member)."""
    hubspot = shop.sandboxes["hubspot"]
    for member in audience(shop)["members"].values():
        if member["status"] == "subscribed":
            contact_id = hubspot.find_contact_by_email(member["email_address"])
            if contact_id:
                return member["email_address"], hubspot.objects["contacts"][contact_id], member
    raise AssertionError("the demo shop has no subscribed customer in both tools")


def test_contact_fields_flow_both_ways_and_are_not_echoed(shop):
    sync_once(shop)
    # First sync: HubSpot's phone and company fill the empty Mailchimp merge fields (nothing is erased).
    email, contact, member = linked_pair(shop)
    assert member["merge_fields"]["PHONE"] == contact["properties"]["phone"]
    assert member["merge_fields"]["COMPANY"] == contact["properties"]["company"]

    shop.sandboxes["hubspot"].update("contacts", contact["id"], {"lastname": "Okafor-Lindqvist"})
    mailchimp_sdk(shop).lists.update_list_member(audience(shop)["id"], subscriber_hash(email), {"merge_fields": {"PHONE": "+49 30 5550100"}})
    clear_journals(shop)
    report, _ = sync_once(shop)

    assert not report.errors
    assert member["merge_fields"]["LNAME"] == "Okafor-Lindqvist"
    assert contact["properties"]["phone"] == "+49 30 5550100"
    assert "compared across hubspot and mailchimp" in report.linking
    for _ in range(2):  # the values we just wrote come back from both tools: agreement, not a change
        clear_journals(shop)
        report, _ = sync_once(shop)
        assert all(t.sent == 0 for t in report.targets), [(t.name, t.sent) for t in report.targets]
        assert mutating_requests(shop) == []


def test_when_both_tools_changed_a_field_the_later_change_wins_and_empty_never_erases(shop):
    sync_once(shop)
    email, contact, member = linked_pair(shop)
    hubspot, mailchimp = shop.sandboxes["hubspot"], shop.sandboxes["mailchimp"]
    mailchimp.clock.advance(-3600)  # the Mailchimp edit happens an hour before the HubSpot one
    mailchimp_sdk(shop).lists.update_list_member(audience(shop)["id"], subscriber_hash(email),
                                                 {"merge_fields": {"FNAME": "Kate", "COMPANY": ""}})
    mailchimp.clock.advance(3600)
    hubspot.update("contacts", contact["id"], {"firstname": "Katherine"})

    sync_once(shop)

    assert member["merge_fields"]["FNAME"] == "Katherine" and contact["properties"]["firstname"] == "Katherine"
    # Clearing the company in Mailchimp did not erase it in HubSpot; HubSpot's value went back to Mailchimp.
    assert contact["properties"]["company"] and member["merge_fields"]["COMPANY"] == contact["properties"]["company"]


@pytest.mark.fault("F24")
def test_a_mailchimp_unsubscribe_shows_in_hubspot_and_no_status_is_ever_sent(shop):
    sync_once(shop)
    email, contact, member = linked_pair(shop)
    mailchimp_sdk(shop).lists.update_list_member(audience(shop)["id"], subscriber_hash(email), {"status": "unsubscribed"})
    clear_journals(shop)

    sync_once(shop)

    assert contact["properties"]["retention_unsubscribed_in"] == "mailchimp"
    assert member["status"] == "unsubscribed"
    bodies = [e.body for e in shop.sandboxes["mailchimp"].journal if isinstance(e.body, dict)]
    assert not any("status" in body for body in bodies)
    # Anyone still subscribed carries no such mark.
    others = [c for c in shop.sandboxes["hubspot"].objects["contacts"].values() if c["id"] != contact["id"]]
    subscribed = {m["email_address"] for m in audience(shop)["members"].values() if m["status"] == "subscribed"}
    assert not any(c["properties"].get("retention_unsubscribed_in") for c in others if c["properties"]["email"] in subscribed)


def test_new_hubspot_contacts_reach_mailchimp_only_when_enabled_as_pending_and_never_if_opted_out(shop):
    hubspot = shop.sandboxes["hubspot"]
    fresh = hubspot.create("contacts", {"email": "new.lead@example.com", "firstname": "Nia", "lastname": "Berg",
                                        "hs_email_optout": "false"})
    hubspot.create("contacts", {"email": "opted.out@example.com", "firstname": "Ola", "hs_email_optout": "true"})
    members = audience(shop)["members"]

    sync_once(shop)
    assert subscriber_hash("new.lead@example.com") not in members  # off by default

    mailchimp = shop.settings.mailchimp.model_copy(update={"add_new_contacts": True})
    shop.settings = shop.settings.model_copy(update={"mailchimp": mailchimp})
    report, _ = sync_once(shop)

    assert not report.errors, report.errors
    added = members[subscriber_hash("new.lead@example.com")]
    assert added["status"] == "pending"
    assert added["merge_fields"]["FNAME"] == "Nia" and added["merge_fields"]["LNAME"] == "Berg"
    assert subscriber_hash("opted.out@example.com") not in members
    assert fresh  # the HubSpot contact itself is untouched by the add
