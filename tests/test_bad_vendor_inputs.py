"""The bad-input corpus through the vendors (RELIABILITY.md §4.3): tables of tests/test_bad_inputs.py's corpus.

- API_CASES are vendor answers no API documents (B16, and B7 and B11 through an API), made by the sandboxes' fault
  schedule and read through the official SDKs: retried when they pass, one line and an unchanged store when they
  persist, one quarantine entry when a single object is bad. Never stored as data, and no traceback logged.
- DRIFT_CASES change a HubSpot property retention-sync writes (B15) between two write-backs.
- WRITE_CASES send values HubSpot cannot hold as given (B8, B9, B10): coerced to what the property holds, or refused
  for that one value with HubSpot's reason and not sent again; the rest of the batch is written.

Each row has its B-number and a comment saying what it is and what must happen.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.base import SourceError
from connectors.hubspot.destination import HubSpotDestination, default_names
from connectors.hubspot.source import HubSpotSource
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID, seed_audience
from connectors.mailchimp.source import MailchimpSource
from connectors.sandbox import Clock, Fault
from sync.engine import push_changes, run_source_once
from sync.store import Store
from tests.test_hubspot_read import hubspot_sandbox, make_client, stored
from tests.test_mailchimp import KEY as MAILCHIMP_KEY
from tests.test_mailchimp import make_client as make_mailchimp_client
from tests.test_survey_vendors import TYPEFORM


# --- vendor answers no API documents (through the official SDKs, against the sandboxes) ---------------------------

HTML_PAGE = "<html><head><title>Maintenance</title></head><body><h1>Back soon</h1></body></html>"


def without(*keys: str) -> Callable[[Any], Any]:
    def rewrite(body: Any) -> Any:
        for key in keys:
            body.pop(key, None)
        return body

    return rewrite


def nulled(key: str) -> Callable[[Any], Any]:
    def rewrite(body: Any) -> Any:
        body[key] = None
        return body

    return rewrite


def first_result(change: Callable[[dict[str, Any]], None]) -> Callable[[Any], Any]:
    def rewrite(body: Any) -> Any:
        if body.get("results"):
            change(body["results"][0])
        return body

    return rewrite


def every_result_properties_null(body: Any) -> Any:
    for result in body.get("results") or []:
        result["properties"] = None
    return body


def first_item_text(text: str) -> Callable[[Any], Any]:
    """A Typeform responses page whose first item's free-text answer is ``text``."""

    def rewrite(body: Any) -> Any:
        for answer in (body.get("items") or [{}])[0].get("answers") or []:
            if answer.get("type") == "text":
                answer["text"] = text
        return body

    return rewrite


def answer_kept_with_replacement(store: Store) -> None:
    payloads = [payload for _, payload in store.stored_records("survey_response", "typeform")]
    assert sum("Great tea \ufffd" in payload for payload in payloads) == 1


@dataclass(frozen=True)
class ApiCase:
    name: str
    bad_input: str
    vendor: str  # "hubspot" (search answers), "mailchimp" (member pages) or "typeform" (response pages)
    fault: Callable[[], Fault]
    outcome: str  # "retried": the read completes with every object; "stops": one line, store unchanged; "quarantined"
    message: str = ""
    check: Callable[[Store], None] | None = None


HUBSPOT_SEARCH, MAILCHIMP_MEMBERS = "contacts/search", "/members"


def secondary_kept(store: Store) -> None:
    contact = stored(store, "contact")
    kept = [c for c in contact.values() if [a.normalised for a in c.additional_emails] == ["second@example.com"]]
    assert len(kept) == 1, "the valid additional email is kept, the broken one dropped, the person not lost"


API_CASES = [
    # B16: a 200 whose body is an HTML maintenance page, every time: retried, then one line; nothing stored.
    ApiCase("hubspot_html_page_with_200", "B16", "hubspot", lambda: Fault(status=200, times=None, match=HUBSPOT_SEARCH, body=HTML_PAGE, content_type="text/html"),
            "stops", "malformed answer: an HTML page instead of JSON"),
    # B16: a search answer cut off after 40 bytes, every time: retried, then one line; nothing stored.
    ApiCase("hubspot_truncated_json", "B16", "hubspot", lambda: Fault(kind="truncate", truncate_at=40, times=None, match=HUBSPOT_SEARCH),
            "stops", "malformed answer: JSON cut short or invalid"),
    # B16: one HTML page with 200 in the middle of a read: retried, and every contact is read.
    ApiCase("hubspot_html_page_once", "B16", "hubspot", lambda: Fault(status=200, times=1, match=HUBSPOT_SEARCH, body=HTML_PAGE, content_type="text/html"), "retried"),
    # B16: a first search page without its paging (was: the read ended there and the cursor skipped the rest).
    ApiCase("hubspot_paging_missing", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=without("paging"), times=1, match=HUBSPOT_SEARCH), "retried"),
    # B16: "results": null on the first page (was: that page's 200 contacts silently skipped).
    ApiCase("hubspot_results_null", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=nulled("results"), times=1, match=HUBSPOT_SEARCH), "retried"),
    # B16: every result's properties null (was: an internal TypeError; stored, it would blank the contacts).
    ApiCase("hubspot_properties_null", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=every_result_properties_null, times=1, match=HUBSPOT_SEARCH), "retried"),
    # B16: search answers without "total", every time: the pages left cannot be known; one line, nothing stored.
    ApiCase("hubspot_total_missing", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=without("total"), times=None, match=HUBSPOT_SEARCH),
            "stops", "'total' is missing from a search answer"),
    # B16: one contact with "id": null (was: stored under the id "None"): that object quarantined, the rest read.
    ApiCase("hubspot_object_id_null", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=first_result(lambda r: r.update(id=None)), times=1, match=HUBSPOT_SEARCH),
            "quarantined", "id None is missing; HubSpot sent an object without its id"),
    # B16 (B9 through an API): a createdate of "yesterday" (was: an internal ValueError): that contact quarantined.
    ApiCase("hubspot_unreadable_date", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=first_result(lambda r: r["properties"].update(createdate="yesterday")), times=1, match=HUBSPOT_SEARCH),
            "quarantined", "createdate 'yesterday' is not an ISO 8601 date-time or epoch milliseconds"),
    # B16: a null modified date on a whole page (was: an internal AttributeError): read; the cursor goes by the others.
    ApiCase("hubspot_modified_date_null", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=lambda body: [r["properties"].update(lastmodifieddate=None) for r in body.get("results") or []] and body, times=1, match=HUBSPOT_SEARCH), "retried"),
    # B7: an additional email that is no address, beside a good one: the good one kept, the person not lost.
    ApiCase("hubspot_broken_additional_email", "B7", "hubspot", lambda: Fault(kind="rewrite", rewrite=first_result(lambda r: r["properties"].update(hs_additional_emails="not@@an-address;Second@Example.com")), times=1, match=HUBSPOT_SEARCH),
            "retried", check=secondary_kept),
    # B11 through an API: a first name holding half of a surrogate pair (was: an internal TypeError from the payload
    # encoder that ended the whole read): that contact quarantined with the reason, the rest read.
    ApiCase("hubspot_lone_surrogate_in_a_name", "B11", "hubspot", lambda: Fault(kind="rewrite", rewrite=first_result(lambda r: r["properties"].update(firstname="Ann\ud83d")), times=1, match=HUBSPOT_SEARCH),
            "quarantined", "holds half of a UTF-16 surrogate pair"),
    # B11 through an API: a Typeform answer with an emoji cut in two: the answer kept, the half emoji as U+FFFD.
    ApiCase("typeform_lone_surrogate_in_an_answer", "B11", "typeform", lambda: Fault(kind="rewrite", rewrite=first_item_text("Great tea \ud83d"), times=1, match="/responses"),
            "retried", check=answer_kept_with_replacement),
    # B16: the archived-contacts listing answering "results": null (was: an internal TypeError): retried.
    ApiCase("hubspot_archived_list_results_null", "B16", "hubspot", lambda: Fault(kind="rewrite", rewrite=nulled("results"), times=1, match="^GET /crm/v3/objects/contacts$"), "retried"),
    # B16: Typeform answering 200 with an HTML page, every time (was: one line, but not retried like the others).
    ApiCase("typeform_html_page_with_200", "B16", "typeform", lambda: Fault(status=200, times=None, match="/responses", body=HTML_PAGE, content_type="text/html"),
            "stops", "malformed answer: an HTML page instead of JSON"),
    # B16: Mailchimp answering 200 with an HTML page, every time (was: an internal AttributeError on a str).
    ApiCase("mailchimp_html_page_with_200", "B16", "mailchimp", lambda: Fault(status=200, times=None, match=MAILCHIMP_MEMBERS, body=HTML_PAGE, content_type="text/html"),
            "stops", "malformed answer: an HTML page instead of JSON"),
    # B16: a member page cut off after 50 bytes (was: the SDK's bare Response, then an internal AttributeError): retried.
    ApiCase("mailchimp_truncated_json", "B16", "mailchimp", lambda: Fault(kind="truncate", truncate_at=50, times=1, match=MAILCHIMP_MEMBERS), "retried"),
    # B16: a member page without total_items (was: the read stopped after 1,000 of 1,200 members): retried.
    ApiCase("mailchimp_total_items_missing", "B16", "mailchimp", lambda: Fault(kind="rewrite", rewrite=without("total_items"), times=1, match=MAILCHIMP_MEMBERS), "retried"),
    # B16: "members": null (was: an internal TypeError): retried, every member read.
    ApiCase("mailchimp_members_null", "B16", "mailchimp", lambda: Fault(kind="rewrite", rewrite=nulled("members"), times=1, match=MAILCHIMP_MEMBERS), "retried"),
    # B16: total_items missing every time: one line naming the audience, nothing stored.
    ApiCase("mailchimp_total_items_never_sent", "B16", "mailchimp", lambda: Fault(kind="rewrite", rewrite=without("total_items"), times=None, match=MAILCHIMP_MEMBERS),
            "stops", "reading members of audience a1b2c3d4e5 (malformed answer: 'total_items' is missing"),
]

HUBSPOT_CONTACTS, MAILCHIMP_MEMBERS_SEEDED = 250, 1_200  # two search pages; two member pages


@pytest.mark.parametrize("case", API_CASES, ids=[f"{case.bad_input}-{case.name}" for case in API_CASES])
def test_malformed_vendor_answer_is_retried_or_stops_in_one_line_and_is_never_stored(tmp_path: Path, case: ApiCase,
                                                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/retention.db")
    caplog.set_level(logging.WARNING)  # the default log level: no traceback may show there
    try:
        with vendor_sandbox(case.vendor) as (box, read):
            if case.outcome == "stops":
                read(store, False)  # a store with state, so "unchanged" means something
                before, runs_before = store.checksum(), len(store.recent_runs(10_000))
                box.faults.add(case.fault())
                with pytest.raises(SourceError) as caught:
                    read(store, True)
                message = str(caught.value)
                assert case.message in message and "\n" not in message and "<html" not in message and len(message) < 400
                assert caught.value.retryable, "a malformed answer is the vendor's passing trouble: the next run tries again"
                assert store.checksum() == before and len(store.recent_runs(10_000)) == runs_before
                return
            box.faults.add(case.fault())
            result = read(store, False)
            assert any(entry.fault for entry in box.journal), "the malformed answer was served"
            kind, expected = expected_records(case.vendor, box)
            if case.outcome == "retried":
                assert result.counts[kind].written == expected and result.counts[kind].quarantined == 0
            else:
                assert result.counts[kind].quarantined == 1 and result.counts[kind].written == expected - 1
                [entry] = store.quarantined()
                assert case.message in entry["reason"]
                assert "None" not in stored(store, "contact"), "an object without its id is never stored under 'None'"
            if case.check is not None:
                case.check(store)
    finally:
        store.close()
        assert "Traceback" not in caplog.text and not any(record.exc_info for record in caplog.records)


class vendor_sandbox:  # noqa: N801 - a context manager, like the sandboxes it wraps
    """A seeded sandbox of ``vendor`` and a function reading it into a store through the official SDK."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor

    def __enter__(self) -> tuple[Any, Callable[[Store, bool], Any]]:
        if self.vendor == "hubspot":
            self._context = hubspot_sandbox(HUBSPOT_CONTACTS, speed=2_000)
            box = self._context.__enter__()
            return box, lambda store, full: run_source_once(store, HubSpotSource(make_client(box, rng=random.Random(1))), "sync", "hubspot", full=full)
        if self.vendor == "typeform":
            box, url = TYPEFORM.start(120, speed=2_000)
            self._context = box
            return box, lambda store, full: run_source_once(store, TYPEFORM.source(box, url), "sync", "typeform", full=full)
        box = MailchimpSandbox(api_key=MAILCHIMP_KEY, clock=Clock(speed=2_000), seed=3)
        seed_audience(box, MAILCHIMP_MEMBERS_SEEDED, seed=7, orders=20)
        self._context = box
        box.__enter__()

        def read(store: Store, full: bool) -> Any:
            client = make_mailchimp_client(box)
            try:
                return run_source_once(store, MailchimpSource(client), "sync", "mailchimp", full=full)
            finally:
                client.close()

        return box, read

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def expected_records(vendor: str, box: Any) -> tuple[str, int]:
    """The kind the fault hits and how many of it the sandbox holds."""
    if vendor == "hubspot":
        return "contact", len(box.objects["contacts"])
    if vendor == "typeform":
        return "survey_response", len(box.responses[TYPEFORM.form_id])
    return "contact", len(box.lists[LIST_ID]["members"])


# --- target-property drift (B15) ----------------------------------------------------------------------------------

NAMES = default_names("retention")


def desired(ids: list[str], band: str) -> dict[str, dict[str, str | None]]:
    return {i: {NAMES["risk_band"]: band, NAMES["churn_risk"]: "42"} for i in ids}


@dataclass(frozen=True)
class DriftCase:
    name: str
    drift: Callable[[Any], None]  # what someone did to the HubSpot property between two write-backs
    band_written: bool  # whether the risk band still reaches HubSpot
    message: str = ""
    bad_input: str = "B15"


def delete_property(box: Any) -> None:
    del box.properties["contacts"][NAMES["risk_band"]]


def drop_option_high(box: Any) -> None:
    prop = box.properties["contacts"][NAMES["risk_band"]]
    prop["options"] = [o for o in prop["options"] if o["value"] != "high"]


def retype_as_number(box: Any) -> None:
    box.properties["contacts"][NAMES["risk_band"]].update(type="number", fieldType="number", options=[])


DRIFT_CASES = [
    # B15: the risk band property deleted in HubSpot: made again before the next write, and written.
    DriftCase("property_deleted", delete_property, band_written=True),
    # B15: its "high" option removed: that mapping refused in one line before any write; the other fields go on.
    DriftCase("enumeration_option_removed", drop_option_high, band_written=False, message="lacks the options high"),
    # B15: its type changed to number: that mapping refused in one line; the churn risk still written.
    DriftCase("property_retyped", retype_as_number, band_written=False, message="exists with type number but retention-sync writes enumeration"),
]


@pytest.mark.parametrize("case", DRIFT_CASES, ids=[f"{case.bad_input}-{case.name}" for case in DRIFT_CASES])
def test_a_drifted_target_property_is_detected_before_writing(tmp_path: Path, case: DriftCase) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/retention.db")
    try:
        with hubspot_sandbox(12) as box:
            ids = sorted(box.objects["contacts"])
            push_changes(store, HubSpotDestination(make_client(box)), desired(ids, "low"))
            case.drift(box)
            box.journal.clear()

            result = push_changes(store, HubSpotDestination(make_client(box)), {i: {**d, NAMES["churn_risk"]: "77"} for i, d in desired(ids, "high").items()})

            bands = {box.objects["contacts"][i]["properties"].get(NAMES["risk_band"]) for i in ids}
            assert {box.objects["contacts"][i]["properties"][NAMES["churn_risk"]] for i in ids} == {"77"}
            if case.band_written:
                assert bands == {"high"} and not result.rejected
            else:
                assert "high" not in bands
                assert {r.change.field_name for r in result.rejected} == {NAMES["risk_band"]}
                assert all(case.message in r.reason and "\n" not in r.reason for r in result.rejected)
                sent = [i for e in box.journal.entries(method="POST", path="/batch/update") for i in e.body["inputs"]]
                assert all(NAMES["risk_band"] not in i["properties"] for i in sent), "0 writes for the drifted mapping"
    finally:
        store.close()


# --- values of the wrong type or shape written to HubSpot (B8, B9, B10) ---------------------------------------------


@dataclass(frozen=True)
class WriteCase:
    name: str
    bad_input: str
    field: str  # the retention property the value is for
    value: str
    stored: str | None = None  # what HubSpot must hold afterwards; None: the value is refused
    refused: str = ""  # HubSpot's reason, quarantined; the value is not sent again while it stays the same


WRITE_CASES = [
    # B8: float noise into a number property rounded to one decimal: sent as 30, so a rerun compares equal.
    WriteCase("float_noise_rounded", "B8", "churn_risk", "30.000000000000004", stored="30"),
    # B8: 9.5 into the whole-number NPS property: rounded half up, as the property holds it.
    WriteCase("half_nps_rounded_half_up", "B8", "last_nps", "9.5", stored="10"),
    # B8: 1e-14 into a two-decimal money property: 0, not "1E-14".
    WriteCase("exponent_notation_rounded", "B8", "clv", "1e-14", stored="0"),
    # B8: "N/A" into a number property: refused for that one value, with HubSpot's reason; the batch goes on.
    WriteCase("text_for_a_number", "B8", "churn_risk", "N/A", refused="'N/A' is not a valid number"),
    # B8: NaN into a number property: refused the same way, never sent as a number.
    WriteCase("nan_for_a_number", "B8", "clv", "NaN", refused="'NaN' is not a valid number"),
    # B8: an option in the wrong case: refused, naming the property.
    WriteCase("option_in_the_wrong_case", "B8", "risk_band", "HIGH", refused="'HIGH' was not one of the allowed options"),
    # B9: a time with a +05:30 offset: sent in UTC with milliseconds, as HubSpot's datetime properties want.
    WriteCase("offset_time_sent_as_utc_ms", "B9", "scored_at", "2025-03-01T00:00:00+05:30", stored="2025-02-28T18:30:00.000Z"),
    # B9: epoch milliseconds: the same instant in HubSpot's form.
    WriteCase("epoch_ms_sent_as_utc_ms", "B9", "scored_at", "1740787200000", stored="2025-03-01T00:00:00.000Z"),
    # B10: 70,000 characters of reasons: cut to HubSpot's 65,536-character limit, not refused.
    WriteCase("reasons_past_the_text_limit", "B10", "churn_reasons", "slow " * 14_000, stored=("slow " * 14_000)[:65_536]),
]


@pytest.mark.parametrize("case", WRITE_CASES, ids=[f"{case.bad_input}-{case.name}" for case in WRITE_CASES])
def test_a_value_hubspot_cannot_hold_as_given_is_coerced_or_refused_alone(tmp_path: Path, case: WriteCase) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/retention.db")
    try:
        with hubspot_sandbox(2) as box:
            odd, control = sorted(box.objects["contacts"])
            wanted = {odd: {NAMES[case.field]: case.value}, control: {NAMES["churn_risk"]: "12.3"}}

            first = push_changes(store, HubSpotDestination(make_client(box)), wanted)
            box.journal.clear()
            again = push_changes(store, HubSpotDestination(make_client(box)), wanted)

            held = box.objects["contacts"][odd]["properties"].get(NAMES[case.field])
            assert box.objects["contacts"][control]["properties"][NAMES["churn_risk"]] == "12.3", "the batch is not failed"
            assert box.journal.entries(method="POST", path="/batch/update") == [], "nothing is sent twice"
            if case.stored is not None:
                assert held == case.stored and not first.rejected
            else:
                assert held is None and [r.change.object_id for r in first.rejected] == [odd]
                assert case.refused in first.rejected[0].reason and "\n" not in first.rejected[0].reason
                assert again.held_back == 1
                assert any(case.refused in entry["reason"] for entry in store.quarantined())
    finally:
        store.close()
