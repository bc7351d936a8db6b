"""A stateful local emulator of the Mailchimp Marketing API v3 endpoints the connector uses.

Faithful to ../shared/specs/mailchimp (OpenAPI 3.0.55) and the rules in specs/README.md: Basic auth with the
key (or a Bearer OAuth token), subscriber hash = MD5 of the lower-cased email, problem+json errors, the
compliance walls (unsubscribed/cleaned cannot be re-subscribed, forgotten addresses cannot be re-imported),
tags as static segments, the 500-email segment batch, merge-field validation, batch operations (asynchronous,
results as a gzipped tar) and 10 concurrent connections.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from datetime import UTC, datetime
from typing import Any

from connectors.mailchimp.mapping import subscriber_hash
from connectors.mailchimp.sandbox_batches import RESULTS_PATH, BatchRoutes
from connectors.mailchimp.sandbox_reports import ReportAndShopRoutes
from connectors.mailchimp.sandbox_segments import SegmentRoutes
from connectors.sandbox import Clock, FaultSchedule, Request, Response, Sandbox

API = "/3.0"
MAX_COUNT = 1_000  # Mailchimp: count is capped at 1000 per page
STATUSES = (
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
    "archived",
)
PROBLEM = "application/problem+json; charset=utf-8"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")


class MailchimpSandbox(SegmentRoutes, BatchRoutes, ReportAndShopRoutes, Sandbox):
    vendor = "mailchimp"

    def __init__(
        self,
        *,
        api_key: str = "sandbox-key-us6",
        oauth_token: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        max_concurrent: int = 10,
    ) -> None:
        super().__init__(clock=clock, seed=seed, max_concurrent=max_concurrent)
        self.api_key = api_key
        self.oauth_token = oauth_token
        self.lists: dict[str, dict[str, Any]] = {}
        self.campaigns: dict[str, dict[str, Any]] = {}
        self.stores: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.max_seen_concurrent = 0
        self.seed = seed
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_archives: dict[str, bytes] = {}  # results token → .tar.gz
        self.batch_pending_polls = 1  # polls a batch answers "pending" to before it is "finished"
        self.batch_operations_deferred = False  # run a batch's operations when it finishes, not when submitted
        self.operation_faults = FaultSchedule(self.clock, seed)  # faults of single operations inside a batch
        r = self.route
        r("GET", "/oauth2/metadata", self._metadata)
        r(
            "GET",
            API + "/ping",
            lambda req: Response(200, {"health_status": "Everything's Chimpy!"}),
        )
        r("GET", API + "/lists", self._get_lists)
        r("GET", API + r"/lists/(?P<list_id>[^/]+)", self._get_list)
        r("GET", API + r"/lists/(?P<list_id>[^/]+)/members", self._get_members)
        r("POST", API + r"/lists/(?P<list_id>[^/]+)/members", self._post_member)
        r(
            "GET",
            API + r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)",
            self._get_member,
        )
        r(
            "PUT",
            API + r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)",
            self._put_member,
        )
        r(
            "PATCH",
            API + r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)",
            self._patch_member,
        )
        r(
            "POST",
            API + r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)/tags",
            self._post_tags,
        )
        r(
            "POST",
            API + r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)/actions/delete-permanent",
            self._forget,
        )
        r("GET", API + r"/lists/(?P<list_id>[^/]+)/segments", self._get_segments)
        r("POST", API + r"/lists/(?P<list_id>[^/]+)/segments", self._post_segment)
        r(
            "GET",
            API + r"/lists/(?P<list_id>[^/]+)/segments/(?P<segment_id>\d+)",
            self._get_segment,
        )
        r(
            "POST",
            API + r"/lists/(?P<list_id>[^/]+)/segments/(?P<segment_id>\d+)",
            self._batch_segment,
        )
        r(
            "GET",
            API + r"/lists/(?P<list_id>[^/]+)/merge-fields",
            self._get_merge_fields,
        )
        r(
            "POST",
            API + r"/lists/(?P<list_id>[^/]+)/merge-fields",
            self._post_merge_field,
        )
        r("POST", API + "/batches", self._post_batch)
        r("GET", API + "/batches", self._list_batches)
        r("GET", API + r"/batches/(?P<batch_id>[^/]+)", self._get_batch)
        r("GET", RESULTS_PATH + r"(?P<token>[0-9a-f]+)\.tar\.gz", self._get_batch_results)
        r("GET", API + "/campaigns", self._get_campaigns)
        r(
            "GET",
            API + r"/reports/(?P<campaign_id>[^/]+)/email-activity",
            self._get_activity,
        )
        r(
            "GET",
            API + r"/reports/(?P<campaign_id>[^/]+)/unsubscribed",
            self._get_unsubscribed,
        )
        r("GET", API + "/ecommerce/stores", self._get_stores)
        r(
            "GET",
            API + r"/ecommerce/stores/(?P<store_id>[^/]+)/customers",
            self._get_customers,
        )
        r(
            "GET",
            API + r"/ecommerce/stores/(?P<store_id>[^/]+)/orders",
            self._get_orders,
        )

    # --- vendor shape: auth, errors, concurrency ---------------------------------------------------------------

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        titles = {
            400: "Invalid Resource",
            401: "API Key Invalid",
            403: "Forbidden",
            404: "Resource Not Found",
            405: "Method Not Allowed",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        title = detail.pop("title", None) or titles.get(status, "Error")
        body = {
            "type": f"https://mailchimp.com/developer/marketing/docs/errors/#{status}",
            "title": title,
            "status": status,
            "detail": message,
            "instance": f"sandbox-{next(self._ids)}",
        }
        if detail.get("errors"):
            body["errors"] = detail["errors"]
        return Response(status, body, content_type=PROBLEM)

    def admit(self, request: Request) -> Response | None:
        with self._in_flight_lock:
            self.max_seen_concurrent = max(self.max_seen_concurrent, self._in_flight)
        auth = request.headers.get("authorization", "")
        if request.path.startswith(RESULTS_PATH):
            return None  # Mailchimp: the results link is pre-signed storage, fetched without the API key
        if request.path == "/oauth2/metadata":
            ok = self.oauth_token is not None and auth == f"OAuth {self.oauth_token}"
        elif auth.startswith("Basic "):
            try:
                _, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                password = ""
            ok = password == self.api_key
        else:
            ok = self.oauth_token is not None and auth == f"Bearer {self.oauth_token}"
        if not ok:
            return self.error(
                401,
                "Your request did not include an API key, or the key is invalid.",
                request,
            )
        return None

    # --- state helpers --------------------------------------------------------------------------------------------

    def add_list(self, name: str, list_id: str | None = None) -> str:
        list_id = list_id or hashlib.md5(name.encode()).hexdigest()[:10]
        self.lists[list_id] = {
            "id": list_id,
            "name": name,
            "members": {},
            "segments": {},
            "forgotten": set(),
            "merge_fields": {},
            "date_created": iso(self.clock.now()),
        }
        # Every new Mailchimp audience starts with these (ADDRESS and BIRTHDAY too, which the tool never uses).
        for tag, name_, type_ in (("FNAME", "First Name", "text"), ("LNAME", "Last Name", "text"), ("PHONE", "Phone Number", "phone")):
            self._new_merge_field(self.lists[list_id], tag, name_, type_)
        return list_id

    def add_member(self, list_id: str, email: str, status: str = "subscribed", **extra: Any) -> dict[str, Any]:
        audience = self.lists[list_id]
        now = iso(self.clock.now())
        member = {
            "id": subscriber_hash(email),
            "email_address": email,
            "unique_email_id": subscriber_hash(email)[:10],
            "status": status,
            "merge_fields": {},
            "member_rating": 2,
            "stats": {"avg_open_rate": 0.0, "avg_click_rate": 0.0},
            "timestamp_signup": now,
            "timestamp_opt": now,
            "last_changed": now,
            "list_id": list_id,
        }
        member.update(extra)
        audience["members"][member["id"]] = member
        return member

    def tag_member(self, list_id: str, member_hash: str, tag: str) -> None:
        segment = self._segment_named(self.lists[list_id], tag, create=True)
        segment["members"].add(member_hash)

    def member_tags(self, list_id: str, member_hash: str) -> list[str]:
        return sorted(s["name"] for s in self.lists[list_id]["segments"].values() if member_hash in s["members"])

    def _segment_named(self, audience: dict[str, Any], name: str, create: bool) -> dict[str, Any] | None:
        for segment in audience["segments"].values():
            if segment["name"] == name:
                return segment
        if not create:
            return None
        segment_id = str(next(self._ids))
        now = iso(self.clock.now())
        segment = {
            "id": int(segment_id),
            "name": name,
            "type": "static",
            "members": set(),
            "created_at": now,
            "updated_at": now,
            "list_id": audience["id"],
        }
        audience["segments"][segment_id] = segment
        return segment

    def _new_merge_field(self, audience: dict[str, Any], tag: str, name: str, type_: str) -> dict[str, Any]:
        field = {
            "merge_id": len(audience["merge_fields"]) + 1,
            "tag": tag,
            "name": name,
            "type": type_,
            "required": False,
            "default_value": "",
            "public": False,
            "display_order": len(audience["merge_fields"]) + 1,
            "list_id": audience["id"],
            "options": {},
        }
        audience["merge_fields"][tag] = field
        return field

    def _audience(self, list_id: str, request: Request) -> dict[str, Any] | Response:
        audience = self.lists.get(list_id)
        if audience is None:
            return self.error(404, "The requested resource could not be found.", request)
        return audience

    def _member(self, audience: dict[str, Any], key: str) -> dict[str, Any] | None:
        # Mailchimp: the member endpoints accept the subscriber hash or the email address itself.
        return audience["members"].get(key if "@" not in key else subscriber_hash(key))

    def _render_member(self, audience: dict[str, Any], member: dict[str, Any]) -> dict[str, Any]:
        tags = [
            {"id": s["id"], "name": s["name"]} for s in audience["segments"].values() if member["id"] in s["members"]
        ]
        return {**member, "tags_count": len(tags), "tags": tags}

    def _touch(self, member: dict[str, Any]) -> None:
        member["last_changed"] = iso(self.clock.now())

    def _check_merge_fields(self, audience: dict[str, Any], values: Any, request: Request) -> Response | dict[str, Any]:
        if values is None:
            return {}
        if not isinstance(values, dict):
            return self.error(400, "merge_fields must be an object", request)
        if request.arg("skip_merge_validation") == "true":
            return values
        errors = []
        for tag, value in values.items():
            field = audience["merge_fields"].get(tag)
            if field is None:
                errors.append(
                    {
                        "field": f"merge_fields.{tag}",
                        "message": f"Merge field {tag} does not exist",
                    }
                )
            elif field["type"] == "number" and value != "" and not isinstance(value, (int, float)):
                try:
                    float(value)
                except (TypeError, ValueError):
                    errors.append(
                        {
                            "field": f"merge_fields.{tag}",
                            "message": "Please enter a number",
                        }
                    )
        if errors:
            return self.error(400, "Your merge fields were invalid.", request, errors=errors)
        return {
            tag: (
                float(v) if audience["merge_fields"][tag]["type"] == "number" and v != "" and isinstance(v, str) else v
            )
            for tag, v in values.items()
        }

    # --- oauth, lists, members ------------------------------------------------------------------------------------

    def _metadata(self, request: Request) -> Response:
        return Response(
            200,
            {
                "dc": "us6",
                "role": "owner",
                "accountname": "Sandbox Shop",
                "login_url": "https://login.mailchimp.com",
                "api_endpoint": "https://us6.api.mailchimp.com",
            },
        )

    def _get_lists(self, request: Request) -> Response:
        lists = [self._render_list(a) for a in self.lists.values()]
        return self._page(request, "lists", lists)

    def _render_list(self, audience: dict[str, Any]) -> dict[str, Any]:
        counts = {s: 0 for s in STATUSES}
        for member in audience["members"].values():
            counts[member["status"]] += 1
        return {
            "id": audience["id"],
            "name": audience["name"],
            "date_created": audience["date_created"],
            "stats": {
                "member_count": counts["subscribed"],
                "unsubscribe_count": counts["unsubscribed"],
                "cleaned_count": counts["cleaned"],
            },
        }

    def _get_list(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        return audience if isinstance(audience, Response) else self._fields(request, self._render_list(audience))

    def _get_members(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        members = list(audience["members"].values())
        status = request.arg("status")
        if status:
            members = [m for m in members if m["status"] == status]
        since = request.arg("since_last_changed")
        if since:
            # Times are kept in one fixed format, so comparing the strings compares the times.
            threshold = iso(datetime.fromisoformat(since).astimezone(UTC))
            members = [m for m in members if m["last_changed"] >= threshold]
        return self._page(
            request,
            "members",
            members,
            render=lambda m: self._render_member(audience, m),
            extra={"list_id": list_id},
        )

    def _get_member(self, request: Request, list_id: str, key: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        member = self._member(audience, key)
        if member is None:
            return self.error(404, "The requested resource could not be found.", request)
        return self._fields(request, self._render_member(audience, member))

    def _post_member(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        body = request.json() or {}
        email = str(body.get("email_address", "")).strip()
        if "@" not in email:
            return self.error(
                400,
                "Please provide a valid email address.",
                request,
                title="Invalid Resource",
            )
        if self._member(audience, email) is not None:
            return self.error(
                400,
                f"{email} is already a list member. Use PUT to insert or update list members.",
                request,
                title="Member Exists",
            )
        return self._create(audience, email, body.get("status"), body, request)

    def _create(
        self,
        audience: dict[str, Any],
        email: str,
        status: Any,
        body: dict[str, Any],
        request: Request,
    ) -> Response:
        if status not in ("subscribed", "unsubscribed", "pending", "transactional"):
            return self.error(
                400,
                "The resource submitted could not be validated.",
                request,
                errors=[
                    {
                        "field": "status",
                        "message": "Status must be one of subscribed, unsubscribed, pending, transactional",
                    }
                ],
            )
        if subscriber_hash(email) in audience["forgotten"]:
            return self.error(
                400,
                f"{email} was permanently deleted and cannot be re-imported. The contact must "
                "re-subscribe to get back on the list.",
                request,
                title="Forgotten Email Not Subscribed",
            )
        merge = self._check_merge_fields(audience, body.get("merge_fields"), request)
        if isinstance(merge, Response):
            return merge
        member = self.add_member(audience["id"], email, status, merge_fields=merge)
        return Response(200, self._render_member(audience, member))

    def _put_member(self, request: Request, list_id: str, key: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        body = request.json() or {}
        email = str(body.get("email_address") or key)
        member = self._member(audience, key)
        if member is None or member["status"] == "archived":
            # PUT creates the member, or brings an archived one back, with status_if_new (or status).
            if member is not None:
                del audience["members"][member["id"]]
                email = member["email_address"]
            return self._create(
                audience,
                email,
                body.get("status") or body.get("status_if_new"),
                body,
                request,
            )
        return self._update(audience, member, body, request)  # status_if_new is ignored for existing members

    def _patch_member(self, request: Request, list_id: str, key: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        member = self._member(audience, key)
        if member is None:
            return self.error(404, "The requested resource could not be found.", request)
        return self._update(audience, member, request.json() or {}, request)

    def _update(
        self,
        audience: dict[str, Any],
        member: dict[str, Any],
        body: dict[str, Any],
        request: Request,
    ) -> Response:
        status = body.get("status")
        if status is not None and status != member["status"]:
            if status == "cleaned" or status not in STATUSES:
                return self.error(400, f"Status {status!r} cannot be set through the API.", request)
            if status == "subscribed" and member["status"] in (
                "unsubscribed",
                "cleaned",
            ):
                return self.error(
                    400,
                    f"{member['email_address']} is in a compliance state due to unsubscribe, "
                    "bounce, or compliance review and cannot be subscribed.",
                    request,
                    title="Member In Compliance State",
                )
        merge = self._check_merge_fields(audience, body.get("merge_fields"), request)
        if isinstance(merge, Response):
            return merge
        member["merge_fields"].update(merge)
        if status is not None:
            member["status"] = status
        self._touch(member)
        return Response(200, self._render_member(audience, member))

    def _post_tags(self, request: Request, list_id: str, key: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        member = self._member(audience, key)
        if member is None:
            return self.error(404, "The requested resource could not be found.", request)
        for tag in (request.json() or {}).get("tags", []):
            segment = self._segment_named(audience, tag["name"], create=tag.get("status") == "active")
            if segment is not None:
                (segment["members"].add if tag.get("status") == "active" else segment["members"].discard)(member["id"])
        self._touch(member)
        return Response(204)

    def _forget(self, request: Request, list_id: str, key: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        member = self._member(audience, key)
        if member is None:
            return self.error(404, "The requested resource could not be found.", request)
        del audience["members"][member["id"]]
        for segment in audience["segments"].values():
            segment["members"].discard(member["id"])
        audience["forgotten"].add(member["id"])
        return Response(204)

    # --- paging and field filters ---------------------------------------------------------------------------------

    def _page(
        self,
        request: Request,
        key: str,
        items: list[Any],
        render: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> Response:
        try:
            count = int(request.arg("count", "10"))
            offset = int(request.arg("offset", "0"))
        except ValueError:
            return self.error(400, "count and offset must be whole numbers.", request)
        if count > MAX_COUNT or count < 0 or offset < 0:
            return self.error(
                400,
                f"count must be between 0 and {MAX_COUNT}; offset at least 0.",
                request,
                errors=[{"field": "count", "message": f"Maximum {MAX_COUNT}"}],
            )
        window = items[offset : offset + count]
        body = {
            key: [render(i) for i in window] if render else window,
            **(extra or {}),
            "total_items": len(items),
        }
        return self._fields(request, body)

    def _fields(self, request: Request, body: dict[str, Any]) -> Response:
        wanted = [f for f in (request.arg("fields") or "").split(",") if f]
        unwanted = [f for f in (request.arg("exclude_fields") or "").split(",") if f]
        if wanted:
            body = _keep(body, [f.split(".") for f in wanted])
        for path in unwanted:
            _drop(body, path.split("."))
        return Response(200, body)


def _keep(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_keep(item, paths) for item in value]
    if not isinstance(value, dict):
        return value
    kept: dict[str, Any] = {}
    for name in dict.fromkeys(p[0] for p in paths):
        if name not in value:
            continue
        rest = [p[1:] for p in paths if p[0] == name]
        kept[name] = value[name] if any(not r for r in rest) else _keep(value[name], [r for r in rest if r])
    return kept


def _drop(value: Any, path: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _drop(item, path)
    elif isinstance(value, dict) and path[0] in value:
        if len(path) == 1:
            del value[path[0]]
        else:
            _drop(value[path[0]], path[1:])


def demo(size: int, seed: int) -> MailchimpSandbox:
    """A made-up shop's audience of ``size`` members, a few sent campaigns and a connected store."""
    from connectors.mailchimp.seed import seed_audience

    sandbox = MailchimpSandbox(seed=seed)
    seed_audience(sandbox, size, seed)
    return sandbox
