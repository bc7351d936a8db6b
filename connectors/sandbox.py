"""What every vendor sandbox shares: a loopback HTTP server, an adjustable clock, fault schedules and a journal.

A sandbox is a stateful emulator of the vendor endpoints a connector uses. Tests drive the *official* SDK
against it over loopback, and `retention demo` / `retention sandbox <vendor>` serve it to people trying the
tool without an account. The vendor folders hold the vendor's routes, state, limits and error shapes; this
module holds only the plumbing, so the five sandboxes behave alike under faults and tests read them alike.
"""

from __future__ import annotations

import copy
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# --- clock ------------------------------------------------------------------------------------------------------


class Clock:
    """Sandbox time: real time scaled by ``speed`` plus manual jumps.

    Connectors take a clock with ``monotonic()`` and ``sleep()``; handing them the sandbox's clock makes a
    "60 s outage" or a "Retry-After: 10" pass in a fraction of the real time while every wait is still honoured
    in sandbox seconds, which is what the journal records and the tests check.
    """

    def __init__(self, start: datetime | None = None, speed: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._origin_wall = start or datetime.now(timezone.utc)
        self._origin_real = time.monotonic()
        self._offset_s = 0.0
        self._speed = speed

    def monotonic(self) -> float:
        """Sandbox seconds since the clock was made."""
        with self._lock:
            return (time.monotonic() - self._origin_real) * self._speed + self._offset_s

    def now(self) -> datetime:
        return self._origin_wall + timedelta(seconds=self.monotonic())

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self._speed)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset_s += seconds

    def set_speed(self, speed: float) -> None:
        with self._lock:
            elapsed_real = time.monotonic() - self._origin_real
            self._offset_s += elapsed_real * self._speed
            self._origin_real = time.monotonic()
            self._speed = speed


class SystemClock:
    """The real clock, with the same interface connectors use for the sandbox's."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


# --- requests, responses, journal -------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str  # decoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        """The JSON body; ``BadBody`` if it is not JSON, which the vendor turns into its own 400."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadBody(str(exc)) from None


class BadBody(ValueError):
    pass


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list → JSON; bytes/str sent as they are; None → no body
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json;charset=utf-8"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class JournalEntry:
    """One request as the sandbox saw it. Credentials are never kept: tests scan the journal for leaks too."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # parsed JSON where the body was JSON, else the raw text
    status: int  # 0 when the response was dropped on purpose
    at: datetime  # sandbox time the request arrived
    monotonic: float  # the same, as sandbox seconds, for computing gaps
    fault: str | None = None


class Journal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[JournalEntry] = []

    def add(self, entry: JournalEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self, method: str | None = None, path: str | None = None) -> list[JournalEntry]:
        """Entries in arrival order; ``path`` is a regular expression searched in the path."""
        with self._lock:
            entries = list(self._entries)
        pattern = re.compile(path) if path else None
        return [
            e for e in entries if (method is None or e.method == method) and (pattern is None or pattern.search(e.path))
        ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries())


# --- faults -------------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """A scheduled misbehaviour. ``kind``:

    - ``status``: answer ``status`` (429, 5xx, 401, 403...) with ``body`` or the vendor's usual error body;
    - ``stall``: wait ``stall_s`` real seconds, then answer normally (a client timeout should fire first);
    - ``drop``: apply the request, then close the connection without answering (the write happened, the
      client cannot know);
    - ``truncate``: answer normally, but only the first ``truncate_at`` bytes of the body (a proxy that cut the
      answer short, its length header matching what was sent);
    - ``rewrite``: answer normally, with the JSON body passed through ``rewrite`` first: a vendor answer with a key
      missing, a null where a value belongs, the paging gone.
    """

    kind: str = "status"
    status: int = 503
    match: str = ""  # regular expression searched in "METHOD /path"; empty matches everything
    times: int | None = 1  # how many requests it hits; None = until removed or the window ends
    probability: float = 1.0
    retry_after_s: float | None = None
    body: Any = None  # None: the vendor's own error body for ``status``
    content_type: str | None = None
    stall_s: float = 0.0
    truncate_at: int = 0
    rewrite: Callable[[Any], Any] | None = None
    until: float | None = None  # sandbox monotonic seconds after which the fault is spent
    name: str = ""


class FaultSchedule:
    def __init__(self, clock: Clock, seed: int = 0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def outage(self, seconds: float, status: int = 503, match: str = "", **extra: Any) -> Fault:
        """Every matching request fails for ``seconds`` of sandbox time from now."""
        until = self._clock.monotonic() + seconds
        return self.add(Fault(status=status, match=match, times=None, until=until, name="outage", **extra))

    def random(self, probability: float, status: int = 429, match: str = "", **extra: Any) -> Fault:
        """Each matching request fails with ``probability`` (seeded), until removed."""
        return self.add(Fault(status=status, match=match, times=None, probability=probability, name="random", **extra))

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The fault this request meets, if any; spends one of its ``times``."""
        now = self._clock.monotonic()
        target = f"{method} {path}"
        with self._lock:
            for fault in list(self._faults):
                if fault.until is not None and now >= fault.until:
                    self._faults.remove(fault)
                    continue
                if fault.match and not re.search(fault.match, target):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None


# --- the server -----------------------------------------------------------------------------------------------------

Handler = Callable[..., Response]


class Sandbox:
    """Base of the vendor sandboxes. A subclass lists its routes and shapes its errors; the base serves them.

    Handlers run one at a time under ``self.lock`` (the state is a plain dict of dicts), after faults and the
    vendor's ``admit`` hook (auth, rate limits) have had their say. Use as a context manager or start()/stop().
    """

    vendor = "sandbox"

    def __init__(self, *, clock: Clock | None = None, seed: int = 0, max_concurrent: int | None = None) -> None:
        self.clock = clock or Clock()
        self.faults = FaultSchedule(self.clock, seed)
        self.journal = Journal()
        self.lock = threading.RLock()
        self.max_concurrent = max_concurrent
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._handling = 0  # requests received and not yet journaled, whatever became of them
        self._idle = threading.Condition()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # what a vendor sandbox provides ------------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """``pattern`` is a regular expression for the whole path; named groups become keyword arguments."""
        self._routes.append((method, re.compile(pattern + r"\Z"), handler))

    def admit(self, request: Request) -> Response | None:
        """Auth and rate limits: return a response to refuse the request, or None to let it through."""
        return None

    def error(self, status: int, message: str, request: Request, **detail: Any) -> Response:
        """The vendor's error body for ``status``. Subclasses override with the vendor's shape."""
        return Response(status, {"status": status, "message": message})

    def too_many_concurrent(self, request: Request) -> Response:
        return self.error(429, "Too many concurrent connections", request)

    # serving ---------------------------------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[Response | None, str | None]:
        """The response for ``request`` (None: drop the connection) and the name of the fault applied, if any."""
        fault = self.faults.take(request.method, request.path)
        if fault is not None and fault.kind == "status":
            return self._fault_response(fault, request), fault.name or f"status {fault.status}"
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.stall_s)
        refusal = self.admit(request)
        if refusal is not None:
            return refusal, None
        response = self._route(request)
        if fault is not None and fault.kind == "drop":
            return None, fault.name or "drop"
        if fault is not None and fault.kind == "truncate":
            response = Response(response.status, response.encoded()[: fault.truncate_at], response.headers, response.content_type)
        if fault is not None and fault.kind == "rewrite" and fault.rewrite is not None and isinstance(response.body, (dict, list)):
            response = Response(response.status, fault.rewrite(copy.deepcopy(response.body)), response.headers, response.content_type)
        return response, (fault.name or fault.kind) if fault else None

    def _route(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler in self._routes:
            found = pattern.match(request.path)
            if found is None:
                continue
            if method != request.method:
                allowed = True
                continue
            try:
                with self.lock:
                    return handler(request, **{k: unquote(v) for k, v in found.groupdict().items()})
            except BadBody as exc:
                return self.error(400, f"Invalid JSON in request body: {exc}", request)
        if allowed:
            return self.error(405, f"Method {request.method} not allowed on {request.path}", request)
        return self.error(404, f"No route for {request.method} {request.path}", request)

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        if fault.body is None:
            response = self.error(fault.status, "Injected fault", request)
        else:
            response = Response(fault.status, fault.body, content_type=fault.content_type or "text/html")
        if fault.retry_after_s is not None:
            response.headers["Retry-After"] = f"{fault.retry_after_s:g}"
        return response

    def _enter(self) -> bool:
        with self._in_flight_lock:
            if self.max_concurrent is not None and self._in_flight >= self.max_concurrent:
                return False
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    def wait_until_idle(self, timeout_s: float = 120.0) -> bool:
        """Wait until every request received so far has been handled and journaled; False if ``timeout_s`` passed
        first. A client killed mid-request leaves its requests running here, as a vendor's server would."""
        with self._idle:
            return self._idle.wait_for(lambda: self._handling == 0, timeout_s)

    def _begin_handling(self) -> None:
        with self._idle:
            self._handling += 1

    def _end_handling(self) -> None:
        with self._idle:
            self._handling -= 1
            self._idle.notify_all()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        self._server = _LoopbackServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.vendor}-sandbox", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _LoopbackServer(ThreadingHTTPServer):
    # SDKs opening a connection per request from 8 threads overflow the default backlog of 5, and each refused
    # connection then waits a full second before its retry: the emulator, not the connector, would set the pace.
    request_queue_size = 128

    def server_bind(self) -> None:
        # Accepted sockets inherit this: without it the separate header and body writes meet the client's delayed
        # ACK and every response with a body waits ~40 ms (Nagle), which would be the emulator's cost, not the tool's.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


def journal_body(body: bytes | str) -> Any:
    """A request body as the journal keeps it: parsed JSON where it is JSON, else the text."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body if isinstance(body, str) else body.decode("utf-8", "replace")


def _handler_for(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # the journal is the log; stderr chatter would bury test output

        def date_time_string(self, timestamp: float | None = None) -> str:
            """The Date header, from the sandbox's clock: the vendor's time, as a real vendor's answers carry it."""
            return format_datetime(sandbox.clock.now().astimezone(timezone.utc), usegmt=True)

        def _serve(self) -> None:
            sandbox._begin_handling()
            try:
                self._handle_and_journal()
            finally:
                sandbox._end_handling()

        def _handle_and_journal(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=unquote(split.path),
                query=parse_qs(split.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            arrived, arrived_s = sandbox.clock.now(), sandbox.clock.monotonic()
            entered = sandbox._enter()
            try:
                if entered:
                    response, fault = sandbox.dispatch(request)
                else:
                    response, fault = sandbox.too_many_concurrent(request), "concurrency"
            finally:
                if entered:
                    sandbox._leave()
            sandbox.journal.add(
                JournalEntry(
                    method=request.method,
                    path=request.path,
                    query=request.query,
                    body=journal_body(body),
                    status=0 if response is None else response.status,
                    at=arrived,
                    monotonic=arrived_s,
                    fault=fault,
                )
            )
            if response is None:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            payload = response.encoded()
            try:
                self.send_response(response.status)
                if response.body is not None:
                    self.send_header("Content-Type", response.content_type)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if payload and self.command != "HEAD":
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout under a stall): nothing to answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return _Handler


def serve_forever(sandbox: Sandbox, port: int, announce: Callable[[str], None]) -> None:
    """Serve until Ctrl-C: what `retention sandbox <vendor>` runs."""
    url = sandbox.start(port=port)
    announce(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
