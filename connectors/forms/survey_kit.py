"""What the three survey connectors share: typing answers, finding the respondent, the HTTP session, seed text.

Vendor modules turn their JSON into ``Question`` definitions and ``RawAnswer`` values; this module turns those
into canonical ``SurveyResponse`` records, so Typeform, SurveyMonkey and Google Forms answers mean the same.

Documented handling of awkward payloads (README, "Survey tools"):
- a response without an id or a submission time, or with an answer that names no question, cannot become a
  record: it is rejected (quarantined) with the reason, and whatever the store held for it stays as it was;
- an NPS or rating value outside its scale rejects the response (the number cannot be trusted);
- an answer of a question type we do not know is kept raw in ``SurveyResponse.raw`` with a warning;
- free text is kept whole (a 1 MB comment, emoji, right-to-left text), except NUL bytes, which are removed
  because they carry nothing and PostgreSQL text cannot hold them;
- a respondent email that is not a valid address is ignored with a warning; a response without a usable email
  is kept (it still feeds aggregate sentiment) and counted as anonymous.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from connectors.base import AuthError, InvalidRecord, Page, Rejected, SourceError
from connectors.records import Answer, AnswerKind, EmailAddress, SurveyResponse, has_lone_surrogate
from connectors.retry import (
    MalformedAnswer,
    RetryBudget,
    RetryPolicy,
    Transient,
    WindowLimiter,
    call_with_retries,
    malformed_reason,
)
from connectors.sandbox import SystemClock

log = logging.getLogger(__name__)

# --- answers ---------------------------------------------------------------------------------------------------

NPS, RATING, CHOICE, TEXT, EMAIL, UNKNOWN = "nps", "rating", "choice", "text", "email", "unknown"


@dataclass(frozen=True)
class Question:
    """One question of a form definition, in the terms of our records."""

    question_id: str  # the vendor's stable id: labels drift, ids do not
    kind: str  # nps, rating, choice, text, email or unknown
    title: str | None = None
    scale_min: int | None = None
    scale_max: int | None = None
    choices: Mapping[str, str] = field(default_factory=dict)  # choice id -> label, where answers carry ids
    vendor_type: str = ""


@dataclass(frozen=True)
class RawAnswer:
    question_id: str | None
    value: Any  # a number, a string, or a sequence of labels
    vendor_type: str = ""


@dataclass
class ReadStats:
    """What one read of one source saw; the Source keeps the last one for `retention status` and the tests."""

    responses: int = 0
    anonymous: int = 0  # kept without an identifiable person
    duplicates: int = 0  # the same response id served twice (Typeform pages overlap)
    rejected: int = 0
    untyped_answers: int = 0  # answers of question types we do not know, kept raw
    untyped_questions: set[str] = field(default_factory=set)  # warned about once per run, not once per response
    total_mismatches: list[str] = field(default_factory=list)  # forms whose reported total differs from what we read


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """NUL removed; half of a surrogate pair (a vendor's emoji cut in two) becomes U+FFFD, so the answer is kept."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if has_lone_surrogate(value):
        value = _LONE_SURROGATE.sub("\ufffd", value)  # in a str, any surrogate code point is a lone one
    return value


def scrub(value: Any) -> Any:
    """The payload with NUL bytes removed from every string, for ``SurveyResponse.raw``."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def type_answer(question: Question, raw: RawAnswer) -> Answer | None:
    """The typed answer, or None for email and unknown questions (kept raw by the caller)."""
    qid, title = question.question_id, question.title
    if question.kind == NPS:
        return Answer(qid, AnswerKind.NPS, _whole_number(raw.value, qid), question_text=title)
    if question.kind == RATING:
        return Answer(qid, AnswerKind.RATING, _whole_number(raw.value, qid), question.scale_min, question.scale_max, title)
    if question.kind == CHOICE:
        labels = (raw.value,) if isinstance(raw.value, str) else tuple(raw.value)
        return Answer(qid, AnswerKind.CHOICE, tuple(clean_text(str(label)) for label in labels), question_text=title)
    if question.kind == TEXT:
        if not isinstance(raw.value, str):
            raise InvalidRecord(f"answers.{qid}", raw.value, "is not text")
        return Answer(qid, AnswerKind.TEXT, clean_text(raw.value), question_text=title)
    return None


def _whole_number(value: Any, qid: str) -> int:
    if isinstance(value, bool):
        raise InvalidRecord(f"answers.{qid}", value, "is not a number")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise InvalidRecord(f"answers.{qid}", value, "is not a number") from None
    if not number.is_integer():
        raise InvalidRecord(f"answers.{qid}", value, "is not a whole number")
    return int(number)


# --- respondents and records -----------------------------------------------------------------------------------


def first_valid_email(candidates: Iterable[tuple[str, Any]], record_ref: str) -> EmailAddress | None:
    """The first usable email among (where, value) candidates, in the order given; bad ones are logged."""
    for where, value in candidates:
        if not isinstance(value, str) or not value.strip():
            continue
        try:
            return EmailAddress.parse(clean_text(value), "respondent_email")
        except InvalidRecord as exc:
            log.warning("%s: the %s is not a usable email (%s); trying the next source of the respondent", record_ref, where, exc.reason)
    return None


def parse_time(value: Any, field_name: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise InvalidRecord(field_name, value, "is missing")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord(field_name, value, "is not an ISO 8601 date and time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ResponseParts:
    """A vendor response taken apart by the vendor module, before typing."""

    response_id: Any
    submitted_at: Any  # ISO 8601 text as the vendor sent it
    answers: Sequence[RawAnswer]
    email_candidates: Sequence[tuple[str, Any]]  # (where it came from, value), best first
    raw: Mapping[str, Any]


@dataclass
class TypedAnswers:
    answers: dict[str, Answer] = field(default_factory=dict)
    configured_email: list[tuple[str, Any]] = field(default_factory=list)  # the settings' email question
    question_emails: list[tuple[str, Any]] = field(default_factory=list)  # email-type questions
    untyped: dict[str, Any] = field(default_factory=dict)  # unknown question types, kept raw


def type_answers(raw_answers: Sequence[RawAnswer], questions: Mapping[str, Question], email_question: str | None) -> TypedAnswers:
    typed = TypedAnswers()
    for raw in raw_answers:
        if not raw.question_id:
            raise InvalidRecord("answers", raw.value, "names no question id")
        question = questions.get(raw.question_id) or Question(raw.question_id, UNKNOWN, vendor_type=raw.vendor_type)
        if raw.question_id == email_question:
            typed.configured_email.append(("configured email question", raw.value))
            continue  # who answered, not what they think
        if question.kind == EMAIL:
            typed.question_emails.append(("email question", raw.value))
        answer = type_answer(question, raw)
        if answer is not None:
            typed.answers[raw.question_id] = answer
        elif question.kind == UNKNOWN:
            typed.untyped[raw.question_id] = raw.value
    return typed


def build_response(
    source: str, form_id: str, parts: ResponseParts, questions: Mapping[str, Question], email_question: str | None, stats: ReadStats
) -> SurveyResponse | Rejected:
    """A canonical response, or the reason it cannot be one."""
    ref = f"{source} form {form_id} response {parts.response_id or '(no id)'}"
    try:
        if not isinstance(parts.response_id, str) or not parts.response_id.strip():
            raise InvalidRecord("response_id", parts.response_id, "is missing")
        submitted_at = parse_time(parts.submitted_at, "submitted_at")
        typed = type_answers(parts.answers, questions, email_question)
        email = first_valid_email([*typed.configured_email, *parts.email_candidates, *typed.question_emails], ref)
        raw_kept = scrub(dict(parts.raw))
        if typed.untyped:
            raw_kept["untyped_answers"] = scrub(typed.untyped)
        record = SurveyResponse(
            source=source, source_id=parts.response_id, form_id=form_id, submitted_at=submitted_at,
            respondent_email=email, answers=typed.answers, raw=raw_kept,
        )
    except InvalidRecord as exc:
        stats.rejected += 1
        return Rejected(record_ref=ref, reason=str(exc), raw=scrub(dict(parts.raw)))
    if typed.untyped:
        _count_untyped(ref, typed.untyped, stats)
    if email is None:
        stats.anonymous += 1
    return record


def _count_untyped(ref: str, untyped: Mapping[str, Any], stats: ReadStats) -> None:
    stats.untyped_answers += len(untyped)
    first_seen = sorted(set(untyped) - stats.untyped_questions)
    if first_seen:
        stats.untyped_questions.update(first_seen)
        log.warning("%s: kept %d answer(s) of unknown question types raw (questions %s; further ones are counted, not logged)",
                    ref, len(untyped), ", ".join(first_seen))


def reconcile_total(source: str, form_id: str, reported: int | None, read_ids: set[str], stats: ReadStats) -> None:
    """Compare the vendor's own count with the distinct responses we read; a gap is logged and counted."""
    if reported is None or reported == len(read_ids):
        return
    note = f"form {form_id}: {source} reported {reported:,} responses, {len(read_ids):,} distinct were read"
    stats.total_mismatches.append(note)
    log.warning("%s; the next run reads this window again", note)


# --- cursors ----------------------------------------------------------------------------------------------------


def load_cursor(cursor: str | None) -> dict[str, str]:
    """Per-form high-water marks (ISO 8601) saved by a previous run."""
    if not cursor:
        return {}
    try:
        marks = json.loads(cursor)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in marks.items()} if isinstance(marks, dict) else {}


def since_with_lookback(mark: str | None, lookback_minutes: int) -> datetime | None:
    """Where to start reading: the mark minus the look-back, for responses the vendor indexed late."""
    if not mark:
        return None
    return parse_time(mark, "cursor") - timedelta(minutes=lookback_minutes)


def read_forms(source: str, form_ids: Iterable[str], cursor: str | None, lookback_minutes: int, stats: ReadStats,
               read_form: Callable[[str, datetime | None], Iterator[tuple[Page, datetime | None]]]) -> Iterator[Page]:
    """Each form read from its own mark minus the look-back; ``read_form`` yields pages and the newest time in each.

    A form's mark moves only after its last page: Typeform pages run newest first and Google's have no order,
    so a mark taken mid-form could skip responses if the run stopped there.
    """
    marks = load_cursor(cursor)
    for form_id in form_ids:
        newest: datetime | None = None
        for page, page_newest in read_form(form_id, since_with_lookback(marks.get(form_id), lookback_minutes)):
            if page_newest is not None:
                newest = max(newest or page_newest, page_newest)
            yield page
        if newest is not None:
            marks[form_id] = later(marks.get(form_id), newest)
        yield Page(records=(), cursor_after=json.dumps(marks, sort_keys=True))
    log.info(
        "%s: %d responses read, %d of them without an identifiable person (kept, they count in aggregate sentiment), "
        "%d duplicates skipped, %d quarantined, %d answers of unknown types kept raw",
        source, stats.responses, stats.anonymous, stats.duplicates, stats.rejected, stats.untyped_answers,
    )


def later(current: str | None, candidate: datetime) -> str:
    text = candidate.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if current is None or parse_time(current, "cursor") < candidate:
        return text
    return current


# --- HTTP -------------------------------------------------------------------------------------------------------


class HttpStatus(Exception):
    """A non-2xx answer, carrying only what is safe to show (never the request headers)."""

    def __init__(self, status: int, body: Any, retry_after_s: float | None, url: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s
        self.url = url


@dataclass
class JsonApi:
    """One vendor's REST API over a requests Session: bearer auth, timeouts, client-side limit, retries."""

    source: str
    base_url: str
    token: str | None
    timeout_s: float
    describe_error: Callable[[Any], str]  # the vendor's error body -> its message
    auth_hint: str  # what the user must do when the token is refused
    limiter: WindowLimiter | None = None
    clock: Any = field(default_factory=SystemClock)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    token_source: Callable[[], str] | None = None  # a fresh token per request (refreshed before expiry), instead of ``token``

    def __post_init__(self) -> None:
        if not self.token and self.token_source is None:
            raise AuthError(f"{self.source}: no access token is set; {self.auth_hint}", source=self.source)
        self.base_url = self.base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.budget = RetryBudget(self.policy.budget)

    def get(self, path_or_url: str, params: Mapping[str, Any] | None, what: str) -> Any:
        """GET a JSON document; ``path_or_url`` is a path under the base URL or a full URL on the same host."""
        if path_or_url.startswith(("http://", "https://")):
            if not path_or_url.startswith(self.base_url + "/"):
                # A paging link to another host would carry our token there: refuse it.
                raise SourceError(f"{self.source} sent a paging link to another host while {what}", source=self.source)
            url = path_or_url
        else:
            url = self.base_url + path_or_url
        try:
            return call_with_retries(
                lambda: self._get_once(url, params), _classify, source=self.source, what=what, policy=self.policy,
                budget=self.budget, clock=self.clock, limiter=self.limiter,
            )
        except HttpStatus as exc:
            message = self.describe_error(exc.body)
            if exc.status in (401, 403):
                raise AuthError(
                    f"{self.source} refused the access token while {what} (HTTP {exc.status}: {message}); {self.auth_hint}",
                    source=self.source,
                ) from None
            hint = "; check the form and survey ids in settings.toml" if exc.status == 404 else ""
            raise SourceError(f"{self.source} answered HTTP {exc.status} while {what}: {message}{hint}", source=self.source) from None
        except requests.RequestException as exc:
            raise SourceError(f"{self.source} could not be reached while {what} ({type(exc).__name__})", source=self.source, retryable=True) from None

    def _get_once(self, url: str, params: Mapping[str, Any] | None) -> Any:
        if self.token_source is not None:
            self.session.headers["Authorization"] = f"Bearer {self.token_source()}"
        response = self.session.get(url, params=params, timeout=self.timeout_s)
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:200]
            retry_after = response.headers.get("Retry-After")
            raise HttpStatus(response.status_code, body, float(retry_after) if _is_number(retry_after) else None, url)
        try:
            return response.json()
        except ValueError:  # a proxy's HTML page or a body cut short: passing trouble, retried like a 5xx
            raise MalformedAnswer(malformed_reason(response.content)) from None


def _is_number(text: str | None) -> bool:
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def _classify(exc: Exception) -> Transient | None:
    if isinstance(exc, MalformedAnswer):
        return Transient(f"malformed answer: {exc.reason}")
    if isinstance(exc, HttpStatus) and (exc.status == 429 or exc.status >= 500):
        return Transient(f"HTTP {exc.status}", exc.retry_after_s)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return Transient(type(exc).__name__)
    return None


# --- seed data for the sandboxes --------------------------------------------------------------------------------

WHY_TEXTS = [
    "Great support, they answered within the hour.", "Too expensive for what we use.", "Love the new dashboard!",
    "Shipping took forever this time", "Der Kundenservice war sehr freundlich.", "Livraison rapide, merci !",
    "El producto llegó roto, muy decepcionado.", "Prodotto ottimo, lo consiglio.", "Realy good, but the app crashs sometimes",
    "Good value for mony", "שירות מצוין, תודה רבה", "الخدمة ممتازة وسريعة", "Nothing special 🤷", "5 stars ⭐⭐⭐⭐⭐ would buy again",
    "Het werkt prima.", "Too many emails from you guys", "ok", "", "I will cancel next month if the price goes up again.",
]
COMMENTS = [
    "Please add a dark mode.", "Invoices should show the VAT number.", "Bitte mehr Zahlungsarten anbieten.",
    "Could you open on sundays?", "No comment", "Merci pour le suivi.", "The checkout is confusing on mobile",
    "Keep up the good work 👍", "", "quality dropped since last year",
]
PLANS = ["Starter", "Pro", "Business"]
FIRST_NAMES = ["anna", "ben", "carla", "dmitri", "eva", "farid", "gita", "hugo", "ines", "jonas", "kofi", "lea"]
DOMAINS = ["example.com", "shop-mail.de", "mail.example.org", "corp.example.net"]


@dataclass(frozen=True)
class SeedAnswerSet:
    """One made-up respondent's answers, vendor-neutral; each sandbox renders it in its own JSON."""

    submitted_at: datetime
    email_typed: str | None  # as the respondent typed it (case and spaces vary); None: anonymous
    email_via: str  # "hidden", "question" or "" (anonymous)
    nps: int
    why: str
    rating: int  # 1-5
    plan: str
    comment: str


def seed_answer_sets(count: int, seed: int, start: datetime, end: datetime) -> list[SeedAnswerSet]:
    """``count`` respondents spread between ``start`` and ``end``, oldest first; a fifth are anonymous."""
    rng = random.Random(seed)
    span_s = max((end - start).total_seconds(), 1.0)
    times = sorted(start + timedelta(seconds=rng.uniform(0, span_s)) for _ in range(count))
    people = [f"{rng.choice(FIRST_NAMES)}.{i}@{rng.choice(DOMAINS)}" for i in range(max(count // 2, 1))]
    answer_sets = []
    for at in times:
        at = at.replace(microsecond=0)
        anonymous = rng.random() < 0.2
        email = None if anonymous else _vary_case_and_space(rng.choice(people), rng)
        nps = rng.choices(range(11), weights=[2, 1, 1, 2, 2, 4, 5, 8, 14, 16, 12])[0]
        answer_sets.append(
            SeedAnswerSet(
                submitted_at=at, email_typed=email, email_via="" if anonymous else rng.choice(["hidden", "question"]),
                nps=nps, why=rng.choice(WHY_TEXTS), rating=max(1, min(5, round(nps / 2))), plan=rng.choice(PLANS),
                comment=rng.choice(COMMENTS),
            )
        )
    return answer_sets


def _vary_case_and_space(email: str, rng: random.Random) -> str:
    """The same person typing their address differently on different days."""
    style = rng.random()
    if style < 0.2:
        return email.upper()
    if style < 0.35:
        return f"  {email.capitalize()} "
    return email
