"""Vendor JSON → SurveyResponse, with payloads as the sandboxes serve them: typing, scales, respondents, rejects."""

from __future__ import annotations

import copy
import logging

import pytest

from connectors.base import Rejected
from connectors.forms import (
    google_forms,
    google_sandbox,
    surveymonkey,
    surveymonkey_sandbox,
    typeform,
    typeform_sandbox,
)
from connectors.forms.survey_kit import ReadStats
from connectors.records import AnswerKind, SurveyResponse
from sync.settings import FormsSettings


@pytest.fixture(scope="module")
def served():
    """One recorded payload and form definition per vendor, taken from the demo sandboxes."""
    tf = typeform_sandbox.demo(30, 2)
    sm = surveymonkey_sandbox.demo(30, 2)
    gf = google_sandbox.demo(30, 2)
    return {
        "typeform": (typeform.map_definition(tf.forms[typeform_sandbox.DEMO_FORM_ID]), tf.responses[typeform_sandbox.DEMO_FORM_ID]),
        "surveymonkey": (surveymonkey.map_details(sm.surveys[surveymonkey_sandbox.DEMO_SURVEY_ID]), sm.responses[surveymonkey_sandbox.DEMO_SURVEY_ID]),
        "google_forms": (google_forms.map_form(gf.forms[google_sandbox.DEMO_FORM_ID]), gf.responses[google_sandbox.DEMO_FORM_ID]),
    }


def test_question_kinds_and_scales_from_each_definition(served) -> None:
    tf, _ = served["typeform"]
    assert (tf["Fn7pQ2aB"].kind, tf["Rt5StR9d"].kind, tf["Rt5StR9d"].scale_min, tf["Rt5StR9d"].scale_max) == ("nps", "rating", 1, 5)
    assert typeform.map_question({"id": "o", "type": "opinion_scale", "properties": {"steps": 7, "start_at_one": True}}).scale_max == 7
    assert typeform.map_question({"id": "d", "type": "date"}).kind == "unknown"
    sm, _ = served["surveymonkey"]
    assert sm["535366219"].question.kind == "nps" and (sm["535366221"].question.scale_min, sm["535366221"].question.scale_max) == (1, 5)
    assert sm["535366224"].question.kind == "email"
    assert surveymonkey.map_question({"id": "m", "family": "matrix", "subtype": "ranking"}).question.kind == "unknown"
    gf, _ = served["google_forms"]
    assert (gf["q1a2b3c01"].kind, gf["q1a2b3c03"].kind, gf["q1a2b3c03"].scale_max) == ("nps", "rating", 5)
    scale = google_forms.map_item({"title": "1-7", "questionItem": {"question": {"questionId": "s", "scaleQuestion": {"low": 1, "high": 7}}}})
    assert (scale[0].kind, scale[0].scale_min, scale[0].scale_max) == ("rating", 1, 7)


def test_every_demo_response_maps_to_typed_answers(served) -> None:
    mappers = {"typeform": typeform.map_response, "surveymonkey": surveymonkey.map_response, "google_forms": google_forms.map_response}
    for vendor, (questions, items) in served.items():
        email_question = "q1a2b3c06" if vendor == "google_forms" else None
        for item in items:
            record = mappers[vendor](item, "form", questions, email_question, ReadStats())
            assert isinstance(record, SurveyResponse), record
            kinds = {a.answer_kind for a in record.answers.values()}
            assert {AnswerKind.NPS, AnswerKind.RATING, AnswerKind.CHOICE} <= kinds
            nps = next(a for a in record.answers.values() if a.answer_kind is AnswerKind.NPS)
            assert 0 <= nps.value <= 10 and 0.0 <= nps.normalised <= 1.0


@pytest.mark.parametrize("vendor, time_key", [("typeform", "submitted_at"), ("surveymonkey", "date_created"), ("google_forms", "lastSubmittedTime")])
def test_a_response_without_its_submission_time_is_rejected_with_the_reason(served, vendor: str, time_key: str) -> None:
    questions, items = served[vendor]
    item = copy.deepcopy(items[0])
    del item[time_key]
    mapper = {"typeform": typeform.map_response, "surveymonkey": surveymonkey.map_response, "google_forms": google_forms.map_response}[vendor]
    stats = ReadStats()
    rejected = mapper(item, "form", questions, None, stats)
    assert isinstance(rejected, Rejected) and "submitted_at" in rejected.reason and stats.rejected == 1
    assert rejected.record_ref.startswith(f"{vendor} form form response ")


def test_invalid_hidden_email_falls_back_to_the_email_question(served, caplog: pytest.LogCaptureFixture) -> None:
    questions, _ = served["typeform"]
    item = {"response_id": "r1", "token": "r1", "submitted_at": "2026-01-01T10:00:00Z", "hidden": {"email": "not an address"},
            "answers": [{"field": {"id": "Em4iLq8g", "type": "email", "ref": "email"}, "type": "email", "email": " Ana@Example.COM"}]}
    with caplog.at_level(logging.WARNING):
        record = typeform.map_response(item, "f", questions, None, ReadStats())
    assert record.respondent_email.normalised == "ana@example.com" and record.answers == {}
    assert "hidden field email is not a usable email" in caplog.text


def test_the_email_question_named_in_settings_identifies_the_respondent_and_is_not_an_answer(served) -> None:
    questions, _ = served["google_forms"]
    settings = FormsSettings(email_question={"f": "q1a2b3c06"})
    item = {"responseId": "g1", "lastSubmittedTime": "2026-01-01T10:00:00.123456789Z",
            "answers": {"q1a2b3c06": {"questionId": "q1a2b3c06", "textAnswers": {"answers": [{"value": "Bo@Example.org "}]}},
                        "q1a2b3c04": {"questionId": "q1a2b3c04", "textAnswers": {"answers": [{"value": "Pro"}]}}}}
    stats = ReadStats()
    record = google_forms.map_response(item, "f", questions, settings.email_question["f"], stats)
    assert record.respondent_email.normalised == "bo@example.org" and list(record.answers) == ["q1a2b3c04"]
    anonymous = google_forms.map_response(item, "f", questions, None, stats)
    assert anonymous.respondent_email is None and stats.anonymous == 1, "kept and counted, never dropped"
    assert anonymous.answers["q1a2b3c06"].value == "Bo@Example.org "


def test_checkbox_answers_keep_every_label(served) -> None:
    questions, _ = served["typeform"]
    item = {"response_id": "c", "submitted_at": "2026-01-01T10:00:00Z",
            "answers": [{"field": {"id": "Pl4nCh0e", "type": "multiple_choice"}, "type": "choices", "choices": {"labels": ["Pro", "Business"], "other": "Custom"}}]}
    record = typeform.map_response(item, "f", questions, None, ReadStats())
    assert record.answers["Pl4nCh0e"].value == ("Pro", "Business", "Custom")


def test_doctor_check_says_in_one_line_that_no_token_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from sync.settings import Settings

    for name in ("TYPEFORM_TOKEN", "SURVEYMONKEY_TOKEN", "GOOGLE_ACCESS_TOKEN", "GOOGLE_CREDENTIALS"):
        monkeypatch.delenv(f"RETENTION_{name}", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    settings = Settings(google_forms=FormsSettings(forms=("f",)))
    for check in (typeform.check_typeform, surveymonkey.check_surveymonkey, google_forms.check_google_forms):
        result = check(settings)
        assert not result.ok and "no access token is set" in result.detail and len(result.detail.splitlines()) == 1


def test_google_needs_form_ids_and_says_which_credentials_it_can_use(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import json

    from connectors.base import ConfigError

    with pytest.raises(ConfigError, match="google_forms.forms is empty"):
        google_forms.GoogleFormsSource(FormsSettings(), token="t")
    monkeypatch.delenv("RETENTION_GOOGLE_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    user_file = tmp_path / "authorized_user.json"
    user_file.write_text(json.dumps({"type": "authorized_user", "token": "ya29.from-file"}))
    monkeypatch.setenv("RETENTION_GOOGLE_CREDENTIALS", str(user_file))
    assert google_forms.token_from_settings(None) == "ya29.from-file"  # no refresh token: the stored token as it is
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps({"type": "external_account", "private_key": "-----BEGIN PRIVATE KEY-----"}))
    monkeypatch.setenv("RETENTION_GOOGLE_CREDENTIALS", str(other_file))
    with pytest.raises(ConfigError, match="neither a service-account key nor an authorized-user file") as raised:
        google_forms.GoogleFormsSource(FormsSettings(forms=("f",)))
    assert "PRIVATE KEY" not in str(raised.value)
