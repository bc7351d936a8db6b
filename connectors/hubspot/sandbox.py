"""A stateful emulator of the HubSpot CRM endpoints the connector uses, for tests and `retention sandbox hubspot`.

Shapes follow ../shared/specs/hubspot/ (CRM v3 objects, search, batch, properties, pipelines; v4 associations)
and the rules listed in the specs README (10k search cap, 100-input batches, 207 multi-status, error bodies,
rate-limit headers and 429 policy names). Objects are kept per type with an index sorted by
(last-modified ms, id) so incremental searches over 100k objects stay fast.
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.sandbox import Clock, Journal, JournalEntry, Request, Response, Sandbox

OBJECT_TYPES = ("contacts", "companies", "deals")
MODIFIED_PROPERTY = {"contacts": "lastmodifieddate", "companies": "hs_lastmodifieddate", "deals": "hs_lastmodifieddate"}
SEARCH_CAP = 10_000  # HubSpot: search returns at most 10,000 results per query
MAX_SEARCH_LIMIT = 200
MAX_BATCH_INPUTS = 100
MAX_EVENTS_LIMIT = 100
# The event analytics types the sandbox account lists (/events/v3/events/event-types): HubSpot's form "e_{label}".
EVENT_TYPES = ("e_visited_page", "e_submitted_form", "e_marketing_email_opened", "e_marketing_email_clicked",
               "e_marketing_email_bounced", "e_marketing_email_unsubscribed")
CATEGORY_BY_STATUS = {400: "VALIDATION_ERROR", 401: "INVALID_AUTHENTICATION", 403: "MISSING_SCOPES",
                      404: "OBJECT_NOT_FOUND", 409: "CONFLICT", 429: "RATE_LIMITS"}
# HubSpot's valid (type, fieldType) pairs for custom properties (specs README rule 7).
FIELD_TYPES = {"string": {"text", "textarea", "html", "phonenumber", "file"}, "number": {"number", "calculation_equation"},
               "date": {"date"}, "datetime": {"date"}, "bool": {"booleancheckbox"},
               "enumeration": {"select", "radio", "checkbox", "booleancheckbox"}}


def iso_ms(ms: int) -> str:
    """HubSpot's date-time form: ISO 8601 in UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time_ms(value: Any) -> int:
    """Epoch milliseconds (what search filters send) or an ISO 8601 date-time."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def canonical_number(text: str) -> str:
    """How HubSpot stores a number property: plain decimal without trailing zeros."""
    number = Decimal(str(text).strip())
    if not number.is_finite():
        raise InvalidOperation
    plain = format(number, "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


def standard_properties() -> dict[str, dict[str, dict[str, Any]]]:
    def prop(name: str, type_: str = "string", field_type: str = "text", options: list[str] | None = None) -> dict[str, Any]:
        opts = [{"label": o, "value": o, "displayOrder": i, "hidden": False} for i, o in enumerate(options or [])]
        return {"name": name, "label": name, "type": type_, "fieldType": field_type, "groupName": "contactinformation",
                "options": opts, "description": "", "hubspotDefined": True, "calculated": False, "externalOptions": False}

    stages = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "evangelist", "other"]
    common = [prop("hs_object_id", "number", "number"), prop("createdate", "datetime", "date")]
    contacts = common + [prop("email"), prop("firstname"), prop("lastname"), prop("phone"), prop("company"),
                         prop("hs_additional_emails", "enumeration", "checkbox"), prop("lifecyclestage", "enumeration", "select", stages),
                         prop("hs_email_optout", "bool", "booleancheckbox", ["true", "false"]), prop("hs_merged_object_ids", "enumeration", "checkbox"),
                         prop("lastmodifieddate", "datetime", "date")]
    companies = common + [prop("name"), prop("domain"), prop("hs_lastmodifieddate", "datetime", "date")]
    deals = common + [prop("dealname"), prop("amount", "number", "number"), prop("dealstage", "enumeration", "radio"),
                      prop("pipeline", "enumeration", "select"), prop("closedate", "datetime", "date"),
                      prop("deal_currency_code", "enumeration", "select"), prop("hs_lastmodifieddate", "datetime", "date")]
    return {t: {p["name"]: p for p in props} for t, props in zip(OBJECT_TYPES, (contacts, companies, deals))}


class RedactingJournal(Journal):
    """The token endpoint's form carries the client secret and refresh token: the journal keeps only the grant type."""

    def add(self, entry: JournalEntry) -> None:
        if entry.path == "/oauth/v1/token":
            entry = replace(entry, body="grant_type=refresh_token (credentials not kept)")
        super().add(entry)


class HubSpotSandbox(Sandbox):
    vendor = "hubspot"

    def __init__(self, *, token: str = "sandbox-token", clock: Clock | None = None, seed: int = 0,
                 requests_per_10s: int = 100, searches_per_s: int = 5, daily_limit: int | None = None,
                 batch_errors: str = "partial") -> None:
        super().__init__(clock=clock, seed=seed)
        self.journal = RedactingJournal()
        self.token = token
        self.requests_per_10s = requests_per_10s
        self.searches_per_s = searches_per_s
        self.daily_limit = daily_limit
        self.batch_errors = batch_errors  # "partial": 207 multi-status; "whole": one bad input fails the batch with 400
        # Object types the token may not touch ("deals" → 403 MISSING_SCOPES); "events": no event analytics access.
        self.missing_scopes: set[str] = set()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self.archived: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self.merged_into: dict[str, str] = {}  # merged-away contact id → survivor id
        self.blocklist: set[str] = set()  # GDPR-deleted emails (lower-cased): HubSpot refuses them from then on
        self.index: dict[str, list[tuple[int, int]]] = {t: [] for t in OBJECT_TYPES}  # sorted (modified ms, id)
        self.associations: dict[str, set[str]] = {}  # deal id → contact ids
        self.properties = standard_properties()
        self.groups: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self.pipelines: list[dict[str, Any]] = []
        self._event_ids = random.Random(seed)
        self.events: list[dict[str, Any]] = []  # event analytics: {id, objectType, objectId, eventType, occurred_ms, properties}
        self._next_id = 1000
        self._sent: deque[float] = deque()
        self._searches: deque[float] = deque()
        self._daily_count = 0
        self.oauth_client: tuple[str, str] | None = None  # (client id, secret) of the app the refresh token belongs to
        self.refresh_tokens: set[str] = set()
        self.access_tokens: dict[str, float] = {}  # OAuth access token → sandbox second it expires
        self.access_token_lifetime_s = 1_800.0  # HubSpot: OAuth access tokens live 30 minutes
        self._add_routes()

    def _add_routes(self) -> None:
        from connectors.hubspot import sandbox_routes

        sandbox_routes.add_routes(self)

    # state changes, used by the routes and by tests -----------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def create(self, object_type: str, properties: dict[str, Any], *, created_ms: int | None = None,
               modified_ms: int | None = None) -> str:
        with self.lock:
            self._next_id += 1
            object_id = str(self._next_id)
            now = self.now_ms()
            created = created_ms if created_ms is not None else now
            stored = {k: None if v is None else str(v) for k, v in properties.items()}
            stored.update(hs_object_id=object_id, createdate=iso_ms(created))
            self.objects[object_type][object_id] = {"id": object_id, "properties": stored, "created_ms": created, "modified_ms": 0}
            self._touch(object_type, object_id, modified_ms if modified_ms is not None else now)
            return object_id

    def update(self, object_type: str, object_id: str, properties: dict[str, str | None]) -> None:
        with self.lock:
            self.objects[object_type][object_id]["properties"].update(properties)
            self._touch(object_type, object_id, self.now_ms())

    def _touch(self, object_type: str, object_id: str, modified_ms: int) -> None:
        """Move the object to ``modified_ms`` in the search index (HubSpot: every write advances it)."""
        item = self.objects[object_type][object_id]
        index = self.index[object_type]
        old_key = (item["modified_ms"], int(object_id))
        at = bisect.bisect_left(index, old_key)
        if at < len(index) and index[at] == old_key:
            del index[at]
        item["modified_ms"] = modified_ms
        item["properties"][MODIFIED_PROPERTY[object_type]] = iso_ms(modified_ms)
        bisect.insort(index, (modified_ms, int(object_id)))

    def archive(self, object_type: str, object_id: str) -> None:
        """Archive (soft-delete): gone from search and reads, listed with ``archived=true``; modified date unchanged."""
        with self.lock:
            item = self.objects[object_type].pop(object_id)
            index = self.index[object_type]
            del index[bisect.bisect_left(index, (item["modified_ms"], int(object_id)))]
            item["archived_ms"] = self.now_ms()
            self.archived[object_type][object_id] = item

    def merge(self, primary_id: str, merged_id: str) -> None:
        """Merge contact ``merged_id`` into ``primary_id``: the survivor lists it in hs_merged_object_ids."""
        with self.lock:
            merged = self.objects["contacts"].pop(merged_id)
            index = self.index["contacts"]
            del index[bisect.bisect_left(index, (merged["modified_ms"], int(merged_id)))]
            self.merged_into[merged_id] = primary_id
            for contact_ids in self.associations.values():  # HubSpot moves the merged contact's deals to the survivor
                if merged_id in contact_ids:
                    contact_ids.discard(merged_id)
                    contact_ids.add(primary_id)
            for event in self.events:  # and its event history
                if event["objectId"] == merged_id:
                    event["objectId"] = primary_id
            survivor = self.objects["contacts"][primary_id]["properties"]
            earlier = [i for i in (survivor.get("hs_merged_object_ids") or "").split(";") if i]
            absorbed = earlier + [merged_id] + [i for i in (merged["properties"].get("hs_merged_object_ids") or "").split(";") if i]
            extra = [e for e in (survivor.get("hs_additional_emails") or "").split(";") if e]
            if merged["properties"].get("email"):
                extra.append(merged["properties"]["email"])
            self.update("contacts", primary_id, {"hs_merged_object_ids": ";".join(absorbed),
                                                 "hs_additional_emails": ";".join(extra) or None})

    def purge(self, contact_id: str) -> None:
        """GDPR delete: the contact, its merged-away ids, its event history and associations are gone for good, and
        every address it had is blocklisted."""
        with self.lock:
            live = self.objects["contacts"].pop(contact_id, None)
            item = live or self.archived["contacts"].pop(contact_id)
            if live is not None:  # archived contacts are out of the search index already
                index = self.index["contacts"]
                del index[bisect.bisect_left(index, (item["modified_ms"], int(contact_id)))]
            props = item["properties"]
            self.blocklist.update(e.lower() for e in [props.get("email") or "", *(props.get("hs_additional_emails") or "").split(";")] if e)
            for merged_id in [m for m, survivor in self.merged_into.items() if survivor == contact_id]:
                del self.merged_into[merged_id]
            for contact_ids in self.associations.values():
                contact_ids.discard(contact_id)
            self.events = [event for event in self.events if event["objectId"] != contact_id]

    def find_contact_by_email(self, email: str) -> str | None:
        """The live contact whose primary email this is (case-insensitive), as ``idProperty=email`` resolves it."""
        wanted = email.strip().lower()
        return next((i for i, item in self.objects["contacts"].items() if (item["properties"].get("email") or "").lower() == wanted), None)

    def associate(self, deal_id: str, contact_id: str) -> None:
        with self.lock:
            self.associations.setdefault(deal_id, set()).add(contact_id)

    def add_event(self, contact_id: str, event_type: str, occurred_ms: int | None = None,
                  properties: dict[str, str] | None = None) -> str:
        """Record one contact event (event analytics); returns its id."""
        with self.lock:
            event_id = str(uuid.UUID(int=self._event_ids.getrandbits(128)))
            self.events.append({"id": event_id, "objectType": "contact", "objectId": contact_id, "eventType": event_type,
                                "occurred_ms": self.now_ms() if occurred_ms is None else occurred_ms, "properties": dict(properties or {})})
            return event_id

    def issue_access_token(self, refresh_token: str, client_id: str, client_secret: str) -> dict[str, Any] | None:
        """HubSpot's refresh-token grant: a new 30-minute access token, or None when the grant is not valid."""
        if self.oauth_client != (client_id, client_secret) or refresh_token not in self.refresh_tokens:
            return None
        access = f"oauth-{uuid.uuid4().hex}"
        self.access_tokens[access] = self.clock.monotonic() + self.access_token_lifetime_s
        return {"access_token": access, "refresh_token": refresh_token, "expires_in": int(self.access_token_lifetime_s),
                "token_type": "bearer"}

    def resolve(self, object_type: str, object_id: str) -> dict[str, Any] | None:
        return self.objects[object_type].get(object_id)

    # what HubSpot does before any route: auth, scopes, rate limits ------------------------------------------------

    def admit(self, request: Request) -> Response | None:
        if request.path == "/oauth/v1/token":
            return None  # the token endpoint authenticates with the client secret in the form
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        expires_at = self.access_tokens.get(presented)
        if expires_at is not None and self.clock.monotonic() >= expires_at:
            ago = self.clock.monotonic() - expires_at
            return self.error(401, f"The OAuth token used to make this call expired {ago:.0f} second(s) ago.", request,
                              category="EXPIRED_AUTHENTICATION")
        if presented != self.token and expires_at is None:
            return self.error(401, "Authentication credentials not found. This API supports OAuth 2.0 authentication "
                                   "and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview", request)
        for object_type in self.missing_scopes:
            if f"/{object_type}" in request.path:
                return self.error(403, "This app hasn't been granted all required scopes to make this call.", request,
                                  errors=[{"message": "One or more of the following scopes are required.",
                                           "context": {"requiredGranularScopes": [f"crm.objects.{object_type}.read"]}}])
        return self._rate_limit(request)

    def _rate_limit(self, request: Request) -> Response | None:
        now = self.clock.monotonic()
        with self.lock:
            while self._sent and now - self._sent[0] >= 10.0:
                self._sent.popleft()
            while self._searches and now - self._searches[0] >= 1.0:
                self._searches.popleft()
            if self.daily_limit is not None and self._daily_count >= self.daily_limit:
                return self._too_many(request, "DAILY", "You have reached your daily limit.", retry_after_s=None)
            if len(self._sent) >= self.requests_per_10s:
                wait = 10.0 - (now - self._sent[0])
                return self._too_many(request, "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.", wait)
            if request.path.endswith("/search"):
                if len(self._searches) >= self.searches_per_s:
                    return self._too_many(request, "SECONDLY", "You have reached your secondly limit.", 1.0 - (now - self._searches[0]))
                self._searches.append(now)
            self._sent.append(now)
            self._daily_count += 1
        return None

    def _too_many(self, request: Request, policy: str, message: str, retry_after_s: float | None) -> Response:
        response = self.error(429, message, request, errorType="RATE_LIMIT", policyName=policy)
        if retry_after_s is not None:
            response.headers["Retry-After"] = f"{max(retry_after_s, 0.001):.3f}"
        return response

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
                "category": detail.pop("category", CATEGORY_BY_STATUS.get(status, "INTERNAL_ERROR")), **detail}
        return Response(status, body)

    def dispatch(self, request: Request) -> tuple[Response | None, str | None]:
        response, fault = super().dispatch(request)
        if response is not None:
            with self.lock:
                remaining = max(self.requests_per_10s - len(self._sent), 0)
            response.headers.setdefault("X-HubSpot-Correlation-Id", str(uuid.uuid4()))
            response.headers.update({"X-HubSpot-RateLimit-Max": str(self.requests_per_10s),
                                     "X-HubSpot-RateLimit-Remaining": str(remaining),
                                     "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"})
            if self.daily_limit is not None:
                response.headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
                response.headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(self.daily_limit - self._daily_count, 0))
        return response, fault


def demo(size: int, seed: int) -> HubSpotSandbox:
    """A sandbox seeded with a made-up small business: ``size`` contacts, companies, ~2 deals each, a few merges."""
    from connectors.hubspot.seed import seed_business

    sandbox = HubSpotSandbox(seed=seed)
    seed_business(sandbox, contacts=size, seed=seed)
    return sandbox
