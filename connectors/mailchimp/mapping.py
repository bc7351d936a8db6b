"""Pure functions between Mailchimp JSON and canonical records, and from Score records to desired writes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from connectors.base import InvalidRecord, Rejected
from scoring.sentiment_bands import sentiment_label
from connectors.records import (
    Contact,
    EmailAddress,
    EmailEvent,
    Order,
    OrderStatus,
    Score,
)
from connectors.retry import MalformedAnswer

SOURCE = "mailchimp"
# Statuses whose holders do not want (or cannot get) email; pending and transactional are not opted out, and an
# archived member was removed by the marketer, not by their own choice.
OPTED_OUT = frozenset({"unsubscribed", "cleaned"})
ORDER_STATUS = {
    "paid": OrderStatus.WON,
    "refunded": OrderStatus.REFUNDED,
    "partially_refunded": OrderStatus.WON,
    "cancelled": OrderStatus.LOST,
    "pending": OrderStatus.OPEN,
}
# Destination fields: three tag families (value = the full tag, prefix included) and three merge fields.
TAG_FAMILIES = {
    "churn_tag": "churn",
    "segment_tag": "segment",
    "sentiment_tag": "sentiment",
}
MERGE_FIELDS = {
    "CHURNRISK": ("Churn risk (%)", "number"),
    "SEGMENT": ("Customer segment", "text"),
    "CLV": ("Customer lifetime value", "number"),
}
# Canonical contact fields ↔ the audience's merge fields kept the same as in the other tools. FNAME, LNAME and
# PHONE are on every new Mailchimp audience; COMPANY is created when first needed.
CONTACT_MERGE_FIELDS = {"first_name": "FNAME", "last_name": "LNAME", "phone": "PHONE", "company_name": "COMPANY"}
CONTACT_MERGE_SPECS = {
    "FNAME": ("First Name", "text"),
    "LNAME": ("Last Name", "text"),
    "PHONE": ("Phone Number", "phone"),
    "COMPANY": ("Company", "text"),
}
WRITABLE_MERGE_FIELDS = {**MERGE_FIELDS, **CONTACT_MERGE_SPECS}


def subscriber_hash(email: str) -> str:
    """Mailchimp: members are addressed by the MD5 hex digest of the lower-cased email."""
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


def parse_time(value: Any, field_name: str) -> datetime | None:
    """Mailchimp times are ISO 8601 with an offset; an empty string means "never"."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidRecord(field_name, value, "is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Mailchimp documents every API time as UTC
    return moment.astimezone(UTC)


def member_to_contact(member: Mapping[str, Any], list_id: str) -> Contact:
    merge = member.get("merge_fields") or {}
    stats = member.get("stats") or {}
    status = str(member.get("status", ""))
    properties = {
        "mailchimp_status": status,
        "mailchimp_list_id": list_id,
        "member_rating": str(member.get("member_rating", "")),
        "avg_open_rate": str(stats.get("avg_open_rate", "")),
        "avg_click_rate": str(stats.get("avg_click_rate", "")),
        "tags": ",".join(sorted(t["name"] for t in member.get("tags") or [])),
        "timestamp_opt": str(member.get("timestamp_opt") or ""),
    }
    properties.update(
        {f"merge_{tag}": str(value) for tag, value in merge.items() if tag not in CONTACT_MERGE_SPECS and value != ""}
    )
    return Contact(
        source=SOURCE,
        source_id=f"{list_id}/{member['id']}",  # one person on two audiences is two members
        email=EmailAddress.parse(str(member.get("email_address", "")), "email_address"),
        first_name=_text(merge.get("FNAME")),
        last_name=_text(merge.get("LNAME")),
        phone=_text(merge.get("PHONE")),
        company_name=_text(merge.get("COMPANY")),
        is_unsubscribed=status in OPTED_OUT,
        created_at=parse_time(
            member.get("timestamp_signup") or member.get("timestamp_opt"),
            "timestamp_signup",
        ),
        updated_at=parse_time(member.get("last_changed"), "last_changed"),
        properties=properties,
    )


def _text(value: Any) -> str | None:
    """A text merge field: Mailchimp sends "" for empty; an address field (a dict) is not a name or a phone."""
    return str(value).strip() or None if isinstance(value, (str, int, float)) and value != "" else None


def map_members(members: Iterable[Mapping[str, Any]], list_id: str) -> tuple[list[Contact], list[Rejected]]:
    contacts, rejected = [], []
    for member in members:
        try:
            contacts.append(member_to_contact(member, list_id))
        except InvalidRecord as exc:
            rejected.append(
                Rejected(
                    f"mailchimp audience {list_id} member {member.get('id')}",
                    str(exc),
                    dict(member),
                )
            )
    return contacts, rejected


def _event_id(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def activity_to_events(row: Mapping[str, Any], campaign_id: str) -> list[EmailEvent]:
    """One email-activity row (an address and its actions in one campaign) → open/click/bounce events."""
    email = EmailAddress.parse(str(row.get("email_address", "")), "email_address")
    events = []
    for action in row.get("activity") or []:
        kind = {"open": "open", "click": "click", "bounce": "bounce"}.get(action.get("action"))
        occurred_at = parse_time(action.get("timestamp"), "timestamp")
        if kind is None or occurred_at is None:
            continue  # Mailchimp documents only these three actions here
        events.append(
            EmailEvent(
                source=SOURCE,
                source_id=_event_id(
                    campaign_id,
                    email.normalised,
                    kind,
                    action["timestamp"],
                    action.get("url") or "",
                ),
                email=email,
                event=kind,
                occurred_at=occurred_at,
                campaign_id=campaign_id,
                url=action.get("url") or None,
            )
        )
    return events


def unsubscribe_to_event(row: Mapping[str, Any], campaign_id: str) -> EmailEvent:
    email = EmailAddress.parse(str(row.get("email_address", "")), "email_address")
    occurred_at = parse_time(row.get("timestamp"), "timestamp")
    if occurred_at is None:
        raise InvalidRecord("timestamp", row.get("timestamp"), "is missing")
    return EmailEvent(
        source=SOURCE,
        source_id=_event_id(campaign_id, email.normalised, "unsubscribe", row["timestamp"]),
        email=email,
        event="unsubscribe",
        occurred_at=occurred_at,
        campaign_id=campaign_id,
    )


def order_to_record(row: Mapping[str, Any], store_id: str) -> Order:
    customer = row.get("customer") or {}
    created_at = parse_time(
        row.get("processed_at_foreign") or row.get("updated_at_foreign"),
        "processed_at_foreign",
    )
    return Order(
        source=SOURCE,
        source_id=f"{store_id}/{row['id']}",
        amount=Decimal(str(row.get("order_total"))),
        currency=str(row.get("currency_code", "")),
        status=ORDER_STATUS.get(str(row.get("financial_status") or "paid"), OrderStatus.WON),
        created_at=created_at,
        customer_email=EmailAddress.parse(customer["email_address"], "customer.email_address")
        if customer.get("email_address")
        else None,
        customer_source_id=str(customer.get("id") or "") or None,
        properties={
            "store_id": store_id,
            "financial_status": str(row.get("financial_status") or ""),
        },
    )


# --- write side -------------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """ "Can't lose them" → "cant-lose-them": tag names a marketer can type and read."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("'", "")).strip("-")


def desired_from_scores(
    scores: Iterable[Score],
    *,
    tag_prefix: str = "rs:",
    email_for: Mapping[str, str] | None = None,
    include_merge_fields: bool = True,
) -> dict[str, dict[str, str | None]]:
    """Score records → {email: {field: value}} for MailchimpDestination.

    ``email_for`` maps a score's customer key to an email; without it the key itself must be an email.
    Scores whose customer has no email are left out (Mailchimp addresses members by email only).
    """
    return {email: _score_fields(score, tag_prefix, include_merge_fields)
            for email, score in _scores_by_email(scores, email_for).items()}


def _scores_by_email(scores: Iterable[Score], email_for: Mapping[str, str] | None = None) -> dict[str, Score]:
    found: dict[str, Score] = {}
    for score in scores:
        email = (email_for or {}).get(score.source_id, score.source_id)
        if "@" in email:
            found[email.strip().lower()] = score
    return found


def _score_fields(score: Score, tag_prefix: str, include_merge_fields: bool = True) -> dict[str, str | None]:
    # Every family named, None where there is no such score: a tag of ours left there is then removed.
    fields: dict[str, str | None] = {
        "churn_tag": f"{tag_prefix}churn-{score.risk_band.value}",
        "segment_tag": f"{tag_prefix}segment-{slug(score.segment)}" if score.segment else None,
        "sentiment_tag": None if score.sentiment is None else f"{tag_prefix}sentiment-{sentiment_label(score.sentiment)}",
    }
    if include_merge_fields:
        fields["CHURNRISK"] = str(round(score.churn_probability * 100))
        fields["SEGMENT"] = score.segment
        fields["CLV"] = str(score.clv) if score.clv is not None else None
    return fields


def desired_for_audience(
    scores: Iterable[Score], contacts: Iterable[Contact], list_id: str, tag_prefix: str, add_new_contacts: bool,
    linked: Mapping[str, Mapping[str, str]] | None = None, opted_out: Mapping[str, tuple[str, ...]] | None = None,
) -> Iterator[tuple[str, dict[str, str | None]]]:
    """The writes one audience should hold, (email, {field: value}) one member at a time (a write run never holds
    the whole audience's): its current members' scores and the contact fields they hold differently from what was
    decided across tools (archived members are never touched). With ``add_new_contacts``, also people known
    elsewhere who are not on it yet (the destination adds them as new, with ``status_if_new``), except anyone who
    opted out of email in any tool."""
    linked, opted_out = linked or {}, opted_out or {}
    on_audience = {contact.email.normalised: contact for contact in contacts
                   if contact.source_id.startswith(f"{list_id}/") and contact.email is not None}
    members = {email: contact for email, contact in on_audience.items()
               if contact.properties.get("mailchimp_status") != "archived"}

    def writable(email: str) -> bool:
        return email in members or (add_new_contacts and email not in on_audience and email not in opted_out)

    def contact_fields(email: str, decided: Mapping[str, str]) -> dict[str, str | None]:
        member = members.get(email)
        if member is None:  # someone new to the audience: everything decided, if they may be added at all
            return {CONTACT_MERGE_FIELDS[name]: value for name, value in decided.items()
                    if name in CONTACT_MERGE_FIELDS} if add_new_contacts and email not in on_audience else {}
        return {CONTACT_MERGE_FIELDS[name]: value for name, value in decided.items()
                if name in CONTACT_MERGE_FIELDS and value != (getattr(member, name) or "").strip()}

    scored = _scores_by_email(scores)
    for email, score in scored.items():
        if writable(email):
            yield email, {**_score_fields(score, tag_prefix), **contact_fields(email, linked.get(email, {}))}
    for email, decided in linked.items():
        if email not in scored and writable(email) and (fields := contact_fields(email, decided)):
            yield email, fields


# --- answers that are not what the API documents (MalformedAnswer: retried by the client, never stored) ---------


def expect_page(key: str) -> Callable[[Any], None]:
    """A collection page: ``key`` holds a list of objects and ``total_items`` a count. Without the count a reader
    would stop after the first page and move its cursor past members it never read."""

    def check(answer: Any) -> None:
        rows = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise MalformedAnswer(f"'{key}' is missing, null or not a list of objects")
        if not isinstance(answer.get("total_items"), int):
            raise MalformedAnswer("'total_items' is missing, so the pages left cannot be known")

    return check
