"""HubSpot calls through the official SDK: limits, retries, typed errors, and the incremental search reads.

Every request goes through ``HubSpotClient.call``: a client-side limiter below the account's tier (plus a tighter
one for search), retries done by connectors.retry (the SDK's own retries are off), a timeout on every request,
and failures turned into one-line RetentionErrors that never carry the token.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import hubspot
import urllib3
from urllib3.util.retry import Retry

from connectors.base import (
    AuthError,
    CheckResult,
    RecordRejected,
    SourceError,
    VendorTime,
    register_check,
)
from connectors.hubspot import mapping
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
SOURCE = "hubspot"
SEARCH_CAP = 10_000  # HubSpot: search returns at most 10,000 results per query; paging past it is a 400
SEARCH_PAGE = 200  # HubSpot: search limit is at most 200
BATCH_SIZE = 100  # HubSpot: batch endpoints take at most 100 inputs
EVENTS_PAGE = 100  # event analytics pages we ask for
DAILY_WAIT_S = 86_400.0  # a DAILY 429 without Retry-After: wait for tomorrow, i.e. stop with a checkpoint
# Twelve attempts with capped full-jitter backoff ride out about a minute and a half of outage per call.
HUBSPOT_RETRIES = RetryPolicy(max_attempts=12)
TOKEN_HELP = ("create a private-app token in HubSpot (Settings > Integrations > Private apps) with the crm.objects.* "
              "scopes and set it with RETENTION_HUBSPOT_TOKEN or the keyring entry 'hubspot_token'")


@dataclass(frozen=True)
class OAuthGrant:
    """An OAuth app's refresh-token grant. repr hides the secrets so they cannot reach a log line."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)


REFRESH_MARGIN_S = 60.0  # refresh this long before the access token expires, so no call meets an expired token
RECONNECT_HELP = "reconnect HubSpot (run the OAuth install again) and store the new refresh token as 'hubspot_refresh_token'"


class Unavailable(SourceError):
    """403 or 404 on an API the account may lack (event analytics needs Enterprise and its scope): skip, don't fail."""


class AlreadyExists(SourceError):
    """409 CONFLICT: the property, group or contact is already there (callers treat it as an upsert)."""


class HubSpotClient:
    def __init__(self, token: str, settings: Any, *, host: str | None = None, clock: Any = None,
                 policy: RetryPolicy | None = None, rng: random.Random | None = None, oauth: OAuthGrant | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.vendor_time = VendorTime()
        self.policy = policy or HUBSPOT_RETRIES
        self.rng = rng or random.Random()
        self.budget = RetryBudget(self.policy.budget)
        self.limiter = WindowLimiter(settings.requests_per_10s, 10.0, self.clock)
        self.search_limiter = WindowLimiter(settings.searches_per_s, 1.0, self.clock)
        self.calls = 0  # requests sent, retries included: what the bench compares with the minimum
        # Retries are ours (connectors.retry): the SDK's urllib3 pool must not retry on its own.
        self.oauth = oauth
        self._token_expires_at = float("-inf") if oauth else float("inf")
        options = {"access_token": token, "retry": Retry(total=0, redirect=0, raise_on_status=False)}
        if host:
            options["host"] = host
        self.sdk = hubspot.Client.create(**options)

    # --- one request ---------------------------------------------------------------------------------------------

    def call(self, what: str, send: Callable[[Any], Callable[..., Any]], *args: Any, is_search: bool = False,
             optional: bool = False, expect: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Send one SDK call (``send`` picks the SDK method) with limits and retries; returns the parsed JSON body.

        ``optional``: the account may lack this API; a 403 or 404 raises Unavailable instead of an AuthError.
        ``expect`` raises MalformedAnswer when a 2xx body lacks what the endpoint always sends; like a body that is
        not JSON at all, that is retried and, if it persists, ends the run with one line (never stored as data).
        """

        def attempt() -> dict[str, Any]:
            if self.clock.monotonic() >= self._token_expires_at - REFRESH_MARGIN_S:
                self.refresh_access_token()
            if is_search:
                self.search_limiter.acquire()
            self.calls += 1
            # The API object is built per attempt: after an OAuth refresh it must carry the new access token.
            response = send(self.sdk)(*args, _preload_content=False, _request_timeout=self.settings.timeout_s)
            self._read_limit_headers(response.headers)
            self.vendor_time.note(response.headers.get("Date"), self.clock.now())
            if not response.data:
                return {}
            try:
                body = json.loads(response.data)
            except ValueError:
                raise MalformedAnswer(malformed_reason(response.data)) from None
            if not isinstance(body, dict):
                raise MalformedAnswer(f"a JSON {type(body).__name__} where an object belongs")
            if expect is not None:
                expect(body)
            return body

        for is_last_try in (self.oauth is None, True):
            try:
                return call_with_retries(attempt, classify, source=SOURCE, what=what, policy=self.policy,
                                         budget=self.budget, clock=self.clock, limiter=self.limiter, rng=self.rng)
            except Exception as exc:
                if not is_last_try and _is_expired_token(exc):
                    self._token_expires_at = float("-inf")  # HubSpot says it expired early: refresh once, try once more
                    continue
                # Each SDK package has its own ApiException class; they share the name and the status/body/headers.
                if optional and _is_api_exception(exc) and getattr(exc, "status", 0) in (403, 404):
                    raise Unavailable(f"HubSpot refused {what}: {describe(exc)}", source=SOURCE) from None
                if _is_api_exception(exc):
                    raise typed_error(exc, what) from None
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def refresh_access_token(self) -> None:
        """Trade the refresh token for a new access token (HubSpot: they last 30 minutes)."""
        grant = self.oauth
        assert grant is not None
        self.calls += 1
        try:
            response = self.sdk.oauth.tokens_api.create(
                grant_type="refresh_token", client_id=grant.client_id, client_secret=grant.client_secret,
                refresh_token=grant.refresh_token, _preload_content=False, _request_timeout=self.settings.timeout_s)
        except Exception as exc:
            if _is_api_exception(exc) and getattr(exc, "status", 0) in (400, 401):
                raise AuthError(f"HubSpot refused the OAuth refresh token ({describe(exc)}): the app was disconnected or its "
                                f"access revoked; {RECONNECT_HELP}", source=SOURCE) from None
            raise
        issued = json.loads(response.data)
        self.sdk.access_token = issued["access_token"]
        self._token_expires_at = self.clock.monotonic() + float(issued.get("expires_in", 1800))

    def _read_limit_headers(self, headers: Any) -> None:
        """HubSpot tells how much of the rolling window is left; at 0, hold everyone for a moment instead of a 429."""
        remaining = headers.get("X-HubSpot-RateLimit-Remaining")
        interval_ms = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        if remaining is not None and remaining.isdigit() and int(remaining) == 0 and interval_ms and interval_ms.isdigit():
            self.limiter.pause(int(interval_ms) / 1000 / max(self.settings.requests_per_10s, 1))

    # --- the endpoints the connector uses --------------------------------------------------------------------------

    def search(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call(f"searching {object_type}", lambda sdk: sdk.crm.objects.search_api.do_search, object_type, body, is_search=True,
                         expect=lambda reply: mapping.expect_search_page(reply, int(body.get("after") or 0), SEARCH_CAP))

    def list_archived(self, object_type: str, properties: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
        after = None
        while True:
            kwargs = {"limit": 100, "archived": True, "properties": list(properties), **({"after": after} if after else {})}
            body = self.call(f"listing archived {object_type}",
                             lambda sdk, kwargs=kwargs: lambda **extra: sdk.crm.objects.basic_api.get_page(object_type, **kwargs, **extra),
                             expect=mapping.expect_results)
            yield body.get("results", [])
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return

    def batch_read(self, object_type: str, ids: Sequence[str], properties: Sequence[str]) -> list[dict[str, Any]]:
        found = []
        for start in range(0, len(ids), BATCH_SIZE):
            body = {"inputs": [{"id": i} for i in ids[start : start + BATCH_SIZE]], "properties": list(properties), "propertiesWithHistory": []}
            reply = self.call(f"reading {object_type}", lambda sdk: sdk.crm.objects.batch_api.read, object_type, body, expect=mapping.expect_results)
            found.extend(reply.get("results", []))
        return found

    def batch_update(self, object_type: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call(f"updating {object_type}", lambda sdk: sdk.crm.objects.batch_api.update, object_type, {"inputs": inputs})

    def deal_contacts(self, deal_ids: Sequence[str]) -> dict[str, str]:
        """Deal id → its first associated contact id (v4 associations)."""
        owners = {}
        for start in range(0, len(deal_ids), BATCH_SIZE):
            body = {"inputs": [{"id": i} for i in deal_ids[start : start + BATCH_SIZE]]}
            reply = self.call("reading deal associations", lambda sdk: sdk.crm.associations.v4.batch_api.get_page, "deals", "contacts", body,
                              expect=mapping.expect_results)
            for result in reply.get("results", []):
                targets = sorted(int(t["toObjectId"]) for t in result.get("to", []))
                if targets:
                    owners[str(result["from"]["id"])] = str(targets[0])
        return owners

    def event_types(self) -> list[str]:
        """The event type names the account can query (event analytics); Unavailable when the account lacks the API."""
        reply = self.call("listing event types", lambda sdk: sdk.events.events_api.get_types, optional=True)
        return [str(name) for name in reply.get("eventTypes", [])]

    def events(self, event_type: str, occurred_after: str, occurred_before: str) -> Iterator[list[dict[str, Any]]]:
        """Every contact event of ``event_type`` in (occurred_after, occurred_before), oldest first, in pages."""
        after = None
        while True:
            kwargs = {"object_type": "contact", "event_type": event_type, "occurred_after": occurred_after,
                      "occurred_before": occurred_before, "limit": EVENTS_PAGE, "sort": ["occurredAt"], **({"after": after} if after else {})}
            body = self.call(f"reading {event_type} events", lambda sdk, kwargs=kwargs: lambda **extra: sdk.events.events_api.get_page(**kwargs, **extra),
                             optional=True, expect=mapping.expect_results)
            yield body.get("results", [])
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return

    def pipelines(self, object_type: str) -> dict[str, Any]:
        return self.call(f"reading {object_type} pipelines", lambda sdk: sdk.crm.pipelines.pipelines_api.get_all, object_type, expect=mapping.expect_results)

    def properties(self, object_type: str) -> dict[str, Any]:
        return self.call(f"reading {object_type} properties", lambda sdk: sdk.crm.properties.core_api.get_all, object_type, expect=mapping.expect_results)

    def groups(self, object_type: str) -> dict[str, Any]:
        return self.call(f"reading {object_type} property groups", lambda sdk: sdk.crm.properties.groups_api.get_all, object_type, expect=mapping.expect_results)

    def create_group(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call(f"creating property group {body['name']}", lambda sdk: sdk.crm.properties.groups_api.create, object_type, body)

    def create_property(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call(f"creating property {body['name']}", lambda sdk: sdk.crm.properties.core_api.create, object_type, body)

    def forget(self, email: str) -> str:
        """Permanently delete the contact with this primary email (GDPR delete); says what HubSpot did."""
        body = {"idProperty": "email", "objectId": email}
        self.call("permanently deleting a contact (GDPR delete)", lambda sdk: sdk.crm.contacts.basic_api.purge, body)
        # HubSpot: an address it does not know is blocklisted instead, so it cannot come back either way.
        return "contact permanently deleted (GDPR delete); an address HubSpot did not hold is blocklisted instead"

    # --- incremental search -----------------------------------------------------------------------------------------

    def modified_between(self, object_type: str, properties: Sequence[str], low_ms: int, high_ms: int) -> Iterator[list[dict[str, Any]]]:
        """Every object modified in [low_ms, high_ms], in pages, never truncated by the 10,000-result cap.

        When a window reaches the cap, it is split at the last modified time read so far and the rest is read as a
        new window (the objects at that millisecond come again; callers drop repeats by id). A millisecond that
        alone holds more than the cap is paged by ``hs_object_id`` (keyset), which has no cap.
        """
        modified = mapping.MODIFIED_PROPERTY[object_type]
        while low_ms <= high_ms:
            window = [{"propertyName": modified, "operator": "GTE", "value": str(low_ms)},
                      {"propertyName": modified, "operator": "LTE", "value": str(high_ms)}]
            body = {"filterGroups": [{"filters": window}], "properties": list(properties), "limit": SEARCH_PAGE, "after": "0",
                    "sorts": [{"propertyName": modified, "direction": "ASCENDING"}, {"propertyName": "hs_object_id", "direction": "ASCENDING"}]}
            last_ms = low_ms
            reply = self.search(object_type, body)
            while True:
                results = reply.get("results", [])
                if results:
                    yield results
                    # An object without a readable modified date is quarantined by its mapping; the others place the cursor.
                    stamps = [stamp for stamp in (mapping.modified_at(raw, object_type) for raw in results) if stamp is not None]
                    last_ms = mapping.to_ms(stamps[-1]) if stamps else last_ms
                after = ((reply.get("paging") or {}).get("next") or {}).get("after")
                if not after:
                    return
                if int(after) + SEARCH_PAGE > SEARCH_CAP:
                    break  # the next page would cross the cap: split the window here
                reply = self.search(object_type, {**body, "after": after})
            if last_ms == low_ms:
                yield from self._by_id_within(object_type, body, window[:1] + [{**window[1], "value": str(low_ms)}])
                low_ms += 1
            else:
                low_ms = last_ms

    def _by_id_within(self, object_type: str, body: dict[str, Any], window: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        last_id = 0
        keyset = {**body, "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]}
        while True:
            id_filter = {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)}
            reply = self.search(object_type, {**keyset, "filterGroups": [{"filters": [*window, id_filter]}]})
            results = reply.get("results", [])
            if results:
                yield results
                last_id = int(results[-1]["id"])
            if len(results) < SEARCH_PAGE:
                return


# --- failures ------------------------------------------------------------------------------------------------------


def _is_api_exception(exc: Exception) -> bool:
    return type(exc).__name__ in ("ApiException", "UnauthorizedException", "ForbiddenException", "NotFoundException",
                                  "ServiceException") and hasattr(exc, "status")


def _is_expired_token(exc: Exception) -> bool:
    return _is_api_exception(exc) and getattr(exc, "status", 0) == 401 and (_body(exc) or {}).get("category") == "EXPIRED_AUTHENTICATION"


def _body(exc: Any) -> dict[str, Any] | None:
    try:
        parsed = json.loads(exc.body) if exc.body else None
    except (ValueError, TypeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _header(exc: Any, name: str) -> str | None:
    headers = getattr(exc, "headers", None) or {}
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return value
    return None


def describe(exc: Any) -> str:
    """A short line for an HTTP failure: status, HubSpot's category and message, or for HTML pages the correlation id."""
    body = _body(exc)
    if body is None:
        correlation = _header(exc, "X-HubSpot-Correlation-Id") or "none"
        return f"{exc.status} (non-JSON error page, correlation id {correlation})"
    parts = [str(exc.status), body.get("policyName") or body.get("category") or ""]
    message = str(body.get("message") or "")[:200]
    return " ".join(p for p in parts if p) + (f": {message}" if message else "")


def classify(exc: Exception) -> Transient | None:
    """What is worth retrying: 429 (not DAILY), 5xx, timeouts and dropped connections."""
    if isinstance(exc, (urllib3.exceptions.HTTPError, TimeoutError, ConnectionError)):
        return Transient(f"network: {type(exc).__name__}")
    if isinstance(exc, MalformedAnswer):
        return Transient(f"malformed answer: {exc.reason}")
    if not _is_api_exception(exc):
        return None
    status = getattr(exc, "status", 0) or 0
    retry_after = _header(exc, "Retry-After")
    retry_after_s = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    if status == 429:
        body = _body(exc) or {}
        if body.get("policyName") == "DAILY":
            return Transient(describe(exc), retry_after_s or DAILY_WAIT_S)
        return Transient(describe(exc), retry_after_s)
    if status >= 500 or status == 0:
        return Transient(describe(exc) if status else "connection failed", retry_after_s)
    return None


def typed_error(exc: Any, what: str) -> SourceError:
    status = getattr(exc, "status", 0)
    if status == 401:
        return AuthError(f"HubSpot refused the access token while {what} (401); {TOKEN_HELP}", source=SOURCE)
    if status == 403:
        body = _body(exc) or {}
        scopes = sorted({s for e in body.get("errors", []) for s in (e.get("context") or {}).get("requiredGranularScopes", [])})
        needed = ", ".join(scopes) or "the crm.objects scopes"
        return AuthError(f"HubSpot token lacks a scope needed for {what} (403 MISSING_SCOPES); add {needed} to the private app", source=SOURCE)
    message = f"HubSpot refused {what}: {describe(exc)}"
    if status == 409:
        return AlreadyExists(message, source=SOURCE)
    if status == 400:
        ids = ((_body(exc) or {}).get("context") or {}).get("id") or ((_body(exc) or {}).get("context") or {}).get("ids") or []
        return RecordRejected(message, source=SOURCE, record_id=",".join(map(str, ids)) or None)
    return SourceError(f"HubSpot failed while {what}: {describe(exc)}", source=SOURCE)


# --- wiring from settings -------------------------------------------------------------------------------------------


def client_from_settings(settings: Any, *, host: str | None = None, clock: Any = None,
                         policy: RetryPolicy | None = None) -> HubSpotClient:
    """The client for ``settings.hubspot`` with the token from the environment or keyring (never from the toml)."""
    from sync.settings import read_secret

    refresh_token = read_secret("hubspot_refresh_token")
    if refresh_token:
        client_id, client_secret = read_secret("hubspot_client_id"), read_secret("hubspot_client_secret")
        if not client_id or not client_secret:
            raise AuthError("a HubSpot refresh token is set but hubspot_client_id or hubspot_client_secret is missing; "
                            "set both (RETENTION_HUBSPOT_CLIENT_ID, RETENTION_HUBSPOT_CLIENT_SECRET or the keyring)", source=SOURCE)
        grant = OAuthGrant(client_id, client_secret, refresh_token)
        return HubSpotClient("", settings.hubspot, host=host, clock=clock, oauth=grant, policy=policy)
    token = read_secret("hubspot_token")
    if not token:
        raise AuthError(f"no HubSpot token found; {TOKEN_HELP}", source=SOURCE)
    return HubSpotClient(token, settings.hubspot, host=host, clock=clock, policy=policy)


def erase_person(settings: Any, email: str, *, client: HubSpotClient | None = None) -> list[str]:
    """`retention forget --propagate`: one GDPR delete by email; the outcome, without the address."""
    return [(client or client_from_settings(settings)).forget(email)]


@register_check("hubspot")
def check_hubspot(settings: Any) -> CheckResult:
    """Reachable and authorised: one contact read (the smallest call every scope set allows)."""
    # One retry at most: a check answers now, it does not wait out an outage the way a sync does.
    client = client_from_settings(settings, policy=RetryPolicy(max_attempts=2))
    client.call("checking access to contacts", lambda sdk: lambda **extra: sdk.crm.objects.basic_api.get_page("contacts", limit=1, **extra))
    return CheckResult("hubspot", True, f"token accepted; limits {settings.hubspot.requests_per_10s} requests / 10 s, "
                                        f"{settings.hubspot.searches_per_s} searches / s")
