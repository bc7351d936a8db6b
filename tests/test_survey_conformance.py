"""The survey sandboxes against ../shared/specs: Google's discovery document, and the documented envelopes of
Typeform and SurveyMonkey (they publish no OpenAPI). A spec file that is absent skips its tests, saying which."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.forms import google_sandbox, surveymonkey_sandbox, typeform_sandbox
from connectors.forms.google_forms import PAGE_SIZE as GOOGLE_PAGE_SIZE
from connectors.sandbox import Clock

SPECS = Path(__file__).resolve().parent.parent.parent / "shared" / "specs"
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def spec_file(relative: str) -> Path:
    path = SPECS / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent: conformance needs ../shared/specs beside the repository")
    return path


def json_examples(markdown: Path) -> list[Any]:
    blocks = re.findall(r"```json\n(.*?)```", markdown.read_text(), re.DOTALL)
    return [json.loads(block.replace("[ ... ]", "[]")) for block in blocks]  # the facts elide lists as [ ... ]


def get(url: str, token: str, **params: Any) -> requests.Response:
    return requests.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


# --- Google Forms: every field the sandbox sends is declared, with its declared type ---------------------------


def violations(value: Any, schema: dict[str, Any], schemas: dict[str, Any], where: str) -> list[str]:
    """What in ``value`` the discovery schema does not allow: unknown properties, wrong types, values not in an enum."""
    if "$ref" in schema:
        return violations(value, schemas[schema["$ref"]], schemas, where)
    expected = schema.get("type")
    if expected == "string" and schema.get("format") in ("int64", "google-datetime") and isinstance(value, str):
        return []
    if expected in TYPES and (not isinstance(value, TYPES[expected]) or (expected != "boolean" and isinstance(value, bool))):
        return [f"{where}: {type(value).__name__} where the spec says {expected}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of the declared values"]
    found = []
    if expected == "array":
        for index, element in enumerate(value):
            found += violations(element, schema.get("items", {}), schemas, f"{where}[{index}]")
    if expected == "object":
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, element in value.items():
            if properties is not None and key in properties:
                found += violations(element, properties[key], schemas, f"{where}.{key}")
            elif extra is not None:
                found += violations(element, extra, schemas, f"{where}.{key}")
            else:
                found.append(f"{where}.{key}: not declared in the spec")
    return found


@pytest.fixture(scope="module")
def discovery() -> dict[str, Any]:
    return json.loads(spec_file("google-forms/forms.v1.discovery.json").read_text())


@pytest.fixture(scope="module")
def google():
    with google_sandbox.demo(300, 4, clock=Clock(speed=100), token="t") as sandbox:
        yield sandbox


def test_google_form_and_response_pages_match_the_discovery_schemas(discovery, google) -> None:
    schemas = discovery["schemas"]
    form = get(f"{google.url}/v1/forms/{google_sandbox.DEMO_FORM_ID}", "t").json()
    page = get(f"{google.url}/v1/forms/{google_sandbox.DEMO_FORM_ID}/responses", "t", pageSize=100).json()
    assert violations(form, {"$ref": "Form"}, schemas, "Form") == []
    assert violations(page, {"$ref": "ListFormResponsesResponse"}, schemas, "ListFormResponsesResponse") == []
    assert len(page["responses"]) == 100 and page["nextPageToken"]


def test_google_checker_catches_a_field_the_spec_does_not_declare(discovery) -> None:
    wrong = {"responses": [{"responseId": "x", "submittedBy": "someone", "totalScore": "high"}]}
    assert violations(wrong, {"$ref": "ListFormResponsesResponse"}, discovery["schemas"], "L") == [
        "L.responses[0].submittedBy: not declared in the spec", "L.responses[0].totalScore: str where the spec says number"]


def test_google_paths_and_parameters_the_client_uses_are_in_the_discovery_document(discovery) -> None:
    forms = discovery["resources"]["forms"]
    assert forms["methods"]["get"]["flatPath"] == "v1/forms/{formId}"
    listing = forms["resources"]["responses"]["methods"]["list"]
    assert listing["flatPath"] == "v1/forms/{formId}/responses"
    assert {"filter", "pageSize", "pageToken"} <= set(listing["parameters"])
    assert "5000" in listing["parameters"]["pageSize"]["description"] and GOOGLE_PAGE_SIZE == 5000


def test_google_filter_and_page_token_rules(google) -> None:
    url = f"{google.url}/v1/forms/{google_sandbox.DEMO_FORM_ID}/responses"
    assert get(url, "t", filter="lastSubmittedTime > 2020-01-01T00:00:00Z").status_code == 400, "only timestamp filters exist"
    first = get(url, "t", pageSize=50, filter="timestamp >= 2000-01-01T00:00:00Z").json()
    other_filter = get(url, "t", pageToken=first["nextPageToken"], filter="timestamp > 2001-01-01T00:00:00Z")
    assert other_filter.status_code == 400 and other_filter.json()["error"]["status"] == "INVALID_ARGUMENT"
    refused = get(url, "wrong")
    assert refused.status_code == 401 and set(refused.json()["error"]) == {"code", "message", "status"}


# --- Typeform ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typeform():
    # Fast enough that the 2-per-second limit never trips between these few requests.
    with typeform_sandbox.demo(60, 4, clock=Clock(speed=20_000), token="t") as sandbox:
        yield sandbox


def test_typeform_envelope_and_items_carry_the_documented_fields(typeform) -> None:
    example = json_examples(spec_file("typeform/typeform-api-facts.md"))[0]
    page = get(f"{typeform.url}/forms/{typeform_sandbox.DEMO_FORM_ID}/responses", "t", page_size=10).json()
    assert set(example) <= set(page)
    for item in page["items"]:
        assert set(example["items"][0]) <= set(item)
        for answer in item["answers"]:
            assert {"id", "type", "ref"} <= set(answer["field"]) and answer["type"] in answer


def test_typeform_paging_rules(typeform) -> None:
    url = f"{typeform.url}/forms/{typeform_sandbox.DEMO_FORM_ID}/responses"
    assert get(url, "t", page_size=1001).status_code == 400, "page_size is at most 1000"
    first = get(url, "t", page_size=10).json()["items"]
    assert get(url, "t", before=first[-1]["token"], sort="submitted_at,desc").status_code == 400
    submitted = first[3]["submitted_at"]
    inclusive = get(url, "t", page_size=1000, since=submitted, until=submitted).json()
    assert [i["submitted_at"] for i in inclusive["items"]] == [submitted], "since and until are inclusive"
    refused = get(url, "nope")
    assert refused.status_code == 401 and set(refused.json()) == {"code", "description"}


# --- SurveyMonkey ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def surveymonkey():
    with surveymonkey_sandbox.demo(250, 4, clock=Clock(speed=100), token="t") as sandbox:
        yield sandbox


def test_surveymonkey_envelope_items_and_errors_carry_the_documented_fields(surveymonkey) -> None:
    envelope, item, error = json_examples(spec_file("surveymonkey/surveymonkey-api-facts.md"))[:3]
    bulk = f"{surveymonkey.url}/v3/surveys/{surveymonkey_sandbox.DEMO_SURVEY_ID}/responses/bulk"
    page = get(bulk, "t", per_page=100).json()
    assert set(envelope) <= set(page) and {"self", "next", "last"} <= set(page["links"])
    assert all(set(item) <= set(served) for served in page["data"])
    refused = get(bulk, "nope")
    assert refused.status_code == 401 and set(error["error"]) == set(refused.json()["error"])


def test_surveymonkey_paging_rules(surveymonkey) -> None:
    bulk = f"{surveymonkey.url}/v3/surveys/{surveymonkey_sandbox.DEMO_SURVEY_ID}/responses/bulk"
    assert get(bulk, "t", per_page=101).status_code == 400, "bulk responses: at most 100 per page"
    last = get(bulk, "t", per_page=100, page=3).json()
    assert len(last["data"]) == 50 and "next" not in last["links"] and "prev" in last["links"]
    assert last["total"] == 250


def test_typeform_and_surveymonkey_answer_429_past_their_rate_limits() -> None:
    slow = Clock(speed=0.01)  # every request below lands within the same sandbox second / minute
    with typeform_sandbox.demo(5, 1, clock=slow, token="t") as typeform:
        statuses = [get(f"{typeform.url}/forms/{typeform_sandbox.DEMO_FORM_ID}", "t").status_code for _ in range(3)]
    assert statuses == [200, 200, 429], "Typeform: 2 requests per second"
    with surveymonkey_sandbox.demo(5, 1, clock=Clock(speed=0.01), token="t") as surveymonkey:
        surveymonkey.per_minute = 2
        answers = [get(f"{surveymonkey.url}/v3/surveys", "t") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["X-Ratelimit-App-Global-Minute-Remaining"] == "0" and int(answers[2].headers["Retry-After"]) <= 60
