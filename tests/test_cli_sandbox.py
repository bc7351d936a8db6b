"""`retention sandbox VENDOR` as a user runs it: a real process, the URL it prints, the README's credentials, Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.forms.google_forms import GoogleFormsSource
from connectors.forms.google_sandbox import DEMO_FORM_ID as GOOGLE_FORM_ID
from connectors.forms.surveymonkey import SurveyMonkeySource
from connectors.forms.typeform import TypeformSource
from connectors.mailchimp.client import MailchimpClient
from connectors.mailchimp.seed import LIST_ID
from connectors.mailchimp.source import MailchimpSource
from sync.engine import run_source_once
from sync.settings import FormsSettings, MailchimpSettings
from sync.store import Store

REPO = Path(__file__).resolve().parents[1]
SIZE = 40


def typeform(url: str) -> Any:
    return TypeformSource(FormsSettings(enabled=True), token="tfp_sandbox_token", base_url=url)


def surveymonkey(url: str) -> Any:
    return SurveyMonkeySource(FormsSettings(enabled=True), token="sm_sandbox_token", base_url=url + "/v3")


def google_forms(url: str) -> Any:
    return GoogleFormsSource(FormsSettings(enabled=True, forms=(GOOGLE_FORM_ID,)), token="ya29.sandbox_token", base_url=url)


def mailchimp(url: str) -> Any:
    settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,))
    return MailchimpSource(MailchimpClient(settings, api_key="sandbox-key-us6", base_url=url))


# command-line vendor, the --size alias the issue names, the source reading it, what it stores, the source's name
VENDORS: list[tuple[str, str, Callable[[str], Any], str, str]] = [
    ("typeform", "--responses", typeform, "survey_response", "typeform"),
    ("surveymonkey", "--responses", surveymonkey, "survey_response", "surveymonkey"),
    ("google-forms", "--responses", google_forms, "survey_response", "google_forms"),
    ("mailchimp", "--members", mailchimp, "contact", "mailchimp"),
]


@pytest.mark.parametrize(("vendor", "size_option", "source_for", "kind", "name"), VENDORS, ids=[v[0] for v in VENDORS])
def test_sandbox_command_serves_the_seeded_business_until_ctrl_c(
    vendor: str, size_option: str, source_for: Callable[[str], Any], kind: str, name: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", "from sync.cli import main; main()", "sandbox", vendor, size_option, str(SIZE)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        announced = process.stdout.readline() if process.stdout else ""
        found = re.fullmatch(rf"{vendor} sandbox with {SIZE} \w+ at (http://127\.0\.0\.1:\d+) \(Ctrl-C stops it\)\n", announced)
        assert found, f"unexpected first line {announced!r}"
        store = Store.open(f"sqlite:///{tmp_path}/r.db")
        result = run_source_once(store, source_for(found.group(1)), "sync", name)
        assert result.counts[kind].written == SIZE
        assert len(list(store.stored_records(kind, name))) == SIZE
        store.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0 and stderr == "", stderr


def test_sandbox_command_refuses_an_unknown_vendor_in_one_line() -> None:
    command = [sys.executable, "-c", "from sync.cli import main; main()", "sandbox", "zendesk"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0 and "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines() == [
        "retention: sandbox: unknown vendor 'zendesk'; choose one of hubspot, mailchimp, typeform, surveymonkey, google-forms"
    ]
