"""SurveyMonkey: survey details and bulk responses, read incrementally into SurveyResponse records.

Bulk responses carry only question, choice and row ids; the survey's details document (read every run) turns
them into labels and numbers. Incremental reads use ``start_modified_at`` sorted ascending, so an edited
response comes back and replaces the stored one. Paging follows ``links.next`` (100 per page at most).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.base import (
    Connection,
    Endpoint,
    register_connector,
    CheckResult,
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
SOURCE = "surveymonkey"
BASE_URL = "https://api.surveymonkey.com/v3"
PER_PAGE = 100  # SurveyMonkey: bulk responses per page, at most
AUTH_HINT = ("the OAuth token has expired or was revoked (draft apps: 90 days); create a new one with the surveys_read, "
             "responses_read and responses_read_detail scopes and set RETENTION_SURVEYMONKEY_TOKEN or the keyring entry surveymonkey_token")


@dataclass(frozen=True)
class SurveyQuestion:
    question: kit.Question
    weights: Mapping[str, int] = field(default_factory=dict)  # choice id -> weight, for NPS and ratings


def map_question(raw: Mapping[str, Any]) -> SurveyQuestion:
    """A details-document question as a Question; NPS is a one-row rating matrix with 11 choices weighted 0-10."""
    family, subtype = raw.get("family"), raw.get("subtype")
    headings = raw.get("headings") or [{}]
    title = headings[0].get("heading") if isinstance(headings[0], Mapping) else None
    choices = (raw.get("answers") or {}).get("choices") or []
    labels = {str(c.get("id")): str(c.get("text", "")) for c in choices}
    question_id = str(raw.get("id", ""))
    if family == "matrix" and subtype == "rating":
        weights = {str(c.get("id")): int(c.get("weight", c.get("position", 0))) for c in choices}
        values = sorted(weights.values())
        if values == list(range(11)):
            return SurveyQuestion(kit.Question(question_id, kit.NPS, title, vendor_type="matrix/rating"), weights)
        if len(values) >= 2:
            return SurveyQuestion(kit.Question(question_id, kit.RATING, title, values[0], values[-1], vendor_type="matrix/rating"), weights)
    if family in ("single_choice", "multiple_choice"):
        return SurveyQuestion(kit.Question(question_id, kit.CHOICE, title, choices=labels, vendor_type=str(family)))
    if family == "open_ended" and subtype in ("single", "essay"):
        is_email = (raw.get("validation") or {}).get("type") == "email"
        return SurveyQuestion(kit.Question(question_id, kit.EMAIL if is_email else kit.TEXT, title, vendor_type=f"open_ended/{subtype}"))
    return SurveyQuestion(kit.Question(question_id, kit.UNKNOWN, title, vendor_type=f"{family}/{subtype}"))


def map_details(details: Mapping[str, Any]) -> dict[str, SurveyQuestion]:
    return {q.question.question_id: q for page in details.get("pages") or [] for q in map(map_question, page.get("questions") or [])}


def answer_value(question: SurveyQuestion | None, answers: Sequence[Mapping[str, Any]]) -> Any:
    """The value of one question's answers, resolved through the details document; raw when it cannot be."""
    if question is None:
        return list(answers)
    kind = question.question.kind
    if kind in (kit.NPS, kit.RATING):
        choice_id = str(answers[0].get("choice_id")) if answers else ""
        return question.weights.get(choice_id, answers[0].get("choice_id") if answers else None)
    if kind == kit.CHOICE:
        labels = []
        for answer in answers:
            if answer.get("other_id") or ("text" in answer and "choice_id" not in answer):
                labels.append(str(answer.get("text", "")))
            else:
                labels.append(question.question.choices.get(str(answer.get("choice_id")), f"choice {answer.get('choice_id')}"))
        return labels
    if kind in (kit.TEXT, kit.EMAIL):
        return answers[0].get("text") if answers else ""
    return list(answers)


def map_response(item: Mapping[str, Any], survey_id: str, questions: Mapping[str, SurveyQuestion],
                 email_question: str | None, stats: kit.ReadStats) -> SurveyResponse | Rejected:
    answers = []
    for page in item.get("pages") or []:
        for raw_question in page.get("questions") or []:
            question_id = raw_question.get("id")
            known = questions.get(str(question_id)) if question_id else None
            answers.append(kit.RawAnswer(str(question_id) if question_id else None, answer_value(known, raw_question.get("answers") or [])))
    contact = ((item.get("metadata") or {}).get("contact") or {}).get("email") or {}
    custom = item.get("custom_variables") or {}
    candidates = [("collector email", item.get("email_address")), ("contact metadata", contact.get("value")),
                  *(("custom variable " + key, value) for key, value in custom.items() if "email" in str(key).lower())]
    kept = {key: value for key, value in item.items() if key != "ip_address"}  # not ours to keep
    parts = kit.ResponseParts(item.get("id"), item.get("date_created"), answers, candidates, kept)
    typed = {key: q.question for key, q in questions.items()}
    return kit.build_response(SOURCE, survey_id, parts, typed, email_question, stats)


class SurveyMonkeySource:
    """The SurveyMonkey responses of the configured surveys (or every survey the token can see), as one stream."""

    name = SOURCE

    def __init__(self, settings: FormsSettings, *, token: str | None = None, base_url: str = BASE_URL, clock: Any = None) -> None:
        self.settings = settings
        clock = clock or SystemClock()
        self.api = kit.JsonApi(
            SOURCE, base_url, token if token is not None else read_secret("surveymonkey_token"), settings.timeout_s,
            describe_error=_describe_error, auth_hint=AUTH_HINT, clock=clock,
            limiter=WindowLimiter(110, 60.0, clock),  # SurveyMonkey: 120 a minute for draft apps; we leave some room
        )
        self.last_stats = kit.ReadStats()

    def streams(self) -> Sequence[Stream]:
        return [Stream("responses", "survey_response", self.read_responses)]

    def survey_ids(self) -> list[str]:
        if self.settings.forms:
            return list(self.settings.forms)
        ids: list[str] = []
        url: str | None = "/surveys"
        params: dict[str, Any] | None = {"per_page": 1000}
        while url:
            listing = self.api.get(url, params, "listing surveys")
            ids += [str(s["id"]) for s in listing.get("data") or [] if s.get("id")]
            url, params = (listing.get("links") or {}).get("next"), None
        return ids

    def read_responses(self, cursor: str | None) -> Iterator[Page]:
        stats = self.last_stats = kit.ReadStats()

        def read_survey(survey_id: str, since: datetime | None) -> Iterator[tuple[Page, datetime | None]]:
            questions = map_details(self.api.get(f"/surveys/{survey_id}/details", None, f"reading survey {survey_id}"))
            return self._read_survey(survey_id, questions, since, stats)

        return kit.read_forms(SOURCE, self.survey_ids(), cursor, self.settings.lookback_minutes, stats, read_survey)

    def _read_survey(self, survey_id: str, questions: Mapping[str, SurveyQuestion], since: datetime | None,
                     stats: kit.ReadStats) -> Iterator[tuple[Page, datetime | None]]:
        params: dict[str, Any] | None = {"per_page": PER_PAGE, "sort_by": "date_modified", "sort_order": "ASC"}
        if since is not None:
            params["start_modified_at"] = since.strftime("%Y-%m-%dT%H:%M:%S")  # SurveyMonkey: UTC, no zone suffix
        url: str | None = f"/surveys/{survey_id}/responses/bulk"
        seen: set[str] = set()
        reported: int | None = None
        email_question = self.settings.email_question.get(survey_id)
        while url:
            body = self.api.get(url, params, f"reading responses of survey {survey_id}")
            if reported is None and isinstance(body.get("total"), int):
                reported = body["total"]
            records, rejected, page_newest = [], [], None
            for item in body.get("data") or []:
                response_id = str(item.get("id") or f"(no id #{len(seen)})")
                if response_id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(response_id)
                mapped = map_response(item, survey_id, questions, email_question, stats)
                if isinstance(mapped, Rejected):
                    rejected.append(mapped)
                    continue
                records.append(mapped)
                try:
                    modified = kit.parse_time(item.get("date_modified"), "date_modified")
                except ValueError:
                    modified = mapped.submitted_at
                page_newest = max(page_newest or modified, modified)
            stats.responses += len(records)
            yield Page(records, None, rejected), page_newest
            url, params = (body.get("links") or {}).get("next"), None
        kit.reconcile_total(SOURCE, survey_id, reported, seen, stats)


def _describe_error(body: Any) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return f"{error.get('name', 'error')} {error.get('id', '')}: {error.get('message', '')}".strip()
    return str(body)[:200]


@register_check("surveymonkey")
def check_surveymonkey(settings: Any) -> CheckResult:
    """`retention doctor`: the token is accepted and the configured surveys exist."""
    try:
        source = SurveyMonkeySource(settings.surveymonkey)
        source.api.get("/users/me", None, "checking the token")
        surveys = source.survey_ids()
    except RetentionError as exc:
        return CheckResult("surveymonkey", False, str(exc))
    return CheckResult("surveymonkey", True, f"token accepted; {len(surveys)} survey(s) to read")


@register_connector("surveymonkey")
def connect(settings: Any, endpoint: Endpoint | None = None) -> Connection:
    """A source only: nothing is written back to survey tools."""
    if endpoint is None:
        return Connection("surveymonkey", SurveyMonkeySource(settings.surveymonkey))
    return Connection("surveymonkey", SurveyMonkeySource(settings.surveymonkey, token=endpoint.credential, base_url=endpoint.base_url))
