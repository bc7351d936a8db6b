"""The Mailchimp client: every call through the official ``mailchimp_marketing`` SDK, bounded, timed out, retried.

Mailchimp limits an account to 10 simultaneous connections (no per-second quota), so the client holds a
semaphore of ``max_connections`` around every request and runs parallel work on a pool of the same size.
The SDK passes ``timeout`` from its config to ``requests`` on every call, so the per-request timeout is set
there. Its errors carry the status code and the body text only (no headers), which is all we classify on.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import mailchimp_marketing
import requests
from mailchimp_marketing.api_client import ApiClientError

from connectors.base import (
    AuthError,
    CheckResult,
    ConfigError,
    PermanentlyRejected,
    RecordRejected,
    SourceError,
    VendorTime,
    register_check,
)
from connectors.retry import (
    ClockLike,
    MalformedAnswer,
    RetryBudget,
    RetryPolicy,
    Transient,
    call_with_retries,
    malformed_reason,
)
from connectors.mailchimp.mapping import subscriber_hash
from connectors.sandbox import SystemClock
from sync.settings import MailchimpSettings, Settings, read_secret

log = logging.getLogger(__name__)
SOURCE = "mailchimp"
METADATA_URL = "https://login.mailchimp.com/oauth2/metadata"
PAGE_SIZE = 1_000  # Mailchimp: count is capped at 1000
BATCH_POLL_FIRST_S = 0.5  # the first look at a submitted batch; then doubling, up to the cap
BATCH_POLL_MAX_S = 30.0
BATCH_WAIT_S = 1_800.0  # a batch not finished by then is an error (Mailchimp runs an account's batches one by one)
BATCHES_IN_FLIGHT = 50  # submitted before waiting; Mailchimp allows 500 pending per account, shared with other apps
T = TypeVar("T")
R = TypeVar("R")


class MailchimpClient:
    """One account. ``base_url`` points the SDK somewhere else than ``https://<dc>.api.mailchimp.com/3.0``."""

    def __init__(
        self,
        settings: MailchimpSettings,
        *,
        api_key: str | None = None,
        oauth_token: str | None = None,
        base_url: str | None = None,
        metadata_url: str = METADATA_URL,
        clock: ClockLike | None = None,
        policy: RetryPolicy | None = None,
        batch_wait_s: float = BATCH_WAIT_S,
    ) -> None:
        if not api_key and not oauth_token:
            raise ConfigError(
                "mailchimp: no credential; set RETENTION_MAILCHIMP_API_KEY (the key ending in -us6 "
                "or similar) or RETENTION_MAILCHIMP_OAUTH_TOKEN, or store one in the keyring"
            )
        self.settings = settings
        self.clock = clock or SystemClock()
        self.policy = policy or RetryPolicy()
        self.budget = RetryBudget(self.policy.budget)
        self.batch_wait_s = batch_wait_s
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._pool = ThreadPoolExecutor(max_workers=settings.max_connections, thread_name_prefix="mailchimp")
        self.sdk = mailchimp_marketing.Client()
        if api_key:
            dc = api_key.rpartition("-")[2] if "-" in api_key else ""
            if not dc.isalnum():
                raise ConfigError(
                    "mailchimp: the API key does not end in a data centre such as -us6; copy the whole "
                    "key from Mailchimp (Profile → Extras → API keys)"
                )
            self.sdk.set_config({"api_key": api_key, "server": dc, "timeout": settings.timeout_s})
        else:
            dc = self._data_centre(oauth_token or "", metadata_url)
            self.sdk.set_config(
                {
                    "access_token": oauth_token,
                    "server": dc,
                    "timeout": settings.timeout_s,
                }
            )
        self.sdk.api_client.host = (
            (base_url.rstrip("/") + "/3.0") if base_url else f"https://{dc}.api.mailchimp.com/3.0"
        )
        self.vendor_time = VendorTime()
        self.sdk.api_client.request = self._noting_vendor_time(self.sdk.api_client.request)

    def _noting_vendor_time(self, request: Callable[..., Any]) -> Callable[..., Any]:
        """The SDK's request, also noting each answer's Date: the SDK hands back bodies only, never headers."""

        def request_noting_date(*args: Any, **kwargs: Any) -> Any:
            answer = request(*args, **kwargs)
            self.vendor_time.note(answer.headers.get("Date"), self.clock.now())
            return answer

        return request_noting_date

    @classmethod
    def from_settings(cls, settings: MailchimpSettings, **options: Any) -> MailchimpClient:
        return cls(
            settings,
            api_key=read_secret("mailchimp_api_key"),
            oauth_token=read_secret("mailchimp_oauth_token"),
            **options,
        )

    def _data_centre(self, token: str, metadata_url: str) -> str:
        """Mailchimp OAuth: the token does not name its data centre; the metadata endpoint does."""
        try:
            response = requests.get(
                metadata_url,
                headers={"Authorization": f"OAuth {token}"},
                timeout=self.settings.timeout_s,
            )
        except requests.RequestException as exc:
            raise SourceError(
                f"mailchimp: cannot reach the OAuth metadata endpoint ({type(exc).__name__})",
                source=SOURCE,
                retryable=True,
            ) from None
        if response.status_code in (401, 403):
            raise AuthError(
                "mailchimp: the OAuth token was refused; connect the account again",
                source=SOURCE,
            )
        try:
            metadata = response.json() if response.ok else {}
        except ValueError:  # a proxy's or portal's HTML page instead of Mailchimp's JSON
            metadata = {}
        dc = str(metadata.get("dc", "")) if isinstance(metadata, dict) else ""
        if not dc.isalnum():
            raise SourceError(
                f"mailchimp: the OAuth metadata endpoint answered {response.status_code} without a data centre",
                source=SOURCE,
                retryable=True,
            )
        return dc

    # --- one call -----------------------------------------------------------------------------------------------

    def call(
        self,
        what: str,
        method: Callable[..., T],
        *args: Any,
        member: str | None = None,
        expect: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> T:
        """``method(*args, **kwargs)`` on the SDK, within the connection bound, retried when transient.

        A final vendor refusal becomes one typed line naming ``what`` and the ``member`` it concerns. An answer that
        is not JSON, or that ``expect`` finds lacking, is retried like a 5xx (MalformedAnswer) and never returned.
        """

        def attempt() -> T:
            with self._slots:
                answer = method(*args, **kwargs)
            expect_json(answer)
            if expect is not None:
                expect(answer)
            return answer

        try:
            return call_with_retries(
                attempt,
                classify,
                source=SOURCE,
                what=what,
                policy=self.policy,
                budget=self.budget,
                clock=self.clock,
            )
        except ApiClientError as exc:
            raise refusal(exc, what, member) from None

    def forget(self, list_id: str, email: str) -> bool:
        """Delete the member permanently (Mailchimp: the address can never be re-imported to that audience);
        False when the audience does not hold it."""
        return self.call(f"permanently deleting a member of audience {list_id}", self._delete_permanently, list_id, subscriber_hash(email))

    def _delete_permanently(self, list_id: str, member_hash: str) -> bool:
        try:
            self.sdk.lists.delete_list_member_permanent(list_id, member_hash)
        except ApiClientError as exc:
            if exc.status_code == 404:  # not on this audience: nothing to delete, not a failure
                return False
            raise
        return True

    def map(self, work: Callable[[T], R], items: Iterable[T], window: int | None = None) -> Iterator[R]:
        """``work`` over ``items`` on the pool, results in order, at most ``window`` results held ahead."""
        window = window or self.settings.max_connections * 2
        pending: list[Any] = []
        for item in items:
            pending.append(self._pool.submit(work, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- batch operations ---------------------------------------------------------------------------------------

    def run_batches(self, batches: Iterable[Sequence[dict[str, Any]]]) -> dict[str, OperationResult]:
        """Each list of operations as one ``POST /batches``; waits for them and returns every outcome by operation_id.

        Batches go out ``BATCHES_IN_FLIGHT`` at a time, so only that many operation lists are held at once.
        """
        outcomes: dict[str, OperationResult] = {}
        batches = iter(batches)
        while wave := list(itertools.islice(batches, BATCHES_IN_FLIGHT)):
            submitted = list(self.map(self._start_batch, wave))
            for found in self.map(self._read_batch_results, self._wait_for_batches(submitted)):
                outcomes.update(found)
        return outcomes

    def wait_for_unfinished_batches(self) -> int:
        """Wait until every batch the account has not finished yet is finished; how many there were.

        Mailchimp runs a batch's operations some time after accepting it, so a batch that a killed run submitted
        may still be about to write the members it names: read back before it finishes, they look unwritten, and
        what is sent again then may be overwritten by the late batch. Every unfinished batch is waited for (another
        app's too: a batch carries no mark of who sent it), within the same bound as our own."""
        unfinished, offset = [], 0
        while True:
            page = self.call("listing batches", self.sdk.batches.list, count=PAGE_SIZE, offset=offset,
                             fields=["batches.id,batches.status,total_items"])
            batches = page.get("batches") or []
            unfinished += [str(b["id"]) for b in batches if b.get("status") != "finished"]
            offset += len(batches)
            if not batches or offset >= int(page.get("total_items", 0)):
                break
        if unfinished:
            self._wait_for_batches(unfinished)
        return len(unfinished)

    def _start_batch(self, operations: Sequence[dict[str, Any]]) -> str:
        started = self.call(
            f"starting a batch of {len(operations)} operations", self.sdk.batches.start, {"operations": list(operations)}
        )
        return str(started["id"])

    def _wait_for_batches(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        """Poll with capped doubling delays until every batch is finished; an error naming a batch past the bound."""
        deadline = self.clock.monotonic() + self.batch_wait_s
        delay, waiting, finished = BATCH_POLL_FIRST_S, list(batch_ids), []
        while waiting:
            if self.clock.monotonic() + delay > deadline:
                more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
                raise SourceError(
                    f"mailchimp: batch {waiting[0]}{more} did not finish within {self.batch_wait_s:g} s; its writes may "
                    "still land, and the next run reads the members back before sending them again",
                    source=SOURCE,
                    retryable=True,
                )
            self.clock.sleep(delay)
            delay = min(delay * 2, BATCH_POLL_MAX_S)
            polled = list(
                self.map(lambda batch_id: self.call(f"checking batch {batch_id}", self.sdk.batches.status, batch_id), waiting)
            )
            finished += [batch for batch in polled if batch.get("status") == "finished"]
            waiting = [str(batch["id"]) for batch in polled if batch.get("status") != "finished"]
        return finished

    def _read_batch_results(self, batch: dict[str, Any]) -> dict[str, OperationResult]:
        batch_id, url = batch["id"], batch.get("response_body_url")
        if not url:
            raise SourceError(f"mailchimp: batch {batch_id} finished without a results link", source=SOURCE, retryable=True)

        def download() -> bytes:
            # A pre-signed storage link, not the API: no credential goes with it, and it never enters a message.
            response = requests.get(url, timeout=self.settings.timeout_s)
            response.raise_for_status()
            return response.content

        what = f"downloading the results of batch {batch_id}"
        try:
            archive = call_with_retries(
                download, classify_download, source=SOURCE, what=what, policy=self.policy, budget=self.budget, clock=self.clock
            )
        except requests.RequestException as exc:
            status = exc.response.status_code if exc.response is not None else type(exc).__name__
            raise SourceError(f"mailchimp: failed {what} ({status})", source=SOURCE, retryable=True) from None
        return read_results_archive(archive, batch_id)


@dataclass(frozen=True)
class OperationResult:
    """What one operation of a batch got: its HTTP status and, when refused, the problem document."""

    status_code: int
    problem: dict[str, Any] | None = None

    @property
    def is_ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def is_transient(self) -> bool:
        return self.status_code == 429 or self.status_code >= 500 or self.status_code == 0


def read_results_archive(archive: bytes, batch_id: str) -> dict[str, OperationResult]:
    """A batch's .tar.gz of JSON files, each a list of {status_code, operation_id, response}, by operation_id."""
    found: dict[str, OperationResult] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as files:
            for entry in files:
                extracted = files.extractfile(entry) if entry.isfile() and entry.name.endswith(".json") else None
                for item in json.load(extracted) if extracted is not None else []:
                    status = int(item.get("status_code") or 0)
                    refusal_body = None if 200 <= status < 300 else _json_object(item.get("response"))
                    found[str(item.get("operation_id"))] = OperationResult(status, refusal_body)
    except (tarfile.TarError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise SourceError(
            f"mailchimp: the results of batch {batch_id} are not a readable archive ({type(exc).__name__})",
            source=SOURCE,
            retryable=True,
        ) from None
    return found


def _json_object(text: Any) -> dict[str, Any]:
    try:
        body = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def classify_download(exc: Exception) -> Transient | None:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return Transient(f"network: {type(exc).__name__}")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 429 or status >= 500:
            return Transient(f"{status} from the results storage")
    return None


def problem(exc: ApiClientError) -> dict[str, Any]:
    """The problem+json body of a refusal, or {} when the body is not JSON (a gateway page, a dropped socket)."""
    text = exc.text
    if isinstance(text, dict):
        return text
    if isinstance(text, str):
        try:
            body = json.loads(text)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
    return {}


def expect_json(answer: Any) -> None:
    """The SDK returns what it could not parse as it came: a 2xx HTML page as a str, a body cut short as the bare
    ``requests.Response``. A bare response is fine only when it had no body (204 No Content)."""
    if isinstance(answer, str):
        raise MalformedAnswer(malformed_reason(answer))
    if isinstance(answer, requests.Response) and answer.content:
        raise MalformedAnswer(malformed_reason(answer.content))


def classify(exc: Exception) -> Transient | None:
    if isinstance(exc, MalformedAnswer):
        return Transient(f"malformed answer: {exc.reason}")
    if not isinstance(exc, ApiClientError):
        return None
    status = exc.status_code
    if status is None:
        # The SDK wraps transport failures (timeouts, refused or dropped connections) with no status.
        return Transient(f"network: {type(exc.text).__name__}")
    if status == 429 or status >= 500:
        return Transient(f"{status} {problem(exc).get('title', '')}".strip())
    if status == 403 and not problem(exc):
        return Transient("403 without a problem document (Mailchimp throttling)")
    return None


# Mailchimp's refusals that no later request can change: the person unsubscribed, bounced or asked to be forgotten.
COMPLIANCE_TITLES = frozenset({"Member In Compliance State", "Forgotten Email Not Subscribed"})


def refusal(exc: ApiClientError, what: str, member: str | None) -> SourceError:
    return refusal_from(exc.status_code, problem(exc), what, member)


def operation_refusal(result: OperationResult, what: str, member: str) -> SourceError:
    """The same one line and type for an operation a batch refused as for the single call."""
    return refusal_from(result.status_code, result.problem or {}, what, member)


def refusal_from(status: int | None, body: dict[str, Any], what: str, member: str | None) -> SourceError:
    title = body.get("title") or f"HTTP {status}"
    detail = str(body.get("detail") or "").strip()
    fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or [] if isinstance(e, dict))
    about = f" for member {member}" if member else ""
    text = (
        f"mailchimp refused {what}{about}: {title}"
        + (f" ({detail})" if detail else "")
        + (f" [{fields}]" if fields else "")
    )
    if status == 401 or status == 403:
        return AuthError(
            text + "; check the API key or OAuth token and that it may use this audience",
            source=SOURCE,
        )
    if member is not None and status is not None and 400 <= status < 500:
        if title in COMPLIANCE_TITLES:
            return PermanentlyRejected(text, source=SOURCE, record_id=member)
        return RecordRejected(text, source=SOURCE, record_id=member)
    return SourceError(text, source=SOURCE, retryable=False)


def erase_person(settings: Settings, email: str, *, client: MailchimpClient | None = None) -> list[str]:
    """`retention forget --propagate`: delete-permanent once per allow-listed audience; outcomes without the address."""
    own_client = client is None
    client = client or MailchimpClient.from_settings(settings.mailchimp)
    try:
        return [
            f"audience {list_id}: member permanently deleted; Mailchimp refuses to re-add the address"
            if client.forget(list_id, email) else f"audience {list_id}: not a member, nothing to delete"
            for list_id in settings.mailchimp.audiences
        ]
    finally:
        if own_client:
            client.close()


@register_check("mailchimp")
def check_mailchimp(settings: Settings, base_url: str | None = None) -> CheckResult:
    """`retention doctor`: the credential works and every allow-listed audience is reachable with it."""
    section = settings.mailchimp
    if not section.audiences:
        return CheckResult(
            "mailchimp",
            False,
            "mailchimp.audiences is empty; list the audience ids the tool may use",
        )
    client = MailchimpClient.from_settings(section, base_url=base_url, policy=RetryPolicy(max_attempts=2))
    try:
        names = [
            client.call(
                f"reading audience {list_id}",
                client.sdk.lists.get_list,
                list_id,
                fields=["name"],
            )["name"]
            for list_id in section.audiences
        ]
    except SourceError as exc:
        return CheckResult("mailchimp", False, str(exc))
    finally:
        client.close()
    return CheckResult("mailchimp", True, f"{len(names)} audience(s) reachable: {', '.join(names)}")
