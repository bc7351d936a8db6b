"""The HubSpot sandbox's endpoints: search, list, batch read/update, properties and groups, pipelines, v4 associations,
event analytics (v3 events and event types).

Handlers run under the sandbox lock (connectors.sandbox.Sandbox). Validation mirrors HubSpot's published rules
(../shared/specs/README.md): 100-input batches, search limit 200 and the 10,000-result cap, 207 multi-status.
"""

from __future__ import annotations

import bisect
from decimal import InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from connectors.hubspot.sandbox import (
    FIELD_TYPES,
    EVENT_TYPES,
    MAX_BATCH_INPUTS,
    MAX_EVENTS_LIMIT,
    MAX_SEARCH_LIMIT,
    MODIFIED_PROPERTY,
    SEARCH_CAP,
    canonical_number,
    iso_ms,
    parse_time_ms,
)
from connectors.sandbox import Request, Response

if TYPE_CHECKING:
    from connectors.hubspot.sandbox import HubSpotSandbox

TYPES = r"(?P<object_type>contacts|companies|deals)"
DEFAULT_PROPERTIES = {"contacts": ("firstname", "lastname", "email"), "companies": ("name", "domain"),
                      "deals": ("dealname", "amount", "dealstage", "pipeline", "closedate")}
DATE_PROPERTIES = {"createdate", "lastmodifieddate", "hs_lastmodifieddate", "closedate"}


def add_routes(box: HubSpotSandbox) -> None:
    box.route("POST", rf"/crm/v3/objects/{TYPES}/search", lambda r, object_type: search(box, r, object_type))
    box.route("POST", r"/oauth/v1/token", lambda r: refresh_token(box, r))
    box.route("GET", rf"/crm/v3/objects/{TYPES}", lambda r, object_type: list_page(box, r, object_type))
    box.route("GET", rf"/crm/v3/objects/{TYPES}/(?P<object_id>\d+)", lambda r, object_type, object_id: get_one(box, r, object_type, object_id))
    box.route("POST", rf"/crm/v3/objects/{TYPES}/batch/read", lambda r, object_type: batch_read(box, r, object_type))
    box.route("POST", rf"/crm/v3/objects/{TYPES}/batch/update", lambda r, object_type: batch_update(box, r, object_type))
    box.route("POST", r"/crm/v3/objects/contacts/merge", lambda r: merge(box, r))
    box.route("POST", r"/crm/v3/objects/contacts/gdpr-delete", lambda r: gdpr_delete(box, r))
    box.route("POST", r"/crm/v4/associations/deals/contacts/batch/read", lambda r: associations(box, r))
    box.route("GET", r"/events/v3/events/?", lambda r: events_page(box, r))  # the SDK adds the slash
    box.route("GET", r"/events/v3/events/event-types", lambda r: Response(200, {"eventTypes": list(EVENT_TYPES)}))
    box.route("GET", rf"/crm/v3/pipelines/{TYPES}", lambda r, object_type: Response(200, {"results": box.pipelines}))
    box.route("GET", rf"/crm/v3/properties/{TYPES}", lambda r, object_type: Response(200, {"results": list(box.properties[object_type].values())}))
    box.route("POST", rf"/crm/v3/properties/{TYPES}", lambda r, object_type: create_property(box, r, object_type))
    box.route("GET", rf"/crm/v3/properties/{TYPES}/groups", lambda r, object_type: Response(200, {"results": list(box.groups[object_type].values())}))
    box.route("POST", rf"/crm/v3/properties/{TYPES}/groups", lambda r, object_type: create_group(box, r, object_type))


def render(box: HubSpotSandbox, object_type: str, item: dict[str, Any], names: list[str] | None, archived: bool = False) -> dict[str, Any]:
    wanted = list(names) if names else list(DEFAULT_PROPERTIES[object_type])
    wanted += ["hs_object_id", "createdate", MODIFIED_PROPERTY[object_type]]
    props = item["properties"]
    body = {"id": item["id"], "properties": {n: props.get(n) for n in wanted if n in box.properties[object_type]},
            "createdAt": iso_ms(item["created_ms"]), "updatedAt": iso_ms(item["modified_ms"]), "archived": archived}
    if archived:
        body["archivedAt"] = iso_ms(item["archived_ms"])
    return body


# --- search -----------------------------------------------------------------------------------------------------


def _matches(props: dict[str, Any], flt: dict[str, Any]) -> bool:
    name, op = flt.get("propertyName"), flt.get("operator")
    have = props.get(name)
    if op == "HAS_PROPERTY":
        return have is not None
    if op == "NOT_HAS_PROPERTY":
        return have is None
    if have is None:
        return False
    want = flt.get("value")
    if name in DATE_PROPERTIES:
        have_key, want_key = parse_time_ms(have), parse_time_ms(want)
    elif name == "hs_object_id":
        have_key, want_key = int(have), int(want)
    else:
        have_key, want_key = str(have).lower(), str(want).lower()
    return {"EQ": have_key == want_key, "NEQ": have_key != want_key, "GT": have_key > want_key, "GTE": have_key >= want_key,
            "LT": have_key < want_key, "LTE": have_key <= want_key}.get(op, False)


def _group_keys(box: HubSpotSandbox, object_type: str, group: dict[str, Any]) -> list[tuple[int, int]]:
    """Index keys matching one filter group; the modified-date bounds narrow the index slice before scanning."""
    index = box.index[object_type]
    low, high = 0, len(index)
    modified = MODIFIED_PROPERTY[object_type]
    rest = []
    for flt in group.get("filters", []):
        if flt.get("propertyName") == modified and flt.get("operator") in ("GTE", "GT", "LTE", "LT", "EQ"):
            at = parse_time_ms(flt["value"])
            op = flt["operator"]
            if op in ("GTE", "EQ"):
                low = max(low, bisect.bisect_left(index, (at, -1)))
            if op == "GT":
                low = max(low, bisect.bisect_left(index, (at + 1, -1)))
            if op in ("LTE", "EQ"):
                high = min(high, bisect.bisect_left(index, (at + 1, -1)))
            if op == "LT":
                high = min(high, bisect.bisect_left(index, (at, -1)))
        else:
            rest.append(flt)
    objects = box.objects[object_type]
    keys = index[low:high] if low < high else []
    if not rest:
        return keys
    return [k for k in keys if all(_matches(objects[str(k[1])]["properties"], f) for f in rest)]


def _validate_search(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_LIMIT:
        return f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}"
    groups = body.get("filterGroups") or []
    if len(groups) > 5 or sum(len(g.get("filters", [])) for g in groups) > 25 or any(len(g.get("filters", [])) > 10 for g in groups):
        return "Too many filters: at most 5 filterGroups, 10 filters per group and 25 filters in all"
    return None


def search(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    body = request.json()
    problem = _validate_search(body)
    if problem:
        return box.error(400, problem, request)
    after = int(body.get("after") or 0)
    if after >= SEARCH_CAP:
        # HubSpot: no results past 10,000; paging beyond is a 400 (specs README rule 4)
        return box.error(400, f"Cannot page past {SEARCH_CAP:,} results; narrow the filters", request)
    groups = body.get("filterGroups") or [{"filters": []}]
    if len(groups) == 1:
        keys = _group_keys(box, object_type, groups[0])  # a slice of the index: already in (modified, id) order
    else:
        found: set[tuple[int, int]] = set()
        for group in groups:
            found.update(_group_keys(box, object_type, group))
        keys = sorted(found)  # (modified, id): the order of the supported sorts
    sorts = body.get("sorts") or []
    first_sort = sorts[0] if sorts else None
    if isinstance(first_sort, dict) and first_sort.get("propertyName") == "hs_object_id":
        keys.sort(key=lambda k: k[1], reverse=first_sort.get("direction") == "DESCENDING")
    elif isinstance(first_sort, dict) and first_sort.get("direction") == "DESCENDING":
        keys.reverse()
    limit = body.get("limit", 10)
    chosen = keys[after : after + limit]
    objects = box.objects[object_type]
    results = [render(box, object_type, objects[str(k[1])], body.get("properties")) for k in chosen]
    response: dict[str, Any] = {"total": len(keys), "results": results}
    if after + limit < len(keys):
        response["paging"] = {"next": {"after": str(after + limit), "link": ""}}
    return Response(200, response)


# --- reads -------------------------------------------------------------------------------------------------------


def list_page(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    archived = (request.arg("archived", "false") or "").lower() == "true"
    pool = box.archived[object_type] if archived else box.objects[object_type]
    limit = int(request.arg("limit", "10") or 10)
    if not 1 <= limit <= 100:
        return box.error(400, f"limit must be between 1 and 100, got {limit}", request)
    after = int(request.arg("after", "0") or 0)
    ids = sorted(int(i) for i in pool if int(i) > after)
    names = [n for v in request.query.get("properties", []) for n in v.split(",") if n]
    results = [render(box, object_type, pool[str(i)], names, archived) for i in ids[:limit]]
    body: dict[str, Any] = {"results": results}
    if len(ids) > limit:
        body["paging"] = {"next": {"after": str(ids[limit - 1]), "link": ""}}
    return Response(200, body)


def events_page(box: HubSpotSandbox, request: Request) -> Response:
    """Events filtered by object, type and time (occurredAfter/Before exclusive), sorted by occurredAt, keyset-paged."""
    try:
        limit = int(request.arg("limit", "10") or 10)
        low = parse_time_ms(request.arg("occurredAfter")) if request.arg("occurredAfter") else None
        high = parse_time_ms(request.arg("occurredBefore")) if request.arg("occurredBefore") else None
    except ValueError as exc:
        return box.error(400, f"Invalid query parameter: {exc}", request)
    if not 1 <= limit <= MAX_EVENTS_LIMIT:
        return box.error(400, f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}", request)
    sort = (request.query.get("sort") or ["-occurredAt"])[0]
    if sort not in ("occurredAt", "-occurredAt"):
        return box.error(400, f"sort must be occurredAt or -occurredAt, got {sort}", request)
    object_type, object_id, event_type = request.arg("objectType"), request.arg("objectId"), request.arg("eventType")
    if object_type not in (None, "contact", "0-1"):
        return box.error(400, f"objectType {object_type} has no events in this account", request)
    picked = [e for e in box.events
              if (event_type is None or e["eventType"] == event_type) and (object_id is None or e["objectId"] == object_id)
              and (low is None or e["occurred_ms"] > low) and (high is None or e["occurred_ms"] < high)]
    descending = sort.startswith("-")
    picked.sort(key=lambda e: (e["occurred_ms"], e["id"]), reverse=descending)
    after = request.arg("after")
    if after:
        ms, _, last_id = after.partition("_")
        if not ms.isdigit() or not last_id:
            return box.error(400, f"after {after} is not a paging token this endpoint issued", request)
        key = (int(ms), last_id)
        picked = [e for e in picked if ((e["occurred_ms"], e["id"]) < key if descending else (e["occurred_ms"], e["id"]) > key)]
    results = [{"objectType": "CONTACT", "objectId": e["objectId"], "eventType": e["eventType"], "occurredAt": iso_ms(e["occurred_ms"]),
                "id": e["id"], "properties": e["properties"]} for e in picked[:limit]]
    body: dict[str, Any] = {"results": results}
    if len(picked) > limit:
        last = picked[limit - 1]
        body["paging"] = {"next": {"after": f"{last['occurred_ms']}_{last['id']}", "link": ""}}
    return Response(200, body)


def get_one(box: HubSpotSandbox, request: Request, object_type: str, object_id: str) -> Response:
    item = box.resolve(object_type, object_id)
    if item is None:
        return box.error(404, "Object not found. objectId are usually numeric.", request, context={"id": [object_id]})
    names = [n for v in request.query.get("properties", []) for n in v.split(",") if n]
    return Response(200, render(box, object_type, item, names))


def _inputs(box: HubSpotSandbox, request: Request) -> tuple[list[dict[str, Any]], Response | None]:
    body = request.json()
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        return [], box.error(400, "Request body must have an inputs list", request)
    if len(inputs) > MAX_BATCH_INPUTS:
        # HubSpot: batch endpoints accept at most 100 inputs (specs README rule 1)
        return [], box.error(400, f"Batch input is limited to {MAX_BATCH_INPUTS} inputs, got {len(inputs)}", request)
    return inputs, None


def _multi_status(results: list[Any], errors: list[dict[str, Any]], started: str) -> Response:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": started}
    if errors:
        body.update(errors=errors, numErrors=len(errors))
        return Response(207, body)
    return Response(200, body)


def _batch_error(category: str, message: str, ids: list[str], code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"status": "error", "category": category, "message": message, "context": {"ids": ids}, "links": {}}
    if code:
        error["errors"] = [{"message": message, "code": code}]
    return error


def batch_read(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    inputs, refusal = _inputs(box, request)
    if refusal:
        return refusal
    names = request.json().get("properties") or None
    results, missing = [], []
    for entry in inputs:
        item = box.resolve(object_type, str(entry.get("id")))
        if item is None:
            missing.append(str(entry.get("id")))
        else:
            results.append(render(box, object_type, item, names))
    errors = [_batch_error("OBJECT_NOT_FOUND", "Could not get some objects, they may be deleted or not exist.", missing)] if missing else []
    return _multi_status(results, errors, iso_ms(box.now_ms()))


def _check_value(definition: dict[str, Any], value: Any) -> tuple[str | None, str | None]:
    """(the value as HubSpot stores it, None) or (None, error code and message)."""
    if value is None or value == "":
        return "", None
    kind, name = definition["type"], definition["name"]
    try:
        if kind == "number":
            return canonical_number(value), None
        if kind in ("datetime", "date"):
            return iso_ms(parse_time_ms(value)), None
    except (InvalidOperation, ValueError):
        return None, f"INVALID_{kind.upper()}: {value!r} is not a valid {kind} for property {name}"
    if kind == "bool" and str(value).lower() not in ("true", "false"):
        return None, f"INVALID_BOOLEAN: {value!r} is not true or false for property {name}"
    if kind == "enumeration":
        allowed = {o["value"] for o in definition.get("options", [])}
        chosen = str(value).split(";") if definition["fieldType"] == "checkbox" else [str(value)]
        bad = [c for c in chosen if c not in allowed]
        if bad and allowed:
            return None, f"INVALID_OPTION: {bad[0]!r} was not one of the allowed options for property {name}"
    return str(value), None


def batch_update(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    inputs, refusal = _inputs(box, request)
    if refusal:
        return refusal
    definitions = box.properties[object_type]
    planned, errors = [], []
    for entry in inputs:
        object_id = str(entry.get("id"))
        if box.resolve(object_type, object_id) is None:
            errors.append(_batch_error("OBJECT_NOT_FOUND", f"Object {object_id} not found", [object_id]))
            continue
        stored, problem = {}, None
        for name, value in (entry.get("properties") or {}).items():
            if name not in definitions:
                problem = f"PROPERTY_DOESNT_EXIST: Property \"{name}\" does not exist"
                break
            stored[name], problem = _check_value(definitions[name], value)
            if problem:
                break
        if problem:
            code, message = problem.split(": ", 1)
            errors.append(_batch_error("VALIDATION_ERROR", message, [object_id], code))
        else:
            planned.append((object_id, stored))
    if errors and box.batch_errors == "whole":
        first = errors[0]
        return box.error(400, first["message"], request, errors=first.get("errors", []), context=first["context"])
    for object_id, stored in planned:
        box.update(object_type, object_id, {k: (v or None) for k, v in stored.items()})
    results = [render(box, object_type, box.objects[object_type][i], list(s)) for i, s in planned]
    return _multi_status(results, errors, iso_ms(box.now_ms()))


def refresh_token(box: HubSpotSandbox, request: Request) -> Response:
    form = {k: v[-1] for k, v in parse_qs(request.body.decode()).items()}
    if form.get("grant_type") != "refresh_token":
        return Response(400, {"status": "BAD_GRANT_TYPE", "message": "grant_type must be refresh_token here"})
    issued = box.issue_access_token(form.get("refresh_token", ""), form.get("client_id", ""), form.get("client_secret", ""))
    if issued is None:
        return Response(400, {"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"})
    return Response(200, issued)


def merge(box: HubSpotSandbox, request: Request) -> Response:
    body = request.json() or {}
    primary, merged = str(body.get("primaryObjectId")), str(body.get("objectIdToMerge"))
    if box.resolve("contacts", primary) is None or box.resolve("contacts", merged) is None:
        return box.error(404, "Object not found", request)
    box.merge(primary, merged)
    return Response(200, render(box, "contacts", box.objects["contacts"][primary], None))


def gdpr_delete(box: HubSpotSandbox, request: Request) -> Response:
    """contacts-v3.json PublicGdprDeleteInput: ``objectId`` (required), optionally ``idProperty: "email"``. An email
    HubSpot does not know is blocklisted instead (204 either way); an unknown id is a 404."""
    body = request.json()
    if not isinstance(body, dict) or not str(body.get("objectId") or "").strip():
        return box.error(400, "Invalid input: objectId is required", request)
    id_property, object_id = body.get("idProperty"), str(body["objectId"]).strip()
    if id_property not in (None, "email", "hs_object_id"):
        return box.error(400, f"Property {id_property!r} is not a unique identifier property", request)
    contact_id = box.find_contact_by_email(object_id) if id_property == "email" else object_id
    if contact_id is not None and (box.resolve("contacts", contact_id) or box.archived["contacts"].get(contact_id)):
        box.purge(contact_id)
    elif id_property == "email":
        box.blocklist.add(object_id.lower())
    else:
        return box.error(404, "Object not found", request)
    return Response(204)


def associations(box: HubSpotSandbox, request: Request) -> Response:
    inputs, refusal = _inputs(box, request)
    if refusal:
        return refusal
    results = []
    for entry in inputs:
        deal_id = str(entry.get("id"))
        contact_ids = sorted(c for c in box.associations.get(deal_id, ()) if box.resolve("contacts", c) is not None)
        results.append({"from": {"id": deal_id}, "to": [
            {"toObjectId": c, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3}]}
            for c in contact_ids]})
    return _multi_status(results, [], iso_ms(box.now_ms()))


# --- properties and groups -------------------------------------------------------------------------------------


def create_group(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    body = request.json() or {}
    name = body.get("name")
    if not name or not body.get("label"):
        return box.error(400, "Property group needs a name and a label", request)
    if name in box.groups[object_type]:
        return box.error(409, f"A property group named '{name}' already exists.", request)
    group = {"name": name, "label": body["label"], "displayOrder": body.get("displayOrder", -1), "archived": False}
    box.groups[object_type][name] = group
    return Response(201, group)


def create_property(box: HubSpotSandbox, request: Request, object_type: str) -> Response:
    body = request.json() or {}
    missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
    if missing:
        return box.error(400, f"Property is missing {', '.join(missing)}", request)
    name, kind, field_type = body["name"], body["type"], body["fieldType"]
    if name in box.properties[object_type]:
        return box.error(409, f"Property named '{name}' already exists.", request)
    if field_type not in FIELD_TYPES.get(kind, set()):
        return box.error(400, f"fieldType {field_type!r} is not valid for type {kind!r}", request)
    if body["groupName"] not in box.groups[object_type]:
        return box.error(400, f"Property group {body['groupName']!r} does not exist", request)
    options = body.get("options") or []
    if kind == "enumeration" and not options:
        return box.error(400, "An enumeration property needs options", request)
    definition = {"name": name, "label": body["label"], "type": kind, "fieldType": field_type, "groupName": body["groupName"],
                  "options": options, "description": body.get("description", ""), "hubspotDefined": False,
                  "calculated": False, "externalOptions": False, "createdAt": iso_ms(box.now_ms()), "archived": False}
    box.properties[object_type][name] = definition
    return Response(201, definition)
