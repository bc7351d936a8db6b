"""The sandbox and the connector against Mailchimp's published OpenAPI document (../shared/specs/mailchimp).

PyYAML is not a dependency, so a small reader below turns the block-style YAML the OpenAPI generator writes
into nested dicts; it is only good for that document. Checked: every request the connector sends (method, path,
query parameters, body fields) is declared, and every field the sandbox answers with is declared for that
response (top level and the items of its list).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from connectors.mailchimp.client import MailchimpClient
from connectors.mailchimp.destination import MailchimpDestination
from connectors.mailchimp.mapping import desired_from_scores, subscriber_hash
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID, STORE_ID, member_email, seed_audience
from connectors.mailchimp.source import MailchimpSource
from connectors.records import Score
from sync.engine import push_changes, run_source_once
from sync.settings import MailchimpSettings
from sync.store import Store

SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "mailchimp" / "marketing-api-3.0.55.openapi.yaml"
KEY = "conformance-us6"
# Schema-name collisions in the generated 3.0.55 document: some list wrappers give their own name to their
# items (List_Members_2.members[] → List_Members_2), and the one-member GET answers the wrapper. The member
# schema survives as List_Members and is put back; Email_Activity and Unsubscribes lost their item schemas
# entirely, so those items are not checked (check_fields skips a schema whose items are itself).
ITEM_SCHEMAS = {("List_Members_2", "members"): "List_Members"}
MEMBER_SCHEMA = "#/components/schemas/List_Members"


def read_yaml_blocks(text: str) -> dict[str, Any]:
    """Block-style YAML → nested dicts; list items go under "_items"; scalars under "_value"."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any], bool]] = [(-1, root, False)]  # (indent, node, is a list item)
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        is_item = stripped.startswith("- ") or stripped == "-"
        # A list may sit at its key's own indent ("parameters:" then "- name: ..." below it, same column).
        while stack[-1][0] > indent or (stack[-1][0] == indent and (stack[-1][2] or not is_item)):
            stack.pop()
        parent = stack[-1][1]
        if is_item:
            item: dict[str, Any] = {}
            parent.setdefault("_items", []).append(item)
            stack.append((indent, item, True))
            parent, stripped, indent = item, stripped[2:], indent + 2
        found = re.match(r"""^('[^']*'|"[^"]*"|[^'"\s][^:]*):(?:\s+(.*))?$""", stripped)
        if not found:
            continue  # a continuation line of a long string
        key = found.group(1).strip("'\"")
        node: dict[str, Any] = {"_value": (found.group(2) or "").strip("'\"")}
        parent[key] = node
        stack.append((indent, node, False))
    return root


@lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    document = read_yaml_blocks(SPEC.read_text(encoding="utf-8"))
    for (wrapper, key), item in ITEM_SCHEMAS.items():
        document["components"]["schemas"][wrapper]["properties"][key]["items"] = {
            "$ref": {"_value": f"#/components/schemas/{item}"}
        }
    return document


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", {}).get("_value")
    if ref:
        return resolve(spec()["components"]["schemas"][ref.rsplit("/", 1)[-1]])
    return schema


def properties(schema: dict[str, Any]) -> dict[str, Any]:
    schema = resolve(schema)
    found = {k: v for k, v in schema.get("properties", {}).items() if k != "_value"}
    for part in schema.get("allOf", {}).get("_items", []):
        found.update(properties(part))
    return found


def operation(path: str, method: str) -> dict[str, Any]:
    return spec()["paths"][path][method.lower()]


def spec_path_for(concrete: str, method: str) -> str | None:
    """The spec's path template matching a concrete request path, preferring the most literal one."""
    matches = []
    for template, item in spec()["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, concrete) and method.lower() in item:
            matches.append(template)
    return max(matches, key=lambda t: len(re.sub(r"\{[^}]+\}", "", t)), default=None)


def check_fields(body: Any, schema: dict[str, Any], where: str, depth: int = 2) -> list[str]:
    """Names in ``body`` that the schema does not declare, down to ``depth`` levels."""
    declared = properties(schema)
    if not isinstance(body, dict) or not declared:
        return []
    problems = [f"{where}.{name}" for name in body if name not in declared]
    if depth > 1:
        for name, value in body.items():
            if name not in declared:
                continue
            sub = resolve(declared[name])
            if isinstance(value, list) and value and isinstance(value[0], dict) and "items" in sub:
                if resolve(sub["items"]) is resolve(schema):
                    continue  # the document lost this item schema (see ITEM_SCHEMAS)
                problems += check_fields(value[0], sub["items"], f"{where}.{name}[]", depth - 1)
            elif isinstance(value, dict) and properties(sub):
                problems += check_fields(value, sub, f"{where}.{name}", depth - 1)
    return problems


@pytest.fixture(scope="module")
def exercised(tmp_path_factory):
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is absent: the conformance test needs ../shared/specs/mailchimp beside the repository")
    sandbox = MailchimpSandbox(api_key=KEY)
    seed_audience(sandbox, 1_200, seed=5, orders=50)
    with sandbox:
        settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,), add_new_contacts=True)
        client = MailchimpClient(settings, api_key=KEY, base_url=sandbox.url, clock=sandbox.clock)
        store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('mc')}/r.db")
        run_source_once(store, MailchimpSource(client), "sync", "mailchimp")
        as_of = datetime(2026, 11, 1, tzinfo=UTC)
        scores = [
            Score(
                source="scoring",
                source_id=e,
                churn_probability=0.3,
                risk_band="medium",
                scored_at=as_of,
                segment="Loyal",
                clv=Decimal("10.00"),
                clv_currency="EUR",
            )
            for e in [member_email(i) for i in range(1_000, 1_100)] + ["fresh@example.org"]
        ]
        push_changes(store, MailchimpDestination(client, LIST_ID), desired_from_scores(scores))
        sdk = client.sdk
        one_operation = {
            "method": "PATCH",
            "path": f"/lists/{LIST_ID}/members/{subscriber_hash(member_email(1_001))}",
            "operation_id": "one",
            "body": '{"merge_fields": {"SEGMENT": "Loyal"}}',
        }
        started = sdk.batches.start({"operations": [one_operation]})
        answers = {
            ("POST", "/batches"): started,
            ("GET", "/batches/{batch_id}"): sdk.batches.status(started["id"]),
            ("GET", "/lists/{list_id}"): sdk.lists.get_list(LIST_ID),
            (
                "GET",
                "/lists/{list_id}/members/{subscriber_hash}",
            ): sdk.lists.get_list_member(LIST_ID, subscriber_hash(member_email(1_000))),
            ("GET", "/lists/{list_id}/members"): sdk.lists.get_list_members_info(LIST_ID, count=5),
            ("GET", "/lists/{list_id}/segments"): sdk.lists.list_segments(LIST_ID),
            ("GET", "/lists/{list_id}/merge-fields"): sdk.lists.get_list_merge_fields(LIST_ID),
            ("GET", "/campaigns"): sdk.campaigns.list(count=2),
            (
                "GET",
                "/reports/{campaign_id}/email-activity",
            ): sdk.reports.get_email_activity_for_campaign("cmp0001", count=5),
            (
                "GET",
                "/reports/{campaign_id}/unsubscribed",
            ): sdk.reports.get_unsubscribed_list_for_campaign("cmp0001"),
            ("GET", "/ecommerce/stores"): sdk.ecommerce.stores(),
            (
                "GET",
                "/ecommerce/stores/{store_id}/orders",
            ): sdk.ecommerce.get_store_orders(STORE_ID, count=5),
            (
                "GET",
                "/ecommerce/stores/{store_id}/customers",
            ): sdk.ecommerce.get_all_store_customers(STORE_ID, count=5),
        }
        yield sandbox, answers


def test_every_request_the_connector_sends_is_declared_in_the_spec(exercised):
    sandbox, _ = exercised
    problems = set()
    for entry in sandbox.journal:
        if not entry.path.startswith("/3.0/"):
            continue  # a batch's results download: pre-signed storage, not the API
        path = entry.path.removeprefix("/3.0")
        template = spec_path_for(path, entry.method)
        if template is None:
            problems.add(f"{entry.method} {path}: not in the spec")
            continue
        op = operation(template, entry.method)
        declared = {
            p["name"]["_value"]
            for p in op.get("parameters", {}).get("_items", [])
            if p.get("in", {}).get("_value") == "query"
        }
        problems |= {f"{entry.method} {template}?{name}" for name in entry.query if name not in declared}
        if isinstance(entry.body, dict):
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            problems |= set(check_fields(entry.body, schema, f"{entry.method} {template} body"))
    assert len(sandbox.journal) > 20 and not problems, sorted(problems)
    assert sandbox.journal.entries("POST", r"/batches\Z"), "the merge fields of 100 members went in a batch"


def test_every_field_the_sandbox_answers_with_is_declared_in_the_spec(exercised):
    _, answers = exercised
    problems = []
    for (method, path), body in answers.items():
        schema = operation(path, method)["responses"]["200"]["content"]["application/json"]["schema"]
        if (method, path) == ("GET", "/lists/{list_id}/members/{subscriber_hash}"):
            schema = {"$ref": {"_value": MEMBER_SCHEMA}}
        problems += check_fields(body, schema, f"{method} {path}")
    assert not problems, problems


def test_errors_are_problem_documents_with_the_declared_fields(exercised):
    sandbox, _ = exercised
    error_schema = spec()["components"]["schemas"]["Problem_Detail_Document"]
    declared = set(properties(error_schema))
    import requests

    response = requests.get(f"{sandbox.url}/3.0/lists/nope", auth=("user", KEY), timeout=5)
    assert response.status_code == 404 and response.headers["Content-Type"].startswith("application/problem+json")
    assert {"type", "title", "status", "detail", "instance"} <= set(response.json()) <= declared | {"errors"}
