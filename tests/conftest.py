"""Shared fixtures: a fresh workspace per test, the CLI as a user runs it, and both store backends."""

from __future__ import annotations

import json
import os
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
