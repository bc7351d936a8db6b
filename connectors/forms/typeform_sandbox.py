"""A stateful emulator of the Typeform Create and Responses APIs, after ../shared/specs/typeform/typeform-api-facts.md.

Faithful where the connector depends on it: bearer auth, ``page_size`` ≤ 1000, inclusive ``since``/``until``,
exclusive ``before``/``after`` response tokens that cannot be combined with ``sort``, ``total_items`` and
``page_count``, 2 requests per second per token (429), and the duplicate quirk: a page fetched with ``before``
starts with the token's own response again (Typeform/js-api-client#35), so clients must dedupe by response id.
Errors use Typeform's ``{"code", "description"}`` body (shape UNVERIFIED in the facts file).
"""

from __future__ import annotations

import copy
import math
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.forms.survey_kit import SeedAnswerSet, seed_answer_sets
from connectors.sandbox import Clock, Request, Response, Sandbox

MAX_PAGE_SIZE = 1000  # Typeform: page_size maximum
REQUESTS_PER_SECOND = 2  # Typeform: 2 requests per second per account
DEMO_FORM_ID = "kF8wQz2N"


def feedback_form(form_id: str = DEMO_FORM_ID) -> dict[str, Any]:
    """The customer feedback form a small shop would build: NPS, why, product rating, plan, comment, email."""
    return {
        "id": form_id,
        "title": "How are we doing?",
        "hidden": ["email"],
        "fields": [
            {"id": "Fn7pQ2aB", "ref": "nps", "type": "nps", "title": "How likely are you to recommend us to a friend?",
             "properties": {"steps": 11, "start_at_one": False}},
            {"id": "Wh1yT3xC", "ref": "why", "type": "long_text", "title": "What is the main reason for your score?", "properties": {}},
            {"id": "Rt5StR9d", "ref": "product", "type": "rating", "title": "How would you rate our product?",
             "properties": {"steps": 5, "shape": "star"}},
            {"id": "Pl4nCh0e", "ref": "plan", "type": "multiple_choice", "title": "Which plan are you on?",
             "properties": {"choices": [{"id": f"ch{i}", "ref": label.lower(), "label": label} for i, label in enumerate(["Starter", "Pro", "Business"])]}},
            {"id": "Cm3nT7xf", "ref": "comment", "type": "long_text", "title": "Anything else you want to tell us?", "properties": {}},
            {"id": "Em4iLq8g", "ref": "email", "type": "email", "title": "Your email, if you want an answer", "properties": {}},
        ],
    }


class TypeformSandbox(Sandbox):
    vendor = "typeform"

    def __init__(self, *, token: str = "tfp_sandbox_token", clock: Clock | None = None, seed: int = 0) -> None:
        super().__init__(clock=clock, seed=seed)
        self.tokens = {token}
        self.forms: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}  # form id -> items in processing (arrival) order
        self.respondents: dict[str, str | None] = {}  # response id -> email as typed (None: anonymous), for tests
        self.duplicate_across_pages = True
        self.total_skew = 0  # added to total_items: a vendor count that disagrees with what it serves
        self._rng = random.Random(seed)
        self._sent: dict[str, deque[float]] = {}
        self.route("GET", r"/forms", self.list_forms)
        self.route("GET", r"/forms/(?P<form_id>[^/]+)", self.get_form)
        self.route("GET", r"/forms/(?P<form_id>[^/]+)/responses", self.list_responses)

    # state a test drives ---------------------------------------------------------------------------------------

    def add_form(self, form: dict[str, Any]) -> None:
        with self.lock:
            self.forms[form["id"]] = copy.deepcopy(form)
            self.responses.setdefault(form["id"], [])

    def add_answer_sets(self, form_id: str, answer_sets: list[SeedAnswerSet]) -> list[str]:
        """Submit responses rendered from seed answers; returns their response ids."""
        with self.lock:
            fields = {f["ref"]: f for f in self.forms[form_id]["fields"]}
            ids = []
            for answers in answer_sets:
                item = self._render(fields, answers)
                self.responses[form_id].append(item)
                self.respondents[item["response_id"]] = answers.email_typed
                ids.append(item["response_id"])
            return ids

    def add_raw_response(self, form_id: str, item: dict[str, Any]) -> None:
        """A payload exactly as given: for malformed input tests."""
        with self.lock:
            self.responses[form_id].append(copy.deepcopy(item))

    def edit_form(self, form_id: str, *, add: dict[str, Any] | None = None, remove: str | None = None,
                  relabel: tuple[str, str, str] | None = None) -> None:
        """Add a field, remove one (by id), or relabel a choice (field id, old label, new label) between runs."""
        with self.lock:
            fields = self.forms[form_id]["fields"]
            if add is not None:
                fields.append(copy.deepcopy(add))
            if remove is not None:
                fields[:] = [f for f in fields if f["id"] != remove]
            if relabel is not None:
                field_id, old, new = relabel
                for f in fields:
                    for choice in f.get("properties", {}).get("choices", []) if f["id"] == field_id else []:
                        if choice["label"] == old:
                            choice["label"] = new

    def revoke(self, token: str) -> None:
        self.tokens.discard(token)

    def _render(self, fields: dict[str, dict[str, Any]], a: SeedAnswerSet) -> dict[str, Any]:
        token = f"{self._rng.getrandbits(128):032x}"
        submitted = a.submitted_at.astimezone(UTC)
        answers: list[dict[str, Any]] = []

        def answer(ref: str, kind: str, value: Any) -> None:
            if ref in fields:
                f = fields[ref]
                answers.append({"field": {"id": f["id"], "type": f["type"], "ref": ref}, "type": kind, kind: value})

        answer("nps", "number", a.nps)
        if a.why:
            answer("why", "text", a.why)
        answer("product", "number", a.rating)
        if "plan" in fields:
            labels = {c["ref"]: c for c in fields["plan"]["properties"]["choices"]}
            chosen = labels.get(a.plan.lower())
            if chosen:
                answer("plan", "choice", {"id": chosen["id"], "ref": chosen["ref"], "label": chosen["label"]})
        if a.comment:
            answer("comment", "text", a.comment)
        for f in fields.values():
            if f["ref"] not in {"nps", "why", "product", "plan", "comment", "email"} and f["type"] == "short_text":
                answer(f["ref"], "text", "added later")
        if a.email_via == "question":
            answer("email", "email", a.email_typed)
        return {
            "landing_id": token, "token": token, "response_id": token,
            "landed_at": _iso(submitted - timedelta(seconds=self._rng.randint(20, 400))), "submitted_at": _iso(submitted),
            "metadata": {"user_agent": "Mozilla/5.0", "platform": "other", "referer": f"https://shop.typeform.com/to/{DEMO_FORM_ID}",
                         "network_id": "a1b2c3", "browser": "default"},
            "hidden": {"email": a.email_typed} if a.email_via == "hidden" else {},
            "calculated": {"score": 0}, "variables": [], "answers": answers,
        }

    # the vendor's behaviour ----------------------------------------------------------------------------------

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        codes = {400: "VALIDATION_ERROR", 401: "AUTHENTICATION_FAILED", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMIT_EXCEEDED"}
        return Response(status, {"code": codes.get(status, "SERVER_ERROR"), "description": message, **detail})

    def admit(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if token not in self.tokens:
            return self.error(401, "Authentication credentials not found on the Request Headers", request)
        now = self.clock.monotonic()
        with self.lock:
            sent = self._sent.setdefault(token, deque())
            while sent and now - sent[0] >= 1.0:
                sent.popleft()
            if len(sent) >= REQUESTS_PER_SECOND:
                return self.error(429, "Rate limit exceeded: 2 requests per second", request)
            sent.append(now)
        return None

    def list_forms(self, request: Request) -> Response:
        page, page_size = int(request.arg("page", "1") or 1), int(request.arg("page_size", "10") or 10)
        forms = sorted(self.forms.values(), key=lambda f: f["id"])
        chosen = forms[(page - 1) * page_size : page * page_size]
        return Response(200, {"total_items": len(forms), "page_count": max(1, math.ceil(len(forms) / page_size)),
                              "items": [{"id": f["id"], "title": f["title"]} for f in chosen]})

    def get_form(self, request: Request, form_id: str) -> Response:
        if form_id not in self.forms:
            return self.error(404, f"Form {form_id} not found", request)
        return Response(200, self.forms[form_id])

    def list_responses(self, request: Request, form_id: str) -> Response:
        if form_id not in self.forms:
            return self.error(404, f"Form {form_id} not found", request)
        try:
            page_size = int(request.arg("page_size", "25") or 25)
            since = _parse_moment(request.arg("since"))
            until = _parse_moment(request.arg("until"))
        except ValueError as exc:
            return self.error(400, str(exc), request)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            return self.error(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}", request)
        before, after = request.arg("before"), request.arg("after")
        if (before or after) and request.arg("sort"):
            return self.error(400, "before/after cannot be combined with sort", request)
        matching = [item for item in self.responses[form_id] if _within(item, since, until)]
        ordered = list(reversed(matching))  # newest first, Typeform's default
        tokens = [item.get("token") for item in ordered]
        start = 0
        if before:
            if before not in tokens:
                return self.error(400, "before token not found", request)
            start = tokens.index(before) + 1
            if self.duplicate_across_pages:
                start -= 1  # the quirk: the token's own response is served again
        chosen = ordered[start : start + page_size]
        if after:
            if after not in tokens:
                return self.error(400, "after token not found", request)
            newer = list(reversed(ordered[: tokens.index(after)]))
            chosen = newer[:page_size]
        return Response(200, {"total_items": len(matching) + self.total_skew, "page_count": max(1, math.ceil(len(matching) / page_size)),
                              "items": copy.deepcopy(chosen)})


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_moment(text: str | None) -> datetime | None:
    """Typeform accepts Unix seconds or ISO 8601 UTC to the second."""
    if not text:
        return None
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date-time (Unix seconds or ISO 8601)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _within(item: dict[str, Any], since: datetime | None, until: datetime | None) -> bool:
    try:
        submitted = _parse_moment(item.get("submitted_at"))
    except ValueError:
        submitted = None
    if submitted is None:
        return since is None and until is None
    return (since is None or submitted >= since) and (until is None or submitted <= until)


def demo(size: int, seed: int, *, clock: Clock | None = None, token: str = "tfp_sandbox_token") -> TypeformSandbox:
    """A shop's feedback form with ``size`` responses over the last year."""
    sandbox = TypeformSandbox(token=token, clock=clock, seed=seed)
    sandbox.add_form(feedback_form())
    end = sandbox.clock.now() - timedelta(hours=1)
    sandbox.add_answer_sets(DEMO_FORM_ID, seed_answer_sets(size, seed, end - timedelta(days=365), end))
    return sandbox
