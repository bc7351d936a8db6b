"""The shared sandbox plumbing and retry policy every connector relies on, exercised over loopback with requests."""

from __future__ import annotations

import random

import pytest
import requests

from connectors.base import RateLimited, SourceError
from connectors.retry import RetryBudget, RetryPolicy, Transient, WindowLimiter, call_with_retries
from connectors.sandbox import Clock, Fault, Request, Response, Sandbox


class CounterSandbox(Sandbox):
    """A one-endpoint vendor: POST /count adds to a counter, GET /count reads it."""

    vendor = "counter"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.count = 0
        self.route("GET", r"/count", self._get)
        self.route("POST", r"/count", self._add)

    def _get(self, request: Request) -> Response:
        return Response(200, {"count": self.count})

    def _add(self, request: Request) -> Response:
        self.count += int((request.json() or {}).get("by", 1))
        return Response(200, {"count": self.count})


def classify(exc: Exception) -> Transient | None:
    if isinstance(exc, requests.HTTPError) and exc.response.status_code in (429, 500, 502, 503):
        retry_after = exc.response.headers.get("Retry-After")
        return Transient(f"{exc.response.status_code}", float(retry_after) if retry_after else None)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return Transient(type(exc).__name__)
    return None


def call(url: str, timeout: float = 5.0) -> dict:
    response = requests.post(url + "/count", json={"by": 1}, timeout=timeout)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def sandbox():
    with CounterSandbox(clock=Clock(speed=100.0), seed=3) as box:
        yield box


def test_a_retry_after_is_honoured_in_sandbox_time_and_the_call_then_succeeds(sandbox: CounterSandbox) -> None:
    sandbox.faults.add(Fault(status=429, match="POST /count", times=2, retry_after_s=10))

    result = call_with_retries(
        lambda: call(sandbox.url), classify, source="counter", what="counting",
        policy=RetryPolicy(), budget=RetryBudget(10), clock=sandbox.clock, rng=random.Random(1),
    )

    assert result == {"count": 1}
    posts = sandbox.journal.entries("POST", r"/count")
    assert [entry.status for entry in posts] == [429, 429, 200]
    gaps = [later.monotonic - earlier.monotonic for earlier, later in zip(posts, posts[1:])]
    assert all(gap >= 10 for gap in gaps), f"a request came before Retry-After expired: {gaps}"


def test_an_html_gateway_page_is_served_as_it_is_and_retried(sandbox: CounterSandbox) -> None:
    sandbox.faults.add(Fault(status=502, times=1, body="<html><body>Bad gateway</body></html>"))

    first = requests.post(sandbox.url + "/count", json={}, timeout=5)
    assert first.status_code == 502 and first.headers["Content-Type"].startswith("text/html")
    assert call_with_retries(
        lambda: call(sandbox.url), classify, source="counter", what="counting",
        policy=RetryPolicy(base_delay_s=0.01), budget=RetryBudget(5), clock=sandbox.clock,
    ) == {"count": 1}


def test_a_dropped_response_still_applies_the_write(sandbox: CounterSandbox) -> None:
    sandbox.faults.add(Fault(kind="drop", match="POST /count", times=1))

    with pytest.raises(requests.ConnectionError):
        call(sandbox.url)

    assert sandbox.count == 1, "the write landed even though the client never heard back"
    assert [entry.status for entry in sandbox.journal.entries("POST")] == [0]


def test_an_outage_longer_than_the_budget_stops_with_a_resumable_error(sandbox: CounterSandbox) -> None:
    sandbox.faults.outage(3600, status=503)

    with pytest.raises(SourceError) as stopped:
        call_with_retries(
            lambda: call(sandbox.url), classify, source="counter", what="counting",
            policy=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05), budget=RetryBudget(3), clock=sandbox.clock,
        )

    assert stopped.value.retryable
    assert "counter kept failing while counting (503, 4 attempts)" in str(stopped.value)
    assert sandbox.count == 0


def test_a_retry_after_beyond_the_cap_stops_the_run_instead_of_waiting(sandbox: CounterSandbox) -> None:
    sandbox.faults.add(Fault(status=429, times=1, retry_after_s=86_400))

    with pytest.raises(RateLimited) as stopped:
        call_with_retries(
            lambda: call(sandbox.url), classify, source="counter", what="counting",
            policy=RetryPolicy(), budget=RetryBudget(5), clock=sandbox.clock,
        )

    assert stopped.value.retry_after_s == 86_400
    assert len(sandbox.journal) == 1, "nothing is sent after being told to wait a day"


def test_a_stall_ends_in_a_client_timeout_and_a_retry(sandbox: CounterSandbox) -> None:
    sandbox.faults.add(Fault(kind="stall", stall_s=1.0, times=1))

    result = call_with_retries(
        lambda: call(sandbox.url, timeout=0.2), classify, source="counter", what="counting",
        policy=RetryPolicy(base_delay_s=0.01), budget=RetryBudget(5), clock=sandbox.clock,
    )

    assert result["count"] >= 1


def test_the_window_limiter_never_lets_more_than_its_rate_through(sandbox: CounterSandbox) -> None:
    sandbox.clock.set_speed(1.0)  # real time: at speed 100 one millisecond of network latency is 0.1 s
    limiter = WindowLimiter(5, 0.5, sandbox.clock)
    for _ in range(12):
        limiter.acquire()
        call(sandbox.url)

    times = [entry.monotonic for entry in sandbox.journal.entries("POST")]
    for i in range(len(times) - 5):
        # Arrival, not departure, is what a vendor counts; loopback latency may shift an arrival by a few ms.
        assert times[i + 5] - times[i] >= 0.5 - 0.02, "six requests inside one window"


def test_unknown_routes_and_methods_get_errors_and_are_journalled(sandbox: CounterSandbox) -> None:
    assert requests.get(sandbox.url + "/nothing", timeout=5).status_code == 404
    assert requests.delete(sandbox.url + "/count", timeout=5).status_code == 405
    assert requests.post(sandbox.url + "/count", data=b"{not json", timeout=5).status_code == 400
    assert [(e.method, e.status) for e in sandbox.journal] == [("GET", 404), ("DELETE", 405), ("POST", 400)]
