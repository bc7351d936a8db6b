"""The bad-input corpus, RELIABILITY.md §4.3 B1-B16: each fixture through the surface a user's data reaches.

Four tables, one row per fixture, each row with its B-number and a comment saying what it is and what must
happen. The CSV import fixtures that were here first live in tests/test_csv_corpus.py (committed files in
tests/fixtures/bad_csv); ``test_the_corpus_covers_every_bad_input_kind`` counts both. Fixtures here are made by the
test itself (bytes from a fixed recipe, huge values from a repeat count), so nothing large or binary is committed.

- CLI_CASES go through `retention import`, `retention score --orders`, `retention sentiment` and settings.toml, as
  a user runs them: the documented exit code, the documented line, no traceback, and a rejected input leaves the
  store's checksum and run history exactly as they were; a quarantined row is the only change where one is named.
- API_CASES are vendor answers no API documents (B16, and B7 through the API), made by the sandboxes' fault
  schedule and read through the official SDKs: retried when they pass, one line and an unchanged store when they
  persist, one quarantine entry when a single object is bad. Never stored as data.
- DRIFT_CASES change a HubSpot property retention-sync writes (B15) between two write-backs.
- WRITE_CASES send values HubSpot cannot hold as given (B8, B9, B10): coerced to what the property holds, or refused
  for that one value with HubSpot's reason and not sent again; the rest of the batch is written.
"""

from __future__ import annotations

import csv
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
from tests.conftest import Workspace
from tests.test_csv_corpus import CASES as CSV_CORPUS
from tests.test_csv_corpus import seed
from tests.test_hubspot_read import hubspot_sandbox, make_client, stored
from tests.test_mailchimp import KEY as MAILCHIMP_KEY
from tests.test_mailchimp import make_client as make_mailchimp_client
from tests.test_survey_vendors import TYPEFORM

# --- the fixtures' contents ---------------------------------------------------------------------------------------

CONTACTS_HEADER = "Email,First Name,Last Name,Company"
ORDERS_HEADER = "Order ID,Email,Total,Created At"


def contact_rows(count: int, start: int = 0) -> list[str]:
    return [f"person{i}@example.com,Person,Number{i},Shop {i % 5}" for i in range(start, start + count)]


def order_rows(count: int, start: int = 0) -> list[str]:
    return [f"O{i},buyer{i % 25}@example.com,{5 + i % 11}.50,2024-0{1 + i % 9}-1{i % 10}" for i in range(start, start + count)]


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


@dataclass(frozen=True)
class CliCase:
    name: str
    bad_input: str  # the RELIABILITY.md §4.3 scenario: "B1" … "B16"
    args: tuple[str, ...]  # `retention ARGS`; "{file}" is the fixture's path, "{out}" a file the command may write
    content: Callable[[], bytes] = lambda: b""
    file_name: str = "input.csv"
    exit_code: int = 0
    message: str = ""  # must appear in what the user sees
    quarantined: int = 0  # new quarantine entries: the documented rows, each naming file and line
    changes_store: bool = False  # an import that took rows; anything else must leave the checksum alone
    settings: str | None = None  # replaces settings.toml for this case
    output_check: Callable[[Path], None] | None = None  # what the file the command wrote must hold


def formulas_neutralised(path: Path) -> None:
    cells = [cell for row in csv.reader(path.open(encoding="utf-8")) for cell in row]
    assert any(cell.startswith("'=") for cell in cells), "the formula is kept, behind an apostrophe"
    assert not any(cell.startswith(("=", "+", "@", "\uff1d")) for cell in cells)


CLI_CASES = [
    # B1: a cp1252 orders export given to `score --orders`: the same one line as `import`, naming line, byte and flag.
    CliCase("cp1252_orders_scored", "B1", ("score", "--orders", "{file}"), lambda: (ORDERS_HEADER + "\nA1,rene@example.com,10.00,2024-03-05\nA2,zoë@example.com,5,2024-03-06\n").encode("cp1252"),
            exit_code=3, message="line 3: byte 0xEB at offset 74 is not valid UTF-8; the file looks like cp1252 — re-export it as UTF-8, or run again with --encoding cp1252"),
    # B1: a survey export in latin-1 given to `sentiment`: refused before anything is written.
    CliCase("latin1_answers_labelled", "B1", ("sentiment", "{file}", "--column", "Comment", "--out", "{out}"),
            lambda: "Comment\nTrès bon thé\nLivraison lente, déçu\n".encode("latin-1"),
            exit_code=3, message="is not valid UTF-8"),
    # B2: Excel "Unicode text" written big-endian (UTF-16 BE with BOM): decoded, the name round-trips.
    CliCase("utf16_be_contacts", "B2", ("import", "{file}", "--kind", "contacts"),
            lambda: "\ufeff".encode("utf-16-be") + "\n".join([CONTACTS_HEADER, "zoe@example.com,Zoë,Ångström,Café", *contact_rows(4)]).encode("utf-16-be"),
            message="utf-16, 5 rows", changes_store=True),
    # B2: a BOM before the column `sentiment --column` names: found, as if the BOM were not there.
    CliCase("utf8_bom_answers_labelled", "B2", ("sentiment", "{file}", "--column", "Comment", "--out", "{out}"),
            lambda: b"\xef\xbb\xbf" + lines("Comment,NPS", "Lovely tea,10", "Parcel arrived broken,2"), message="Wrote 2 answers"),
    # B3: quoted cells holding line breaks (LF and CRLF): one record each, the break kept in the value.
    CliCase("embedded_newlines_contacts", "B3", ("import", "{file}", "--kind", "contacts"),
            lambda: lines(CONTACTS_HEADER, 'ann@example.com,"Ann\nMarie",Lee,"Acme\r\nLtd"', *contact_rows(3)), message="Imported 4 contacts", changes_store=True),
    # B3: an unclosed quote in an orders file given to `score --orders`: rejected whole, naming the line.
    CliCase("unclosed_quote_orders_scored", "B3", ("score", "--orders", "{file}"),
            lambda: lines(ORDERS_HEADER, *order_rows(3), 'X1,"x@example.com,5.00,2024-01-01', *order_rows(3, 3)),
            exit_code=3, message="line 5: a quoted cell starting here is never closed"),
    # B4: a 0-byte survey export given to `sentiment`: one line, nothing written.
    CliCase("empty_answers_labelled", "B4", ("sentiment", "{file}", "--column", "Comment", "--out", "{out}"), lambda: b"",
            exit_code=3, message="input.csv has no such column; its columns are: "),
    # B4: an orders export with only its header given to `score --orders`: one line naming the file (was: a line
    # about contacts who opened emails, which this command never reads).
    CliCase("header_only_orders_scored", "B4", ("score", "--orders", "{file}"), lambda: lines(ORDERS_HEADER),
            exit_code=3, message="input.csv: only a header row; nothing to score"),
    # B5: an address ending in a dot and one with an IDN domain: the first quarantined, the IDN one kept.
    CliCase("trailing_dot_and_idn_emails", "B5", ("import", "{file}", "--kind", "contacts"),
            lambda: lines(CONTACTS_HEADER, "ann@bücher.example,Ann,Lee,x", "bob@example.com.,Bob,Ray,x", *contact_rows(12)),
            message="'bob@example.com.' is not a valid email address (An email address cannot end with a period)", quarantined=1, changes_store=True),
    # B6: one person typed three ways in an orders log: one customer, three orders, in `score --orders`.
    CliCase("case_variant_buyers_scored", "B6", ("score", "--orders", "{file}"),
            lambda: lines(ORDERS_HEADER, *order_rows(40), "V1,Ann@Example.COM,10,2024-01-05", "V2, ann@example.com ,12,2024-02-05", "V3,ANN@EXAMPLE.COM,9,2024-03-05"),
            message="Scored 26 customers"),
    # B7: a secondary email that is no address: that contact quarantined with the column named, the rest imported.
    CliCase("invalid_secondary_email_contacts", "B7", ("import", "{file}", "--kind", "contacts"),
            lambda: lines("Record Id,First Name,Email,Secondary Email", "z1,Ann,ann@example.com,ann@@work", *[f"z{i},P{i},p{i}@example.com,p{i}@work.example.com" for i in range(2, 14)]),
            message="column 'Secondary Email' 'ann@@work' is not a valid email address", quarantined=1, changes_store=True),
    # B8: "yes" where an amount belongs: that order quarantined; "1e-14" is a number and is kept.
    CliCase("yes_as_amount_orders", "B8", ("import", "{file}", "--kind", "orders"),
            lambda: lines(ORDERS_HEADER, *order_rows(12), "Y1,y@example.com,yes,2024-01-02", "Y2,y@example.com,1e-14,2024-01-03"),
            message="column 'Total' 'yes' is not an amount", quarantined=1, changes_store=True),
    # B8: text where settings.toml wants a number: one line naming the file, the key, the value and the bounds.
    CliCase("text_for_a_number_setting", "B8", ("status",), settings='[hubspot]\nbatch_size = "lots"\n',
            exit_code=2, message="settings.toml: hubspot.batch_size input should be a valid integer, unable to parse string as an integer (got 'lots')"),
    # B9: 30 February and "next tuesday": each quarantined with what can be read instead.
    CliCase("impossible_and_unreadable_dates", "B9", ("import", "{file}", "--kind", "orders"),
            lambda: lines(ORDERS_HEADER, *order_rows(20), "D1,d@example.com,5,2024-02-30", "D2,d@example.com,5,next tuesday"),
            message="'2024-02-30' is not a real date (day is out of range for month)", quarantined=2, changes_store=True),
    # B9: a time zone that does not exist, in settings.toml: one line saying what is allowed.
    CliCase("unknown_time_zone_setting", "B9", ("status",), settings='timezone = "Mars/Olympus_Mons"\n',
            exit_code=2, message="settings.toml: timezone must be an IANA time zone name such as Europe/Berlin"),
    # B10: a 100,000-character last name: that row quarantined with the length and the limit.
    CliCase("hundred_thousand_char_name", "B10", ("import", "{file}", "--kind", "contacts"),
            lambda: lines(CONTACTS_HEADER, *contact_rows(12), "long@example.com,Long," + "N" * 100_000 + ",X"),
            message="is 100,000 characters long; at most 1,000 allowed", quarantined=1, changes_store=True),
    # B10: a 1 MB answer in `sentiment`: labelled like any other (the import keeps it whole: test_csv_import).
    CliCase("one_megabyte_answer_labelled", "B10", ("sentiment", "{file}", "--column", "Comment", "--out", "{out}"),
            lambda: lines("Comment", "slow delivery " * 74_899, "great"), message="Wrote 2 answers"),
    # B11: the bytes of a lone surrogate (CESU-8 ED A0 80): not UTF-8, rejected naming line and byte.
    CliCase("lone_surrogate_bytes", "B11", ("import", "{file}", "--kind", "contacts"),
            lambda: CONTACTS_HEADER.encode() + b"\nann@example.com,A\xed\xa0\x80nn,Lee,x\n", exit_code=3, message="line 2: byte 0xED at offset"),
    # B11: a right-to-left override, Hebrew, an emoji and a combining accent in names: imported as they are.
    CliCase("bidi_emoji_combining_names", "B11", ("import", "{file}", "--kind", "contacts"),
            lambda: lines(CONTACTS_HEADER, "rlo@example.com,\u202egnp.exe,x,x", "he@example.com,\u05e9\u05dc\u05d5\u05dd \U0001F600,e\u0301,x", *contact_rows(3)),
            message="Imported 5 contacts", changes_store=True),
    # B11: a NUL byte in settings.toml: not valid TOML, one line, the store untouched.
    CliCase("nul_byte_in_settings", "B11", ("status",), settings='timezone = "UTC"\x00\n', exit_code=2, message="not valid TOML"),
    # B12: formula-looking answers in `sentiment --out`: the CSV the tool writes has every one neutralised.
    CliCase("formula_answers_exported", "B12", ("sentiment", "{file}", "--column", "Comment", "--out", "{out}"),
            lambda: lines("Comment", '"=HYPERLINK(""http://evil.example"",""click"")"', "+cmd|' /C calc'!A0", "@SUM(1)", "\uff1d1+1"),
            message="Wrote 4 answers", output_check=formulas_neutralised),
    # B12: a customer whose address starts with "=" in `score --out`: the id is neutralised in the export.
    CliCase("formula_customer_id_exported", "B12", ("score", "--orders", "{file}", "--out", "{out}"),
            lambda: lines(ORDERS_HEADER, *order_rows(40), "F1,=cmd@example.com,10,2024-01-05", "F2,=cmd@example.com,12,2024-04-05"),
            message="Wrote 26 rows", output_check=formulas_neutralised),
    # B13: rich-markup and emoji-code text in a quarantined cell: printed literally (was: an internal error).
    CliCase("markup_in_a_quarantined_value", "B13", ("import", "{file}", "--kind", "contacts"),
            lambda: lines(CONTACTS_HEADER, *contact_rows(12), "[/bold]:o:[red]@example.com,x,x,x"),
            message="'[/bold]:o:[red]@example.com' is not a valid email address", quarantined=1, changes_store=True),
    # B13: a path and a template as the form id: plain data, no file touched, no template run.
    CliCase("path_traversal_form_id", "B13", ("import", "{file}", "--kind", "responses", "--form", "../../etc/passwd"),
            lambda: lines("Timestamp,Email Address,Comments", "2024-03-15 10:00:00,ann@example.com,{{7*7}}"),
            message="Imported 1 responses", changes_store=True),
    # B13: a credential written into settings.toml: refused, naming the variable to use instead.
    CliCase("token_in_settings", "B13", ("status",), settings='[mailchimp]\napi_key = "0123456789abcdef0123456789abcdef-us6"\n',
            exit_code=2, message="mailchimp.api_key looks like a secret, and secrets are never read from a file — remove it and set RETENTION_MAILCHIMP_API_KEY"),
    # B14: the same survey exported again after a question was renamed and one added: read, the new answers kept.
    CliCase("survey_export_after_question_drift", "B14", ("import", "{file}", "--kind", "responses", "--form", "feedback"),
            lambda: lines("Timestamp,Email Address,How likely are you to recommend us? (0-10),What should we change?,Which tea do you buy?",
                          "2024-04-01 10:00:00,ann@example.com,9,Nothing,Green", "2024-04-02 10:00:00,bob@example.com,3,Faster delivery,Black"),
            message="Imported 2 responses", changes_store=True),
    # B14: the next export after a question was removed from the form: read; the earlier answers stay as they were.
    CliCase("survey_export_after_a_question_was_removed", "B14", ("import", "{file}", "--kind", "responses", "--form", "feedback"),
            lambda: lines("Timestamp,Email Address,What should we change?", "2024-04-03 10:00:00,dee@example.com,More teas"),
            message="Imported 1 responses", changes_store=True),
    # B8: a setting outside its bounds: one line with the bounds and the value.
    CliCase("out_of_range_setting", "B8", ("status",), settings="[csv]\nmax_bad_row_fraction = 3\n",
            exit_code=2, message="settings.toml: csv.max_bad_row_fraction must be between 0.0 and 1.0 (got 3)"),
]

# B14 needs an earlier export of the same form to drift from; imported before the case runs.
SURVEY_BEFORE_DRIFT = lines("Timestamp,Email Address,How likely are you to recommend us?,What should we change?",
                            "2024-03-01 10:00:00,cy@example.com,7,More green teas")


@pytest.mark.parametrize("case", CLI_CASES, ids=[f"{case.bad_input}-{case.name}" for case in CLI_CASES])
def test_bad_input_through_the_cli_gives_its_documented_result(workspace: Workspace, case: CliCase) -> None:
    seed(workspace)
    if case.bad_input == "B14":
        (workspace.root / "before.csv").write_bytes(SURVEY_BEFORE_DRIFT)
        assert workspace.run("import", str(workspace.root / "before.csv"), "--kind", "responses", "--form", "feedback").exit_code == 0
    before, runs_before, quarantine_before = workspace.checksum(), workspace.run_count(), quarantine_size(workspace)
    fixture, written = workspace.root / case.file_name, workspace.root / "written.csv"
    fixture.write_bytes(case.content())
    if case.settings is not None:
        (workspace.root / "settings.toml").write_text(case.settings, encoding="utf-8")

    result = workspace.run(*(arg.replace("{file}", str(fixture)).replace("{out}", str(written)) for arg in case.args))

    shown = result.stdout + result.stderr
    assert result.exit_code == case.exit_code, shown
    assert case.message in shown, shown
    assert "Traceback" not in shown and "internal error" not in shown
    if case.exit_code != 0:
        assert len(result.stderr.strip().splitlines()) == 1, "a rejected input gets exactly one line"
    assert quarantine_size(workspace) - quarantine_before == case.quarantined
    if not case.changes_store:
        assert workspace.checksum() == before, "an input that was refused or only read must leave the store as it was"
        assert workspace.run_count() == runs_before
    if case.output_check is not None:
        case.output_check(written)
    if case.bad_input == "B14":
        store = workspace.open_store()
        try:
            payloads = [payload for _, payload in store.stored_records("survey_response")]
        finally:
            store.close()
        assert any("More green teas" in payload for payload in payloads), "the answers given before the drift are kept"


def quarantine_size(workspace: Workspace) -> int:
    store = workspace.open_store()
    try:
        return store.quarantine_size()
    finally:
        store.close()


def test_markup_in_a_value_reaches_the_user_as_typed_and_a_source_name_keeps_its_colon(workspace: Workspace) -> None:
    """The console printed user data as rich markup: '[/bold]' in a cell ended the import in an internal error after
    it had committed, and the source name 'csv:o' came out as 'csv⭕'."""
    path = workspace.root / "o.csv"
    path.write_bytes(lines(ORDERS_HEADER, *order_rows(12), "M1,[b]x@example.com,5,2024-01-01"))

    result = workspace.run("import", str(path), "--kind", "orders")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert "into source csv:o: 12 new or changed" in result.stdout
    assert "'[b]x@example.com' is not a valid email address" in result.stdout


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


# --- the corpus as a whole ----------------------------------------------------------------------------------------


def test_the_corpus_covers_every_bad_input_kind() -> None:
    """RELIABILITY.md §4.3 asks for at least 40 fixtures across B1-B16."""
    corpus = [(case.bad_input, case.file) for case in CSV_CORPUS] + [(case.bad_input, case.name) for case in (*CLI_CASES, *API_CASES, *DRIFT_CASES, *WRITE_CASES)]
    assert len(corpus) >= 40 and len(set(corpus)) == len(corpus)
    assert {kind for kind, _ in corpus} == {f"B{n}" for n in range(1, 17)}
