"""Security checks (issue 10 item 3, RELIABILITY.md §3): the canary credential scan sees what it claims to, store and
export files are private under a permissive umask, and no code turns TLS verification off.

Webhooks: retention-sync receives none (no receiver, no route, no setting), so there is no signature check to test.
"""

from __future__ import annotations

import ast
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sync.settings import read_secret
from sync.store import Store
from tests import canary
from tests.conftest import POSTGRES_URL, REPO, Workspace

# --- the canary scan ----------------------------------------------------------------------------------------------


def test_the_session_supplies_the_canary_credentials_as_a_user_does(workspace: Workspace) -> None:
    assert read_secret("hubspot_token") == canary.HUBSPOT_CANARY
    assert read_secret("mailchimp_api_key") == canary.MAILCHIMP_CANARY
    assert read_secret("typeform_token") == canary.SURVEY_CANARY


@pytest.mark.fault("SEC-secrets")
def test_the_canary_scan_finds_a_credential_in_a_store_its_wal_an_export_and_a_log(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Plants each canary where a leak would land, in the directory the session's scan covers; then removes them,
    so that scan stays clean."""
    assert workspace.root.is_relative_to(tmp_path_factory.getbasetemp()), "the session scan covers every test's files"
    planted = workspace.root / "planted"
    store = Store.open(f"sqlite:///{planted / 'retention.db'}")
    held = sqlite3.connect(planted / "retention.db")  # an open reader keeps the new row in the -wal
    try:
        held.execute("SELECT count(*) FROM runs").fetchall()
        with store.transaction() as conn:
            conn.execute(text("INSERT INTO runs (command, detail, started_at, status) VALUES ('sync', :detail, '2026-01-01', 'failed')"),
                         {"detail": f"token {canary.HUBSPOT_CANARY}"})
        (planted / "scores.csv").write_text(f"customer,note\nann@example.com,{canary.MAILCHIMP_CANARY}\n")
        (planted / "sync.log").write_text(f"ERROR retention: request failed ({canary.SURVEY_CANARY})\n", encoding="utf-16")

        found = canary.canaries_in_files(workspace.root)

        assert f"{planted / 'retention.db-wal'}: RETENTION_HUBSPOT_TOKEN" in found, "a run-history row, still in the WAL"
        assert f"{planted / 'scores.csv'}: RETENTION_MAILCHIMP_API_KEY" in found
        assert f"{planted / 'sync.log'}: RETENTION_TYPEFORM_TOKEN" in found, "UTF-16 text too"
    finally:
        held.close()
        store.close()
        for path in planted.iterdir():
            path.unlink()
    assert canary.canaries_in_files(workspace.root) == []


@pytest.mark.fault("SEC-secrets")
def test_the_canary_scan_finds_a_credential_in_output_and_captured_text() -> None:
    line = f"retention: hubspot refused Bearer {canary.HUBSPOT_CANARY} (401)"
    assert canary.canaries_in_text(line) == ["RETENTION_HUBSPOT_TOKEN"]
    assert canary.canaries_in_text("retention: hubspot refused Bearer [redacted] (401)") == []
    assert "RETENTION_HUBSPOT_TOKEN" in canary.report([f"x: {n}" for n in canary.canaries_in_text(line)])
    assert canary.HUBSPOT_CANARY not in canary.report(["x: RETENTION_HUBSPOT_TOKEN"]), "the report names, never quotes"


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="RETENTION_TEST_POSTGRES_URL is not set (no PostgreSQL server)")
def test_the_canary_scan_finds_a_credential_in_a_postgres_store_row() -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(text(f'CREATE TABLE "{schema}".runs (id int, detail text)'))
            conn.execute(text(f'INSERT INTO "{schema}".runs VALUES (1, :detail)'), {"detail": f"key={canary.MAILCHIMP_CANARY}"})

        assert canary.canaries_in_postgres(POSTGRES_URL, schema) == [f"{schema}.runs: RETENTION_MAILCHIMP_API_KEY"]
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


# --- files at rest ------------------------------------------------------------------------------------------------


@pytest.mark.fault("SEC-permissions")
def test_a_store_left_world_readable_by_an_earlier_tool_is_made_private_at_open(tmp_path: Path) -> None:
    """A store made before the tool set modes (or copied in by hand): 0755 directory, 0644 database and WAL."""
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        data.mkdir(mode=0o755)
        loose = sqlite3.connect(data / "retention.db")
        loose.execute("PRAGMA journal_mode=WAL")
        loose.execute("CREATE TABLE scratch (x int)")
        loose.execute("INSERT INTO scratch VALUES (1)")  # with this connection open, -wal and -shm exist, 0644
        assert stat.S_IMODE((data / "retention.db-wal").stat().st_mode) == 0o644
        loose.execute("DROP TABLE scratch")
        loose.commit()

        try:
            Store.open(f"sqlite:///{data / 'retention.db'}").close()
        finally:
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data.iterdir()}
            loose.close()
    finally:
        os.umask(old)

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"retention.db", "retention.db-wal", "retention.db-shm"} <= modes.keys()
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.fault("SEC-permissions")
def test_an_export_written_over_a_world_readable_file_is_made_private(workspace: Workspace) -> None:
    export = workspace.root / "quarantine.csv"
    export.write_text("old\n")
    os.chmod(export, 0o644)

    result = workspace.run("quarantine", "--export", str(export))

    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(export.stat().st_mode) == 0o600, "customer data must not stay readable by other users"


# --- TLS verification (Bandit B501, Ruff S501, CWE-295) -------------------------------------------------------------

VERIFY_SWITCHES = {"verify", "verify_ssl", "check_hostname", "assert_hostname"}
NEVER_NAMED = {"_create_unverified_context", "CERT_NONE", "disable_warnings", "PYTHONHTTPSVERIFY", "_create_default_https_context"}


def tls_verification_disabled(source: str, filename: str) -> list[str]:
    """'FILE:LINE what' for every place ``source`` turns certificate or host-name verification off."""
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)} {what}")

    def is_off(value: ast.AST | None) -> bool:
        return isinstance(value, ast.Constant) and value.value in (False, 0, "CERT_NONE", "")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.keyword) and node.arg in VERIFY_SWITCHES | {"cert_reqs"} and (
                is_off(node.value) or (isinstance(node.value, ast.Attribute) and node.value.attr == "CERT_NONE")):
            flag(node.value, f"{node.arg}= turns verification off")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.attr if isinstance(target, ast.Attribute) else target.id if isinstance(target, ast.Name) else None
                if name in VERIFY_SWITCHES and is_off(node.value):
                    flag(node, f"{name} = off")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value in VERIFY_SWITCHES and is_off(value):
                    flag(node, f"{key.value!r}: off in a configuration dict")
        elif isinstance(node, ast.Attribute) and node.attr in NEVER_NAMED:
            flag(node, node.attr)
        elif isinstance(node, ast.Name) and node.id in NEVER_NAMED:
            flag(node, node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NEVER_NAMED:
            flag(node, repr(node.value))
    return found


def python_sources() -> list[Path]:
    """Every Python file of the repository: the package, sandboxes, benches, tests; not the virtualenv or caches."""
    found = []
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d not in ("__pycache__", "build", "dist")
                             and not d.endswith(".egg-info")]
        found.extend(Path(directory) / name for name in files if name.endswith(".py"))
    return sorted(found)


@pytest.mark.fault("SEC-tls")
def test_no_code_in_the_repository_turns_tls_verification_off() -> None:
    # This file names every switch as data to look for; everything else is scanned.
    sources = [path for path in python_sources() if path != Path(__file__).resolve()]
    assert any(p.name == "client.py" and p.parent.name == "hubspot" for p in sources), "the scan reaches the connectors"

    found = [hit for path in sources for hit in tls_verification_disabled(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]

    assert found == [], "TLS verification must stay on (RELIABILITY.md §3.4); use a CA bundle for a test server:\n" + "\n".join(found)


OFFENDING = '''
import ssl, requests, urllib3, hubspot, mailchimp_marketing
requests.get(url, verify=False)
session.verify = False
context = ssl._create_unverified_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
urllib3.disable_warnings()
pool = urllib3.PoolManager(cert_reqs="CERT_NONE")
configuration.verify_ssl = False
client.set_config({"api_key": key, "verify_ssl": False})
os.environ["PYTHONHTTPSVERIFY"] = "0"
'''


@pytest.mark.fault("SEC-tls")
def test_the_tls_check_finds_each_way_of_turning_verification_off() -> None:
    found = tls_verification_disabled(OFFENDING, "offending.py")

    lines = sorted({int(hit.split(":")[1].split()[0]) for hit in found})
    assert lines == list(range(3, 13)), found
    assert tls_verification_disabled("requests.get(url, verify=True, timeout=30)\nctx.check_hostname = True\n", "fine.py") == []
