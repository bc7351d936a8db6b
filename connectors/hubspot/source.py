"""The HubSpot Source: contacts, companies and deals (as orders) read incrementally through the search API, and
marketing email events (opens, clicks, bounces, unsubscribes) through the event analytics API.

Paging, limits and the 10,000-result cap live in client.py; this module owns the streams, the cursor rule
(min(run start, max seen) minus the look-back) and the archived-object tombstones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from connectors.base import InvalidRecord, Page, Stream
from connectors.hubspot import mapping
from connectors.hubspot.client import SOURCE, HubSpotClient, Unavailable

log = logging.getLogger(__name__)


def _time_or_none(value: Any) -> datetime | None:
    """An event's time for the cursor; an unreadable one counts as none here (its mapping quarantines the event)."""
    try:
        return mapping.parse_time(value)
    except InvalidRecord:
        return None


class HubSpotSource:
    """Contacts, companies, deals (as orders) and email events, read incrementally; archived objects come back as tombstones."""

    name = SOURCE

    def __init__(self, client: HubSpotClient, *, written: Sequence[str] = ()) -> None:
        """``written``: the contact properties we write (our scores), read with each contact so the write path
        sees what HubSpot holds in them (a store restored from an older copy, or a user's edit, may disagree)."""
        self.client = client
        self.written = tuple(written)
        self.lookback = timedelta(minutes=client.settings.lookback_minutes)
        # Contact id → email of the contacts this run has read: a deal's customer is looked up here first, so a
        # full read costs no batch read per page of deals (only contacts not read this run are fetched).
        self._emails: dict[str, str | None] = {}

    def streams(self) -> Sequence[Stream]:
        return [
            Stream("contacts", "contact", lambda cursor: self._read("contacts", cursor)),
            Stream("companies", "company", lambda cursor: self._read("companies", cursor)),
            Stream("deals", "order", self._read_deals),
            Stream("email_events", "email_event", self._read_email_events),
            Stream("contacts_archived", "contact", lambda cursor: self._read_archived("contacts")),
            Stream("companies_archived", "company", lambda cursor: self._read_archived("companies")),
            Stream("deals_archived", "order", lambda cursor: self._read_archived("deals")),
        ]

    def _read(self, object_type: str, cursor: str | None) -> Iterator[Page]:
        run_start = self.client.clock.now()
        low = mapping.parse_time(cursor) if cursor else datetime.fromtimestamp(0, run_start.tzinfo)
        max_seen = None
        seen: set[str] = set()
        build = self._builder(object_type)
        properties = {"contacts": (*mapping.CONTACT_PROPERTIES, *self.written), "companies": mapping.COMPANY_PROPERTIES,
                      "deals": mapping.DEAL_PROPERTIES}[object_type]
        for raws in self.client.modified_between(object_type, properties, mapping.to_ms(low), mapping.to_ms(run_start)):
            # An object edited mid-run may show up in two windows. One without an id is kept: its mapping quarantines it.
            fresh = [r for r in raws if r.get("id") is None or r["id"] not in seen]
            seen.update(r["id"] for r in fresh if r.get("id") is not None)
            for raw in fresh:
                stamp = mapping.modified_at(raw, object_type)
                if stamp is not None and (max_seen is None or stamp > max_seen):
                    max_seen = stamp
            records, rejected = build(fresh)
            yield Page(records, None, rejected)
        run_start = self.client.vendor_time.at(run_start)  # a mark from our clock must not run ahead of HubSpot's
        # Search indexes lag behind writes, and objects may be edited while we page: re-read a look-back window.
        upto = min(run_start, max_seen) if max_seen is not None else max(low, run_start - self.lookback)
        cursor_after = max(upto - self.lookback, low) if max_seen is not None else upto
        if max_seen is not None and self.lookback and max_seen < run_start - 2 * self.lookback:
            # The latest change is long indexed: do not re-read the window before it on every run (after a large
            # write of ours, that window would hold thousands of our own writes, read again each time).
            cursor_after = max(cursor_after, run_start - 2 * self.lookback)
        yield Page([], cursor_after.isoformat(timespec="milliseconds"))

    def _read_email_events(self, cursor: str | None) -> Iterator[Page]:
        """Marketing email events of every contact, by event type (no per-contact calls), since the cursor."""
        run_start = self.client.clock.now()
        low = mapping.parse_time(cursor) if cursor else datetime.fromtimestamp(0, run_start.tzinfo)
        try:
            listed = set(self.client.event_types())
            wanted = [t for t in mapping.EMAIL_EVENT_TYPES if t in listed]
            max_seen = None
            # occurredAfter is exclusive: start a millisecond early so events at the cursor's own millisecond come again.
            after = mapping.iso_ms(low - timedelta(milliseconds=1)) if cursor else mapping.iso_ms(low)
            for event_type in wanted:
                for raws in self.client.events(event_type, after, mapping.iso_ms(run_start)):
                    for raw in raws:
                        stamp = _time_or_none(raw.get("occurredAt"))
                        if stamp is not None and (max_seen is None or stamp > max_seen):
                            max_seen = stamp
                    contact_ids = sorted({str(r["objectId"]) for r in raws})
                    emails = {c["id"]: (c.get("properties") or {}).get("email")
                              for c in self.client.batch_read("contacts", contact_ids, ("email",))} if contact_ids else {}
                    records, rejected = mapping.map_all(raws, "email_events",
                                                        lambda raw, emails=emails: mapping.map_email_event(raw, emails.get(str(raw["objectId"]))))
                    yield Page(records, None, rejected)
        except Unavailable as exc:
            log.info("HubSpot marketing email events are not read: this account has no event analytics API (%s); it needs "
                     "an Enterprise hub and the analytics scope on the private app", exc)
            return
        run_start = self.client.vendor_time.at(run_start)
        # Events can be recorded late: re-read a look-back window, as the search streams do.
        upto = min(run_start, max_seen) if max_seen is not None else max(low, run_start - self.lookback)
        cursor_after = max(upto - self.lookback, low) if max_seen is not None else upto
        yield Page([], cursor_after.isoformat(timespec="milliseconds"))

    def _builder(self, object_type: str) -> Callable[[list[dict[str, Any]]], tuple[list[Any], list[Any]]]:
        if object_type == "contacts":
            def contacts(raws: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
                self._emails.update({r["id"]: (r.get("properties") or {}).get("email") for r in raws if r.get("id")})
                return mapping.map_all(raws, "contacts", lambda raw: mapping.map_contact(raw, self.written))

            return contacts
        if object_type == "companies":
            return lambda raws: mapping.map_all(raws, "companies", mapping.map_company)
        statuses = mapping.stage_statuses(self.client.pipelines("deals"))
        return lambda raws: self._deals(raws, statuses)

    def _read_deals(self, cursor: str | None) -> Iterator[Page]:
        yield from self._read("deals", cursor)
        self._emails = {}  # the deals have their customers' emails: 17 MB at 100,000 contacts, not kept past reading

    def _deals(self, raws: list[dict[str, Any]], statuses: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        owners = self.client.deal_contacts([r["id"] for r in raws if r.get("id")]) if raws else {}
        unknown = sorted(set(owners.values()) - set(self._emails))
        if unknown:
            self._emails.update({c["id"]: (c.get("properties") or {}).get("email") for c in self.client.batch_read("contacts", unknown, ("email",))})
        emails = self._emails
        return mapping.map_all(raws, "deals", lambda raw: mapping.map_deal(raw, statuses, owners.get(raw["id"]), emails.get(owners.get(raw["id"], ""))))

    def _read_archived(self, object_type: str) -> Iterator[Page]:
        """HubSpot search never returns archived objects and archiving leaves the modified date alone: list them."""
        # Only the ids matter: the store tombstones what it holds under them (kept for history and the ledger,
        # no longer scored or written to); an object archived before we ever saw it leaves no trace.
        for raws in self.client.list_archived(object_type, ("hs_object_id",)):
            yield Page([], None, deleted=[str(raw["id"]) for raw in raws if raw.get("id")])
