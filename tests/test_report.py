"""`retention report`: one self-contained HTML file whose every number matches the store, whose plots render in a
real browser without console errors, and an at-risk CSV in the same order."""

from __future__ import annotations

import csv
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from connectors.records import from_payload
from sync.score_history import NOT_SCORED, recent_score_runs
from sync.store import Store
from tests.conftest import ReportedShop, Workspace, open_page

SECTIONS = ("overview", "risk", "at-risk", "segments", "sentiment", "model", "sync")


class PageText(HTMLParser):
    """The numbers a page shows: each ``data-figure`` element's text, and each table's rows by the table's id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.external: list[str] = []  # src/href that leave the page
        self.scripts_with_src: list[str] = []
        self._figure: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if (found.get(name) or "").startswith(("http:", "https:", "//")):
                self.external.append(found[name] or "")
        if tag == "script" and found.get("src"):
            self.scripts_with_src.append(found["src"] or "")
        if "data-figure" in found:
            self._figure, self.figures[found["data-figure"] or ""] = found["data-figure"], ""
        if tag == "table":
            self._table = found.get("id")
            self.tables[self._table or ""] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self._table is not None and not self._in_head:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif self._figure is not None:
            self._figure = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._figure is not None:
            self.figures[self._figure] += data


def number(text: str) -> int:
    return int(text.replace(",", ""))


def store_figures(store: Store) -> dict[str, object]:
    """What the report must show, computed from the store without the report's code."""
    scores = [from_payload("score", payload) for _, payload in store.stored_records("score", "scoring")]
    high = sorted((s for s in scores if s.risk_band.value == "high"),
                  key=lambda s: (-s.churn_probability, -float(s.clv or 0), s.source_id))
    return {
        "bands": Counter(s.risk_band.value for s in scores),
        "segments": Counter(s.segment or "(none)" for s in scores),
        "at_risk": [s.source_id for s in high],
        "scored": len(scores),
        "runs": [run["id"] for run in store.recent_runs(30)],
        "quarantine": store.quarantine_size(),
    }


@pytest.fixture(scope="module")
def report_files(reported_shop: ReportedShop, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    from typer.testing import CliRunner

    from sync.cli import app

    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(app, ["report", "--out", str(out / "report.html"), "--csv", str(out / "at-risk.csv")],
                                env=reported_shop.env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return out / "report.html", out / "at-risk.csv", result.stdout


def test_the_report_says_what_it_wrote_in_one_line_and_the_file_is_private(report_files) -> None:
    html_path, csv_path, stdout = report_files
    assert re.search(r"Wrote .*report\.html \(\d+\.\d MB\): 300 customers scored, [\d,]+ at high risk, 2 scoring runs, 1 quarantined record \(", stdout)
    assert (html_path.stat().st_mode & 0o777) == 0o600 and (csv_path.stat().st_mode & 0o777) == 0o600


def test_every_number_in_the_report_matches_the_store(reported_shop: ReportedShop, report_files) -> None:
    shown = PageText(report_files[0].read_text())
    store = reported_shop.open_store()
    try:
        expected = store_figures(store)
    finally:
        store.close()

    assert number(shown.figures["scored"]) == expected["scored"] == 300
    for band in ("high", "medium", "low", "new"):
        assert number(shown.figures[f"band-{band}"]) == expected["bands"][band]
    assert {row[0]: number(row[1]) for row in shown.tables["segment-counts"]} == expected["segments"]
    assert number(shown.figures["at-risk-count"]) == len(expected["at_risk"])
    assert [row[0] for row in shown.tables["at-risk"]] == expected["at_risk"][:500]
    assert [number(row[0]) for row in shown.tables["runs"]] == expected["runs"]
    assert number(shown.figures["quarantine-rows"]) == expected["quarantine"] == len(shown.tables["quarantine"]) == 1
    assert "not a valid email" in shown.tables["quarantine"][0][4]


def test_the_band_flows_are_those_between_the_two_scoring_runs(reported_shop: ReportedShop, report_files) -> None:
    before, after = reported_shop.scores_before, reported_shop.scores_after
    moved = Counter((before.get(c, (NOT_SCORED,))[0], after.get(c, (NOT_SCORED,))[0]) for c in before.keys() | after.keys())
    shown = PageText(report_files[0].read_text())

    assert {(row[0], row[1]): number(row[2]) for row in shown.tables["band-flows"]} == moved
    store = reported_shop.open_store()
    try:
        first, second = recent_score_runs(store)
    finally:
        store.close()
    assert first.customers == second.customers == 300
    assert set(first.band_flows) == {(NOT_SCORED, band) for band in first.bands}  # the first run: everyone is new


def test_the_at_risk_csv_lists_every_high_risk_customer_in_the_report_order(reported_shop: ReportedShop, report_files) -> None:
    with report_files[1].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    store = reported_shop.open_store()
    try:
        expected = store_figures(store)["at_risk"]
    finally:
        store.close()
    assert [row["customer"] for row in rows] == expected
    assert all(row["risk_band"] == "high" and row["reasons"] for row in rows)
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row.values())


def test_the_report_is_self_contained_with_plotly_embedded_once(report_files) -> None:
    html = report_files[0].read_text()
    shown = PageText(html)
    assert shown.external == []  # no CDN, no remote script, image or style
    assert shown.scripts_with_src == [] and html.count("<script>") == 1 + html.count('class="plotly-graph-div"') + 1
    assert all(f'<section id="{name}">' in html for name in SECTIONS)


def test_the_report_renders_its_plots_in_a_real_browser_without_console_errors(browser, report_files) -> None:
    page, errors = open_page(browser, report_files[0].as_uri(), screenshot="report.png", plots=9)
    try:
        assert errors == []
        for name in ("risk-histogram", "risk-by-run", "segment-sizes", "segment-flows", "nps-trend", "calibration", "lift", "writes-per-run"):
            assert page.locator(f"#{name} .main-svg").count() >= 1, name
        first = page.locator("#at-risk tbody tr td:first-child").all_inner_texts()
        page.locator("#at-risk th", has_text="churn probability").click()  # ascending: least risky of them first
        resorted = page.locator("#at-risk tbody tr td:first-child").all_inner_texts()
        assert sorted(resorted) == sorted(first) and resorted != first
    finally:
        page.close()


def test_report_with_no_store_says_to_run_the_demo_or_a_sync_first(workspace: Workspace) -> None:
    result = workspace.run("report")
    assert result.exit_code == 4
    assert "no store yet" in result.stderr and "retention demo" in result.stderr and "Traceback" not in result.stderr


def test_report_on_a_store_without_scores_says_to_score_first(workspace: Workspace) -> None:
    workspace.run("status")  # creates the empty store
    result = workspace.run("report")
    assert result.exit_code == 4 and "no scores yet" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_backtest_reads_the_same_completed_orders_as_scoring(reported_shop: ReportedShop) -> None:
    import pandas as pd

    from sync.scoring_stage import orders_frame
    from sync.report import _completed_orders

    store = reported_shop.open_store()
    try:
        fast = _completed_orders(store)
        scored, _ = orders_frame(from_payload("order", payload) for _, payload in store.stored_records("order"))
    finally:
        store.close()
    assert len(fast) > 300
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), scored.reset_index(drop=True), check_dtype=False)


def test_ui_with_no_store_says_to_run_the_demo_or_a_sync_first(workspace: Workspace) -> None:
    result = workspace.run("ui", "--port", "0")
    assert result.exit_code == 4 and "no store yet" in result.stderr and "Traceback" not in result.stderr


def test_a_report_path_that_cannot_be_written_is_one_line(reported_shop: ReportedShop, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sync.cli import app

    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "no-such-dir" / "report.html")], env=reported_shop.env)
    assert result.exit_code == 2
    assert "cannot write the report (No such file or directory)" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_survey_figures_per_month_match_the_store(reported_shop: ReportedShop, report_files) -> None:
    store = reported_shop.open_store()
    try:
        responses = [from_payload("survey_response", payload) for _, payload in store.stored_records("survey_response")]
    finally:
        store.close()
    by_month: dict[str, list[int | None]] = {}
    for response in responses:
        nps = next((int(a.value) for a in response.answers.values() if a.answer_kind.value == "nps"), None)
        by_month.setdefault(response.submitted_at.strftime("%Y-%m"), []).append(nps)
    expected = []
    for month, scores in sorted(by_month.items()):
        rated = [s for s in scores if s is not None]
        nps = (sum(s >= 9 for s in rated) - sum(s <= 6 for s in rated)) / len(rated) * 100 if rated else None
        expected.append([month, f"{len(scores):,}", f"{len(rated):,}", "" if nps is None else f"{round(nps, 1):+.1f}"])

    shown = PageText(report_files[0].read_text())
    assert [row[:4] for row in shown.tables["survey-months"]] == expected
    assert len(expected) >= 6


def test_each_at_risk_row_shows_the_stored_risk_and_value(reported_shop: ReportedShop, report_files) -> None:
    store = reported_shop.open_store()
    try:
        stored = {s.source_id: s for s in (from_payload("score", p) for _, p in store.stored_records("score", "scoring"))}
    finally:
        store.close()
    for customer, probability, segment, value, currency, reasons in PageText(report_files[0].read_text()).tables["at-risk"]:
        score = stored[customer]
        assert probability == f"{score.churn_probability:.1%}" and segment == score.segment
        assert value == ("" if score.clv is None else f"{score.clv:,.2f}") and reasons == "; ".join(score.top_reasons)


def test_after_the_demo_a_report_with_no_store_of_its_own_is_about_the_demo(reported_shop: ReportedShop, workspace: Workspace) -> None:
    import shutil

    assert workspace.run("report", "--demo").exit_code == 4  # no demo store here yet
    demo = workspace.root / ".retention" / "demo"
    demo.mkdir(parents=True)
    shutil.copy(reported_shop.data_dir / "retention.db", demo / "retention.db")  # what `retention demo` leaves

    result = workspace.run("report")

    assert result.exit_code == 0, result.stderr
    assert "reporting on the demo's store" in result.stderr and "300 customers scored" in result.stdout
    assert (workspace.root / "report.html").is_file() and not (workspace.root / ".retention" / "retention.db").exists()
