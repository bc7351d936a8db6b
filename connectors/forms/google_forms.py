"""Google Forms: forms.get and forms.responses.list over plain HTTPS, read incrementally into SurveyResponse records.

Why ``requests`` and not google-api-python-client (which could be pointed at the sandbox through
``client_options``): the two calls we need are simple GETs on the discovery-document paths, and through the survey
kit they share the timeouts, Retry-After handling, limiter and retry budget of the other survey connectors. Credentials: an OAuth access token (``google_access_token``), or a
JSON file (``google_credentials``) read through google-auth: a service-account key (a JWT-bearer grant signed with
its private key) or an authorized-user file (its refresh token). Either way the access token is fetched from the
file's ``token_uri`` and refreshed before it expires, measured on the connector's clock.

Google returns responses in no guaranteed order, so every page of the window is read and the high-water mark
is the newest ``lastSubmittedTime`` seen; the next run asks for ``timestamp >= mark - look-back``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from connectors.base import (
    Connection,
    Endpoint,
    register_connector,
    AuthError,
    CheckResult,
    ConfigError,
    Page,
    Rejected,
    RetentionError,
    SourceError,
    Stream,
    register_check,
)
from connectors.forms import survey_kit as kit
from connectors.records import SurveyResponse
from connectors.retry import WindowLimiter
from connectors.sandbox import SystemClock
from sync.settings import FormsSettings, read_secret

log = logging.getLogger(__name__)
SOURCE = "google_forms"
BASE_URL = "https://forms.googleapis.com"
PAGE_SIZE = 5000  # Google Forms: responses.list returns at most 5000 per page
AUTH_HINT = ("sign in again and store a fresh access token with the forms.responses.readonly and forms.body.readonly "
             "scopes in RETENTION_GOOGLE_ACCESS_TOKEN (or the keyring entry google_access_token)")
FILE_AUTH_HINT = ("share the forms with the account in RETENTION_GOOGLE_CREDENTIALS (or the keyring entry google_credentials) "
                  "and grant it the forms.responses.readonly and forms.body.readonly scopes")
SCOPES = ("https://www.googleapis.com/auth/forms.responses.readonly", "https://www.googleapis.com/auth/forms.body.readonly")
TRUSTED_TOKEN_HOSTS = {"oauth2.googleapis.com", "accounts.google.com", "127.0.0.1", "localhost", "::1"}
REFRESH_MARGIN_S = 300.0  # refresh this long before the token expires
GRANT_HINTS = {
    "service_account": "the key was deleted or disabled: create a new JSON key for the service account in the Google Cloud "
                       "console and point RETENTION_GOOGLE_CREDENTIALS at it",
    "authorized_user": "the sign-in was revoked or has expired: sign in again (e.g. gcloud auth application-default login) "
                       "and point RETENTION_GOOGLE_CREDENTIALS at the new authorized-user JSON",
}


def map_item(item: Mapping[str, Any]) -> list[kit.Question]:
    """The questions of one form item: a single question, or each row of a grid (kept raw: no stable meaning)."""
    title = item.get("title")
    question = (item.get("questionItem") or {}).get("question")
    if not isinstance(question, Mapping):
        rows = (item.get("questionGroupItem") or {}).get("questions") or []
        return [kit.Question(str(q.get("questionId", "")), kit.UNKNOWN, title, vendor_type="grid") for q in rows]
    question_id = str(question.get("questionId", ""))
    if "scaleQuestion" in question:
        scale = question["scaleQuestion"]
        low, high = int(scale.get("low", 1)), int(scale.get("high", 5))
        kind = kit.NPS if (low, high) == (0, 10) else kit.RATING
        return [kit.Question(question_id, kind, title, low if kind == kit.RATING else None, high if kind == kit.RATING else None, vendor_type="scale")]
    if "ratingQuestion" in question:
        levels = int(question["ratingQuestion"].get("ratingScaleLevel", 5))
        return [kit.Question(question_id, kit.RATING, title, 1, levels, vendor_type="rating")]
    if "choiceQuestion" in question:
        return [kit.Question(question_id, kit.CHOICE, title, vendor_type="choice")]
    if "textQuestion" in question:
        return [kit.Question(question_id, kit.TEXT, title, vendor_type="text")]
    return [kit.Question(question_id, kit.UNKNOWN, title, vendor_type=next((k for k in question if k.endswith("Question")), "question"))]


def map_form(form: Mapping[str, Any]) -> dict[str, kit.Question]:
    return {q.question_id: q for item in form.get("items") or [] for q in map_item(item)}


def answer_value(question: kit.Question | None, answer: Mapping[str, Any]) -> Any:
    texts = [str(a.get("value", "")) for a in (answer.get("textAnswers") or {}).get("answers") or [] if isinstance(a, Mapping)]
    if "textAnswers" not in answer:
        return dict(answer)  # file uploads, grades: kept raw
    if question is not None and question.kind == kit.CHOICE:
        return texts
    return texts[0] if len(texts) == 1 else texts


def map_response(item: Mapping[str, Any], form_id: str, questions: Mapping[str, kit.Question],
                 email_question: str | None, stats: kit.ReadStats) -> SurveyResponse | Rejected:
    """One FormResponse as a record; a question removed from the form since is typed as text when it is text."""
    known = dict(questions)
    answers = []
    for key, answer in (item.get("answers") or {}).items():
        answer = answer if isinstance(answer, Mapping) else {}
        question_id = answer.get("questionId") or key
        if question_id not in known:
            is_text = isinstance((answer.get("textAnswers") or {}).get("answers"), list)
            known[question_id] = kit.Question(question_id, kit.TEXT if is_text else kit.UNKNOWN, vendor_type="removed")
        answers.append(kit.RawAnswer(question_id, answer_value(known.get(question_id), answer)))
    parts = kit.ResponseParts(item.get("responseId"), item.get("lastSubmittedTime"), answers,
                              [("collected email", item.get("respondentEmail"))], item)
    return kit.build_response(SOURCE, form_id, parts, known, email_question, stats)


class RefreshingToken:
    """The access token of google-auth credentials, fetched on first use and refreshed before it expires.

    Expiry is measured on the connector's clock (google-auth's own ``valid`` is checked too), so a test that moves
    the sandbox clock past ``expires_in`` sees a refresh. Errors name the file and what to do, never key or token.
    """

    def __init__(self, credentials: Any, kind: str, path: str, clock: Any) -> None:
        self.credentials, self.kind, self.path, self.clock = credentials, kind, path, clock
        self.expires_at: float | None = None  # clock.monotonic() seconds
        self.refreshes = 0

    def __call__(self) -> str:
        stale = self.expires_at is not None and self.clock.monotonic() >= self.expires_at - REFRESH_MARGIN_S
        if stale or not self.credentials.valid:
            self.refresh()
        return str(self.credentials.token)

    def refresh(self) -> None:
        try:
            self.credentials.refresh(GoogleRequest())
        except google.auth.exceptions.RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], Mapping) else {}
            reason = str(data.get("error") or "refused")[:40]
            raise AuthError(f"google_forms: the token endpoint refused the {self.kind} credentials in {self.path} ({reason}); "
                            f"{GRANT_HINTS[self.kind]}", source=SOURCE) from None
        except google.auth.exceptions.TransportError:
            raise SourceError(f"google_forms: the token endpoint of {self.path} could not be reached", source=SOURCE,
                              retryable=True) from None
        expiry = self.credentials.expiry  # google-auth: naive UTC
        remaining = None if expiry is None else (expiry - datetime.now(UTC).replace(tzinfo=None)).total_seconds()
        self.expires_at = None if remaining is None else self.clock.monotonic() + remaining
        self.refreshes += 1
        log.info("google_forms: access token refreshed from %s credentials (valid for %s s)", self.kind,
                 "?" if remaining is None else int(remaining))


def token_from_settings(clock: Any) -> str | RefreshingToken | None:
    """An OAuth access token (``google_access_token``), or google-auth credentials from ``google_credentials``."""
    token = read_secret("google_access_token")
    if token:
        return token
    path = read_secret("google_credentials")
    if not path:
        return None
    try:
        document = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError):
        raise ConfigError(f"google_credentials: {path} is not a readable JSON credentials file") from None
    kind = document.get("type") if isinstance(document, Mapping) else None
    if kind == "service_account":
        try:
            credentials = service_account.Credentials.from_service_account_info(document, scopes=list(SCOPES))
        except (ValueError, TypeError, KeyError, IndexError):
            raise ConfigError(f"google_credentials: {path} is not a valid service-account key (it needs client_email, "
                              "private_key and token_uri); download a new JSON key from the Google Cloud console") from None
        return RefreshingToken(credentials, kind, path, clock)
    if kind == "authorized_user":
        if {"refresh_token", "client_id", "client_secret"} <= document.keys():
            try:
                credentials = user_credentials.Credentials.from_authorized_user_info(document, scopes=list(SCOPES))
            except (ValueError, TypeError):
                raise ConfigError(f"google_credentials: {path} is not a valid authorized-user file") from None
            token_uri = str(document.get("token_uri") or "")
            if token_uri:
                # google-auth always sends an authorized user's refresh token to Google; we follow token_uri (the
                # sandbox) only when it is Google's or on this machine, so a file cannot send the token elsewhere.
                if urlsplit(token_uri).hostname not in TRUSTED_TOKEN_HOSTS:
                    raise ConfigError(f"google_credentials: {path} names token_uri {token_uri}, which is not Google's "
                                      "(oauth2.googleapis.com); remove it or sign in again to get a Google-issued file")
                credentials = credentials.with_token_uri(token_uri)
            return RefreshingToken(credentials, kind, path, clock)
        if document.get("token"):
            return str(document["token"])  # no refresh token: used as it is until it expires
    raise ConfigError(f"google_credentials: {path} is neither a service-account key nor an authorized-user file "
                      "with a refresh token (type, client_id, client_secret, refresh_token)")


class GoogleFormsSource:
    """The responses of the configured Google Forms, as one stream (the Forms API cannot list forms)."""

    name = SOURCE

    def __init__(self, settings: FormsSettings, *, token: str | RefreshingToken | None = None, base_url: str = BASE_URL,
                 clock: Any = None) -> None:
        if not settings.forms:
            raise ConfigError("google_forms.forms is empty: list the form ids to read (the part of the edit URL after /d/)")
        self.settings = settings
        clock = clock or SystemClock()
        credentials = token if token is not None else token_from_settings(clock)
        refreshing = credentials if isinstance(credentials, RefreshingToken) else None
        self.api = kit.JsonApi(
            SOURCE, base_url, None if refreshing else credentials, settings.timeout_s,
            describe_error=_describe_error, auth_hint=FILE_AUTH_HINT if refreshing else AUTH_HINT, clock=clock,
            limiter=WindowLimiter(250, 60.0, clock),  # Google: read requests per minute per user (quota, UNVERIFIED)
            token_source=refreshing,
        )
        self.last_stats = kit.ReadStats()

    def streams(self) -> Sequence[Stream]:
        return [Stream("responses", "survey_response", self.read_responses)]

    def read_responses(self, cursor: str | None) -> Iterator[Page]:
        stats = self.last_stats = kit.ReadStats()

        def read_form(form_id: str, since: datetime | None) -> Iterator[tuple[Page, datetime | None]]:
            questions = map_form(self.api.get(f"/v1/forms/{form_id}", None, f"reading form {form_id}"))
            for page in self._read_form(form_id, questions, since, stats):
                yield page, max((r.submitted_at for r in page.records), default=None)

        return kit.read_forms(SOURCE, self.settings.forms, cursor, self.settings.lookback_minutes, stats, read_form)

    def _read_form(self, form_id: str, questions: Mapping[str, kit.Question], since: datetime | None,
                   stats: kit.ReadStats) -> Iterator[Page]:
        params: dict[str, Any] = {"pageSize": PAGE_SIZE}
        if since is not None:
            params["filter"] = "timestamp >= " + since.strftime("%Y-%m-%dT%H:%M:%SZ")  # Google: RFC 3339 Zulu
        seen: set[str] = set()
        email_question = self.settings.email_question.get(form_id)
        while True:
            body = self.api.get(f"/v1/forms/{form_id}/responses", params, f"reading responses of form {form_id}")
            records, rejected = [], []
            for item in body.get("responses") or []:
                response_id = str(item.get("responseId") or f"(no id #{len(seen)})")
                if response_id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(response_id)
                mapped = map_response(item, form_id, questions, email_question, stats)
                (rejected if isinstance(mapped, Rejected) else records).append(mapped)
            stats.responses += len(records)
            yield Page(records=records, cursor_after=None, rejected=rejected)
            if not body.get("nextPageToken"):
                break
            params = {**params, "pageToken": body["nextPageToken"]}  # Google: same filter with the token


def _describe_error(body: Any) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return f"{error.get('status', '')} {error.get('message', '')}".strip()
    return str(body)[:200]


@register_check("google_forms")
def check_google_forms(settings: Any) -> CheckResult:
    """`retention doctor`: the access token is accepted and every configured form can be read."""
    try:
        source = GoogleFormsSource(settings.google_forms)
        for form_id in source.settings.forms:
            source.api.get(f"/v1/forms/{form_id}", None, f"reading form {form_id}")
    except RetentionError as exc:
        return CheckResult("google_forms", False, str(exc))
    return CheckResult("google_forms", True, f"credentials accepted; {len(settings.google_forms.forms)} form(s) readable")


@register_connector("google_forms")
def connect(settings: Any, endpoint: Endpoint | None = None) -> Connection:
    """A source only: nothing is written back to survey tools."""
    if endpoint is None:
        return Connection("google_forms", GoogleFormsSource(settings.google_forms))
    return Connection("google_forms", GoogleFormsSource(settings.google_forms, token=endpoint.credential, base_url=endpoint.base_url))
