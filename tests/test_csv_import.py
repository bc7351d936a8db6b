"""`retention import`: real exports in, the records a user expects out, and nothing written twice."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

from connectors.records import from_payload
from tests.conftest import Workspace, shared_file


def stored(workspace: Workspace, kind: str) -> dict[str, object]:
    store = workspace.open_store()
    try:
        return {source_id: from_payload(kind, payload) for source_id, payload in store.stored_records(kind)}
    finally:
        store.close()


def write_file(workspace: Workspace, name: str, text: str) -> str:
    path = workspace.root / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- real data ----------------------------------------------------------------------------------------------------


def test_cdnow_transaction_log_imports_every_transaction_and_the_second_import_writes_nothing(any_workspace: Workspace) -> None:
    path = str(shared_file("cdnow_master.csv"))

    first = any_workspace.run("import", path, "--kind", "orders", "--json")
    checksum = any_workspace.checksum()
    second = any_workspace.run("import", path, "--kind", "orders", "--json")

    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["rows"] == 69_659
    assert json.loads(first.stdout)["records"] == {"read": 69_659, "written": 69_659, "unchanged": 0, "quarantined": 0, "forgotten": 0}
    assert json.loads(second.stdout)["records"] == {"read": 69_659, "written": 0, "unchanged": 69_659, "quarantined": 0, "forgotten": 0}
    assert any_workspace.checksum() == checksum, "the second import must not change the stored state"
    status = json.loads(any_workspace.run("status", "--json").stdout)
    assert status["records"] == [{"kind": "order", "source": "csv:cdnow_master", "count": 69_659}]


def test_cdnow_amounts_dates_and_customers_are_read_faithfully(workspace: Workspace) -> None:
    path = shared_file("cdnow_master.csv")
    workspace.run("import", str(path), "--kind", "orders")
    orders = list(stored(workspace, "order").values())

    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(order.amount for order in orders) == sum(Decimal(row["amount"]) for row in rows)
    assert len({order.customer_source_id for order in orders}) == 23_570
    assert min(order.created_at for order in orders).isoformat() == "1997-01-01T00:00:00+00:00"
    assert all(order.status.value == "won" and order.currency == "USD" for order in orders)


def test_telco_customers_import_as_contacts_keyed_by_customer_id(workspace: Workspace) -> None:
    result = workspace.run("import", str(shared_file("telco_customer_churn.csv")), "--kind", "contacts")

    assert result.exit_code == 0, result.stderr
    assert "Imported 7,043 contacts" in result.stdout
    contacts = stored(workspace, "contact")
    assert len(contacts) == 7_043
    assert contacts["7590-VHVEG"].properties["Contract"] == "Month-to-month"


# --- exports of common tools ------------------------------------------------------------------------------------

SHOPIFY_ORDERS = """\
Name,Email,Financial Status,Paid at,Currency,Total,Created at,Lineitem quantity,Lineitem name,Refunded Amount,Cancelled at,Id
#1001,Ann@Example.com,paid,2024-03-05 10:25:00 -0500,CAD,59.90,2024-03-05 10:22:33 -0500,1,Mug,0.00,,5550001
#1001,Ann@Example.com,,,,,,2,Coaster,,,
#1002,bob@example.com,refunded,2024-03-06 09:00:00 -0500,CAD,20.00,2024-03-06 08:59:00 -0500,1,Tea,20.00,,5550002
#1003,cy@example.com,voided,,CAD,12.00,2024-03-07 12:00:00 -0500,1,Cup,0.00,2024-03-07 13:00:00 -0500,5550003
"""


def test_shopify_orders_merge_line_items_and_map_statuses(workspace: Workspace) -> None:
    result = workspace.run("import", write_file(workspace, "orders_export.csv", SHOPIFY_ORDERS), "--kind", "orders")

    assert result.exit_code == 0, result.stderr
    assert "shopify export" in result.stdout and "Imported 3 orders into source csv:shopify" in result.stdout
    orders = stored(workspace, "order")
    assert orders["#1001"].amount == Decimal("59.90") and orders["#1001"].currency == "CAD"
    assert orders["#1001"].created_at.isoformat() == "2024-03-05T15:22:33+00:00"
    assert orders["#1001"].customer_email.normalised == "ann@example.com"
    assert orders["#1001"].customer_email.typed == "Ann@Example.com"
    assert [orders[k].status.value for k in ("#1001", "#1002", "#1003")] == ["won", "refunded", "lost"]


STRIPE_PAYMENTS = """\
id,Description,Created (UTC),Amount,Amount Refunded,Currency,Status,Customer ID,Customer Email
ch_1,Subscription,2024-03-05 10:22,19.00,0.00,usd,Paid,cus_1,ann@example.com
ch_2,Subscription,2024-03-06 11:00,19.00,19.00,usd,Refunded,cus_2,bob@example.com
ch_3,Subscription,2024-03-07 12:00,"1,019.50",0.00,usd,Failed,cus_3,cy@example.com
"""


def test_stripe_payments_read_utc_times_even_in_another_time_zone(workspace: Workspace) -> None:
    (workspace.root / "settings.toml").write_text('timezone = "America/New_York"\n')

    result = workspace.run("import", write_file(workspace, "unified_payments.csv", STRIPE_PAYMENTS), "--kind", "orders")

    assert result.exit_code == 0, result.stderr
    orders = stored(workspace, "order")
    assert orders["ch_1"].created_at.isoformat() == "2024-03-05T10:22:00+00:00", "Created (UTC) is UTC, not local"
    assert orders["ch_3"].amount == Decimal("1019.50") and orders["ch_3"].status.value == "lost"
    assert orders["ch_2"].status.value == "refunded" and orders["ch_1"].customer_source_id == "cus_1"


ZOHO_CONTACTS = """\
Record Id,Contact Owner,First Name,Last Name,Email,Secondary Email,Phone,Account Name,Email Opt Out,Created Time,Modified Time
zcrm_1,Owner,Ann,Lee,ann@example.com,ann.lee@work.example.com,+1 555 0100,Acme,false,2024-01-02 09:00:00,2024-02-03 10:00:00
zcrm_2,Owner,Bob,Ray,bob@example.com,,,Beta,true,2024-01-05 09:00:00,2024-02-04 10:00:00
"""


def test_zoho_contacts_keep_secondary_emails_and_opt_outs(workspace: Workspace) -> None:
    (workspace.root / "settings.toml").write_text('timezone = "Europe/Berlin"\n')

    result = workspace.run("import", write_file(workspace, "Contacts_2024_05_01.csv", ZOHO_CONTACTS), "--kind", "contacts")

    assert result.exit_code == 0, result.stderr
    contacts = stored(workspace, "contact")
    assert contacts["zcrm_1"].additional_emails[0].normalised == "ann.lee@work.example.com"
    assert contacts["zcrm_1"].is_unsubscribed is False and contacts["zcrm_2"].is_unsubscribed is True
    assert contacts["zcrm_1"].created_at.isoformat() == "2024-01-02T08:00:00+00:00", "naive times use the configured zone"
    assert contacts["zcrm_1"].company_name == "Acme"


def test_brevo_semicolon_export_is_read(workspace: Workspace) -> None:
    text = "EMAIL;FIRSTNAME;LASTNAME;SMS\nann@example.com;Ann;Lee;+33600000000\nbob@example.com;Bob;Ray;\n"

    result = workspace.run("import", write_file(workspace, "brevo.csv", text), "--kind", "contacts")

    assert result.exit_code == 0, result.stderr
    assert "brevo export" in result.stdout
    assert stored(workspace, "contact")["ann@example.com"].phone == "+33600000000"


def test_constant_contact_unsubscribed_status_is_kept(workspace: Workspace) -> None:
    text = "Email address,First name,Last name,Email permission status\nann@example.com,Ann,Lee,Unsubscribed\nbob@example.com,Bob,Ray,Subscribed\n"

    workspace.run("import", write_file(workspace, "cc.csv", text), "--kind", "contacts")

    contacts = stored(workspace, "contact")
    assert contacts["ann@example.com"].is_unsubscribed is True
    assert contacts["bob@example.com"].is_unsubscribed is False


def test_map_option_names_columns_the_tool_does_not_recognise(workspace: Workspace) -> None:
    text = "Kunde,E-Mail Adresse,Betrag,Bestelldatum\nK1,anna@example.de,\"1.234,50\",13.05.2024\n"
    path = write_file(workspace, "bestellungen.csv", text)

    refused = workspace.run("import", path, "--kind", "orders")
    result = workspace.run("import", path, "--kind", "orders", "--map", "E-Mail Adresse=email", "--map", "Betrag=amount",
                           "--map", "Bestelldatum=created_at", "--map", "Kunde=customer_id", "--source", "shop")

    assert refused.exit_code == 3 and "no amount column found" in refused.stderr
    assert result.exit_code == 0, result.stderr
    [order] = stored(workspace, "order").values()
    assert order.amount == Decimal("1234.50") and order.created_at.isoformat() == "2024-05-13T00:00:00+00:00"


def test_map_option_with_an_unknown_column_or_field_is_one_line(workspace: Workspace) -> None:
    path = write_file(workspace, "c.csv", "Email\nann@example.com\n")

    missing = workspace.run("import", path, "--kind", "contacts", "--map", "Mail=email")
    unknown = workspace.run("import", path, "--kind", "contacts", "--map", "Email=e-mail")

    assert missing.exit_code == 3 and "c.csv has no column 'Mail'; its columns are: Email" in missing.stderr
    assert unknown.exit_code == 3 and "'e-mail' is not a contacts field" in unknown.stderr


# --- survey responses -------------------------------------------------------------------------------------------

GOOGLE_FORMS = """\
Timestamp,Email Address,How likely are you to recommend us to a friend?,How satisfied are you? (1-5),Which channel did you use?,What could we do better?
3/15/2024 10:22:33,ann@example.com,9,4,Email,Nothing really
3/16/2024 11:00:00,bob@example.com,3,2,Phone,"Delivery was slow, twice"
3/16/2024 12:00:00,,7,3,Email,
3/17/2024 09:00:00,cy@example.com,10,5,Email,Great tea
3/18/2024 09:00:00,dee@example.com,6,3,Phone,=1+1
"""


def test_google_forms_responses_are_typed_and_keyed_by_question(workspace: Workspace) -> None:
    result = workspace.run("import", write_file(workspace, "Customer survey.csv", GOOGLE_FORMS), "--kind", "responses")

    assert result.exit_code == 0, result.stderr
    assert "Imported 5 responses into source csv:google-forms" in result.stdout
    responses = sorted(stored(workspace, "survey_response").values(), key=lambda r: r.submitted_at)
    first = responses[0]
    assert first.submitted_at.isoformat() == "2024-03-15T10:22:33+00:00"
    assert first.form_id == "Customer survey"
    nps = first.answers["how_likely_are_you_to_recommend_us_to_a_friend"]
    rating = first.answers["how_satisfied_are_you_1_5"]
    assert (nps.answer_kind.value, nps.value) == ("nps", 9)
    assert (rating.answer_kind.value, rating.value, rating.scale_min, rating.scale_max) == ("rating", 4, 1, 5)
    assert first.answers["which_channel_did_you_use"].value == ("Email",)
    assert responses[1].answers["what_could_we_do_better"].value == "Delivery was slow, twice"
    assert responses[2].respondent_email is None, "a response without a person is kept, not dropped"
    assert responses[4].answers["what_could_we_do_better"].value == "=1+1", "formula-looking text is stored literally"


SURVEYMONKEY = """\
Respondent ID,Collector ID,Start Date,End Date,IP Address,Email Address,First Name,Last Name,Custom Data 1,How likely is it that you would recommend us?,Which products do you use?,
,,,,,,,,,Response,Tea,Coffee
1001,55,2024-04-01 10:00:00,2024-04-01 10:05:00,1.2.3.4,ann@example.com,,,,8,Tea,
1002,55,2024-04-02 10:00:00,2024-04-02 10:05:00,1.2.3.5,bob@example.com,,,,2,,Coffee
"""


def test_surveymonkey_two_row_header_is_read_as_one(workspace: Workspace) -> None:
    result = workspace.run("import", write_file(workspace, "sm.csv", SURVEYMONKEY), "--kind", "responses")

    assert result.exit_code == 0, result.stderr
    responses = stored(workspace, "survey_response")
    assert set(responses) == {"1001", "1002"}
    assert responses["1001"].answers["how_likely_is_it_that_you_would_recommend_us"].value == 8
    assert responses["1002"].answers["which_products_do_you_use_coffee"].value == ("Coffee",)


def test_a_one_megabyte_free_text_answer_is_kept_whole(workspace: Workspace) -> None:
    essay = "slow " * 209_715
    text = f"Timestamp,Email Address,Comments\n2024-03-15 10:00:00,ann@example.com,{essay}\n"

    result = workspace.run("import", write_file(workspace, "long.csv", text), "--kind", "responses")

    assert result.exit_code == 0, result.stderr
    [response] = stored(workspace, "survey_response").values()
    assert response.answers["comments"].value == essay


# --- time zones ---------------------------------------------------------------------------------------------------


def test_a_local_time_that_happened_twice_is_quarantined_not_guessed(workspace: Workspace) -> None:
    (workspace.root / "settings.toml").write_text('timezone = "America/New_York"\n[csv]\nmax_bad_row_fraction = 0.5\n')
    text = "Order ID,Email,Total,Created At\nA,ann@example.com,1.00,2024-11-03 01:30:00\nB,bob@example.com,1.00,2024-11-03 03:30:00\n"

    result = workspace.run("import", write_file(workspace, "dst.csv", text), "--kind", "orders")

    assert result.exit_code == 0, result.stderr
    assert "happened twice in America/New_York (clocks went back); give it with an offset" in result.stdout
    assert stored(workspace, "order")["B"].created_at.isoformat() == "2024-11-03T08:30:00+00:00"


def test_every_time_format_lands_on_the_same_utc_instant(workspace: Workspace) -> None:
    text = (
        "Order ID,Email,Total,Created At\n"
        "1,a@example.com,1,2024-03-05T10:22:00Z\n2,a@example.com,1,2024-03-05 15:52:00+05:30\n"
        "3,a@example.com,1,1709634120\n4,a@example.com,1,1709634120000\n5,a@example.com,1,2024-03-05 10:22:00\n"
        "6,a@example.com,1,\"Mar 5, 2024 10:22 AM\"\n7,a@example.com,1,05/03/2024 10:22\n"
    )

    result = workspace.run("import", write_file(workspace, "times.csv", text), "--kind", "orders", "--date-order", "DMY")

    assert result.exit_code == 0, result.stderr
    instants = {order.created_at.isoformat() for order in stored(workspace, "order").values()}
    assert instants == {"2024-03-05T10:22:00+00:00"}


def test_formula_cells_are_stored_literally_and_neutralised_in_the_quarantine_export(workspace: Workspace) -> None:
    good = "".join(f"p{i}@example.com,Person\n" for i in range(12))
    text = f'Email,First Name\n=HYPERLINK("http://evil.example"),x\nann@example.com,@SUM(1)\n{good}'
    workspace.run("import", write_file(workspace, "=cmd.csv", text), "--kind", "contacts")

    assert stored(workspace, "contact")["ann@example.com"].first_name == "@SUM(1)"
    export = workspace.root / "quarantine.csv"
    result = workspace.run("quarantine", "--export", str(export))

    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(export.open(encoding="utf-8")))
    assert rows[1][2] == "'=cmd.csv line 2", "a cell a spreadsheet would run is prefixed with an apostrophe"
    assert all(not cell.startswith(("=", "+", "@", "-")) for row in rows for cell in row)
    assert (export.stat().st_mode & 0o777) == 0o600


def test_every_formula_trigger_is_neutralised_and_plain_numbers_are_not() -> None:
    from sync.export import neutralise

    for value in ("=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "\tx", "\rx", "\uff1d1+1", "\uff201"):
        assert neutralise(value) == "'" + value
    for value in ("-12.50", "42", "Ann", "", None):
        assert neutralise(value) == ("" if value is None else value)


def test_rows_sharing_an_id_merge_with_later_values_winning(workspace: Workspace) -> None:
    text = "Customer ID,Email,First Name,Phone\n7,ann@example.com,Ann,\n8,bob@example.com,Bob,1\n7,,Annie,+1 555 0100\n"

    result = workspace.run("import", write_file(workspace, "dups.csv", text), "--kind", "contacts")

    assert "Imported 2 contacts" in result.stdout
    ann = stored(workspace, "contact")["7"]
    assert (ann.first_name, ann.phone, ann.email.normalised) == ("Annie", "+1 555 0100", "ann@example.com")


def test_identical_rows_in_a_log_without_ids_stay_separate_purchases(workspace: Workspace) -> None:
    text = "customer_id,date,amount\n00001,1997-01-01,11.77\n00001,1997-01-01,11.77\n"

    workspace.run("import", write_file(workspace, "log.csv", text), "--kind", "orders")
    again = workspace.run("import", write_file(workspace, "log.csv", text), "--kind", "orders")

    assert len(stored(workspace, "order")) == 2
    assert "0 new or changed, 2 unchanged" in again.stdout


def test_a_file_that_is_not_there_is_one_line(workspace: Workspace) -> None:
    result = workspace.run("import", str(Path("nope.csv")), "--kind", "orders")
    assert result.exit_code == 3 and result.stderr.strip() == "retention: nope.csv: no such file"
