"""Canonical records: the contract every connector maps vendor data into.

Records are frozen dataclasses, validated when built. Invalid input raises ``InvalidRecord`` naming the field,
so callers can quarantine exactly that record. Every timestamp is timezone-aware UTC; every record carries
``(source, source_id)``; emails keep the form the user typed beside the form we match on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from typing import Any, ClassVar

import orjson
from email_validator import EmailNotValidError, validate_email

from connectors.base import InvalidRecord

UTC = timezone.utc
MAX_NAME_CHARS = 1_000  # names, phones, titles: longer is a broken export, not a person


# --- emails -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=65_536)
def normalise_email(typed: str) -> str:
    """The form used for matching: trimmed, lower-cased, domain in IDNA ASCII. Raises ValueError if invalid."""
    candidate = typed.strip()
    if not candidate:
        raise ValueError("is empty")
    try:
        # Deliverability needs DNS, which an offline import must not depend on.
        checked = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    return f"{checked.local_part.lower()}@{checked.ascii_domain.lower()}"


@dataclass(frozen=True, slots=True)
class EmailAddress:
    typed: str  # exactly as the user's tool had it
    normalised: str  # what identity matching uses

    @classmethod
    def parse(cls, typed: str, field_name: str = "email") -> EmailAddress:
        try:
            return cls(typed=typed, normalised=normalise_email(typed))
        except ValueError as exc:
            raise InvalidRecord(field_name, typed, f"is not a valid email address ({exc})") from None

    def __str__(self) -> str:
        return self.normalised


# --- time and money -----------------------------------------------------------------------------------------


def ensure_utc(value: datetime | None, field_name: str) -> datetime | None:
    """Accept aware datetimes only and return them in UTC; a naive time is a bug at the mapping layer."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidRecord(field_name, value, "must be a date and time")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecord(field_name, value, "has no time zone; convert it with the configured time zone first")
    return value.astimezone(UTC)


def parse_amount(value: Any, field_name: str = "amount") -> Decimal:
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidRecord(field_name, value, "is not a number") from None
    if not amount.is_finite():
        raise InvalidRecord(field_name, value, "is not a finite number")
    return amount


def parse_currency(value: str, field_name: str = "currency") -> str:
    code = str(value).strip().upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise InvalidRecord(field_name, value, "must be a three-letter ISO 4217 code such as USD or EUR")
    return code


def _check_text(value: str | None, field_name: str, max_chars: int = MAX_NAME_CHARS) -> str | None:
    if value is None:
        return None
    if len(value) > max_chars:
        raise InvalidRecord(field_name, value, f"is {len(value):,} characters long; at most {max_chars:,} allowed")
    if has_lone_surrogate(value):
        raise InvalidRecord(field_name, value, "holds half of a UTF-16 surrogate pair (an emoji cut in two?), which no text can store")
    return value


def has_lone_surrogate(text: str) -> bool:
    """JSON's "\\ud83d" without its pair decodes to a str that UTF-8 cannot encode: storing it would end the run."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- the records --------------------------------------------------------------------------------------------


class OrderStatus(str, Enum):
    WON = "won"
    LOST = "lost"
    OPEN = "open"
    REFUNDED = "refunded"


class EmailEventKind(str, Enum):
    SENT = "sent"
    OPEN = "open"
    CLICK = "click"
    BOUNCE = "bounce"
    UNSUBSCRIBE = "unsubscribe"
    SPAM_COMPLAINT = "spam_complaint"


class AnswerKind(str, Enum):
    NPS = "nps"
    RATING = "rating"
    CHOICE = "choice"
    TEXT = "text"


class RiskBand(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    NEW = "new"  # too little history to judge: no number is claimed


def _check_identity(source: str, source_id: str) -> None:
    if not source or not str(source).strip():
        raise InvalidRecord("source", source, "is empty")
    if not source_id or not str(source_id).strip():
        raise InvalidRecord("source_id", source_id, "is empty; every record needs the id its tool gave it")


@dataclass(frozen=True, slots=True)
class Contact:
    kind: ClassVar[str] = "contact"
    source: str
    source_id: str
    email: EmailAddress | None = None
    additional_emails: tuple[EmailAddress, ...] = ()
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    company_name: str | None = None
    lifecycle_stage: str | None = None
    is_unsubscribed: bool | None = None  # None: the source does not say
    created_at: datetime | None = None
    updated_at: datetime | None = None
    merged_ids: tuple[str, ...] = ()  # ids this record absorbed (vendor merges)
    properties: Mapping[str, str] = field(default_factory=dict)  # other columns, kept as the tool sent them

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        for name in ("first_name", "last_name", "phone", "company_name", "lifecycle_stage"):
            _check_text(getattr(self, name), name)
        object.__setattr__(self, "created_at", ensure_utc(self.created_at, "created_at"))
        object.__setattr__(self, "updated_at", ensure_utc(self.updated_at, "updated_at"))

    @property
    def match_email(self) -> str | None:
        return self.email.normalised if self.email else None


@dataclass(frozen=True, slots=True)
class Company:
    kind: ClassVar[str] = "company"
    source: str
    source_id: str
    name: str | None = None
    domain: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        _check_text(self.name, "name")
        _check_text(self.domain, "domain")
        object.__setattr__(self, "created_at", ensure_utc(self.created_at, "created_at"))
        object.__setattr__(self, "updated_at", ensure_utc(self.updated_at, "updated_at"))

    @property
    def match_email(self) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Order:
    """A won deal or a shop order."""

    kind: ClassVar[str] = "order"
    source: str
    source_id: str
    amount: Decimal
    currency: str
    status: OrderStatus
    created_at: datetime
    closed_at: datetime | None = None
    customer_email: EmailAddress | None = None
    customer_source_id: str | None = None  # the customer's id in the same source
    title: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        object.__setattr__(self, "amount", parse_amount(self.amount))
        object.__setattr__(self, "currency", parse_currency(self.currency))
        object.__setattr__(self, "status", _enum(OrderStatus, self.status, "status"))
        if self.created_at is None:
            raise InvalidRecord("created_at", None, "is missing; an order needs the time it was placed")
        object.__setattr__(self, "created_at", ensure_utc(self.created_at, "created_at"))
        object.__setattr__(self, "closed_at", ensure_utc(self.closed_at, "closed_at"))
        _check_text(self.title, "title")
        if self.customer_email is None and not self.customer_source_id:
            raise InvalidRecord("customer", None, "is missing; an order needs a customer email or customer id")

    @property
    def match_email(self) -> str | None:
        return self.customer_email.normalised if self.customer_email else None


@dataclass(frozen=True, slots=True)
class EmailEvent:
    kind: ClassVar[str] = "email_event"
    source: str
    source_id: str
    email: EmailAddress
    event: EmailEventKind
    occurred_at: datetime
    campaign_id: str | None = None
    url: str | None = None  # the link, for clicks

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        object.__setattr__(self, "event", _enum(EmailEventKind, self.event, "event"))
        object.__setattr__(self, "occurred_at", ensure_utc(self.occurred_at, "occurred_at"))
        if self.occurred_at is None:
            raise InvalidRecord("occurred_at", None, "is missing")

    @property
    def match_email(self) -> str | None:
        return self.email.normalised


@dataclass(frozen=True, slots=True)
class Answer:
    """One typed survey answer. ``value`` is an int for nps/rating, a tuple of labels for choice, str for text."""

    question_id: str
    answer_kind: AnswerKind
    value: int | float | str | tuple[str, ...]
    scale_min: int | None = None  # ratings only
    scale_max: int | None = None
    question_text: str | None = None  # the label when answered; labels drift, ids do not

    def __post_init__(self) -> None:
        kind = _enum(AnswerKind, self.answer_kind, f"answers.{self.question_id}")
        object.__setattr__(self, "answer_kind", kind)
        where = f"answers.{self.question_id}"
        if kind is AnswerKind.NPS:
            if not _is_int_between(self.value, 0, 10):
                raise InvalidRecord(where, self.value, "is not an NPS score (a whole number from 0 to 10)")
        elif kind is AnswerKind.RATING:
            if self.scale_min is None or self.scale_max is None or self.scale_min >= self.scale_max:
                raise InvalidRecord(where, self.value, "is a rating without a valid scale")
            if not isinstance(self.value, (int, float)) or not self.scale_min <= self.value <= self.scale_max:
                raise InvalidRecord(where, self.value, f"is outside the rating scale {self.scale_min}-{self.scale_max}")
        elif kind is AnswerKind.CHOICE:
            choices = (self.value,) if isinstance(self.value, str) else tuple(self.value)
            object.__setattr__(self, "value", choices)
        elif not isinstance(self.value, str):
            raise InvalidRecord(where, self.value, "is not text")

    @property
    def normalised(self) -> float | None:
        """Ratings and NPS mapped onto 0..1, so scales can be compared; None for choice and text."""
        if self.answer_kind is AnswerKind.NPS:
            return float(self.value) / 10.0
        if self.answer_kind is AnswerKind.RATING:
            return (float(self.value) - self.scale_min) / (self.scale_max - self.scale_min)
        return None


@dataclass(frozen=True, slots=True)
class SurveyResponse:
    kind: ClassVar[str] = "survey_response"
    source: str
    source_id: str  # the vendor's response id
    form_id: str
    submitted_at: datetime
    respondent_email: EmailAddress | None = None
    answers: Mapping[str, Answer] = field(default_factory=dict)  # keyed by the vendor's stable question id
    raw: Mapping[str, Any] = field(default_factory=dict)  # the payload as received

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        if not self.form_id:
            raise InvalidRecord("form_id", self.form_id, "is empty")
        object.__setattr__(self, "submitted_at", ensure_utc(self.submitted_at, "submitted_at"))
        if self.submitted_at is None:
            raise InvalidRecord("submitted_at", None, "is missing")

    @property
    def match_email(self) -> str | None:
        return self.respondent_email.normalised if self.respondent_email else None


@dataclass(frozen=True, slots=True)
class Score:
    """What goes back out to the CRM and the mailing list for one customer."""

    kind: ClassVar[str] = "score"
    source: str  # "scoring"
    source_id: str  # the customer's identity key
    churn_probability: float
    risk_band: RiskBand
    scored_at: datetime
    top_reasons: tuple[str, ...] = ()
    segment: str | None = None
    clv: Decimal | None = None
    clv_currency: str | None = None
    sentiment: float | None = None  # -1 (negative) .. 1 (positive)
    model_version: str | None = None

    def __post_init__(self) -> None:
        _check_identity(self.source, self.source_id)
        if not 0.0 <= float(self.churn_probability) <= 1.0:
            raise InvalidRecord("churn_probability", self.churn_probability, "must be between 0 and 1")
        object.__setattr__(self, "risk_band", _enum(RiskBand, self.risk_band, "risk_band"))
        object.__setattr__(self, "scored_at", ensure_utc(self.scored_at, "scored_at"))
        if self.sentiment is not None and not -1.0 <= self.sentiment <= 1.0:
            raise InvalidRecord("sentiment", self.sentiment, "must be between -1 and 1")
        if self.clv is not None:
            object.__setattr__(self, "clv", parse_amount(self.clv, "clv"))
            object.__setattr__(self, "clv_currency", parse_currency(self.clv_currency or "", "clv_currency"))

    @property
    def match_email(self) -> str | None:
        return None


Record = Contact | Company | Order | EmailEvent | SurveyResponse | Score
RECORD_TYPES: dict[str, type] = {t.kind: t for t in (Contact, Company, Order, EmailEvent, SurveyResponse, Score)}


def _enum(enum_type: type[Enum], value: Any, field_name: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise InvalidRecord(field_name, value, f"must be one of {allowed}") from None


def _is_int_between(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# --- payloads: how records are stored ------------------------------------------------------------------------


def _encode_other(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact, never through float
    raise TypeError(f"{type(value).__name__} cannot be stored in a record payload")


def to_payload(record: Record) -> str:
    """The record as canonical JSON: fields in their declared order, mapping keys sorted, times in RFC 3339.
    Equal records give equal bytes, and so equal hashes, which is how the store tells unchanged from changed."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=_encode_other).decode()


def _email(value: Any) -> EmailAddress | None:
    return EmailAddress(typed=value["typed"], normalised=value["normalised"]) if value else None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def from_payload(kind: str, payload: str) -> Record:
    """Rebuild a record stored by ``to_payload``."""
    data = orjson.loads(payload)
    record_type = RECORD_TYPES[kind]
    for name in ("created_at", "updated_at", "closed_at", "occurred_at", "submitted_at", "scored_at"):
        if name in data:
            data[name] = _time(data[name])
    for name in ("email", "customer_email", "respondent_email"):
        if name in data:
            data[name] = _email(data[name])
    if "additional_emails" in data:
        data["additional_emails"] = tuple(_email(item) for item in data["additional_emails"])
    for name in ("merged_ids", "top_reasons"):
        if name in data:
            data[name] = tuple(data[name])
    if "answers" in data:
        data["answers"] = {
            key: Answer(**{**item, "value": tuple(item["value"]) if isinstance(item["value"], list) else item["value"]})
            for key, item in data["answers"].items()
        }
    return record_type(**data)
