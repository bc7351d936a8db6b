"""MailchimpSource: members, email activity and e-commerce orders of the allow-listed audiences only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from connectors.base import InvalidRecord, Page, Rejected, Stream
from connectors.mailchimp import mapping
from connectors.mailchimp.client import PAGE_SIZE, MailchimpClient

# The member fields we read: everything the Contact needs, nothing more (smaller pages, faster reads).
MEMBER_FIELDS = (
    ",".join(
        f"members.{name}"
        for name in (
            "id",
            "email_address",
            "status",
            "merge_fields",
            "member_rating",
            "stats",
            "last_changed",
            "timestamp_opt",
            "timestamp_signup",
            "tags",
        )
    )
    + ",total_items"
)


class MailchimpSource:
    name = "mailchimp"

    def __init__(self, client: MailchimpClient) -> None:
        self.client = client
        self.settings = client.settings
        self.lookback = timedelta(minutes=self.settings.lookback_minutes)

    def streams(self) -> Sequence[Stream]:
        return (
            Stream("members", "contact", self.read_members),
            Stream("email_activity", "email_event", self.read_activity),
            Stream("orders", "order", self.read_orders),
        )

    def _since(self, saved: str | None) -> str | None:
        """The saved high-water mark minus the look-back: late writes with an earlier timestamp are not missed."""
        return (datetime.fromisoformat(saved) - self.lookback).isoformat() if saved else None

    # --- members --------------------------------------------------------------------------------------------------

    def read_members(self, cursor: str | None) -> Iterator[Page]:
        marks: dict[str, str] = json.loads(cursor) if cursor else {}
        for list_id in self.settings.audiences:
            read_start = self._clock_now()
            since = self._since(marks.get(list_id))
            newest = marks.get(list_id)
            for members in self._member_pages(list_id, since):
                contacts, rejected = mapping.map_members(members, list_id)
                for contact in contacts:
                    if contact.updated_at and (newest is None or contact.updated_at.isoformat() > newest):
                        newest = contact.updated_at.isoformat()
                yield Page(contacts, None, rejected)
            read_start = self.client.vendor_time.at(read_start)  # a mark from our clock must not run ahead of theirs
            if newest is not None and self.lookback and datetime.fromisoformat(newest) < read_start - self.lookback:
                # Every change up to a look-back window before this read has been seen. Keeping the newest change
                # seen as the mark would re-read the window before it on every run: after a large write of ours
                # (tags on a whole audience), that window holds every member, read again each time.
                newest = (read_start - self.lookback).isoformat()
            if newest is not None:
                marks[list_id] = newest
            yield Page((), json.dumps(marks, sort_keys=True))

    def _clock_now(self) -> datetime:
        now = getattr(self.client.clock, "now", None)
        return now() if now is not None else datetime.now(timezone.utc)

    def _member_pages(self, list_id: str, since: str | None) -> Iterator[list[dict[str, Any]]]:
        def fetch(offset: int) -> dict[str, Any]:
            options: dict[str, Any] = {
                "count": PAGE_SIZE,
                "offset": offset,
                "fields": [MEMBER_FIELDS],
            }
            if since:
                options["since_last_changed"] = since
            return self.client.call(
                f"reading members of audience {list_id}",
                self.client.sdk.lists.get_list_members_info,
                list_id,
                expect=mapping.expect_page("members"),
                **options,
            )

        first = fetch(0)
        yield first.get("members", [])
        total = int(first.get("total_items", 0))
        for page in self.client.map(fetch, range(PAGE_SIZE, total, PAGE_SIZE)):
            yield page.get("members", [])

    # --- email activity -------------------------------------------------------------------------------------------

    def read_activity(self, cursor: str | None) -> Iterator[Page]:
        since = self._since(cursor)
        newest = cursor
        for list_id in self.settings.audiences:
            for campaign in self._paged(
                "campaigns",
                self.client.sdk.campaigns.list,
                "reading campaigns",
                status="sent",
                list_id=list_id,
                **({"since_send_time": since} if since else {}),
            ):
                campaign_id = campaign["id"]
                yield self._activity_page(campaign_id)
                if campaign.get("send_time") and (newest is None or campaign["send_time"] > newest):
                    newest = mapping.parse_time(campaign["send_time"], "send_time").isoformat()
        yield Page((), newest)

    def _activity_page(self, campaign_id: str) -> Page:
        events, rejected = [], []
        for row in self._paged(
            "emails",
            self.client.sdk.reports.get_email_activity_for_campaign,
            f"reading email activity of campaign {campaign_id}",
            campaign_id,
        ):
            try:
                events.extend(mapping.activity_to_events(row, campaign_id))
            except InvalidRecord as exc:
                rejected.append(
                    Rejected(
                        f"mailchimp campaign {campaign_id} activity {row.get('email_id')}",
                        str(exc),
                        dict(row),
                    )
                )
        for row in self._paged(
            "unsubscribes",
            self.client.sdk.reports.get_unsubscribed_list_for_campaign,
            f"reading unsubscribes of campaign {campaign_id}",
            campaign_id,
        ):
            try:
                events.append(mapping.unsubscribe_to_event(row, campaign_id))
            except InvalidRecord as exc:
                rejected.append(
                    Rejected(
                        f"mailchimp campaign {campaign_id} unsubscribe {row.get('email_id')}",
                        str(exc),
                        dict(row),
                    )
                )
        return Page(events, None, rejected)

    # --- e-commerce -------------------------------------------------------------------------------------------------

    def read_orders(self, cursor: str | None) -> Iterator[Page]:
        # The orders endpoint has no "changed since" filter: every run reads them all; the store keeps what changed.
        ecommerce = self.client.sdk.ecommerce
        for store in self._paged("stores", ecommerce.stores, "reading e-commerce stores"):
            if store.get("list_id") not in self.settings.audiences:
                continue  # a store tied to an audience outside the allow-list is not ours to read
            orders, rejected = [], []
            for row in self._paged(
                "orders",
                ecommerce.get_store_orders,
                f"reading orders of store {store['id']}",
                store["id"],
            ):
                try:
                    orders.append(mapping.order_to_record(row, store["id"]))
                except (InvalidRecord, KeyError, ArithmeticError) as exc:
                    rejected.append(
                        Rejected(
                            f"mailchimp store {store['id']} order {row.get('id')}",
                            str(exc),
                            dict(row),
                        )
                    )
                if len(orders) >= PAGE_SIZE:
                    yield Page(orders, None, rejected)
                    orders, rejected = [], []
            yield Page(orders, None, rejected)

    def _paged(self, key: str, method: Any, what: str, *args: Any, **options: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            body = self.client.call(what, method, *args, count=PAGE_SIZE, offset=offset, expect=mapping.expect_page(key), **options)
            rows = body.get(key, [])
            yield from rows
            offset += len(rows)
            if not rows or offset >= int(body.get("total_items", 0)):
                return
