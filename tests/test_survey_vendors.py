"""The three survey vendors as the survey tests see them (no tests here): sandbox, source, how to edit or break a payload.

Each vendor's payloads differ; the tests that use this table assert the same user-visible behaviour for all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.forms import google_sandbox, surveymonkey_sandbox, typeform_sandbox
from connectors.forms.google_forms import GoogleFormsSource
from connectors.forms.surveymonkey import SurveyMonkeySource
from connectors.forms.typeform import TypeformSource
from connectors.sandbox import Clock
from sync.settings import FormsSettings
from tests.canary import SURVEY_CANARY  # the session's canary credential: it must leak nowhere


@dataclass
class Vendor:
    name: str
    sandbox_module: Any
    source_type: type
    form_id: str
    url_suffix: str
    needs_form_list: bool  # False: the source lists the forms itself when settings name none
    email_question: dict[str, str]
    new_question: dict[str, Any]
    new_question_id: str
    removed_question_id: str  # the "anything else?" comment
    plan_question_id: str
    why_question_id: str
    items: Callable[[Any, str], list[dict[str, Any]]]  # the sandbox's stored payloads of a form
    response_id: Callable[[dict[str, Any]], str]
    mutate: dict[str, Callable[..., None]] = field(default_factory=dict)  # how to change one payload

    def start(self, size: int, *, token: str = SURVEY_CANARY, seed: int = 7, speed: float = 200.0, **extra: Any) -> tuple[Any, str]:
        sandbox = self.sandbox_module.demo(size, seed, clock=Clock(speed=speed), token=token, **extra)
        return sandbox, sandbox.start() + self.url_suffix

    def source(self, sandbox: Any, url: str, *, token: str = SURVEY_CANARY, **settings: Any) -> Any:
        forms = () if not self.needs_form_list else (self.form_id,)
        configured = FormsSettings(enabled=True, forms=forms, email_question=self.email_question, **settings)
        return self.source_type(configured, token=token, base_url=url, clock=sandbox.clock)


# --- Typeform ----------------------------------------------------------------------------------------------------


def _tf_answer(item: dict[str, Any], field_id: str) -> dict[str, Any] | None:
    return next((a for a in item["answers"] if a.get("field", {}).get("id") == field_id), None)


def _tf_set_text(item: dict[str, Any], text: str) -> None:
    answer = _tf_answer(item, "Wh1yT3xC")
    if answer is None:
        item["answers"].append({"field": {"id": "Wh1yT3xC", "type": "long_text", "ref": "why"}, "type": "text", "text": text})
    else:
        answer["text"] = text


def _tf_set_id(item: dict[str, Any], response_id: str) -> None:
    item["response_id"] = item["token"] = item["landing_id"] = response_id


TYPEFORM = Vendor(
    name="typeform", sandbox_module=typeform_sandbox, source_type=TypeformSource, form_id=typeform_sandbox.DEMO_FORM_ID,
    url_suffix="", needs_form_list=False, email_question={},
    new_question={"id": "Nw9QsT1h", "ref": "next", "type": "short_text", "title": "What should we build next?", "properties": {}},
    new_question_id="Nw9QsT1h", removed_question_id="Cm3nT7xf", plan_question_id="Pl4nCh0e", why_question_id="Wh1yT3xC",
    items=lambda sandbox, form_id: sandbox.responses[form_id], response_id=lambda item: item["response_id"],
    mutate={
        "id": _tf_set_id,
        "drop_id": lambda item: [item.pop(k, None) for k in ("response_id", "token", "landing_id")],
        "time": lambda item, iso: item.__setitem__("submitted_at", iso),
        "text": _tf_set_text,
        "nps": lambda item, value: _tf_answer(item, "Fn7pQ2aB").__setitem__("number", value),
        "unknown": lambda item: item["answers"].append(
            {"field": {"id": "Dt8xYz01", "type": "date", "ref": "visit"}, "type": "date", "date": "2026-01-02"}),
        "drop_question_id": lambda item: item["answers"][0]["field"].pop("id"),
    },
)


# --- SurveyMonkey ----------------------------------------------------------------------------------------------


def _sm_questions(item: dict[str, Any]) -> list[dict[str, Any]]:
    return item["pages"][0]["questions"]


def _sm_set_text(item: dict[str, Any], text: str) -> None:
    questions = _sm_questions(item)
    found = next((q for q in questions if q.get("id") == "535366220"), None)
    if found is None:
        questions.append({"id": "535366220", "answers": [{"text": text}]})
    else:
        found["answers"] = [{"text": text}]


def _sm_set_time(item: dict[str, Any], iso: str) -> None:
    item["date_created"] = item["date_modified"] = iso


def _sm_set_nps_choice(item: dict[str, Any], choice_id: Any) -> None:
    for question in _sm_questions(item):
        if question.get("id") == "535366219":
            question["answers"] = [{"row_id": "4385170001", "choice_id": str(choice_id)}]


SURVEYMONKEY = Vendor(
    name="surveymonkey", sandbox_module=surveymonkey_sandbox, source_type=SurveyMonkeySource,
    form_id=surveymonkey_sandbox.DEMO_SURVEY_ID, url_suffix="/v3", needs_form_list=False, email_question={},
    new_question={"id": "535366230", "family": "open_ended", "subtype": "single", "position": 7,
                  "headings": [{"heading": "What should we build next?"}]},
    new_question_id="535366230", removed_question_id="535366223", plan_question_id="535366222", why_question_id="535366220",
    items=lambda sandbox, form_id: sandbox.responses[form_id], response_id=lambda item: item["id"],
    mutate={
        "id": lambda item, response_id: item.__setitem__("id", response_id),
        "drop_id": lambda item: item.pop("id"),
        "time": _sm_set_time,
        "text": _sm_set_text,
        # SurveyMonkey answers carry choice ids: an NPS choice the survey does not have is the out-of-range case
        "nps": _sm_set_nps_choice,
        "unknown": lambda item: _sm_questions(item).append({"id": "535366299", "answers": [{"row_id": "1", "choice_id": "2"}]}),
        "drop_question_id": lambda item: _sm_questions(item)[0].pop("id"),
    },
)


# --- Google Forms ------------------------------------------------------------------------------------------------


def _g_set_text(item: dict[str, Any], text: str) -> None:
    item["answers"]["q1a2b3c02"] = {"questionId": "q1a2b3c02", "textAnswers": {"answers": [{"value": text}]}}


GOOGLE_FORMS = Vendor(
    name="google_forms", sandbox_module=google_sandbox, source_type=GoogleFormsSource, form_id=google_sandbox.DEMO_FORM_ID,
    url_suffix="", needs_form_list=True, email_question={google_sandbox.DEMO_FORM_ID: "q1a2b3c06"},
    new_question={"itemId": "1a2b3c07", "title": "New: what should we build next?",
                  "questionItem": {"question": {"questionId": "q1a2b3c07", "textQuestion": {"paragraph": False}}}},
    new_question_id="q1a2b3c07", removed_question_id="q1a2b3c05", plan_question_id="q1a2b3c04", why_question_id="q1a2b3c02",
    items=lambda sandbox, form_id: sandbox.responses[form_id], response_id=lambda item: item["responseId"],
    mutate={
        "id": lambda item, response_id: item.__setitem__("responseId", response_id),
        "drop_id": lambda item: item.pop("responseId"),
        "time": lambda item, iso: item.__setitem__("lastSubmittedTime", iso),
        "text": _g_set_text,
        "nps": lambda item, value: item["answers"].__setitem__(
            "q1a2b3c01", {"questionId": "q1a2b3c01", "textAnswers": {"answers": [{"value": str(value)}]}}),
        "unknown": lambda item: item["answers"].__setitem__("q9file01", {"questionId": "q9file01", "fileUploadAnswers": {
            "answers": [{"fileId": "f1", "fileName": "receipt.pdf", "mimeType": "application/pdf"}]}}),
        "drop_question_id": lambda item: item["answers"].__setitem__("", {"textAnswers": {"answers": [{"value": "orphan"}]}}),
    },
)

VENDORS = [TYPEFORM, SURVEYMONKEY, GOOGLE_FORMS]


def changed_copy(vendor: Vendor, template: dict[str, Any], *changes: tuple[Any, ...]) -> dict[str, Any]:
    """A copy of ``template`` with each (mutation name, *arguments) applied."""
    item = copy.deepcopy(template)
    for name, *arguments in changes:
        vendor.mutate[name](item, *arguments)
    return item
