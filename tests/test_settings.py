"""Settings: one typed object from settings.toml and RETENTION_ variables; every mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

from sync.settings import load_settings, read_secret
from tests.conftest import REPO, Workspace


def test_the_documented_default_settings_file_is_valid() -> None:
    settings = load_settings(REPO / "settings.toml")
    assert settings.timezone == "UTC" and settings.hubspot.batch_size == 100
    assert settings.data_dir == REPO / ".retention"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[hubspot]\nbatch_size = 500\n", "settings.toml: hubspot.batch_size must be between 1 and 100 (got 500)"),
        ("[hubspot]\nbatchsize = 5\n", "settings.toml: hubspot.batchsize is not a known setting — did you mean batch_size?"),
        ('timezone = "CEST"\n', "settings.toml: timezone must be an IANA time zone name such as Europe/Berlin"),
        ('[csv]\ndate_order = "YMD"\n', "settings.toml: csv.date_order must be one of 'auto', 'DMY' or 'MDY' (got 'YMD')"),
        ('currency = "dollars"\n', "settings.toml: currency string should match pattern"),
        ("[hubspot\n", "settings.toml: not valid TOML"),
        ('[hubspot]\ntoken = "pat-na1-0000"\n', "settings.toml: hubspot.token looks like a secret, and secrets are never read from a file — remove it and set RETENTION_HUBSPOT_TOKEN"),
        ('[store]\nurl = "postgresql://me:hunter2@db/x"\n', "store.url must not contain a password"),
    ],
)
def test_a_bad_setting_is_one_line_naming_file_key_and_what_is_allowed(workspace: Workspace, toml: str, message: str) -> None:
    (workspace.root / "settings.toml").write_text(toml)

    result = workspace.run("status")

    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr and "pat-na1-0000" not in result.stderr


def test_environment_overrides_the_file(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace.root / "settings.toml").write_text('[csv]\ndate_order = "MDY"\n[hubspot]\nbatch_size = 50\n')
    monkeypatch.setenv("RETENTION_CSV__DATE_ORDER", "DMY")
    monkeypatch.setenv("RETENTION_HUBSPOT__BATCH_SIZE", "20")

    settings = load_settings(workspace.root / "settings.toml")

    assert settings.csv.date_order == "DMY" and settings.hubspot.batch_size == 20


def test_a_bad_environment_override_names_the_variable(workspace: Workspace) -> None:
    result = workspace.run("status", env={"RETENTION_HUBSPOT__BATCH_SIZE": "0"})

    assert result.exit_code == 2
    assert "RETENTION_HUBSPOT__BATCH_SIZE (environment) must be between 1 and 100 (got '0')" in result.stderr


def test_relative_data_dir_is_relative_to_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "settings.toml").write_text('data_dir = "state"\n')
    monkeypatch.chdir(tmp_path)

    assert load_settings(tmp_path / "conf" / "settings.toml").data_dir == tmp_path / "conf" / "state"


class MemoryKeyring(KeyringBackend):
    """An OS keyring stand-in: the keyring library's own backend interface, holding passwords in memory."""

    priority = 1

    def __init__(self) -> None:
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


def test_secrets_come_from_the_environment_first_then_the_os_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    memory.set_password("retention-sync", "hubspot_token", "from-keyring")
    keyring.set_keyring(memory)
    try:
        monkeypatch.delenv("RETENTION_HUBSPOT_TOKEN", raising=False)
        monkeypatch.delenv("RETENTION_MAILCHIMP_API_KEY", raising=False)  # the session's canary (tests/canary.py)
        assert read_secret("hubspot_token") == "from-keyring"
        monkeypatch.setenv("RETENTION_HUBSPOT_TOKEN", "from-environment")
        assert read_secret("hubspot_token") == "from-environment"
        assert read_secret("mailchimp_api_key") is None
    finally:
        keyring.set_keyring(previous)
