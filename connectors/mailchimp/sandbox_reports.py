"""Mailchimp sandbox routes for campaigns, campaign reports and e-commerce, mixed into MailchimpSandbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors.mailchimp.mapping import subscriber_hash
from connectors.sandbox import Request, Response


class ReportAndShopRoutes:
    """Handlers only; state, errors and paging come from MailchimpSandbox."""

    # --- campaigns, reports, e-commerce ---------------------------------------------------------------------------

    def _get_campaigns(self, request: Request) -> Response:
        campaigns = list(self.campaigns.values())
        if request.arg("status"):
            campaigns = [c for c in campaigns if c["status"] == request.arg("status")]
        if request.arg("list_id"):
            campaigns = [c for c in campaigns if c["recipients"]["list_id"] == request.arg("list_id")]
        since = request.arg("since_send_time")
        if since:
            threshold = datetime.fromisoformat(since)
            campaigns = [c for c in campaigns if c["send_time"] and datetime.fromisoformat(c["send_time"]) >= threshold]
        return self._page(
            request,
            "campaigns",
            campaigns,
            render=lambda c: {k: v for k, v in c.items() if k[0] != "_"},
        )

    def _campaign(self, campaign_id: str, request: Request) -> dict[str, Any] | Response:
        campaign = self.campaigns.get(campaign_id)
        return (
            campaign if campaign is not None else self.error(404, "The requested resource could not be found.", request)
        )

    def _get_activity(self, request: Request, campaign_id: str) -> Response:
        campaign = self._campaign(campaign_id, request)
        if isinstance(campaign, Response):
            return campaign
        rows = [
            {
                "campaign_id": campaign_id,
                "list_id": campaign["recipients"]["list_id"],
                "email_id": subscriber_hash(e),
                "email_address": e,
                "activity": a,
            }
            for e, a in campaign["_activity"].items()
        ]
        return self._page(request, "emails", rows, extra={"campaign_id": campaign_id})

    def _get_unsubscribed(self, request: Request, campaign_id: str) -> Response:
        campaign = self._campaign(campaign_id, request)
        if isinstance(campaign, Response):
            return campaign
        rows = [
            {
                "email_id": subscriber_hash(e),
                "email_address": e,
                "timestamp": t,
                "reason": "",
                "campaign_id": campaign_id,
                "list_id": campaign["recipients"]["list_id"],
            }
            for e, t in campaign["_unsubscribed"].items()
        ]
        return self._page(request, "unsubscribes", rows, extra={"campaign_id": campaign_id})

    def _get_stores(self, request: Request) -> Response:
        return self._page(
            request,
            "stores",
            [{k: v for k, v in s.items() if k[0] != "_"} for s in self.stores.values()],
        )

    def _store(self, store_id: str, request: Request) -> dict[str, Any] | Response:
        store = self.stores.get(store_id)
        return store if store is not None else self.error(404, "The requested resource could not be found.", request)

    def _get_customers(self, request: Request, store_id: str) -> Response:
        store = self._store(store_id, request)
        return (
            store
            if isinstance(store, Response)
            else self._page(request, "customers", list(store["_customers"].values()))
        )

    def _get_orders(self, request: Request, store_id: str) -> Response:
        store = self._store(store_id, request)
        if isinstance(store, Response):
            return store
        return self._page(request, "orders", store["_orders"], extra={"store_id": store_id})
