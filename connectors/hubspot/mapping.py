"""Pure functions between HubSpot's JSON and canonical records. No I/O: tested with payloads from the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from connectors.base import InvalidRecord, Rejected
from connectors.records import (
    Company,
    Contact,
    EmailAddress,
    EmailEvent,
    EmailEventKind,
    Order,
    OrderStatus,
    Record,
)
from connectors.retry import MalformedAnswer

SOURCE = "hubspot"
CONTACT_PROPERTIES = ("email", "firstname", "lastname", "phone", "company", "lifecyclestage", "hs_additional_emails",
                      "hs_email_optout", "hs_merged_object_ids", "createdate", "lastmodifieddate")
COMPANY_PROPERTIES = ("name", "domain", "createdate", "hs_lastmodifieddate")
DEAL_PROPERTIES = ("dealname", "amount", "dealstage", "pipeline", "closedate", "deal_currency_code", "createdate", "hs_lastmodifieddate")
MODIFIED_PROPERTY = {"contacts": "lastmodifieddate", "companies": "hs_lastmodifieddate", "deals": "hs_lastmodifieddate"}
# HubSpot's standard marketing email event types (event analytics API, /events/v3/events) → our kinds. The spec
# does not enumerate the names; the source reads only those the account's /events/v3/events/event-types lists.
EMAIL_EVENT_TYPES = {"e_marketing_email_opened": EmailEventKind.OPEN, "e_marketing_email_clicked": EmailEventKind.CLICK,
                     "e_marketing_email_bounced": EmailEventKind.BOUNCE,
                     "e_marketing_email_unsubscribed": EmailEventKind.UNSUBSCRIBE}
EVENT_CAMPAIGN_PROPERTY = "hs_email_campaign_id"
EVENT_URL_PROPERTY = "hs_url"
DEFAULT_CURRENCY = "USD"  # HubSpot: a deal without deal_currency_code is in the account's company currency


def parse_time(value: str | None, field_name: str = "date-time") -> datetime | None:
    """HubSpot date-times are ISO 8601 in UTC ("2024-05-01T10:00:00.123Z"); some properties hold epoch ms.
    Anything else is InvalidRecord naming ``field_name``, so the one object is quarantined, not the run ended."""
    if value in (None, ""):
        return None
    text = str(value)
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRecord(field_name, value, "is not an ISO 8601 date-time or epoch milliseconds") from None


def modified_at(raw: Mapping[str, Any], object_type: str) -> datetime | None:
    """When a search result was last modified, or None when HubSpot sent no usable date (that object is then
    quarantined by its mapping; paging and cursors go by the others)."""
    try:
        return parse_time((raw.get("properties") or {}).get(MODIFIED_PROPERTY[object_type]))
    except InvalidRecord:
        return None


def object_id(raw: Mapping[str, Any]) -> str:
    """The object's id; an object without one cannot be stored or written back to."""
    value = raw.get("id")
    if value in (None, ""):
        raise InvalidRecord("id", value, "is missing; HubSpot sent an object without its id")
    return str(value)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso_ms(moment: datetime) -> str:
    """HubSpot's date-time form for query parameters: ISO 8601 in UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(";") if part.strip()]


def map_contact(raw: Mapping[str, Any], written: Sequence[str] = ()) -> Contact:
    """A contact; ``written`` names the properties we write (our scores), kept in ``properties`` as HubSpot held
    them ("" for empty) when the answer carried them, so the write path can tell what HubSpot holds there."""
    props = raw.get("properties") or {}
    email = EmailAddress.parse(props["email"]) if props.get("email") else None
    additional = []
    for typed in _split(props.get("hs_additional_emails")):
        try:
            additional.append(EmailAddress.parse(typed, "hs_additional_emails"))
        except InvalidRecord:
            continue  # a bad secondary address must not cost us the person; the primary one still matches
    optout = props.get("hs_email_optout")
    return Contact(
        source=SOURCE, source_id=object_id(raw), email=email, additional_emails=tuple(additional),
        first_name=props.get("firstname") or None, last_name=props.get("lastname") or None, phone=props.get("phone") or None,
        company_name=props.get("company") or None, lifecycle_stage=props.get("lifecyclestage") or None,
        is_unsubscribed=None if optout in (None, "") else optout == "true",
        created_at=parse_time(props.get("createdate") or raw.get("createdAt"), "createdate"),
        updated_at=parse_time(props.get("lastmodifieddate") or raw.get("updatedAt"), "lastmodifieddate"),
        merged_ids=tuple(_split(props.get("hs_merged_object_ids"))),
        # HubSpot leaves out a requested property the account does not have (ours, before our first write).
        properties={name: str(props[name] or "") for name in written if name in props},
    )


def map_company(raw: Mapping[str, Any]) -> Company:
    props = raw.get("properties") or {}
    return Company(
        source=SOURCE, source_id=object_id(raw), name=props.get("name") or None, domain=props.get("domain") or None,
        created_at=parse_time(props.get("createdate") or raw.get("createdAt"), "createdate"),
        updated_at=parse_time(props.get("hs_lastmodifieddate") or raw.get("updatedAt"), "hs_lastmodifieddate"),
    )


def stage_statuses(pipelines: Mapping[str, Any]) -> dict[str, OrderStatus]:
    """Deal stage id → won / lost / open, from each stage's metadata (isClosed, probability)."""
    statuses = {}
    for pipeline in pipelines.get("results", []):
        for stage in pipeline.get("stages", []):
            meta = stage.get("metadata") or {}
            closed = str(meta.get("isClosed", "false")).lower() == "true"
            try:
                probability = float(meta.get("probability", 0) or 0)
            except ValueError:
                probability = 0.0
            statuses[stage["id"]] = (OrderStatus.WON if probability >= 1.0 else OrderStatus.LOST) if closed else OrderStatus.OPEN
    return statuses


def map_deal(raw: Mapping[str, Any], statuses: Mapping[str, OrderStatus], contact_id: str | None, contact_email: str | None) -> Order:
    props = raw.get("properties") or {}
    if not contact_id:
        raise InvalidRecord("associations.contacts", None, "is empty; a deal needs an associated contact to become an order")
    stage = props.get("dealstage")
    if stage not in statuses:
        raise InvalidRecord("dealstage", stage, "is not a stage of any deal pipeline")
    status = statuses[stage]
    return Order(
        source=SOURCE, source_id=object_id(raw), amount=props.get("amount") or "0",
        currency=props.get("deal_currency_code") or DEFAULT_CURRENCY, status=status,
        created_at=parse_time(props.get("createdate") or raw.get("createdAt"), "createdate"),
        closed_at=parse_time(props.get("closedate"), "closedate") if status is not OrderStatus.OPEN else None,
        customer_email=EmailAddress.parse(contact_email, "contact email") if contact_email else None,
        customer_source_id=contact_id, title=props.get("dealname") or None,
    )


def map_email_event(raw: Mapping[str, Any], contact_email: str | None) -> EmailEvent:
    """One event analytics event of a marketing email type, with its contact's primary email."""
    if not contact_email:
        raise InvalidRecord("objectId", raw.get("objectId"), "names no contact with an email address (deleted or merged away?)")
    props = raw.get("properties") or {}
    kind = EMAIL_EVENT_TYPES.get(str(raw.get("eventType")))
    if kind is None:
        raise InvalidRecord("eventType", raw.get("eventType"), "is not a marketing email event type")
    return EmailEvent(
        source=SOURCE, source_id=object_id(raw), email=EmailAddress.parse(contact_email, "contact email"), event=kind,
        occurred_at=parse_time(raw.get("occurredAt"), "occurredAt"), campaign_id=props.get(EVENT_CAMPAIGN_PROPERTY) or None,
        url=props.get(EVENT_URL_PROPERTY) or None,
    )


# --- answers that are not what the API documents (MalformedAnswer: retried by the client, never stored) ---------


def expect_results(reply: dict[str, Any]) -> None:
    """A list or batch answer: ``results`` is a list of objects, each with its properties as an object. (Null
    properties stored as they came would blank the contact in the store, and then in every other tool.)"""
    results = reply.get("results")
    if not isinstance(results, list) or not all(isinstance(result, dict) for result in results):
        raise MalformedAnswer(f"'results' is {type(results).__name__ if results is not None else 'missing or null'}, not a list of objects")
    blank = sum(not isinstance(result.get("properties", {}), dict) for result in results)
    if blank:
        raise MalformedAnswer(f"{blank:,} of {len(results):,} results have null properties")


def expect_search_page(reply: dict[str, Any], after: int, cap: int) -> None:
    """A search page: results, and paging to the next page whenever ``total`` says more remain (HubSpot always
    sends both). Without this check an answer that lost its paging would end the read early, and the cursor would
    move past objects never read."""
    expect_results(reply)
    total = reply.get("total")
    if not isinstance(total, int):
        raise MalformedAnswer("'total' is missing from a search answer")
    has_next = bool(((reply.get("paging") or {}).get("next") or {}).get("after"))
    if not has_next and after + len(reply["results"]) < min(total, cap):
        raise MalformedAnswer(f"no paging after {after + len(reply['results']):,} of {total:,} results")


def map_all(raws: list[Mapping[str, Any]], object_type: str, build: Callable[[Mapping[str, Any]], Record]) -> tuple[list[Record], list[Rejected]]:
    """Map a page; a record that fails validation becomes a Rejected naming the HubSpot object, the rest go on."""
    records, rejected = [], []
    for raw in raws:
        try:
            records.append(build(raw))
        except InvalidRecord as exc:
            rejected.append(Rejected(record_ref=f"hubspot {object_type[:-1]} {raw.get('id')}", reason=str(exc), raw=dict(raw)))
    return records, rejected
