"""CSV exports -> canonical fields: the header vocabulary of common tools, and the cell parsers.

Pure functions and tables; no file access. ``connectors/forms/csv.py`` reads the file and calls these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from connectors.base import InvalidRecord

UTC = timezone.utc

# Canonical fields an import can fill, per kind. `--map COLUMN=FIELD` accepts these names.
FIELDS = {
    "contacts": (
        "id", "email", "additional_emails", "first_name", "last_name", "full_name", "phone", "company",
        "lifecycle_stage", "unsubscribed", "subscribed", "created_at", "updated_at",
    ),
    "orders": (
        "id", "email", "customer_id", "amount", "currency", "status", "created_at", "closed_at",
        "cancelled_at", "refunded_amount", "title",
    ),
    "responses": ("id", "email", "submitted_at", "form_id"),
}
DATE_FIELDS = {"created_at", "updated_at", "closed_at", "cancelled_at", "submitted_at"}
ANSWER_TYPES = ("nps", "rating", "choice", "text")


def header_key(header: str) -> str:
    """Headers compare case- and spacing-insensitively: ' Email  Address' == 'email address'."""
    return re.sub(r"[\s_]+", " ", header.strip().lower())


# Header vocabulary: the names each tool's export uses for a canonical field, first match wins per field.
# Sources: the tools' export files (Zoho CRM, Freshsales, Shopify, Stripe, Brevo, Constant Contact, HubSpot,
# Mailchimp, Typeform, SurveyMonkey, Google Forms); README.md lists them per tool.
_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "contacts": {
        "id": ("record id", "contact id", "customer id", "customerid", "id", "ext id", "vid", "subscriber id"),
        "email": ("email", "email address", "e-mail", "e-mail address", "emails", "primary email", "customer email",
                  "work email", "email 1"),
        "additional_emails": ("secondary email", "additional emails", "additional email", "other emails", "email 2"),
        "first_name": ("first name", "firstname", "given name", "fname", "prenom", "vorname"),
        "last_name": ("last name", "lastname", "surname", "family name", "lname", "nom", "nachname"),
        "full_name": ("name", "full name", "contact name", "customer name"),
        "phone": ("phone", "phone number", "mobile", "mobile number", "mobile phone", "work number", "sms",
                  "default address phone", "phone - home", "phone - work", "phone - mobile", "telephone"),
        "company": ("company", "company name", "account name", "default address company", "sales account",
                    "organization", "organisation", "account"),
        "lifecycle_stage": ("lifecycle stage", "lifecyclestage"),
        "unsubscribed": ("email opt out", "unsubscribed", "email blacklisted", "emailblacklisted", "blacklisted",
                         "opted out", "do not email", "email opt-out"),
        "subscribed": ("accepts email marketing", "accepts marketing", "email permission status",
                       "email marketing consent", "email marketing", "subscribed", "opt in"),
        "created_at": ("created time", "created at", "created (utc)", "created", "create date", "added time",
                       "date added", "signup date", "optin time", "member since"),
        "updated_at": ("modified time", "updated at", "last modified at", "modified time", "last modified date",
                       "last modified", "updated", "last changed"),
    },
    "orders": {
        "id": ("order id", "order number", "order no", "record id", "deal id", "invoice number", "transaction id",
               "payment id", "id"),
        "email": ("email", "customer email", "email address", "billing email", "contact email", "e-mail"),
        "customer_id": ("customer id", "customerid", "customer", "contact id", "account id", "client id"),
        "amount": ("total", "amount", "deal value", "order total", "total price", "amount paid", "gross", "revenue",
                   "value", "price"),
        "currency": ("currency", "currency code"),
        "status": ("financial status", "status", "order status", "payment status", "deal stage", "stage"),
        "created_at": ("created at", "created (utc)", "created", "created time", "order date", "date",
                       "purchase date", "transaction date", "date created"),
        "closed_at": ("paid at", "closing date", "closed date", "close date", "completed at", "paid date"),
        "cancelled_at": ("cancelled at", "canceled at"),
        "refunded_amount": ("amount refunded", "refunded amount", "refunded"),
        "title": ("deal name", "title", "description", "product"),
    },
    "responses": {
        "id": ("#", "respondent id", "response id", "token", "response token", "id"),
        "email": ("email", "email address", "respondent email", "e-mail"),
        "submitted_at": ("submit date (utc)", "timestamp", "submitted at", "submitted", "date submitted",
                         "end date", "completed at", "submission date"),
        "form_id": ("form id", "survey id"),
    },
}
# Survey export columns that describe the response, not answers: kept in the raw payload only.
RESPONSE_METADATA = {
    "start date (utc)", "stage date (utc)", "network id", "response type", "collector id", "start date",
    "ip address", "first name", "last name", "custom data 1", "tags", "score", "total score",
}


@dataclass(frozen=True)
class Profile:
    """A tool whose export we recognise by its signature columns, and the quirks it needs."""

    name: str
    kinds: tuple[str, ...]
    signature: frozenset[str]
    prefer: dict[str, str]  # field -> header to use even where a generic synonym would also match
    utc_columns: bool = False  # its unlabelled timestamps are UTC (Stripe labels them "(UTC)")


# SurveyMonkey writes a second header row; the reader needs to know it by name.
SURVEYMONKEY = Profile("surveymonkey", ("responses",), frozenset({"respondent id", "collector id"}), {})
PROFILES = (
    Profile("shopify", ("orders",), frozenset({"financial status", "lineitem name"}), {"id": "name"}),
    Profile("shopify", ("contacts",), frozenset({"accepts email marketing", "total spent"}), {}),
    Profile("shopify", ("contacts",), frozenset({"accepts marketing", "total spent"}), {}),
    Profile("stripe", ("orders",), frozenset({"created (utc)", "amount refunded", "customer email"}),
            {"email": "customer email"}, utc_columns=True),
    Profile("stripe", ("contacts",), frozenset({"created (utc)", "delinquent"}), {}, utc_columns=True),
    Profile("zoho", ("contacts", "orders"), frozenset({"record id", "created time", "modified time"}),
            {"customer_id": "contact name.id"}),
    Profile("freshsales", ("contacts", "orders"), frozenset({"sales owner"}), {}),
    Profile("brevo", ("contacts",), frozenset({"email", "firstname", "lastname"}), {}),
    Profile("brevo", ("contacts",), frozenset({"email", "added time", "modified time"}), {}),
    Profile("constant-contact", ("contacts",), frozenset({"email address", "email permission status"}), {}),
    Profile("typeform", ("responses",), frozenset({"#", "submit date (utc)", "network id"}), {}, utc_columns=True),
    SURVEYMONKEY,
    Profile("google-forms", ("responses",), frozenset({"timestamp"}), {}),
)


def detect_profile(kind: str, header_keys: set[str]) -> Profile | None:
    for profile in PROFILES:
        if kind in profile.kinds and profile.signature <= header_keys:
            return profile
    return None


def map_headers(kind: str, headers: list[str], overrides: dict[str, str], profile: Profile | None) -> dict[str, int]:
    """Canonical field -> column index. Explicit ``--map`` wins, then the tool profile, then synonyms."""
    keys = [header_key(h) for h in headers]
    mapping: dict[str, int] = {}
    taken: set[int] = set()
    for column, field_name in overrides.items():
        if field_name in ANSWER_TYPES or field_name.startswith("rating:") or field_name == "ignore":
            continue
        mapping[field_name] = keys.index(header_key(column))
        taken.add(mapping[field_name])
    preferred = profile.prefer if profile else {}
    for field_name, candidates in _SYNONYMS[kind].items():
        if field_name in mapping:
            continue
        ordered = ((preferred[field_name],) if field_name in preferred else ()) + candidates
        for candidate in ordered:
            if candidate in keys and keys.index(candidate) not in taken:
                mapping[field_name] = keys.index(candidate)
                taken.add(mapping[field_name])
                break
    return mapping


# --- cell parsers ---------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "y", "1", "t", "x", "subscribed", "opted in", "opt-in", "active", "checked"}
_FALSE = {"false", "no", "n", "0", "f", "", "unsubscribed", "opted out", "opt-out", "unchecked", "never subscribed",
          "not set", "pending"}


def parse_bool(value: str, field_name: str) -> bool | None:
    key = value.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False if key else None
    raise InvalidRecord(field_name, value, "is not yes/no, true/false or 1/0")


_AMOUNT_NOISE = re.compile(r"[\s$€£¥₹\u00a0'’]|[A-Z]{3}$|^[A-Z]{3}")


def parse_decimal(value: str, field_name: str) -> Decimal:
    """'1,234.56', '$12.00', '12,50', '(12.00)': thousands separators and symbols go, the decimal point stays."""
    text = _AMOUNT_NOISE.sub("", value.strip())
    negative = text.startswith("(") and text.endswith(")")
    text = text.strip("()")
    if "," in text and "." in text:
        # The separator that comes last is the decimal one: 1.234,56 and 1,234.56 both mean 1234.56.
        text = text.replace(".", "").replace(",", ".") if text.rfind(",") > text.rfind(".") else text.replace(",", "")
    elif re.fullmatch(r"-?\d+,\d{1,2}", text):
        text = text.replace(",", ".")
    elif re.fullmatch(r"-?\d{1,3}(,\d{3})+", text):
        text = text.replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidRecord(field_name, value, "is not an amount") from None
    if not amount.is_finite() or abs(amount) >= Decimal("1e15"):
        raise InvalidRecord(field_name, value, "is not a plausible amount")
    return -amount if negative else amount


_ISO_OFFSET_SPACE = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) ?([+-]\d{2}):?(\d{2})$")
_NUMERIC_DATE = re.compile(r"^(\d{1,4})[/.\-](\d{1,2})[/.\-](\d{1,4})(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?)?$")
_NAMED_FORMATS = (
    "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y", "%d-%b-%Y", "%d %b %Y %H:%M",
    "%d %b %Y %H:%M:%S", "%b %d, %Y %I:%M %p", "%B %d, %Y %I:%M %p", "%b %d, %Y %H:%M", "%a, %d %b %Y %H:%M:%S",
)


def slash_date_evidence(value: str) -> str | None:
    """'DMY' or 'MDY' if a numeric day/month date can only be read one way, 'ambiguous' if both, else None."""
    match = _NUMERIC_DATE.match(value.strip())
    if not match or len(match.group(1)) == 4:
        return None
    first, second = int(match.group(1)), int(match.group(2))
    if first > 12 >= second:
        return "DMY"
    if second > 12 >= first:
        return "MDY"
    return "ambiguous" if first <= 12 and second <= 12 else None


def parse_timestamp(value: str, field_name: str, zone: ZoneInfo, date_order: str, is_utc: bool = False) -> datetime:
    """Any common export format -> aware UTC. Times without an offset are read in ``zone`` (UTC if ``is_utc``)."""
    text = value.strip()
    if text.isdigit() and len(text) in (10, 13):
        seconds = int(text) / (1000 if len(text) == 13 else 1)  # epoch seconds or milliseconds
        return datetime.fromtimestamp(seconds, UTC)
    naive: datetime | None = None
    offset_match = _ISO_OFFSET_SPACE.match(text)
    if offset_match:
        text = f"{offset_match.group(1)}{offset_match.group(2)}:{offset_match.group(3)}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is not None:
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        naive = parsed
    if naive is None:
        naive = _parse_numeric_date(text, field_name, date_order) or _parse_named_date(text)
    if naive is None:
        raise InvalidRecord(field_name, value, "is not a date this tool can read (use e.g. 2024-03-05 or 2024-03-05T10:22:00Z)")
    return _localise(naive, field_name, value, UTC if is_utc else zone)


def _parse_numeric_date(text: str, field_name: str, date_order: str) -> datetime | None:
    match = _NUMERIC_DATE.match(text)
    if not match:
        return None
    a, b, c = match.group(1), match.group(2), match.group(3)
    if len(a) == 4:
        year, month, day = int(a), int(b), int(c)
    else:
        if len(c) != 4:
            raise InvalidRecord(field_name, text, "has a two-digit year; export four-digit years")
        order = date_order if date_order != "auto" else slash_date_evidence(text)
        if order not in ("DMY", "MDY"):
            raise InvalidRecord(field_name, text, "reads as day/month and as month/day; pass --date-order DMY or MDY")
        day, month = (int(a), int(b)) if order == "DMY" else (int(b), int(a))
        year = int(c)
    hour, minute, second = int(match.group(4) or 0), int(match.group(5) or 0), int(match.group(6) or 0)
    meridiem = (match.group(7) or "").lower()
    if meridiem:
        if not 1 <= hour <= 12:
            raise InvalidRecord(field_name, text, "has an hour outside 1-12 with AM/PM")
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise InvalidRecord(field_name, text, f"is not a real date ({exc})") from None


def _parse_named_date(text: str) -> datetime | None:
    for pattern in _NAMED_FORMATS:
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    return None


def _localise(naive: datetime, field_name: str, original: str, zone: ZoneInfo | timezone) -> datetime:
    if zone is UTC:
        return naive.replace(tzinfo=UTC)
    early, late = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if early.utcoffset() != late.utcoffset():
        # The clock went back: this local time happened twice. Guessing could misorder events; refuse.
        raise InvalidRecord(field_name, original, f"happened twice in {zone} (clocks went back); give it with an offset")
    round_trip = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive:
        raise InvalidRecord(field_name, original, f"never happened in {zone} (clocks went forward); give it with an offset")
    return early.astimezone(UTC)


def slug(text: str, limit: int = 80) -> str:
    """A question id from a CSV header: the label is the only identity a CSV export gives a question."""
    cleaned = re.sub(r"[^\w]+", "_", text.strip().lower(), flags=re.UNICODE).strip("_")
    return (cleaned or "question")[:limit]


_WON = {"paid", "won", "closed won", "closed (won)", "succeeded", "success", "complete", "completed", "captured",
        "fulfilled", "partially refunded", "partially_refunded", "settled", "closedwon"}
_LOST = {"lost", "closed lost", "closed (lost)", "closed lost to competition", "failed", "voided", "void", "cancelled",
         "canceled", "declined", "closedlost", "expired"}
_OPEN = {"pending", "open", "authorized", "authorised", "partially paid", "partially_paid", "unpaid", "draft",
         "processing", "in progress", "requires payment method", "incomplete"}
_REFUNDED = {"refunded", "refund", "fully refunded", "reversed", "chargeback", "disputed lost"}


def parse_status(value: str, field_name: str, is_stage_column: bool) -> str:
    key = header_key(value)
    for status, words in (("won", _WON), ("lost", _LOST), ("refunded", _REFUNDED), ("open", _OPEN)):
        if key in words:
            return status
    if "won" in key.split():
        return "won"
    if "lost" in key.split():
        return "lost"
    if is_stage_column:
        return "open"  # a pipeline stage that is neither won nor lost is a deal still in progress
    raise InvalidRecord(field_name, value, "is not an order status this tool knows (paid, refunded, pending, failed, won, lost…)")


_SCALE_IN_HEADER = re.compile(r"(\d{1,2})\s*(?:-|–|to)\s*(\d{1,2})|out of (\d{1,2})")
_NPS_HEADER = re.compile(r"recommend|\bnps\b|net promoter", re.IGNORECASE)


@dataclass
class ColumnStats:
    """What pass one learned about an answer column, to type it."""

    filled: int = 0
    integers: int = 0
    low: int | None = None
    high: int | None = None
    distinct: set[str] = field(default_factory=set)  # up to 51 values: enough to tell a choice from text
    longest: int = 0

    def add(self, cell: str) -> None:
        if not cell:
            return
        self.filled += 1
        self.longest = max(self.longest, len(cell))
        if len(self.distinct) <= 50:
            self.distinct.add(cell)
        if re.fullmatch(r"-?\d{1,3}", cell):
            number = int(cell)
            self.integers += 1
            self.low = number if self.low is None else min(self.low, number)
            self.high = number if self.high is None else max(self.high, number)


@dataclass(frozen=True)
class AnswerType:
    kind: str  # nps, rating, choice, text
    scale: tuple[int, int] | None = None
    inferred_from: str = ""  # for the import summary: why we typed it so


def type_answer_column(header: str, stats: ColumnStats, override: str | None) -> AnswerType:
    if override:
        if override.startswith("rating:"):
            low, high = override.removeprefix("rating:").split("-")
            return AnswerType("rating", (int(low), int(high)), "--map")
        return AnswerType(override, (0, 10) if override == "nps" else None, "--map")
    all_integers = stats.filled > 0 and stats.integers == stats.filled
    if all_integers and _NPS_HEADER.search(header) and stats.low >= 0 and stats.high <= 10:
        return AnswerType("nps", (0, 10), "header")
    if all_integers and stats.low >= 0 and stats.high <= 10:
        found = _SCALE_IN_HEADER.search(header)
        if found:
            low, high = (int(found.group(1)), int(found.group(2))) if found.group(1) else (1, int(found.group(3)))
            if low <= stats.low and stats.high <= high:
                return AnswerType("rating", (low, high), "header")
        high = next(size for size in (5, 7, 10) if stats.high <= size)
        return AnswerType("rating", (0 if stats.low == 0 else 1, high), "values")
    distinct = len(stats.distinct)
    if distinct == 1 and header.endswith(f" - {next(iter(stats.distinct))}"):
        return AnswerType("choice", None, "header")  # a multiple-choice column holding its own label when ticked
    if distinct and distinct <= 12 and stats.filled >= 2 * distinct and stats.longest <= 60:
        return AnswerType("choice", None, "values")
    return AnswerType("text", None, "values")


def parse_answer_value(cell: str, answer_type: AnswerType, field_name: str) -> int | str:
    if answer_type.kind in ("nps", "rating"):
        try:
            return int(cell.strip())
        except ValueError:
            raise InvalidRecord(field_name, cell, f"is not a whole number for a {answer_type.kind} question") from None
    return cell


def merge_surveymonkey_headers(top: list[str], sub: list[str]) -> list[str]:
    """SurveyMonkey exports two header rows: questions on the first (blank where a question spans several
    columns), then 'Response', 'Open-Ended Response' or the choice/row label under each column."""
    merged, question = [], ""
    for index, label in enumerate(top):
        question = label.strip() or question
        detail = sub[index].strip() if index < len(sub) else ""
        merged.append(question if detail in ("", "Response", "Open-Ended Response") else f"{question} - {detail}")
    return merged
