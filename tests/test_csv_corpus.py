"""The bad-CSV corpus (tests/fixtures/bad_csv, written by make_corpus.py): each file gives its documented result.

Rejected files leave the store exactly as it was: same state checksum, no run recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import FIXTURES, Workspace

CORPUS = FIXTURES / "bad_csv"


@dataclass(frozen=True)
class Expect:
    file: str
    kind: str
    exit_code: int  # 0 imported (perhaps with quarantined rows or a notice), 3 rejected whole
    message: str  # must appear in the one line the user sees
    quarantined: int = 0
    imported: int = 0
    bad_input: str = ""  # the RELIABILITY.md §4.3 scenario it is a fixture of (tests/test_bad_inputs.py counts them)


CASES = [
    # cp1252 bytes (é, ’) with no --encoding: rejected, naming line, byte offset, the likely encoding and the flag.
    Expect("cp1252_contacts.csv", "contacts", 3, "line 2: byte 0xE9 at offset 55 is not valid UTF-8; the file looks like cp1252 — re-export it as UTF-8, or run again with --encoding cp1252", bad_input="B1"),
    # Excel "CSV UTF-8" with a BOM: imported, and the first header is 'Email', not '\ufeffEmail'.
    Expect("utf8_bom_contacts.csv", "contacts", 0, "Email → email", imported=20, bad_input="B2"),
    # Excel "Unicode text": UTF-16 LE with BOM, tab-separated: imported without NUL mojibake.
    Expect("utf16_contacts.csv", "contacts", 0, "utf-16, 20 rows", imported=20, bad_input="B2"),
    # One row with an extra cell, one with too few: those two quarantined with their lines, the rest imported.
    Expect("ragged_rows_contacts.csv", "contacts", 0, "line 12: has 5 cells but the header has 4", quarantined=2, imported=20, bad_input="B3"),
    # A quote opened on line 5 and never closed: rejected whole, naming the line.
    Expect("unclosed_quote_contacts.csv", "contacts", 3, "line 5: a quoted cell starting here is never closed", bad_input="B3"),
    # 'Email' twice: which one is the email can't be known, so rejected whole.
    Expect("duplicate_headers_contacts.csv", "contacts", 3, "the column 'Email' appears 2 times (columns 1, 3)", bad_input="B3"),
    # Neither an email nor an id column: rejected, listing the columns and the --map fix.
    Expect("no_email_column_contacts.csv", "contacts", 3, "no email or contact-id column found (columns: First Name, Last Name, Phone) — name one with --map COLUMN=email", bad_input="B3"),
    # A 0-byte file: a one-line notice, exit 0, nothing written.
    Expect("empty.csv", "contacts", 0, "empty.csv: the file is empty; nothing to import", bad_input="B4"),
    # Only a header: a one-line notice, exit 0, nothing written.
    Expect("header_only_contacts.csv", "contacts", 0, "only a header row; nothing to import", bad_input="B4"),
    # a@b, x@@y.com and a zero-width space inside an address: those three quarantined, 27 imported.
    Expect("invalid_emails_contacts.csv", "contacts", 0, "'x@@y.com' is not a valid email address", quarantined=3, imported=27, bad_input="B5"),
    # 'Alice@Example.COM' and ' alice@example.com ': one contact, the rows merged.
    Expect("case_variant_emails_contacts.csv", "contacts", 0, "Imported 4 contacts", imported=4, bad_input="B6"),
    # =HYPERLINK(...), +cmd|..., @SUM(1), -2+3, full-width ＝: imported and stored literally (checked below).
    Expect("formula_cells_contacts.csv", "contacts", 0, "Imported 7 contacts", imported=7, bad_input="B12"),
    # A 1 MB first name: that row quarantined with the reason, the other 12 imported.
    Expect("huge_cell_contacts.csv", "contacts", 0, "is 1,048,576 characters long; at most 1,000 allowed", quarantined=1, imported=12, bad_input="B10"),
    # A NUL byte inside a name: stripped, the row imported.
    Expect("nul_byte_contacts.csv", "contacts", 0, "Imported 4 contacts", imported=4, bad_input="B11"),
    # 2024-03-05, 03/15/2024 and "Mar 5, 2024" in one column: all read; 03/15 settles month-first.
    Expect("three_date_formats_orders.csv", "orders", 0, "dates read as month/day/year (line 3 can only be read that way)", imported=3, bad_input="B9"),
    # Only dates like 03/05/2024: both readings possible, so rejected with the --date-order fix.
    Expect("ambiguous_dates_orders.csv", "orders", 3, "line 2: dates like 03/05/2024 read both as day/month and month/day — run again with --date-order DMY or --date-order MDY", bad_input="B9"),
    # 13/05/2024 and 05/13/2024 in one file: contradictory, rejected.
    Expect("conflicting_dates_orders.csv", "orders", 3, "dates read day-first on line 2 and month-first on line 3", bad_input="B9"),
    # Two thirds of the amounts are 'N/A': more bad rows than csv.max_bad_row_fraction, so rejected whole.
    Expect("mostly_bad_amounts_orders.csv", "orders", 3, "20 of 30 rows could not be imported, more than csv.max_bad_row_fraction (10%); nothing was imported", bad_input="B8"),
    # The file stops in the middle of a UTF-8 character: rejected as truncated.
    Expect("truncated_utf8_contacts.csv", "contacts", 3, "the file ends in the middle of a character", bad_input="B1"),
    # SQL, path and template strings in names: plain data, imported literally.
    Expect("injection_strings_contacts.csv", "contacts", 0, "Imported 5 contacts", imported=5, bad_input="B13"),
    # One order with status 'bananas': that row quarantined, the other 19 imported.
    Expect("unknown_status_orders.csv", "orders", 0, "'bananas' is not an order status", quarantined=1, imported=19, bad_input="B8"),
]


def seed(workspace: Workspace) -> None:
    """Give the store some state first, so 'unchanged' means something."""
    result = workspace.run("import", str(CORPUS / "utf8_bom_contacts.csv"), "--kind", "contacts", "--source", "seed")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[case.file for case in CASES])
def test_bad_csv_gives_its_documented_result(any_workspace: Workspace, case: Expect) -> None:
    seed(any_workspace)
    before, runs_before = any_workspace.checksum(), any_workspace.run_count()

    result = any_workspace.run("import", str(CORPUS / case.file), "--kind", case.kind)

    assert result.exit_code == case.exit_code, result.stdout + result.stderr
    assert case.message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if case.exit_code != 0:
        assert len(result.stderr.strip().splitlines()) == 1, "a rejected file gets exactly one line"
        assert any_workspace.checksum() == before, "a rejected file must leave the store exactly as it was"
        assert any_workspace.run_count() == runs_before
    elif case.imported == 0 and case.quarantined == 0:
        assert any_workspace.checksum() == before and any_workspace.run_count() == runs_before
    else:
        status = any_workspace.open_store()
        try:
            counts = status.recent_runs(1)[0]["counts"]
            kind = "contact" if case.kind == "contacts" else "order"
            assert counts[kind]["written"] == case.imported
            assert counts[kind]["quarantined"] == case.quarantined
            assert status.quarantine_size() == case.quarantined
        finally:
            status.close()


def test_encoding_option_imports_the_cp1252_file_correctly(workspace: Workspace) -> None:
    result = workspace.run("import", str(CORPUS / "cp1252_contacts.csv"), "--kind", "contacts", "--encoding", "cp1252")

    assert result.exit_code == 0, result.stderr
    store = workspace.open_store()
    payloads = [payload for _, payload in store.stored_records("contact")]
    store.close()
    assert any("René" in p and "D’Artagnan" in p and "Café Noël" in p for p in payloads)


def test_date_order_option_reads_the_ambiguous_file(workspace: Workspace) -> None:
    result = workspace.run("import", str(CORPUS / "ambiguous_dates_orders.csv"), "--kind", "orders", "--date-order", "DMY")

    assert result.exit_code == 0, result.stderr
    store = workspace.open_store()
    created = sorted(payload for _, payload in store.stored_records("order"))
    store.close()
    assert '"created_at":"2024-05-03T00:00:00+00:00"' in created[0]  # 03/05/2024 day-first is 3 May


def test_importing_a_partly_bad_file_twice_changes_nothing_but_last_seen(workspace: Workspace) -> None:
    workspace.run("import", str(CORPUS / "invalid_emails_contacts.csv"), "--kind", "contacts")
    store = workspace.open_store()
    first = store.quarantined()
    store.close()

    result = workspace.run("import", str(CORPUS / "invalid_emails_contacts.csv"), "--kind", "contacts")

    assert "0 new or changed, 27 unchanged, 3 quarantined" in result.stdout
    store = workspace.open_store()
    again = store.quarantined()
    store.close()
    assert [e["id"] for e in again] == [e["id"] for e in first], "the same bad rows are the same quarantine entries"
    assert all(a["first_seen_at"] == b["first_seen_at"] for a, b in zip(again, first))
