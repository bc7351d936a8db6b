"""The bad-input corpus, RELIABILITY.md §4.3 B1-B16: each fixture through the surface a user's data reaches.

One table per surface, one row per fixture, each with its B-number and a comment saying what it is and what must
happen. Here: CLI_CASES, through `retention import`, `retention score --orders`, `retention sentiment` and
settings.toml, as a user runs them: the documented exit code, the documented line, no traceback, and a rejected
input leaves the store's checksum and run history exactly as they were; a quarantined row is the only change where
one is named. The vendor-side tables are in tests/test_bad_vendor_inputs.py; the CSV import fixtures that came first
in tests/test_csv_corpus.py (committed files in tests/fixtures/bad_csv). ``test_the_corpus_covers_every_bad_input_kind``
counts them all. Fixtures here are made by the test (bytes from a fixed recipe, huge values from a repeat count), so
nothing large or binary is committed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.test_bad_vendor_inputs import API_CASES, DRIFT_CASES, WRITE_CASES
from tests.test_csv_corpus import CASES as CSV_CORPUS
from tests.test_csv_corpus import seed

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


# --- the corpus as a whole ----------------------------------------------------------------------------------------


def test_the_corpus_covers_every_bad_input_kind() -> None:
    """RELIABILITY.md §4.3 asks for at least 40 fixtures across B1-B16."""
    corpus = [(case.bad_input, case.file) for case in CSV_CORPUS] + [(case.bad_input, case.name) for case in (*CLI_CASES, *API_CASES, *DRIFT_CASES, *WRITE_CASES)]
    assert len(corpus) >= 40 and len(set(corpus)) == len(corpus)
    assert {kind for kind, _ in corpus} == {f"B{n}" for n in range(1, 17)}
