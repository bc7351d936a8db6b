"""Google Forms: forms.get and forms.responses.list over plain HTTPS, read incrementally into SurveyResponse records.

Why ``requests`` and not google-api-python-client: neither that library nor google-auth is a dependency of
the project, and the two calls we need are simple GETs on the discovery-document paths, which the sandbox
serves at any base URL. Credentials: an OAuth access token (``google_access_token``), or an authorized-user
JSON file (``google_credentials``) holding one. Service-account keys need google-auth to sign a JWT; until it
is a dependency they are refused with one line saying so.

Google returns responses in no guaranteed order, so every page of the window is read and the high-water mark
is the newest ``lastSubmittedTime`` seen; the next run asks for ``timestamp >= mark - look-back``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from connectors.base import (
    CheckResult,
    ConfigError,
    Page,
    Rejected,
    RetentionError,
    Stream,
    register_check,
)
from connectors.forms import survey_kit as kit
from connectors.records import SurveyResponse
from connectors.retry import WindowLimiter
from connectors.sandbox import SystemClock
from sync.settings import FormsSettings, read_secret

log = logging.getLogger(__name__)
SOURCE = "google_forms"
BASE_URL = "https://forms.googleapis.com"
PAGE_SIZE = 5000  # Google Forms: responses.list returns at most 5000 per page
AUTH_HINT = ("sign in again and store a fresh access token with the forms.responses.readonly and forms.body.readonly "
             "scopes in RETENTION_GOOGLE_ACCESS_TOKEN (or the keyring entry google_access_token)")


def map_item(item: Mapping[str, Any]) -> list[kit.Question]:
    """The questions of one form item: a single question, or each row of a grid (kept raw: no stable meaning)."""
    title = item.get("title")
    question = (item.get("questionItem") or {}).get("question")
    if not isinstance(question, Mapping):
        rows = (item.get("questionGroupItem") or {}).get("questions") or []
        return [kit.Question(str(q.get("questionId", "")), kit.UNKNOWN, title, vendor_type="grid") for q in rows]
    question_id = str(question.get("questionId", ""))
    if "scaleQuestion" in question:
        scale = question["scaleQuestion"]
        low, high = int(scale.get("low", 1)), int(scale.get("high", 5))
        kind = kit.NPS if (low, high) == (0, 10) else kit.RATING
        return [kit.Question(question_id, kind, title, low if kind == kit.RATING else None, high if kind == kit.RATING else None, vendor_type="scale")]
    if "ratingQuestion" in question:
        levels = int(question["ratingQuestion"].get("ratingScaleLevel", 5))
        return [kit.Question(question_id, kit.RATING, title, 1, levels, vendor_type="rating")]
    if "choiceQuestion" in question:
        return [kit.Question(question_id, kit.CHOICE, title, vendor_type="choice")]
    if "textQuestion" in question:
        return [kit.Question(question_id, kit.TEXT, title, vendor_type="text")]
    return [kit.Question(question_id, kit.UNKNOWN, title, vendor_type=next((k for k in question if k.endswith("Question")), "question"))]


def map_form(form: Mapping[str, Any]) -> dict[str, kit.Question]:
    return {q.question_id: q for item in form.get("items") or [] for q in map_item(item)}


def answer_value(question: kit.Question | None, answer: Mapping[str, Any]) -> Any:
    texts = [str(a.get("value", "")) for a in (answer.get("textAnswers") or {}).get("answers") or [] if isinstance(a, Mapping)]
    if "textAnswers" not in answer:
        return dict(answer)  # file uploads, grades: kept raw
    if question is not None and question.kind == kit.CHOICE:
        return texts
    return texts[0] if len(texts) == 1 else texts


def map_response(item: Mapping[str, Any], form_id: str, questions: Mapping[str, kit.Question],
                 email_question: str | None, stats: kit.ReadStats) -> SurveyResponse | Rejected:
    """One FormResponse as a record; a question removed from the form since is typed as text when it is text."""
    known = dict(questions)
    answers = []
    for key, answer in (item.get("answers") or {}).items():
        answer = answer if isinstance(answer, Mapping) else {}
        question_id = answer.get("questionId") or key
        if question_id not in known:
            is_text = isinstance((answer.get("textAnswers") or {}).get("answers"), list)
            known[question_id] = kit.Question(question_id, kit.TEXT if is_text else kit.UNKNOWN, vendor_type="removed")
        answers.append(kit.RawAnswer(question_id, answer_value(known.get(question_id), answer)))
    parts = kit.ResponseParts(item.get("responseId"), item.get("lastSubmittedTime"), answers,
                              [("collected email", item.get("respondentEmail"))], item)
    return kit.build_response(SOURCE, form_id, parts, known, email_question, stats)


def access_token_from_settings() -> str | None:
    """An OAuth access token: the secret itself, or the ``token`` in an authorized-user JSON file."""
    token = read_secret("google_access_token")
    if token:
        return token
    path = read_secret("google_credentials")
    if not path:
        return None
    try:
        document = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError):
        raise ConfigError(f"google_credentials: {path} is not a readable JSON credentials file") from None
    if document.get("type") == "service_account":
        raise ConfigError("google_credentials: service-account keys need the google-auth package, which is not installed; "
                          "use an OAuth access token (RETENTION_GOOGLE_ACCESS_TOKEN) instead")
    return document.get("token") or document.get("access_token")


class GoogleFormsSource:
    """The responses of the configured Google Forms, as one stream (the Forms API cannot list forms)."""

    name = SOURCE

    def __init__(self, settings: FormsSettings, *, token: str | None = None, base_url: str = BASE_URL, clock: Any = None) -> None:
        if not settings.forms:
            raise ConfigError("google_forms.forms is empty: list the form ids to read (the part of the edit URL after /d/)")
        self.settings = settings
        clock = clock or SystemClock()
        self.api = kit.JsonApi(
            SOURCE, base_url, token if token is not None else access_token_from_settings(), settings.timeout_s,
            describe_error=_describe_error, auth_hint=AUTH_HINT, clock=clock,
            limiter=WindowLimiter(250, 60.0, clock),  # Google: read requests per minute per user (quota, UNVERIFIED)
        )
        self.last_stats = kit.ReadStats()

    def streams(self) -> Sequence[Stream]:
        return [Stream("responses", "survey_response", self.read_responses)]

    def read_responses(self, cursor: str | None) -> Iterator[Page]:
        stats = self.last_stats = kit.ReadStats()

        def read_form(form_id: str, since: datetime | None) -> Iterator[tuple[Page, datetime | None]]:
            questions = map_form(self.api.get(f"/v1/forms/{form_id}", None, f"reading form {form_id}"))
            for page in self._read_form(form_id, questions, since, stats):
                yield page, max((r.submitted_at for r in page.records), default=None)

        return kit.read_forms(SOURCE, self.settings.forms, cursor, self.settings.lookback_minutes, stats, read_form)

    def _read_form(self, form_id: str, questions: Mapping[str, kit.Question], since: datetime | None,
                   stats: kit.ReadStats) -> Iterator[Page]:
        params: dict[str, Any] = {"pageSize": PAGE_SIZE}
        if since is not None:
            params["filter"] = "timestamp >= " + since.strftime("%Y-%m-%dT%H:%M:%SZ")  # Google: RFC 3339 Zulu
        seen: set[str] = set()
        email_question = self.settings.email_question.get(form_id)
        while True:
            body = self.api.get(f"/v1/forms/{form_id}/responses", params, f"reading responses of form {form_id}")
            records, rejected = [], []
            for item in body.get("responses") or []:
                response_id = str(item.get("responseId") or f"(no id #{len(seen)})")
                if response_id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(response_id)
                mapped = map_response(item, form_id, questions, email_question, stats)
                (rejected if isinstance(mapped, Rejected) else records).append(mapped)
            stats.responses += len(records)
            yield Page(records=records, cursor_after=None, rejected=rejected)
            if not body.get("nextPageToken"):
                break
            params = {**params, "pageToken": body["nextPageToken"]}  # Google: same filter with the token


def _describe_error(body: Any) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return f"{error.get('status', '')} {error.get('message', '')}".strip()
    return str(body)[:200]


@register_check("google_forms")
def check_google_forms(settings: Any) -> CheckResult:
    """`retention doctor`: the access token is accepted and every configured form can be read."""
    try:
        source = GoogleFormsSource(settings.google_forms)
        for form_id in source.settings.forms:
            source.api.get(f"/v1/forms/{form_id}", None, f"reading form {form_id}")
    except RetentionError as exc:
        return CheckResult("google_forms", False, str(exc))
    return CheckResult("google_forms", True, f"access token accepted; {len(settings.google_forms.forms)} form(s) readable")
