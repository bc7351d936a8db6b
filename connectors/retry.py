"""Retries and client-side rate limiting, shared by every vendor client.

Each vendor decides *what* is worth retrying (it knows its SDK's exceptions and headers) by handing
``call_with_retries`` a classifier; this module decides *how*: capped exponential backoff with full jitter,
Retry-After honoured (never a request before it expires) but capped, and one retry budget per run so an
outage ends the run with a checkpoint instead of retrying for hours.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from connectors.base import RateLimited, SourceError

T = TypeVar("T")


class ClockLike(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Transient:
    """What a vendor classifier returns for a failure worth retrying."""

    reason: str  # "429 TEN_SECONDLY_ROLLING", "503 (HTML gateway page, correlation id …)", "timeout"
    retry_after_s: float | None = None


class MalformedAnswer(Exception):
    """A vendor answered 2xx with something that is not the answer its API documents: not JSON (a proxy's HTML
    page, a body cut short), or JSON without the keys that must be there (paging gone while more results remain).
    Retried like a 5xx, since it is usually a proxy or a deploy passing; never stored as data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def malformed_reason(body: bytes | str) -> str:
    """Why ``body`` is no JSON object, in a few words a log line can hold (never the body itself: it may be long)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if not text.strip():
        return "an empty answer"
    if text.lstrip()[:1] == "<":
        return f"an HTML page instead of JSON ({len(text):,} characters)"
    return f"JSON cut short or invalid ({len(text):,} characters)"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # per call, the first included
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0  # the backoff cap
    max_retry_after_s: float = 120.0  # a longer Retry-After (a daily limit) stops the run with a checkpoint instead
    budget: int = 500  # retries per run, across all calls


class RetryBudget:
    """Retries left for this run, shared by every call (and thread) of one client."""

    def __init__(self, retries: int) -> None:
        self._left = retries
        self._lock = threading.Lock()

    def spend(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True

    @property
    def left(self) -> int:
        with self._lock:
            return self._left


def call_with_retries(
    call: Callable[[], T],
    classify: Callable[[Exception], Transient | None],
    *,
    source: str,
    what: str,
    policy: RetryPolicy,
    budget: RetryBudget,
    clock: ClockLike,
    limiter: WindowLimiter | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run ``call``; on a transient failure wait and try again, within the attempt cap and the run's budget.

    ``classify`` returns None for failures that are final; those propagate unchanged (the vendor client turns
    them into typed errors). When retries run out the run stops with a retryable SourceError naming ``what``.
    """
    rng = rng or random.Random()
    for attempt in range(1, policy.max_attempts + 1):
        if limiter is not None:
            limiter.acquire()
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the classifier decides; anything it does not know re-raises
            transient = classify(exc)
            if transient is None:
                raise
        if transient.retry_after_s is not None and transient.retry_after_s > policy.max_retry_after_s:
            raise RateLimited(
                f"{source} asks us to wait {transient.retry_after_s:.0f} s before {what} ({transient.reason}); "
                "the run stopped here and the next one resumes from the last saved point",
                source=source,
                retry_after_s=transient.retry_after_s,
            )
        if attempt == policy.max_attempts or not budget.spend():
            raise SourceError(
                f"{source} kept failing while {what} ({transient.reason}, {attempt} attempts); "
                "the run stopped here and the next one resumes from the last saved point",
                source=source,
                retryable=True,
            )
        backoff = rng.uniform(0, min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1)))
        if transient.retry_after_s is not None:
            # Never earlier than the server asked; a little later, so a crowd of clients does not return at once.
            wait = transient.retry_after_s + rng.uniform(0, policy.base_delay_s)
            if limiter is not None:
                limiter.pause(wait)
        else:
            wait = backoff
        clock.sleep(wait)
    raise AssertionError("unreachable")  # the loop always returns or raises


class WindowLimiter:
    """At most ``max_calls`` per rolling ``interval_s``, across threads. Also holds every caller during a pause.

    Kept a little under the vendor's limit on purpose: other integrations share the account's budget.
    """

    def __init__(self, max_calls: int, interval_s: float, clock: ClockLike) -> None:
        if max_calls < 1 or interval_s <= 0:
            raise ValueError("a rate limit needs at least one call per positive interval")
        self.max_calls = max_calls
        self.interval_s = interval_s
        self._clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock.monotonic()
                while self._sent and now - self._sent[0] >= self.interval_s:
                    self._sent.popleft()
                if now < self._paused_until:
                    wait = self._paused_until - now
                elif len(self._sent) < self.max_calls:
                    self._sent.append(now)
                    return
                else:
                    wait = self.interval_s - (now - self._sent[0])
            self._clock.sleep(max(wait, 0.001))

    def pause(self, seconds: float) -> None:
        """No caller may send for ``seconds`` (a Retry-After applies to the account, not just one thread)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)
