"""`retention score`: scores per customer from an orders export or from the store, never reading the future."""

from __future__ import annotations

import csv
import json
import random
import warnings
from datetime import date, timedelta
from pathlib import Path

from tests.conftest import Workspace, shared_file

AS_OF = date(2024, 6, 30)


def write_orders(path: Path, extra_rows: list[list[str]] | None = None, seed: int = 5) -> None:
    """Two years of a small shop: 120 customers, each buying at their own pace, some stopping."""
    rng = random.Random(seed)
    rows = []
    for customer in range(120):
        day = date(2023, 1, 1) + timedelta(days=rng.randrange(200))
        pace, stop = rng.choice((15, 30, 60, 120)), date(2023, 1, 1) + timedelta(days=rng.randrange(200, 800))
        number = 0
        while day <= min(stop, AS_OF):
            rows.append([f"O{customer}-{number}", f"buyer{customer}@example.com", f"{rng.randrange(500, 9000) / 100:.2f}", day.isoformat()])
            day += timedelta(days=max(1, int(rng.expovariate(1 / pace))))
            number += 1
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Order ID", "Email", "Total", "Created at"])
        writer.writerows(rows + (extra_rows or []))


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_scores_every_customer_with_band_reasons_segment_and_value(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")

    result = workspace.run("score", "--orders", str(workspace.root / "orders.csv"), "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / "scores.csv"))

    assert result.exit_code == 0, result.stderr
    assert "Scored 120 customers as of 2024-06-30" in result.stdout
    assert "; lifetime value: BG/NBD x Gamma-Gamma's values, ranked by spend in the " in result.stdout
    rows = read_scores(workspace.root / "scores.csv")
    assert len(rows) == 120
    assert list(rows[0]) == ["customer", "churn_probability", "risk_band", "reasons", "segment", "clv_12_months", "orders", "last_order"]
    for row in rows:
        assert 0.005 <= float(row["churn_probability"]) <= 0.995
        assert row["risk_band"] in {"low", "medium", "high", "new"}
        assert row["reasons"], "every customer gets at least one reason"
        assert row["last_order"] <= AS_OF.isoformat()


def test_orders_after_the_as_of_date_change_nothing(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    later = [["LATE-1", "buyer3@example.com", "999.00", "2024-07-01"], ["LATE-2", "newbie@example.com", "5.00", "2024-08-15"]]
    write_orders(workspace.root / "with_later.csv", extra_rows=later)

    for name in ("orders", "with_later"):
        workspace.run("score", "--orders", str(workspace.root / f"{name}.csv"), "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / f"{name}.scores.csv"))

    assert (workspace.root / "orders.scores.csv").read_bytes() == (workspace.root / "with_later.scores.csv").read_bytes()


def test_scoring_twice_gives_identical_files(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    for run in ("a", "b"):
        workspace.run("score", "--orders", str(workspace.root / "orders.csv"), "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / f"{run}.csv"))
    assert (workspace.root / "a.csv").read_bytes() == (workspace.root / "b.csv").read_bytes()


def test_scoring_the_store_gives_the_same_scores_as_the_export(workspace: Workspace) -> None:
    path = shared_file("cdnow_master.csv")
    workspace.run("import", str(path), "--kind", "orders")

    from_store = workspace.run("score", "--as-of", "1997-09-30", "--out", str(workspace.root / "store.csv"))
    from_file = workspace.run("score", "--orders", str(path), "--as-of", "1997-09-30", "--out", str(workspace.root / "file.csv"))

    assert from_store.exit_code == 0 and from_file.exit_code == 0, from_store.stderr + from_file.stderr
    assert "Scored 23,570 customers" in from_store.stdout
    assert (workspace.root / "store.csv").read_bytes() == (workspace.root / "file.csv").read_bytes()


def test_too_few_customers_or_a_bad_date_is_one_line(workspace: Workspace) -> None:
    few = workspace.root / "few.csv"
    few.write_text("Order ID,Email,Total,Created at\n1,a@example.com,5,2024-01-01\n2,b@example.com,6,2024-02-01\n")

    too_few = workspace.run("score", "--orders", str(few), "--as-of", "2024-06-30")
    bad_date = workspace.run("score", "--orders", str(few), "--as-of", "30/06/2024")

    assert too_few.exit_code == 3 and too_few.stderr.strip() == "retention: nothing to score: only 2 customers have completed orders by then; scoring needs at least 20"
    assert bad_date.exit_code == 2 and "--as-of must be a date like 2024-03-31 (got '30/06/2024')" in bad_date.stderr


def test_backtest_compares_the_model_with_the_baselines_on_the_past(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")

    result = workspace.run("score", "--orders", str(workspace.root / "orders.csv"), "--as-of", AS_OF.isoformat(), "--horizon-days", "60", "--backtest")

    assert result.exit_code == 0, result.stderr
    assert "Backtest: scored as of 2024-05-02, compared with orders up to 2024-06-30 (churn = no order in 60 days)" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith(("model ", "recency ", "BG/NBD "))}
    assert set(rows) == {"model", "recency", "BG/NBD"}
    assert all(0.5 <= float(values[0]) <= 1.0 for values in rows.values()), "ROC-AUC of each method"


def test_explain_shows_one_customer_and_the_history_behind_the_score(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    orders = str(workspace.root / "orders.csv")

    known = workspace.run("score", "--orders", orders, "--as-of", AS_OF.isoformat(), "--explain", "Buyer7@Example.com")
    unknown = workspace.run("score", "--orders", orders, "--as-of", AS_OF.isoformat(), "--explain", "nobody@example.com")

    assert known.exit_code == 0, known.stderr
    assert "buyer7@example.com: " in known.stdout and "  why: " in known.stdout and "  history: " in known.stdout
    assert "expected spend in the next 12 months: " in known.stdout
    assert unknown.exit_code == 3
    assert unknown.stderr.strip() == "retention: nobody@example.com: not among the 120 customers with completed orders by 2024-06-30"


def write_orders_with_country(path: Path, seed: int = 3) -> None:
    """German customers order every ~20 days, French and American ones every ~90: a gap the audit must show."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Order ID", "Email", "Total", "Created at", "Shipping Country", "Channel"])
        number = 0
        for customer in range(300):
            country, channel = rng.choice(["DE", "FR", "US"]), rng.choice(["web", "shop"])
            pace = 20 if country == "DE" else 90
            day = date(2023, 1, 1) + timedelta(days=rng.randrange(60))
            while day <= AS_OF:
                writer.writerow([number, f"c{customer}@example.com", "20.00", day.isoformat(), country, channel])
                number += 1
                day += timedelta(days=max(1, int(rng.expovariate(1 / pace))))


def test_audit_shows_risk_by_a_field_and_flags_large_gaps(workspace: Workspace) -> None:
    orders = workspace.root / "orders.csv"
    write_orders_with_country(orders)

    by_country = workspace.run("score", "--orders", str(orders), "--as-of", AS_OF.isoformat(), "--audit", "Shipping Country")
    by_channel = workspace.run("score", "--orders", str(orders), "--as-of", AS_OF.isoformat(), "--audit", "channel")
    unknown = workspace.run("score", "--orders", str(orders), "--as-of", AS_OF.isoformat(), "--audit", "gender")

    assert by_country.exit_code == 0, by_country.stderr
    flagged = [line.split()[0] for line in by_country.stdout.splitlines() if line.rstrip().endswith("GAP")]
    assert "DE" in flagged and "Large gaps" in by_country.stdout
    assert by_channel.exit_code == 0 and "No group's average risk is 10% or more from everyone's." in by_channel.stdout
    assert unknown.exit_code == 3
    assert unknown.stderr.strip() == "retention: --audit gender: no values for 'gender' in orders.csv; name a column of the export or a contact field"


def test_scoring_the_store_keeps_the_scores_and_rescoring_the_same_day_writes_nothing(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")

    first = workspace.run("score", "--as-of", AS_OF.isoformat())
    again = workspace.run("score", "--as-of", AS_OF.isoformat())

    assert first.exit_code == 0, first.stderr
    assert "Stored 120 new or changed scores (0 unchanged" in first.stdout
    assert "Stored 0 new or changed scores (120 unchanged" in again.stdout
    status = json.loads(workspace.run("status", "--json").stdout)
    assert {"kind": "score", "source": "scoring", "count": 120} in status["records"]
    models = workspace.root / ".retention" / "models"
    metadata = json.loads((models / "churn-model.json").read_text())
    assert metadata["version"] == "churn-4" and metadata["customers"] == 120 and "days_since_last" in metadata["features"]
    assert metadata["value_method"].startswith("BG/NBD x Gamma-Gamma's values, ranked by spend in the")
    assert all((path.stat().st_mode & 0o777) == 0o600 for path in models.iterdir())


def test_audit_on_the_store_uses_contact_fields_and_ignores_anything_else(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    contacts = workspace.root / "contacts.csv"
    contacts.write_text("Email,Company,Region\n" + "".join(f"buyer{i}@example.com,Shop {i % 3},{'north' if i % 2 else 'south'}\n" for i in range(120)))
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")
    workspace.run("import", str(contacts), "--kind", "contacts")

    by_company = workspace.run("score", "--as-of", AS_OF.isoformat(), "--audit", "company_name")
    by_region = workspace.run("score", "--as-of", AS_OF.isoformat(), "--audit", "Region")
    internal = workspace.run("score", "--as-of", AS_OF.isoformat(), "--audit", "__class__")

    assert by_company.exit_code == 0, by_company.stderr
    assert "Risk by company_name (120 customers with a value" in by_company.stdout and "Shop 0" in by_company.stdout
    assert by_region.exit_code == 0 and "north" in by_region.stdout and "south" in by_region.stdout
    assert internal.exit_code == 3 and "no values for '__class__'" in internal.stderr


def write_survey(path: Path, extra_rows: list[list[str]] | None = None) -> None:
    rows = [["2024-01-10 10:00:00", "buyer7@example.com", "9", "Lovely tea, always on time"],
            ["2024-05-20 10:00:00", "buyer7@example.com", "3", "The last two boxes arrived crushed. Disappointed."]]
    rows += [[f"2024-03-{1 + i % 28:02d} 09:00:00", f"buyer{i}@example.com", str(7 + i % 4), "Good"] for i in range(20, 60)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Timestamp", "Email Address", "How likely are you to recommend us to a friend?", "Comments"])
        writer.writerows(rows + (extra_rows or []))


def test_survey_answers_in_the_store_feed_the_scores_and_their_reasons(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    write_survey(workspace.root / "survey.csv")
    write_survey(workspace.root / "survey_later.csv", extra_rows=[["2024-08-01 10:00:00", "buyer8@example.com", "0", "Awful"]])
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")
    workspace.run("import", str(workspace.root / "survey.csv"), "--kind", "responses", "--form", "nps")

    first = workspace.run("score", "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / "before.csv"))
    explained = workspace.run("score", "--as-of", AS_OF.isoformat(), "--explain", "buyer7@example.com")
    workspace.run("import", str(workspace.root / "survey_later.csv"), "--kind", "responses", "--form", "nps")
    later = workspace.run("score", "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / "after.csv"))

    assert first.exit_code == 0 and later.exit_code == 0, first.stderr + later.stderr
    assert "NPS fell from 9 to 3" in explained.stdout
    assert (workspace.root / "before.csv").read_bytes() == (workspace.root / "after.csv").read_bytes(), "an answer after --as-of changes nothing"


def scores_by_customer(path: Path) -> dict[str, str]:
    return {row["customer"]: row["churn_probability"] for row in read_scores(path)}


def test_a_day_later_the_saved_model_is_reused_and_an_old_one_is_refitted(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")
    models = workspace.root / ".retention" / "models"
    next_day, a_week_after = (AS_OF + timedelta(days=1)).isoformat(), (AS_OF + timedelta(days=8)).isoformat()

    first = workspace.run("score", "--as-of", AS_OF.isoformat())
    saved = (models / "churn-model.joblib").read_bytes()
    a_day_later = workspace.run("score", "--as-of", next_day, "--out", str(workspace.root / "reused.csv"))
    refitted = workspace.run("score", "--as-of", next_day, "--retrain", "--out", str(workspace.root / "refitted.csv"))
    a_week_later = workspace.run("score", "--as-of", a_week_after)  # the --retrain run saved its model

    assert first.exit_code == 0 and a_day_later.exit_code == 0, first.stderr + a_day_later.stderr
    assert "fitted a new model (no saved model yet), in" in first.stdout
    assert "reused the model fitted 1 day before (refitted every 7 days), in" in a_day_later.stdout
    # Reused means scored by the model fitted the day before; --retrain fits anew, on one more day of history.
    assert "fitted a new model (--retrain)" in refitted.stdout
    assert scores_by_customer(workspace.root / "reused.csv") != scores_by_customer(workspace.root / "refitted.csv")
    assert "fitted a new model (the saved model is 7 days old (scoring.retrain_days = 7))" in a_week_later.stdout
    assert json.loads((models / "churn-model.json").read_text())["as_of"] == f"{AS_OF + timedelta(days=9)}T00:00:00+00:00"  # end of day
    assert saved != (models / "churn-model.joblib").read_bytes()


def test_the_reused_model_scores_a_day_later_as_the_saved_file_does(workspace: Workspace) -> None:
    import joblib
    import pandas as pd

    write_orders(workspace.root / "orders.csv")
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")
    workspace.run("score", "--as-of", AS_OF.isoformat())
    saved = joblib.load(workspace.root / ".retention" / "models" / "churn-model.joblib")

    workspace.run("score", "--as-of", (AS_OF + timedelta(days=1)).isoformat(), "--out", str(workspace.root / "next_day.csv"))

    with (workspace.root / "orders.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    orders = pd.DataFrame({"customer": [row["Email"] for row in rows], "at": pd.to_datetime([row["Created at"] for row in rows], utc=True),
                           "amount": [float(row["Total"]) for row in rows]})
    expected = saved.predict_proba(orders, pd.Timestamp(AS_OF + timedelta(days=2), tz="UTC")).round(4)
    assert {customer: float(p) for customer, p in scores_by_customer(workspace.root / "next_day.csv").items()} == expected.to_dict()


def test_a_damaged_or_mismatched_saved_model_is_refitted_with_one_log_line(workspace: Workspace) -> None:
    write_orders(workspace.root / "orders.csv")
    workspace.run("import", str(workspace.root / "orders.csv"), "--kind", "orders")
    models = workspace.root / ".retention" / "models"
    workspace.run("score", "--as-of", AS_OF.isoformat())

    (models / "churn-model.joblib").write_bytes(b"not a model")
    damaged = workspace.run("score", "--as-of", AS_OF.isoformat())
    other_seed = workspace.run("score", "--as-of", AS_OF.isoformat(), env={"RETENTION_SCORING__RANDOM_SEED": "8"})
    (models / "churn-model.json").write_text("{")
    unreadable = workspace.run("score", "--as-of", AS_OF.isoformat())
    earlier = workspace.run("score", "--as-of", (AS_OF - timedelta(days=1)).isoformat())

    assert damaged.exit_code == 0 and "Traceback" not in damaged.stderr
    assert "churn-model.joblib could not be loaded (" in damaged.stdout and "fitted a new model" in damaged.stdout
    assert "fitted a new model (the saved model was fitted with another scoring.random_seed)" in other_seed.stdout
    assert unreadable.exit_code == 0 and "churn-model.json is unreadable" in unreadable.stdout
    # A model fitted on later data would bring the future into an earlier score.
    assert "fitted a new model (the saved model was fitted as of a later date than the one scored)" in earlier.stdout


def test_a_store_without_orders_is_scored_from_email_engagement_and_survey_answers_and_says_so(workspace: Workspace) -> None:
    from datetime import datetime, timezone

    from connectors.records import EmailAddress, EmailEvent
    from sync.store import RunCounts

    rng = random.Random(3)
    events = []
    for person in range(60):
        address, last_week = EmailAddress.parse(f"reader{person}@example.com"), rng.randrange(10, 78)
        for week in range(0, last_week, rng.choice((1, 2, 4))):
            at = datetime(2023, 1, 2, 9, tzinfo=timezone.utc) + timedelta(weeks=week, hours=rng.randrange(48))
            events.append(EmailEvent(source="mail", source_id=f"{person}-{week}", email=address, event="open", occurred_at=at))
    events.append(EmailEvent(source="mail", source_id="u", email=EmailAddress.parse("reader5@example.com"), event="unsubscribe",
                             occurred_at=datetime(2024, 5, 3, 12, tzinfo=timezone.utc)))
    store = workspace.open_store()
    try:
        with store.transaction() as conn:
            run_id = store.begin_run(conn, "test", "email events", datetime.now(timezone.utc))
            store.upsert_records(conn, events, RunCounts())
            store.finish_run(conn, run_id, "succeeded", RunCounts())
    finally:
        store.close()
    write_survey(workspace.root / "survey.csv")
    workspace.run("import", str(workspace.root / "survey.csv"), "--kind", "responses", "--form", "nps")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = workspace.run("score", "--as-of", AS_OF.isoformat(), "--out", str(workspace.root / "scores.csv"))

    assert result.exit_code == 0, result.stderr
    # A small store's few churners once made scikit-learn warn about cross-validation folds on the user's terminal.
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert shown == []
    assert "(churn = no email open, click or survey answer in the next" in result.stdout
    assert "from email and survey engagement alone (no orders yet)" in result.stdout
    rows = {row["customer"]: row for row in read_scores(workspace.root / "scores.csv")}
    assert len(rows) == 60 + 41  # every reader, and the survey's 41 respondents
    assert all("scored from email and survey engagement alone" in row["reasons"] for row in rows.values() if row["risk_band"] != "new")
    assert "unsubscribed from emails on 3 May 2024" in rows["reader5@example.com"]["reasons"]
    assert {row["orders"] for row in rows.values()} == {"0"} and all(row["segment"] == "" for row in rows.values())
