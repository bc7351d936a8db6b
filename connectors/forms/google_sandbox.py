"""A stateful emulator of the Google Forms API v1, after ../shared/specs/google-forms/forms.v1.discovery.json.

Faithful where the connector depends on it: ``forms.get`` (items → questionItem → question with its
choice/scale/rating/text kind), ``forms.responses.list`` with ``filter`` limited to ``timestamp > T`` and
``timestamp >= T`` (RFC 3339 Zulu), ``pageSize`` (≤ 5000, 0 = 5000), opaque ``pageToken`` that must be reused
with the same filter, responses in no guaranteed order, ``respondentEmail`` when the form collects it, Google's
``{"error": {"code", "message", "status"}}`` body, and a per-minute read quota (300, UNVERIFIED) answered with 429.

``POST /token`` stands in for https://oauth2.googleapis.com/token (point a credentials file's ``token_uri`` at it):
the JWT-bearer grant of a service account, its RS256 signature checked with the public key a test registers
(``add_service_account``), and the refresh_token grant of an authorized user. Access tokens expire after
``token_lifetime_s`` on the sandbox clock (then 401); a revoked key or refresh token gets 400 ``invalid_grant``.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from google.auth import jwt

from connectors.forms.survey_kit import SeedAnswerSet, seed_answer_sets
from connectors.sandbox import Clock, Request, Response, Sandbox

MAX_PAGE_SIZE = 5000  # Google Forms: "at most 5000 responses are returned"
READS_PER_MINUTE = 300
DEMO_FORM_ID = "1FAIpQLSd_feedback_shop_2025"
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the audience google-auth puts in every assertion
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORMS_SCOPES = {"https://www.googleapis.com/auth/forms.responses.readonly", "https://www.googleapis.com/auth/forms.body.readonly",
                "https://www.googleapis.com/auth/forms.readonly", "https://www.googleapis.com/auth/drive.readonly"}
FILTER = re.compile(r"\s*timestamp\s*(>=|>)\s*(\S+)\s*\Z")


def feedback_form(form_id: str = DEMO_FORM_ID, collects_email: bool = True) -> dict[str, Any]:
    def item(item_id: str, title: str, question: dict[str, Any]) -> dict[str, Any]:
        return {"itemId": item_id, "title": title, "questionItem": {"question": {"questionId": f"q{item_id}", "required": False, **question}}}

    return {
        "formId": form_id, "revisionId": "00000001",
        "info": {"title": "How are we doing?", "documentTitle": "Customer feedback"},
        "responderUri": f"https://docs.google.com/forms/d/e/{form_id}/viewform",
        "settings": {"emailCollectionType": "VERIFIED" if collects_email else "DO_NOT_COLLECT"},
        "items": [
            item("1a2b3c01", "How likely are you to recommend us to a friend?",
                 {"scaleQuestion": {"low": 0, "high": 10, "lowLabel": "Not at all", "highLabel": "Extremely"}}),
            item("1a2b3c02", "Why?", {"textQuestion": {"paragraph": True}}),
            item("1a2b3c03", "How would you rate our product?", {"ratingQuestion": {"ratingScaleLevel": 5, "iconType": "STAR"}}),
            item("1a2b3c04", "Which plan are you on?",
                 {"choiceQuestion": {"type": "RADIO", "options": [{"value": v} for v in ("Starter", "Pro", "Business")]}}),
            item("1a2b3c05", "Anything else?", {"textQuestion": {"paragraph": True}}),
            item("1a2b3c06", "Your email (optional)", {"textQuestion": {"paragraph": False}}),
        ],
    }


class GoogleFormsSandbox(Sandbox):
    vendor = "google-forms"

    def __init__(self, *, token: str = "ya29.sandbox_token", clock: Clock | None = None, seed: int = 0) -> None:
        super().__init__(clock=clock, seed=seed)
        self.tokens = {token}
        self.token_lifetime_s = 3600
        self.expiring: dict[str, float] = {}  # issued access token -> sandbox monotonic second it expires
        self.service_accounts: dict[str, str] = {}  # client_email -> public key PEM
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> client_id
        self.grants: list[str] = []  # "jwt-bearer:<email>" / "refresh_token:<client_id>", in order
        self.forms: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.respondents: dict[str, str | None] = {}
        self._rng = random.Random(seed)
        self._reads: deque[float] = deque()
        self.route("POST", r"/token", self.token)
        self.route("GET", r"/v1/forms/(?P<form_id>[^/]+)", self.get_form)
        self.route("GET", r"/v1/forms/(?P<form_id>[^/]+)/responses", self.list_responses)

    # state a test drives ---------------------------------------------------------------------------------------

    def add_form(self, form: dict[str, Any]) -> None:
        with self.lock:
            self.forms[form["formId"]] = copy.deepcopy(form)
            self.responses.setdefault(form["formId"], [])

    def question_ids(self, form_id: str) -> dict[str, str]:
        """Item title → question id, for rendering seed answers."""
        return {i["title"]: i["questionItem"]["question"]["questionId"] for i in self.forms[form_id]["items"] if "questionItem" in i}

    def add_answer_sets(self, form_id: str, answer_sets: list[SeedAnswerSet]) -> list[str]:
        with self.lock:
            ids = []
            for answers in answer_sets:
                item = self._render(form_id, answers)
                self.responses[form_id].append(item)
                self.respondents[item["responseId"]] = item.get("respondentEmail") or (answers.email_typed if answers.email_via == "question" else None)
                ids.append(item["responseId"])
            return ids

    def add_raw_response(self, form_id: str, item: dict[str, Any]) -> None:
        with self.lock:
            self.responses[form_id].append(copy.deepcopy(item))

    def edit_form(self, form_id: str, *, add: dict[str, Any] | None = None, remove: str | None = None,
                  relabel: tuple[str, str, str] | None = None) -> None:
        """Add an item, remove one by question id, or relabel an option (question id, old value, new value)."""
        with self.lock:
            form = self.forms[form_id]
            if add is not None:
                form["items"].append(copy.deepcopy(add))
            if remove is not None:
                form["items"] = [i for i in form["items"] if i.get("questionItem", {}).get("question", {}).get("questionId") != remove]
            if relabel is not None:
                question_id, old, new = relabel
                for i in form["items"]:
                    question = i.get("questionItem", {}).get("question", {})
                    for option in question.get("choiceQuestion", {}).get("options", []) if question.get("questionId") == question_id else []:
                        if option["value"] == old:
                            option["value"] = new
            form["revisionId"] = f"{int(form['revisionId']) + 1:08d}"

    def revoke(self, token: str) -> None:
        """An access token, a service account (by client_email) or a refresh token stops working."""
        with self.lock:
            self.tokens.discard(token)
            self.expiring.pop(token, None)
            self.service_accounts.pop(token, None)
            self.refresh_tokens.pop(token, None)

    def add_service_account(self, client_email: str, public_key_pem: str) -> None:
        with self.lock:
            self.service_accounts[client_email] = public_key_pem

    def add_refresh_token(self, refresh_token: str, client_id: str) -> None:
        with self.lock:
            self.refresh_tokens[refresh_token] = client_id

    def _render(self, form_id: str, a: SeedAnswerSet) -> dict[str, Any]:
        form = self.forms[form_id]
        ids = self.question_ids(form_id)
        answers: dict[str, Any] = {}

        def text(title: str, *values: str) -> None:
            if title in ids and all(values):
                answers[ids[title]] = {"questionId": ids[title], "textAnswers": {"answers": [{"value": v} for v in values]}}

        text("How likely are you to recommend us to a friend?", str(a.nps))
        text("Why?", a.why)
        text("How would you rate our product?", str(a.rating))
        options = next((i["questionItem"]["question"]["choiceQuestion"]["options"] for i in form["items"] if i["title"] == "Which plan are you on?"), [])
        position = ["Starter", "Pro", "Business"].index(a.plan)
        if position < len(options):
            text("Which plan are you on?", options[position]["value"])
        text("Anything else?", a.comment)
        for title in ids:
            if title.startswith("New:"):
                text(title, "added later")
        collects = form.get("settings", {}).get("emailCollectionType") in ("VERIFIED", "RESPONDER_INPUT")
        if a.email_via == "question" or (a.email_via == "hidden" and not collects):
            text("Your email (optional)", a.email_typed or "")
        stamp = a.submitted_at.astimezone(UTC)
        item = {
            "formId": form_id, "responseId": f"ACYDBN{self._rng.getrandbits(96):024x}",
            "createTime": _zulu(stamp - timedelta(seconds=30)), "lastSubmittedTime": _zulu(stamp), "answers": answers,
        }
        if a.email_via == "hidden" and collects:
            item["respondentEmail"] = a.email_typed  # "VERIFIED": the signed-in Google account
        return item

    # the vendor's behaviour ----------------------------------------------------------------------------------

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        return Response(status, {"error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}})

    def token(self, request: Request) -> Response:
        """OAuth 2 token endpoint: ``{"access_token", "expires_in", "token_type"}`` or ``{"error": "invalid_grant"}``."""
        form = {k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            try:
                key = self.service_accounts.get(str(_claimed_issuer(form.get("assertion", ""))))
                claims = jwt.decode(form["assertion"], certs=key, audience=GOOGLE_TOKEN_URI) if key else None
            except (ValueError, KeyError):
                claims = None
            if claims is None:
                return Response(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            if not set(str(claims.get("scope", "")).split()) & FORMS_SCOPES:
                return Response(400, {"error": "invalid_scope", "error_description": "No Forms scope was requested."})
            self.grants.append(f"jwt-bearer:{claims['iss']}")
        elif grant == "refresh_token":
            client_id = self.refresh_tokens.get(form.get("refresh_token", ""))
            if client_id is None or client_id != form.get("client_id"):
                return Response(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            self.grants.append(f"refresh_token:{client_id}")
        else:
            return Response(400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"})
        access_token = f"ya29.sandbox-{self._rng.getrandbits(128):032x}"
        self.tokens.add(access_token)
        self.expiring[access_token] = self.clock.monotonic() + self.token_lifetime_s
        return Response(200, {"access_token": access_token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"})

    def admit(self, request: Request) -> Response | None:
        if request.path == "/token":
            return None
        header = request.headers.get("authorization", "")
        token = header[7:]
        with self.lock:
            if token in self.expiring and self.clock.monotonic() >= self.expiring[token]:
                self.tokens.discard(token)
        if not header.startswith("Bearer ") or token not in self.tokens:
            return self.error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                                   "or other valid authentication credential.", request)
        now = self.clock.monotonic()
        with self.lock:
            while self._reads and now - self._reads[0] >= 60.0:
                self._reads.popleft()
            if len(self._reads) >= READS_PER_MINUTE:
                return self.error(429, "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per user'.", request)
            self._reads.append(now)
        return None

    def get_form(self, request: Request, form_id: str) -> Response:
        if form_id not in self.forms:
            return self.error(404, "Requested entity was not found.", request)
        return Response(200, self.forms[form_id])

    def list_responses(self, request: Request, form_id: str) -> Response:
        if form_id not in self.forms:
            return self.error(404, "Requested entity was not found.", request)
        filter_text = request.arg("filter") or ""
        try:
            page_size = int(request.arg("pageSize", "0") or 0) or MAX_PAGE_SIZE
            keep = _filter(filter_text)
        except ValueError as exc:
            return self.error(400, str(exc), request)
        if not 0 < page_size <= MAX_PAGE_SIZE:
            page_size = MAX_PAGE_SIZE  # "The service may return fewer than this value"
        offset = 0
        if request.arg("pageToken"):
            try:
                token = json.loads(base64.urlsafe_b64decode(request.arg("pageToken") or ""))
                offset, token_filter = int(token["o"]), token["f"]
            except (ValueError, KeyError, TypeError):
                return self.error(400, "Invalid page token.", request)
            if token_filter != filter_text:
                return self.error(400, "The filter must be the same as in the request that returned the page token.", request)
        matching = [r for r in self.responses[form_id] if keep(r)]
        # Google: no order is guaranteed; a fixed shuffle per form keeps paging stable within a read.
        random.Random(f"{form_id}:{len(matching)}").shuffle(matching)
        chosen = matching[offset : offset + page_size]
        body: dict[str, Any] = {"responses": copy.deepcopy(chosen)} if chosen else {}
        if offset + page_size < len(matching):
            body["nextPageToken"] = base64.urlsafe_b64encode(json.dumps({"o": offset + page_size, "f": filter_text}).encode()).decode()
        return Response(200, body)


def _zulu(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _filter(text: str) -> Any:
    """Google: only ``timestamp > T`` and ``timestamp >= T`` are supported."""
    if not text:
        return lambda item: True
    found = FILTER.match(text)
    if not found:
        raise ValueError(f"Invalid filter {text!r}: only 'timestamp > T' and 'timestamp >= T' are supported.")
    try:
        bound = datetime.fromisoformat(found.group(2))
    except ValueError:
        raise ValueError(f"Invalid timestamp {found.group(2)!r} in filter: use RFC 3339 UTC 'Zulu' format.") from None
    strict = found.group(1) == ">"

    def keep(item: dict[str, Any]) -> bool:
        try:
            submitted = datetime.fromisoformat(str(item.get("lastSubmittedTime")))
        except ValueError:
            return True  # a malformed stored response still shows up, as the vendor would send it
        return submitted > bound if strict else submitted >= bound

    return keep


def demo(size: int, seed: int, *, clock: Clock | None = None, token: str = "ya29.sandbox_token") -> GoogleFormsSandbox:
    """A shop's feedback form with ``size`` responses over the last year. The client's base URL is the sandbox URL."""
    sandbox = GoogleFormsSandbox(token=token, clock=clock, seed=seed)
    sandbox.add_form(feedback_form())
    end = sandbox.clock.now() - timedelta(hours=1)
    sandbox.add_answer_sets(DEMO_FORM_ID, seed_answer_sets(size, seed, end - timedelta(days=365), end))
    return sandbox


def _claimed_issuer(assertion: str) -> Any:
    """The ``iss`` a JWT claims, read before its signature is checked (that needs the issuer's key, found by it).
    Read from the payload segment directly: no verify-off switch in this repository, even for a JWT (tests/test_security.py)."""
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("iss")
    except (IndexError, ValueError, AttributeError):
        raise ValueError("not a JWT") from None
