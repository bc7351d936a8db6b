"""The `retention` command as a user meets it: set-up, help, status, doctor, exit codes, and no leaked secrets."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from sync.redact import configure_logging
from tests.conftest import FIXTURES, REPO, Workspace

CANARY = "pat-na1-c4a7a7c4-0000-4000-8000-canary000001"


def test_init_writes_commented_settings_and_a_private_data_directory(tmp_path: Path, workspace: Workspace) -> None:
    target = tmp_path / "shop"

    result = workspace.run("init", str(target))

    assert result.exit_code == 0, result.stderr
    assert "Wrote" in result.stdout and "Next: retention import" in result.stdout
    text = (target / "settings.toml").read_text()
    assert text.startswith("# retention-sync settings.") and "Secrets (API tokens" in text
    assert stat.S_IMODE((target / ".retention").stat().st_mode) == 0o700
    assert stat.S_IMODE((target / ".retention" / "retention.db").stat().st_mode) == 0o600


def test_init_refuses_to_overwrite_existing_settings(workspace: Workspace) -> None:
    before = (workspace.root / "settings.toml").read_text()

    result = workspace.run("init", str(workspace.root))

    assert result.exit_code == 2
    assert "settings.toml: already exists; nothing was changed" in result.stderr
    assert (workspace.root / "settings.toml").read_text() == before


def test_init_template_is_the_documented_default_settings_file() -> None:
    packaged = (REPO / "sync" / "default_settings.toml").read_text()
    assert packaged == (REPO / "settings.toml").read_text()


def test_version_and_help_speak_to_a_non_engineer(workspace: Workspace) -> None:
    version = workspace.run("--version")
    top = workspace.run("--help")
    import_help = workspace.run("import", "--help")

    assert version.exit_code == 0 and version.stdout.startswith("retention-sync ")
    assert "Start with `retention init`" in top.stdout and "Exit codes:" in top.stdout
    for command in ("init", "import", "status", "doctor", "quarantine"):
        assert command in top.stdout
    assert "Example: retention import customers_export.csv --kind contacts" in import_help.stdout


def test_usage_mistakes_are_one_line_with_exit_code_2(workspace: Workspace) -> None:
    missing = workspace.run("import", "x.csv")
    typo = workspace.run("imprt")
    bad_kind = workspace.run("import", "x.csv", "--kind", "customers")

    assert missing.exit_code == 2 and missing.stderr.strip() == "retention import: Missing option '--kind'. (see `retention import --help`)"
    assert typo.exit_code == 2 and "Did you mean 'import'?" in typo.stderr
    assert bad_kind.exit_code == 3 and "--kind must be one of contacts, orders, responses (got 'customers')" in bad_kind.stderr


def test_status_shows_records_runs_and_quarantine(workspace: Workspace) -> None:
    workspace.run("import", str(FIXTURES / "bad_csv" / "invalid_emails_contacts.csv"), "--kind", "contacts")

    human = workspace.run("status")
    machine = json.loads(workspace.run("status", "--json").stdout)

    assert human.exit_code == 0
    assert "contact  csv:invalid_emails_contacts  27" in human.stdout
    assert "import contacts from invalid_emails_contacts.csv: succeeded; contact 30 read, 27 written, 0 unchanged, 3 quarantined" in human.stdout
    assert "Quarantine: 3 records" in human.stdout
    assert machine["records"] == [{"kind": "contact", "source": "csv:invalid_emails_contacts", "count": 27}]
    assert machine["quarantined"] == 3 and machine["schema_version"] == 5


def test_status_checksum_is_equal_after_a_rejected_import_and_different_after_a_real_one(workspace: Workspace) -> None:
    workspace.run("import", str(FIXTURES / "bad_csv" / "utf8_bom_contacts.csv"), "--kind", "contacts")
    before = json.loads(workspace.run("status", "--json", "--checksum").stdout)["state_checksum"]

    workspace.run("import", str(FIXTURES / "bad_csv" / "unclosed_quote_contacts.csv"), "--kind", "contacts")
    after_rejected = workspace.run("status", "--checksum")
    workspace.run("import", str(FIXTURES / "bad_csv" / "nul_byte_contacts.csv"), "--kind", "contacts")
    after_import = json.loads(workspace.run("status", "--json", "--checksum").stdout)["state_checksum"]

    assert f"State checksum: {before}" in after_rejected.stdout
    assert after_import != before


def test_quarantine_lists_where_and_why(workspace: Workspace) -> None:
    workspace.run("import", str(FIXTURES / "bad_csv" / "ragged_rows_contacts.csv"), "--kind", "contacts")

    result = workspace.run("quarantine")

    assert "ragged_rows_contacts.csv line 12: has 5 cells but the header has 4" in result.stdout
    assert "ragged_rows_contacts.csv line 13: has 2 cells" in result.stdout


def test_doctor_checks_settings_store_and_enabled_connectors(workspace: Workspace) -> None:
    healthy = workspace.run("doctor")
    enabled = workspace.run("doctor", env={"RETENTION_TYPEFORM__ENABLED": "true", "RETENTION_TYPEFORM_TOKEN": ""})
    (workspace.root / "settings.toml").write_text("[hubspot]\nbatch_size = 0\n")
    broken = workspace.run("doctor")

    assert healthy.exit_code == 0
    assert "ok    store" in healthy.stdout and "integrity ok, schema 5" in healthy.stdout
    assert "ok    typeform     disabled in settings (skipped)" in healthy.stdout
    assert enabled.exit_code == 7 and "FAIL  typeform     typeform: no access token is set" in enabled.stdout
    assert broken.exit_code == 7 and "FAIL  settings     " in broken.stdout and "hubspot.batch_size must be between 1 and 100" in broken.stdout


def test_a_damaged_store_is_one_line_not_a_traceback(workspace: Workspace) -> None:
    data = workspace.root / ".retention"
    data.mkdir(mode=0o700)
    (data / "retention.db").write_bytes(b"garbage" * 1000)

    result = workspace.run("status")

    assert result.exit_code == 4
    assert "not a readable store" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_canary_credential_never_reaches_output_logs_or_the_store(workspace: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    env = {"RETENTION_HUBSPOT_TOKEN": CANARY, "RETENTION_HUBSPOT__ENABLED": "true"}
    outputs = [
        workspace.run("--debug", "doctor", env=env),
        workspace.run("--debug", "import", str(FIXTURES / "bad_csv" / "ragged_rows_contacts.csv"), "--kind", "contacts", env=env),
        workspace.run("--debug", "status", "--json", env=env),
        workspace.run("--debug", "import", "missing.csv", "--kind", "orders", env=env),
    ]
    (workspace.root / "settings.toml").write_text(f'[hubspot]\ntoken = "{CANARY}"\n')
    outputs.append(workspace.run("status", env=env))
    configure_logging("debug")
    logging.getLogger("connectors.hubspot").warning("request failed: headers={'Authorization': 'Bearer %s'}", CANARY)
    logging.getLogger("connectors.hubspot").error("retrying GET /crm/v3/objects/contacts?hapikey=%s", CANARY)
    logged = capfd.readouterr().err

    assert all(CANARY not in result.stdout + result.stderr for result in outputs)
    assert CANARY not in logged and logged.count("[redacted]") == 2
    for path in (workspace.root / ".retention").iterdir():
        assert CANARY.encode() not in path.read_bytes(), path


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "source "))]
    assert len(ci_lines) == 1
    assert f"```sh\n{ci_lines[0]}\n```" in readme
