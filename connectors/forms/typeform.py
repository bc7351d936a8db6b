"""Typeform: form definitions and responses, read incrementally into SurveyResponse records.

Paging follows Typeform's own advice: ``since`` (inclusive) bounds the window, then ``before=<last token>``
walks from the newest response to the oldest. Pages overlap (the token's response comes back), so responses are
deduplicated by id. The high-water mark per form moves only once the whole window is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
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
SOURCE = "typeform"
BASE_URL = "https://api.typeform.com"
PAGE_SIZE = 1000  # Typeform: page_size maximum
AUTH_HINT = "create a personal access token (forms:read, responses:read) and set RETENTION_TYPEFORM_TOKEN or the keyring entry typeform_token"

FIELD_KINDS = {
    "nps": kit.NPS, "opinion_scale": kit.RATING, "rating": kit.RATING,
    "multiple_choice": kit.CHOICE, "dropdown": kit.CHOICE, "picture_choice": kit.CHOICE, "yes_no": kit.CHOICE,
    "legal": kit.CHOICE, "short_text": kit.TEXT, "long_text": kit.TEXT, "email": kit.EMAIL,
}


def map_question(field: Mapping[str, Any]) -> kit.Question:
    """A Typeform field as a Question; scales come from ``properties.steps`` and ``start_at_one``."""
    vendor_type = str(field.get("type", ""))
    kind = FIELD_KINDS.get(vendor_type, kit.UNKNOWN)
    properties = field.get("properties") or {}
    scale_min = scale_max = None
    if kind == kit.RATING:
        steps = int(properties.get("steps") or (10 if vendor_type == "opinion_scale" else 5))
        scale_min = 1 if vendor_type == "rating" or properties.get("start_at_one") else 0
        scale_max = scale_min + steps - 1
    return kit.Question(str(field.get("id", "")), kind, field.get("title"), scale_min, scale_max, vendor_type=vendor_type)


def map_definition(form: Mapping[str, Any]) -> dict[str, kit.Question]:
    questions = {}
    for field in form.get("fields") or []:
        question = map_question(field)
        questions[question.question_id] = question
        for inner in (field.get("properties") or {}).get("fields") or []:  # questions inside a group
            nested = map_question(inner)
            questions[nested.question_id] = nested
    return questions


def answer_value(answer: Mapping[str, Any]) -> Any:
    """The value of one Typeform answer: it sits under the key its ``type`` names."""
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice" and isinstance(value, Mapping):
        return value.get("label") if value.get("label") is not None else value.get("other", "")
    if kind == "choices" and isinstance(value, Mapping):
        return [*(value.get("labels") or []), *([value["other"]] if value.get("other") else [])]
    if kind == "boolean":
        return "yes" if value else "no"
    return value


def response_parts(item: Mapping[str, Any]) -> kit.ResponseParts:
    answers = []
    for answer in item.get("answers") or []:
        field = answer.get("field") or {}
        answers.append(kit.RawAnswer(field.get("id"), answer_value(answer), str(field.get("type", ""))))
    hidden = item.get("hidden") or {}
    hidden_emails = [("hidden field " + key, value) for key, value in hidden.items() if "email" in str(key).lower()]
    return kit.ResponseParts(
        response_id=item.get("response_id") or item.get("token"), submitted_at=item.get("submitted_at"),
        answers=answers, email_candidates=hidden_emails, raw=item,
    )


def map_response(item: Mapping[str, Any], form_id: str, questions: Mapping[str, kit.Question],
                 email_question: str | None, stats: kit.ReadStats) -> SurveyResponse | Rejected:
    """One Typeform response as a record; questions missing from today's definition are typed from the answer."""
    parts = response_parts(item)
    known = dict(questions)
    for answer in item.get("answers") or []:
        field = answer.get("field") or {}
        if field.get("id") and field["id"] not in known:
            known[field["id"]] = _from_answer(field)
    return kit.build_response(SOURCE, form_id, parts, known, email_question, stats)


def _from_answer(field: Mapping[str, Any]) -> kit.Question:
    """A removed field, typed from what its answer says; a rating's scale is unknown then, so it stays raw."""
    question = map_question(field)
    if question.kind == kit.RATING:
        return kit.Question(question.question_id, kit.UNKNOWN, vendor_type=question.vendor_type)
    return question


class TypeformSource:
    """The Typeform responses of the configured forms (or every form the token can see), as one stream."""

    name = SOURCE

    def __init__(self, settings: FormsSettings, *, token: str | None = None, base_url: str = BASE_URL, clock: Any = None) -> None:
        self.settings = settings
        clock = clock or SystemClock()
        self.api = kit.JsonApi(
            SOURCE, base_url, token if token is not None else read_secret("typeform_token"), settings.timeout_s,
            describe_error=_describe_error, auth_hint=AUTH_HINT, clock=clock,
            # Typeform: 2 requests per second per account. One call per 0.6 s rather than two per second: the limit
            # is counted where requests arrive, and network jitter would otherwise put three in one of its seconds.
            limiter=WindowLimiter(1, 0.6, clock),
        )
        self.last_stats = kit.ReadStats()

    def streams(self) -> Sequence[Stream]:
        return [Stream("responses", "survey_response", self.read_responses)]

    def form_ids(self) -> list[str]:
        if self.settings.forms:
            return list(self.settings.forms)
        ids, page = [], 1
        while True:
            listing = self.api.get("/forms", {"page": page, "page_size": 200}, "listing forms")
            ids += [form["id"] for form in listing.get("items") or [] if form.get("id")]
            if page >= int(listing.get("page_count") or 1):
                return ids
            page += 1

    def read_responses(self, cursor: str | None) -> Iterator[Page]:
        stats = self.last_stats = kit.ReadStats()

        def read_form(form_id: str, since: datetime | None) -> Iterator[tuple[Page, datetime | None]]:
            questions = map_definition(self.api.get(f"/forms/{form_id}", None, f"reading form {form_id}"))
            for page in self._read_form(form_id, questions, since, stats):
                yield page, max((r.submitted_at for r in page.records), default=None)

        return kit.read_forms(SOURCE, self.form_ids(), cursor, self.settings.lookback_minutes, stats, read_form)

    def _read_form(self, form_id: str, questions: Mapping[str, kit.Question], since: datetime | None,
                   stats: kit.ReadStats) -> Iterator[Page]:
        params: dict[str, Any] = {"page_size": PAGE_SIZE}
        if since is not None:
            params["since"] = since.strftime("%Y-%m-%dT%H:%M:%S")  # Typeform: ISO 8601 UTC to the second
        seen: set[str] = set()
        reported: int | None = None
        email_question = self.settings.email_question.get(form_id)
        while True:
            body = self.api.get(f"/forms/{form_id}/responses", params, f"reading responses of form {form_id}")
            items = body.get("items") or []
            if reported is None and isinstance(body.get("total_items"), int):
                reported = body["total_items"]
            records, rejected, new_items = [], [], 0
            for item in items:
                response_id = item.get("response_id") or item.get("token") or f"(no id #{len(seen)})"
                if response_id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(response_id)
                new_items += 1
                mapped = map_response(item, form_id, questions, email_question, stats)
                (rejected if isinstance(mapped, Rejected) else records).append(mapped)
            stats.responses += len(records)
            yield Page(records=records, cursor_after=None, rejected=rejected)
            last_token = items[-1].get("token") if items else None
            if len(items) < PAGE_SIZE or not new_items or not last_token:
                break
            params = {"page_size": PAGE_SIZE, "before": last_token, **({"since": params["since"]} if "since" in params else {})}
        kit.reconcile_total(SOURCE, form_id, reported, seen, stats)


def _describe_error(body: Any) -> str:
    if isinstance(body, Mapping):
        return str(body.get("description") or body.get("code") or "no description")
    return str(body)[:200]


@register_check("typeform")
def check_typeform(settings: Any) -> CheckResult:
    """`retention doctor`: the token is accepted and the configured forms exist."""
    try:
        source = TypeformSource(settings.typeform)
        forms = source.form_ids()
        for form_id in forms[:5]:
            source.api.get(f"/forms/{form_id}", None, f"reading form {form_id}")
    except RetentionError as exc:
        return CheckResult("typeform", False, str(exc))
    return CheckResult("typeform", True, f"token accepted; {len(forms)} form(s) to read")


@register_connector("typeform")
def connect(settings: Any, endpoint: Endpoint | None = None) -> Connection:
    """A source only: nothing is written back to survey tools."""
    if endpoint is None:
        return Connection("typeform", TypeformSource(settings.typeform))
    return Connection("typeform", TypeformSource(settings.typeform, token=endpoint.credential, base_url=endpoint.base_url))
