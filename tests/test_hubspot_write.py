"""Writing scores back as HubSpot contact properties through the official SDK, checked in the sandbox's state."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from connectors.hubspot.destination import (
    HubSpotDestination,
    default_names,
    desired_from_scores,
)
from connectors.hubspot.source import HubSpotSource
from connectors.records import Contact, EmailAddress, RiskBand, Score
from sync.engine import push_changes, run_source_once
from sync.store import Store
from tests.test_hubspot_read import hubspot_sandbox, make_client

NAMES = default_names("retention")


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/r.db")


def desired_for(box, contact_ids, risk: float = 0.42, segment: str = "At risk") -> dict[str, dict[str, str | None]]:
    return {i: {NAMES["churn_risk"]: str(risk * 100), NAMES["risk_band"]: "medium", NAMES["segment"]: segment,
                NAMES["clv"]: "123.456", NAMES["scored_at"]: "2025-03-01T00:00:00+00:00"} for i in contact_ids}


def batch_updates(box) -> list:
    return box.journal.entries(method="POST", path="/contacts/batch/update")


def test_first_push_creates_the_group_and_typed_properties_then_writes_rounded_values(store):
    with hubspot_sandbox(250) as box:
        ids = sorted(box.objects["contacts"])[:250]
        result = push_changes(store, HubSpotDestination(make_client(box)), desired_for(box, ids))

        assert "retention" in box.groups["contacts"]
        definitions = box.properties["contacts"]
        assert definitions[NAMES["churn_risk"]]["type"] == "number"
        assert definitions[NAMES["risk_band"]]["type"] == "enumeration"
        assert definitions[NAMES["scored_at"]]["type"] == "datetime"
        assert result.sent == 5 * len(ids) and not result.rejected
        assert len(batch_updates(box)) == 3  # 250 contacts, 100 per call, every field of a contact in one input
        props = box.objects["contacts"][ids[0]]["properties"]
        assert props[NAMES["churn_risk"]] == "42" and props[NAMES["clv"]] == "123.46"
        assert props[NAMES["scored_at"]] == "2025-03-01T00:00:00.000Z"


@pytest.mark.fault("L2")
def test_an_unchanged_second_push_makes_no_write_calls(store):
    with hubspot_sandbox(120) as box:
        ids = sorted(box.objects["contacts"])
        push_changes(store, HubSpotDestination(make_client(box)), desired_for(box, ids, risk=0.4213))
        box.journal.clear()
        # 42.13 % and 42.1 % are the same once rounded as the property stores them: nothing to send.
        again = push_changes(store, HubSpotDestination(make_client(box)), desired_for(box, ids, risk=0.421))
        assert again.sent == 0 and again.unchanged == 5 * len(ids)
        assert batch_updates(box) == []


def test_a_large_push_fills_every_call_across_the_parts_it_is_diffed_in(store):
    # The engine diffs a few thousand contacts at a time (their ledger rows in memory, not the whole ledger);
    # what a part leaves over rides with the next part, so no part's end costs a half-empty call.
    with hubspot_sandbox(5_050) as box:
        ids = sorted(box.objects["contacts"])
        push_changes(store, HubSpotDestination(make_client(box)), desired_for(box, ids))
        assert len(ids) > 5_000 and len(batch_updates(box)) == math.ceil(len(ids) / 100)
        box.journal.clear()

        every_third = ids[::3]
        changed = set(every_third)
        desired = {i: {**fields, NAMES["segment"]: "Lost"} if i in changed else fields
                   for i, fields in desired_for(box, ids).items()}
        result = push_changes(store, HubSpotDestination(make_client(box)), desired)

        assert result.sent == len(every_third) and len(ids[:5_000:3]) % 100  # the first part leaves a remainder
        assert len(batch_updates(box)) == math.ceil(len(every_third) / 100)
        assert all(box.objects["contacts"][i]["properties"][NAMES["segment"]] == "Lost" for i in every_third)


@pytest.mark.fault("F11")
def test_three_invalid_inputs_in_a_batch_of_a_hundred_are_quarantined_and_not_resent(store):
    with hubspot_sandbox(100) as box:
        ids = sorted(box.objects["contacts"])[:100]
        desired = desired_for(box, ids)
        bad = ids[10], ids[50], ids[90]
        for contact_id in bad:
            desired[contact_id][NAMES["segment"]] = "Not a segment"
        result = push_changes(store, HubSpotDestination(make_client(box)), desired)

        written = [i for i in ids if box.objects["contacts"][i]["properties"].get(NAMES["segment"]) == "At risk"]
        assert len(written) == 97
        assert sorted({r.change.object_id for r in result.rejected}) == sorted(bad)
        assert all("INVALID_OPTION" in (r.reason or "") or "allowed options" in (r.reason or "") for r in result.rejected)
        quarantined_refs = " ".join(str(row.get("record_ref")) for row in store.quarantined())
        assert all(f"object {contact_id} " in quarantined_refs for contact_id in bad)

        box.journal.clear()
        again = push_changes(store, HubSpotDestination(make_client(box)), desired)
        assert again.held_back == 5 * len(bad) and again.unchanged == 5 * 97
        assert batch_updates(box) == []  # nothing re-sent while the bad inputs are unchanged

        desired[bad[0]][NAMES["segment"]] = "Loyal"
        fixed = push_changes(store, HubSpotDestination(make_client(box)), desired)
        assert fixed.sent >= 1 and box.objects["contacts"][bad[0]]["properties"][NAMES["segment"]] == "Loyal"


@pytest.mark.fault("F12")
def test_a_whole_batch_400_is_bisected_down_to_the_bad_inputs(store):
    with hubspot_sandbox(100, batch_errors="whole") as box:
        ids = sorted(box.objects["contacts"])[:100]
        desired = desired_for(box, ids)
        desired[ids[37]][NAMES["risk_band"]] = "catastrophic"
        result = push_changes(store, HubSpotDestination(make_client(box)), desired)

        assert [r.change.object_id for r in result.rejected] == [ids[37]] * len(desired[ids[37]])
        assert sum(1 for i in ids if box.objects["contacts"][i]["properties"].get(NAMES["risk_band"]) == "medium") == 99
        assert len(batch_updates(box)) <= 1 + 2 * 7  # log2(100) levels, two calls each


def test_an_incompatible_existing_property_stops_only_that_mapping_with_one_line(store, caplog):
    with hubspot_sandbox(10) as box:
        box.groups["contacts"]["retention"] = {"name": "retention", "label": "Retention", "displayOrder": -1, "archived": False}
        box.properties["contacts"][NAMES["clv"]] = {"name": NAMES["clv"], "label": "CLV", "type": "string", "fieldType": "text",
                                                    "groupName": "retention", "options": []}
        ids = sorted(box.objects["contacts"])
        result = push_changes(store, HubSpotDestination(make_client(box)), desired_for(box, ids))

        assert {r.change.field_name for r in result.rejected} == {NAMES["clv"]}
        assert "type string" in result.rejected[0].reason and "\n" not in result.rejected[0].reason
        assert box.objects["contacts"][ids[0]]["properties"][NAMES["churn_risk"]] == "42"
        assert NAMES["clv"] in caplog.text


@pytest.mark.fault("F22")
def test_scores_go_to_the_survivor_never_to_a_merged_away_id(store):
    with hubspot_sandbox(20) as box:
        client = make_client(box)
        survivor, absorbed = sorted(box.objects["contacts"])[4:6]
        absorbed_email = box.objects["contacts"][absorbed]["properties"]["email"]
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")  # the store knows the absorbed contact
        box.merge(survivor, absorbed)
        run_source_once(store, HubSpotSource(client), "sync", "hubspot")
        contacts = [contact for _, contact in _contacts(store)]
        score = Score(source="scoring", source_id=absorbed_email, churn_probability=0.8, risk_band=RiskBand.HIGH,
                      scored_at=datetime(2025, 3, 1, tzinfo=UTC), top_reasons=("no order for 200 days",),
                      segment="At risk", clv=Decimal(10), clv_currency="EUR", sentiment=-0.5)
        desired = desired_from_scores([score], contacts, NAMES)

        assert list(desired) == [survivor]
        merged_away = {old for c in contacts for old in c.merged_ids}
        push_changes(store, HubSpotDestination(client, merged_away=merged_away), desired)
        props = box.objects["contacts"][survivor]["properties"]
        assert props[NAMES["risk_band"]] == "high" and props[NAMES["sentiment"]] == "negative"
        assert all(e.body and all(i["id"] != absorbed for i in e.body["inputs"]) for e in batch_updates(box))


def _contacts(store: Store):
    from connectors.records import from_payload

    return [(i, from_payload("contact", p)) for i, p in store.stored_records("contact", "hubspot")]


def test_desired_values_from_scores_match_contacts_by_primary_or_additional_email():
    contact = Contact(source="hubspot", source_id="77", email=EmailAddress.parse("Ana@Shop.example"),
                      additional_emails=(EmailAddress.parse("ana@home.example"),))
    score = Score(source="scoring", source_id="ana@home.example", churn_probability=0.12345, risk_band=RiskBand.LOW,
                  scored_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    desired = desired_from_scores([score], [contact], NAMES, last_nps={"ana@home.example": 9})
    assert desired["77"][NAMES["risk_band"]] == "low" and desired["77"][NAMES["last_nps"]] == "9"
    assert desired["77"][NAMES["clv"]] is None
