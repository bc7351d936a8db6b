"""Google Forms through google-auth: service-account keys and authorized-user files against the sandbox's token endpoint.

The RSA key is generated here for each run; no private key is ever committed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.base import AuthError, ConfigError
from connectors.forms import google_forms, google_sandbox
from connectors.sandbox import Clock
from sync.engine import run_source_once
from sync.settings import FormsSettings
from sync.store import Store

EMAIL = "retention-sync@shop-analytics.iam.gserviceaccount.com"
FORM = google_sandbox.DEMO_FORM_ID


@pytest.fixture(scope="module")
def key_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RETENTION_GOOGLE_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")

    def use(path: Path) -> None:
        monkeypatch.setenv("RETENTION_GOOGLE_CREDENTIALS", str(path))

    return use


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(f"sqlite:///{tmp_path}/r.db")
    yield opened
    opened.close()


def service_account_file(tmp_path: Path, url: str, private_key: str) -> Path:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "shop-analytics", "private_key_id": "0123abcd", "private_key": private_key,
        "client_email": EMAIL, "client_id": "1234567890", "token_uri": f"{url}/token",
    }))
    return path


@pytest.mark.fault("F14")
def test_service_account_key_reads_responses_and_refreshes_when_the_token_expires(
    tmp_path: Path, env, store: Store, key_pair: tuple[str, str]
) -> None:
    private, public = key_pair
    clock = Clock()
    with google_sandbox.demo(40, 3, clock=clock, token="unused") as sandbox:
        sandbox.add_service_account(EMAIL, public)
        env(service_account_file(tmp_path, sandbox.url, private))
        source = google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)), base_url=sandbox.url, clock=clock)
        run_source_once(store, source, "sync", "google_forms")
        assert len(list(store.stored_records("survey_response", "google_forms"))) == 40
        assert sandbox.grants == [f"jwt-bearer:{EMAIL}"]
        first = source.api.token_source()
        clock.advance(sandbox.token_lifetime_s - 60)  # inside the refresh margin: refreshed before the sandbox refuses it
        run_source_once(store, source, "sync", "google_forms")
        assert sandbox.grants == [f"jwt-bearer:{EMAIL}"] * 2
        assert source.api.token_source() != first
        clock.advance(120)  # the first token has now expired on the sandbox clock
        assert sandbox.admit(_bearer(first)).status == 401


@pytest.mark.fault("F15")
def test_revoked_key_is_one_clear_line_and_no_key_or_token_leaks(
    tmp_path: Path, env, key_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    private, public = key_pair
    key_line = private.splitlines()[5]  # a line of the key's body
    clock = Clock()
    db = tmp_path / "canary.db"
    store = Store.open(f"sqlite:///{db}")
    messages = []
    with google_sandbox.demo(20, 4, clock=clock, token="unused") as sandbox, caplog.at_level(logging.DEBUG):
        sandbox.add_service_account(EMAIL, public)
        env(service_account_file(tmp_path, sandbox.url, private))
        source = google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)), base_url=sandbox.url, clock=clock)
        run_source_once(store, source, "sync", "google_forms")
        issued = source.api.token_source()
        sandbox.revoke(EMAIL)
        clock.advance(sandbox.token_lifetime_s)
        with pytest.raises(AuthError) as raised:
            run_source_once(store, source, "sync", "google_forms")
        messages += [str(raised.value), repr(raised.value), repr(raised.value.__cause__), repr(raised.value.__context__)]
    store.close()
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert "invalid_grant" in message and "create a new JSON key" in message and "RETENTION_GOOGLE_CREDENTIALS" in message
    for secret in (key_line, issued):
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)
        assert all(secret.encode() not in p.read_bytes() for p in tmp_path.iterdir() if p.suffix != ".json")


def test_key_signed_by_another_key_is_refused(tmp_path: Path, env, key_pair: tuple[str, str]) -> None:
    private, _ = key_pair
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with google_sandbox.demo(5, 1, token="unused") as sandbox:
        sandbox.add_service_account(EMAIL, other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
        env(service_account_file(tmp_path, sandbox.url, private))
        source = google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)), base_url=sandbox.url)
        with pytest.raises(AuthError, match=r"refused the service_account credentials .*\(invalid_grant\)"):
            source.api.get(f"/v1/forms/{FORM}", None, "reading the form")


def test_authorized_user_file_refreshes_with_its_refresh_token(tmp_path: Path, env, store: Store) -> None:
    clock = Clock()
    with google_sandbox.demo(15, 2, clock=clock, token="unused") as sandbox:
        sandbox.add_refresh_token("1//refresh-canary", "client-1.apps.googleusercontent.com")
        path = tmp_path / "authorized_user.json"
        path.write_text(json.dumps({"type": "authorized_user", "client_id": "client-1.apps.googleusercontent.com",
                                    "client_secret": "s3cret", "refresh_token": "1//refresh-canary", "token_uri": f"{sandbox.url}/token"}))
        env(path)
        source = google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)), base_url=sandbox.url, clock=clock)
        run_source_once(store, source, "sync", "google_forms")
        assert len(list(store.stored_records("survey_response", "google_forms"))) == 15
        assert sandbox.grants == ["refresh_token:client-1.apps.googleusercontent.com"]
        sandbox.revoke("1//refresh-canary")
        clock.advance(sandbox.token_lifetime_s)
        with pytest.raises(AuthError) as raised:
            run_source_once(store, source, "sync", "google_forms")
    message = str(raised.value)
    assert "invalid_grant" in message and "sign in again" in message and len(message.splitlines()) == 1
    assert "1//refresh-canary" not in message and "s3cret" not in message


def test_malformed_key_file_is_a_config_error_without_its_content(tmp_path: Path, env) -> None:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({"type": "service_account", "client_email": EMAIL, "token_uri": "http://127.0.0.1:9/token",
                                "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key-canary\n-----END PRIVATE KEY-----\n"}))
    env(path)
    with pytest.raises(ConfigError, match="is not a valid service-account key") as raised:
        google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)), base_url="http://127.0.0.1:9")
    assert "not-a-key-canary" not in str(raised.value) and len(str(raised.value).splitlines()) == 1


def _bearer(token: str):
    from connectors.sandbox import Request

    return Request("GET", f"/v1/forms/{FORM}", {}, {"authorization": f"Bearer {token}"}, b"")


def test_authorized_user_refresh_token_is_not_sent_to_a_foreign_token_uri(tmp_path: Path, env) -> None:
    path = tmp_path / "authorized_user.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r",
                                "token_uri": "https://token-collector.example/token"}))
    env(path)
    with pytest.raises(ConfigError, match="not Google's"):
        google_forms.GoogleFormsSource(FormsSettings(forms=(FORM,)))
