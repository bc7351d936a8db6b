"""Shared fixtures: a fresh workspace per test, the CLI as a user runs it, and both store backends."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from sync.cli import app
from sync.store import Store
from tests import canary

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_URL = os.environ.get("RETENTION_TEST_POSTGRES_URL", "")
# bench/reliability_report.py points this at a directory: each test's scenarios, outcome and measured figures go there.
RELIABILITY_DIR = os.environ.get("RETENTION_RELIABILITY_DIR", "")

SETTINGS = """\
data_dir = ".retention"
timezone = "UTC"
currency = "USD"
"""


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Workspace:
    root: Path
    store_url: str  # "" means the default SQLite file in .retention

    def run(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run `retention ARGS` in this workspace, as a user would from its directory."""
        environment = {"RETENTION_SETTINGS": str(self.root / "settings.toml")}
        if self.store_url:
            environment["RETENTION_STORE__URL"] = self.store_url
        environment.update(env or {})
        result = CliRunner().invoke(app, list(args), env=environment, catch_exceptions=False, prog_name="retention")
        CANARY_SIGHTINGS.extend(f"output of `retention {' '.join(args)[:120]}`: {name}"
                                for name in canary.canaries_in_text(result.stdout + result.stderr))
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def open_store(self) -> Store:
        return Store.open(self.store_url or f"sqlite:///{self.root / '.retention' / 'retention.db'}")

    def checksum(self) -> str:
        store = self.open_store()
        try:
            return store.checksum()
        finally:
            store.close()

    def run_count(self) -> int:
        store = self.open_store()
        try:
            return len(store.recent_runs(10_000))
        finally:
            store.close()


# --- canary credentials (tests/canary.py) --------------------------------------------------------------------------

CANARY_SIGHTINGS: list[str] = []  # where a canary turned up during the session; the session fails if any did


@pytest.fixture(scope="session", autouse=True)
def canary_credentials(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The whole session runs with the canary credentials set; at its end nothing the suite produced may hold one:
    every file under the session's temporary directory (where every test's stores, WALs, logs and exports live),
    every CLI run's output, every captured log and failure report, and the PostgreSQL test stores."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in canary.CANARY_CREDENTIALS.items():
            patch.setenv(name, value)
        yield canary.CANARY_CREDENTIALS
    sightings = CANARY_SIGHTINGS + canary.canaries_in_files(tmp_path_factory.getbasetemp())
    if POSTGRES_URL:
        sightings += canary.canaries_in_postgres(POSTGRES_URL)
    _record_figures({"test": "session", "canary_sightings": len(set(sightings))})
    if sightings:
        pytest.fail(canary.report(sightings), pytrace=False)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Captured stdout, stderr and log lines, and the text of any failure's exception, of every test phase."""
    _record_outcome(report)
    texts = [content for _, content in report.sections] + ([report.longreprtext] if report.failed else [])
    for text_seen in texts:
        CANARY_SIGHTINGS.extend(f"{report.nodeid} ({report.when}): {name}" for name in canary.canaries_in_text(text_seen))


# --- reliability figures (bench/reliability_report.py) ----------------------------------------------------------------

SCENARIOS_OF: dict[str, list[str]] = {}  # test id → the RELIABILITY.md scenarios it covers (its `fault` marks)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Remember each test's scenarios: its `fault` marks, and the `bad_input` of a bad-input corpus case."""
    for item in items:
        scenarios = [scenario for mark in item.iter_markers("fault") for scenario in mark.args]
        callspec = getattr(item, "callspec", None)
        for param in (callspec.params.values() if callspec else ()):
            if isinstance(getattr(param, "bad_input", None), str):
                scenarios.append(param.bad_input)
                item.add_marker(pytest.mark.fault(param.bad_input))  # so `pytest -m fault` selects the corpus too
        if scenarios:
            SCENARIOS_OF[item.nodeid] = sorted(set(scenarios))


def _record_figures(figures: dict) -> None:
    if RELIABILITY_DIR:
        with open(Path(RELIABILITY_DIR) / f"figures-{os.getpid()}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(figures) + "\n")


def _record_outcome(report: pytest.TestReport) -> None:
    """One line per scenario test: passed, failed or skipped (a failed or skipped setup counts too)."""
    if report.nodeid not in SCENARIOS_OF or not (report.when == "call" or report.outcome != "passed"):
        return
    _record_figures({"test": report.nodeid, "scenarios": SCENARIOS_OF[report.nodeid], "outcome": report.outcome,
                     "phase": report.when, "seconds": round(report.duration, 2)})


class FiguresLog:
    """What a fault test measured (kills, records lost, duplicates, redundant writes, status changes, peak RSS)."""

    def __init__(self, test: str) -> None:
        self.test = test

    def record(self, **figures: float | int | str) -> None:
        _record_figures({"test": self.test, "figures": figures})


@pytest.fixture
def reliability_figures(request: pytest.FixtureRequest) -> FiguresLog:
    return FiguresLog(request.node.nodeid)


def fresh_postgres_url() -> str:
    """A new, empty schema on the test server, so every test starts from nothing."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[pytest.mark.postgres, pytest.mark.skipif(not POSTGRES_URL, reason="RETENTION_TEST_POSTGRES_URL is not set (no PostgreSQL server)")],
    ),
]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A directory with settings.toml, as `retention init` leaves it, using the SQLite store."""
    (tmp_path / "settings.toml").write_text(SETTINGS)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        # The canary credentials stay: a user's environment holds their credentials, and nothing may leak them.
        if name.startswith("RETENTION_") and name != "RETENTION_TEST_POSTGRES_URL" and name not in canary.CANARY_CREDENTIALS:
            monkeypatch.delenv(name)
    return Workspace(tmp_path, "")


@pytest.fixture(params=BACKENDS)
def any_workspace(request: pytest.FixtureRequest, workspace: Workspace) -> Workspace:
    """The same workspace, once with SQLite and once with PostgreSQL (where a server is available)."""
    if request.param == "postgres":
        workspace.store_url = fresh_postgres_url()
    return workspace


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return fresh_postgres_url()
    return f"sqlite:///{tmp_path / 'data' / 'retention.db'}"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real-data tests need ../shared/data beside the repository")
    return path


# --- the owner report and the dashboard: a synced demo store, and the system's Chromium ---------------------------

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work in a container without a GPU, a sandbox user or a network; nothing is fetched by the browser.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots for people to look at (ignored by git)
SESSION_STARTED = time.time()


@dataclass
class ReportedShop:
    """A demo shop synced once and scored again by `retention score`, so the store holds two scoring runs."""

    data_dir: Path  # the shop's data directory (its store is data_dir / retention.db)
    scores_before: dict[str, tuple[str, str]]  # customer -> (band, segment) after the sync's scoring
    scores_after: dict[str, tuple[str, str]]  # the same after `retention score`

    @property
    def env(self) -> dict[str, str]:
        return {"RETENTION_DATA_DIR": str(self.data_dir)}

    def open_store(self) -> Store:
        return Store.open(f"sqlite:///{self.data_dir / 'retention.db'}")


def _bands(store: Store) -> dict[str, tuple[str, str]]:
    from connectors.records import from_payload

    scores = (from_payload("score", payload) for _, payload in store.stored_records("score", "scoring"))
    return {s.source_id: (s.risk_band.value, s.segment or "(none)") for s in scores}


@pytest.fixture(scope="session")
def reported_shop(tmp_path_factory: pytest.TempPathFactory) -> ReportedShop:
    from sync.demo import open_demo_shop
    from sync.pipeline import run_sync
    from sync.settings import Settings

    root = tmp_path_factory.mktemp("reported-shop")
    shop = open_demo_shop(Settings(data_dir=root / ".retention"), 300, seed=5)
    try:
        store = Store.open(shop.settings.store_url)
        run_sync(shop.settings, store, endpoints=shop.endpoints)
        before = _bands(store)
        store.close()
    finally:
        for box in shop.sandboxes.values():
            box.stop()
    data_dir = shop.settings.data_dir
    (root / "settings.toml").write_text(SETTINGS)
    # A CSV row with a bad email lands in the quarantine, as a user's import would.
    (root / "customers.csv").write_text("Email,First Name\nann@example.com,Ann\nnot-an-email@,Bob\ncy@example.com,Cy\n")
    env = {"RETENTION_SETTINGS": str(root / "settings.toml"), "RETENTION_DATA_DIR": str(data_dir), "RETENTION_CURRENCY": "EUR"}
    for args in (["import", str(root / "customers.csv"), "--kind", "contacts"], ["score"]):
        result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
    store = Store.open(f"sqlite:///{data_dir / 'retention.db'}")
    after = _bands(store)
    store.close()
    return ReportedShop(data_dir, before, after)


@pytest.fixture(scope="session")
def browser():
    """The system's Chromium driven by playwright (never a downloaded browser); skips when either is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: the browser tests need Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def open_page(browser, url: str, screenshot: str | None = None, plots: int = 0):
    """Load ``url`` in a fresh page; wait for ``plots`` plotly charts to draw; return (page, console errors).
    With ``screenshot``, the whole page is saved under tests/artifacts and its path printed."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="load")
    if plots:
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {plots}", timeout=30_000)
    if screenshot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / screenshot
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
    return page, errors


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the browser tests left their screenshots, for people to look at."""
    shots = [shot for shot in ARTIFACTS.glob("*.png") if shot.stat().st_mtime >= SESSION_STARTED] if ARTIFACTS.is_dir() else []
    if shots:  # taken by this run
        terminalreporter.write_line(f"screenshots of the report and the dashboard: {ARTIFACTS} ({len(shots)} files)")
