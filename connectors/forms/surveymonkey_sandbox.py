"""A stateful emulator of SurveyMonkey API v3, after ../shared/specs/surveymonkey/surveymonkey-api-facts.md.

Served under ``/v3`` like the real host. Faithful where the connector depends on it: OAuth bearer token,
``/surveys``, ``/surveys/{id}/details`` (pages → questions → choices), ``/surveys/{id}/responses/bulk`` with
``per_page`` ≤ 100, ``page``, ``start_modified_at``, ``sort_by=date_modified`` and the ``links.next`` envelope
(absent on the last page), the draft-app limits of 120 requests a minute and 500 a day (429 with the
``X-Ratelimit-App-Global-*`` headers), and the ``{"error": {...}}`` error body.
NPS questions are ``matrix``/``rating`` with 11 choices weighted 0-10 (display shape UNVERIFIED).
"""

from __future__ import annotations

import copy
import math
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from connectors.forms.survey_kit import SeedAnswerSet, seed_answer_sets
from connectors.sandbox import Clock, Request, Response, Sandbox

MAX_PER_PAGE = 100  # SurveyMonkey: bulk responses per page
PER_MINUTE, PER_DAY = 120, 500  # SurveyMonkey draft apps
DEMO_SURVEY_ID = "403847568"
ERROR_IDS = {400: ("1001", "Bad Request"), 401: ("1011", "Authorization Error"), 403: ("1014", "Authorization Error"),
             404: ("1020", "Resource Not Found"), 429: ("1040", "Rate Limit Reached"), 500: ("1050", "Internal Server Error")}


def feedback_survey(survey_id: str = DEMO_SURVEY_ID) -> dict[str, Any]:
    """The survey details document of a shop's feedback survey."""
    nps_choices = [{"id": f"35408{n:05d}", "text": str(n), "position": n + 1, "weight": n} for n in range(11)]
    stars = [{"id": f"35409{n:05d}", "text": f"{n} star{'s' if n > 1 else ''}", "position": n, "weight": n} for n in range(1, 6)]
    plans = [{"id": f"3541{i:06d}", "text": label, "position": i + 1} for i, label in enumerate(["Starter", "Pro", "Business"])]
    return {
        "id": survey_id, "title": "Customer feedback", "nickname": "", "language": "en", "question_count": 6,
        "pages": [{"id": "141249367", "position": 1, "questions": [
            {"id": "535366219", "family": "matrix", "subtype": "rating", "position": 1,
             "headings": [{"heading": "How likely is it that you would recommend us to a friend or colleague?"}],
             "answers": {"rows": [{"id": "4385170001", "text": "", "position": 1}], "choices": nps_choices}},
            {"id": "535366220", "family": "open_ended", "subtype": "essay", "position": 2,
             "headings": [{"heading": "Why did you give that score?"}]},
            {"id": "535366221", "family": "matrix", "subtype": "rating", "position": 3,
             "headings": [{"heading": "How would you rate our product?"}],
             "answers": {"rows": [{"id": "4385170002", "text": "", "position": 1}], "choices": stars}},
            {"id": "535366222", "family": "single_choice", "subtype": "vertical", "position": 4,
             "headings": [{"heading": "Which plan are you on?"}], "answers": {"choices": plans}},
            {"id": "535366223", "family": "open_ended", "subtype": "essay", "position": 5,
             "headings": [{"heading": "Anything else?"}]},
            {"id": "535366224", "family": "open_ended", "subtype": "single", "position": 6,
             "headings": [{"heading": "Your email (optional)"}], "validation": {"type": "email"}},
        ]}],
    }


class SurveyMonkeySandbox(Sandbox):
    vendor = "surveymonkey"

    def __init__(self, *, token: str = "sm_sandbox_token", clock: Clock | None = None, seed: int = 0,
                 per_minute: int = PER_MINUTE, per_day: int = PER_DAY) -> None:
        super().__init__(clock=clock, seed=seed)
        self.tokens = {token}
        self.surveys: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.respondents: dict[str, str | None] = {}
        self.per_minute, self.per_day = per_minute, per_day
        self.total_skew = 0  # added to the bulk ``total``: a vendor count that disagrees with what it serves
        self._rng = random.Random(seed)
        self._minute: deque[float] = deque()
        self._day: deque[float] = deque()
        self._next_id = 114277860000
        self.route("GET", r"/v3/users/me", lambda request: Response(200, {"id": "1", "username": "shop-owner"}))
        self.route("GET", r"/v3/surveys", self.list_surveys)
        self.route("GET", r"/v3/surveys/(?P<survey_id>[^/]+)/details", self.survey_details)
        self.route("GET", r"/v3/surveys/(?P<survey_id>[^/]+)/responses/bulk", self.bulk_responses)

    # state a test drives ---------------------------------------------------------------------------------------

    def add_survey(self, details: dict[str, Any]) -> None:
        with self.lock:
            self.surveys[details["id"]] = copy.deepcopy(details)
            self.responses.setdefault(details["id"], [])

    def add_answer_sets(self, survey_id: str, answer_sets: list[SeedAnswerSet]) -> list[str]:
        with self.lock:
            ids = []
            for answers in answer_sets:
                item = self._render(survey_id, answers)
                self.responses[survey_id].append(item)
                self.respondents[item["id"]] = answers.email_typed
                ids.append(item["id"])
            return ids

    def add_raw_response(self, survey_id: str, item: dict[str, Any]) -> None:
        with self.lock:
            self.responses[survey_id].append(copy.deepcopy(item))

    def questions(self, survey_id: str) -> list[dict[str, Any]]:
        return [q for page in self.surveys[survey_id]["pages"] for q in page["questions"]]

    def edit_survey(self, survey_id: str, *, add: dict[str, Any] | None = None, remove: str | None = None,
                    relabel: tuple[str, str, str] | None = None) -> None:
        """Add a question (to the last page), remove one by id, or relabel a choice (question id, old, new)."""
        with self.lock:
            pages = self.surveys[survey_id]["pages"]
            if add is not None:
                pages[-1]["questions"].append(copy.deepcopy(add))
            if remove is not None:
                for page in pages:
                    page["questions"] = [q for q in page["questions"] if q["id"] != remove]
            if relabel is not None:
                question_id, old, new = relabel
                for q in self.questions(survey_id):
                    for choice in q.get("answers", {}).get("choices", []) if q["id"] == question_id else []:
                        if choice["text"] == old:
                            choice["text"] = new
            self.surveys[survey_id]["question_count"] = len(self.questions(survey_id))

    def revoke(self, token: str) -> None:
        self.tokens.discard(token)

    def _render(self, survey_id: str, a: SeedAnswerSet) -> dict[str, Any]:
        self._next_id += self._rng.randint(1, 50)
        response_id = str(self._next_id)
        by_heading = {q["id"]: q for q in self.questions(survey_id)}
        answers: list[dict[str, Any]] = []

        def weighted(question_id: str, weight: int) -> None:
            q = by_heading.get(question_id)
            if q:
                choice = next(c for c in q["answers"]["choices"] if c.get("weight") == weight)
                answers.append({"id": question_id, "answers": [{"row_id": q["answers"]["rows"][0]["id"], "choice_id": choice["id"]}]})

        def text(question_id: str, value: str) -> None:
            if question_id in by_heading and value:
                answers.append({"id": question_id, "answers": [{"text": value}]})

        weighted("535366219", a.nps)
        text("535366220", a.why)
        weighted("535366221", a.rating)
        plan_question = by_heading.get("535366222")
        if plan_question:
            choice = next((c for c in plan_question["answers"]["choices"] if c["position"] == ["Starter", "Pro", "Business"].index(a.plan) + 1), None)
            if choice:
                answers.append({"id": "535366222", "answers": [{"choice_id": choice["id"]}]})
        text("535366223", a.comment)
        for q in by_heading.values():
            if q["family"] == "open_ended" and q["id"] not in {"535366220", "535366223", "535366224"}:
                text(q["id"], "added later")
        if a.email_via == "question":
            text("535366224", a.email_typed or "")
        stamp = a.submitted_at.astimezone(UTC)
        invited = a.email_via == "hidden"
        return {
            "id": response_id, "recipient_id": "", "collection_mode": "default", "response_status": "completed",
            "custom_value": "", "first_name": "", "last_name": "", "email_address": a.email_typed if invited else "",
            "ip_address": "203.0.113.7", "logic_path": {},
            "metadata": {"contact": {"email": {"type": "string", "value": a.email_typed}}} if invited else {},
            "page_path": [], "collector_id": "263462183", "survey_id": survey_id, "custom_variables": {},
            "edit_url": f"https://www.surveymonkey.com/r/?sm={response_id}", "analyze_url": "https://www.surveymonkey.com/analyze/browse/x",
            "total_time": self._rng.randint(20, 400), "date_modified": _iso(stamp), "date_created": _iso(stamp - timedelta(seconds=40)),
            "href": f"https://api.surveymonkey.com/v3/surveys/{survey_id}/responses/{response_id}",
            "pages": [{"id": "141249367", "questions": answers}],
        }

    # the vendor's behaviour ----------------------------------------------------------------------------------

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        error_id, name = ERROR_IDS.get(status, ("1050", "Internal Server Error"))
        body = {"error": {"id": error_id, "name": name, "docs": "https://developer.surveymonkey.com/api/v3/#error-codes",
                          "message": message, "http_status_code": status}}
        return Response(status, body, headers=detail.get("headers") or {})

    def admit(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return self.error(401, "The authorization token was not provided or is invalid.", request)
        now = self.clock.monotonic()
        with self.lock:
            for window, span in ((self._minute, 60.0), (self._day, 86_400.0)):
                while window and now - window[0] >= span:
                    window.popleft()
            headers = {
                "X-Ratelimit-App-Global-Minute-Limit": str(self.per_minute),
                "X-Ratelimit-App-Global-Minute-Remaining": str(max(0, self.per_minute - len(self._minute))),
                "X-Ratelimit-App-Global-Day-Limit": str(self.per_day),
                "X-Ratelimit-App-Global-Day-Remaining": str(max(0, self.per_day - len(self._day))),
            }
            if len(self._day) >= self.per_day:
                reset = math.ceil(86_400 - (now - self._day[0]))
                return self.error(429, "Daily request limit reached.", request,
                                  headers={**headers, "X-Ratelimit-App-Global-Day-Reset": str(reset), "Retry-After": str(reset)})
            if len(self._minute) >= self.per_minute:
                reset = math.ceil(60 - (now - self._minute[0]))
                return self.error(429, "Too many requests in this minute.", request,
                                  headers={**headers, "X-Ratelimit-App-Global-Minute-Reset": str(reset), "Retry-After": str(reset)})
            self._minute.append(now)
            self._day.append(now)
        return None

    def _envelope(self, request: Request, data: list[Any], total: int, page: int, per_page: int) -> dict[str, Any]:
        base = f"https://sandbox{request.path}" if not request.headers.get("host") else f"http://{request.headers['host']}{request.path}"
        params = {k: v[-1] for k, v in request.query.items() if k not in ("page", "per_page")}
        last = max(1, math.ceil(total / per_page))

        def link(number: int) -> str:
            return f"{base}?{urlencode({**params, 'page': number, 'per_page': per_page})}"

        links = {"self": link(page), "last": link(last)}
        if page < last:
            links["next"] = link(page + 1)
        if page > 1:
            links["prev"] = link(page - 1)
        return {"data": data, "per_page": per_page, "page": page, "total": total, "links": links}

    def _paging(self, request: Request, default: int, maximum: int) -> tuple[int, int]:
        page, per_page = int(request.arg("page", "1") or 1), int(request.arg("per_page", str(default)) or default)
        if page < 1 or not 1 <= per_page <= maximum:
            raise ValueError(f"per_page must be between 1 and {maximum}, page at least 1")
        return page, per_page

    def list_surveys(self, request: Request) -> Response:
        try:
            page, per_page = self._paging(request, 50, 1000)
        except ValueError as exc:
            return self.error(400, str(exc), request)
        surveys = sorted(self.surveys.values(), key=lambda s: s["id"])
        chosen = surveys[(page - 1) * per_page : page * per_page]
        data = [{"id": s["id"], "title": s["title"], "nickname": s.get("nickname", ""),
                 "href": f"https://api.surveymonkey.com/v3/surveys/{s['id']}"} for s in chosen]
        return Response(200, self._envelope(request, data, len(surveys), page, per_page))

    def survey_details(self, request: Request, survey_id: str) -> Response:
        if survey_id not in self.surveys:
            return self.error(404, f"Survey {survey_id} was not found.", request)
        return Response(200, self.surveys[survey_id])

    def bulk_responses(self, request: Request, survey_id: str) -> Response:
        if survey_id not in self.surveys:
            return self.error(404, f"Survey {survey_id} was not found.", request)
        try:
            page, per_page = self._paging(request, 50, MAX_PER_PAGE)
            start = _parse(request.arg("start_modified_at"))
        except ValueError as exc:
            return self.error(400, str(exc), request)
        items = [r for r in self.responses[survey_id] if start is None or _modified(r) is None or _modified(r) >= start]
        items.sort(key=lambda r: (str(r.get("date_modified")), str(r.get("id"))),
                   reverse=(request.arg("sort_order", "ASC") or "ASC").upper() == "DESC")
        chosen = items[(page - 1) * per_page : page * per_page]
        envelope = self._envelope(request, copy.deepcopy(chosen), len(items), page, per_page)
        envelope["total"] += self.total_skew
        return Response(200, envelope)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DDTHH:MM:SS)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _modified(item: dict[str, Any]) -> datetime | None:
    try:
        return _parse(item.get("date_modified"))
    except ValueError:
        return None


def demo(size: int, seed: int, *, clock: Clock | None = None, token: str = "sm_sandbox_token", per_day: int = PER_DAY) -> SurveyMonkeySandbox:
    """A shop's feedback survey with ``size`` responses over the last year. The client's base URL is ``<url>/v3``."""
    sandbox = SurveyMonkeySandbox(token=token, clock=clock, seed=seed, per_day=per_day)
    sandbox.add_survey(feedback_survey())
    end = sandbox.clock.now() - timedelta(hours=1)
    sandbox.add_answer_sets(DEMO_SURVEY_ID, seed_answer_sets(size, seed, end - timedelta(days=365), end))
    return sandbox
