"""`retention ui`: the owner report's views as a small local web app (the standard library's HTTP server), plus
the run history, the quarantine with a retry action, and the settings in effect with secrets masked.

- Listens on 127.0.0.1 unless told otherwise; on any other address every request needs the token printed at start
  (query ``?token=``, then a cookie; or ``Authorization: Bearer``), else 401.
- Read-only unless started with --allow-retry. The retry only marks a refused write for the next sync
  (sync.engine.mark_for_retry): the sync sends it, through its own ledger-first path.
- plotly.js is served from the installed package (/static/plotly.min.js): no CDN, nothing leaves the machine.
- Figures are gathered at start, and again in the background when the store has a new run or quarantine entry
  (one cheap query per request tells); each page is rendered once per version: pages answer from memory.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from html import escape
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from plotly.offline import get_plotlyjs
from sqlalchemy import func, select

from connectors.base import ConfigError, InputError, RetentionError
from sync.engine import mark_for_retry
from sync.redact import redact
from sync.report import ReportFigures, gather_figures
from sync.report_html import VIEWS, page, quarantine_section, table
from sync.schema import quarantine, runs
from sync.settings import Settings, read_secret
from sync.store import Store

LOOPBACK = "127.0.0.1"
PLOTLY_PATH = "/static/plotly.min.js"
SHOWN_HISTORY = 200
# Every credential the connectors read by name (sync.settings.read_secret); shown only as set or not set.
SECRET_NAMES = ("hubspot_token", "hubspot_client_id", "hubspot_client_secret", "hubspot_refresh_token", "mailchimp_api_key",
                "mailchimp_oauth_token", "typeform_token", "surveymonkey_token", "google_access_token", "google_credentials",
                "store_password")
EXTRA_PAGES = {"history": "Run history", "quarantine": "Quarantine", "settings": "Settings"}


class Dashboard:
    """The app's state: the open store, the figures of its current version, and the pages rendered from them."""

    def __init__(self, settings: Settings, store_label: str, store: Store, *, allow_retry: bool = False) -> None:
        self.settings, self.store_label, self.store, self.allow_retry = settings, store_label, store, allow_retry
        self.form_nonce = secrets.token_urlsafe(16)  # a cross-site form cannot know it: no CSRF on the retry
        self._lock = threading.Lock()
        self._version: tuple[Any, ...] | None = None
        self._figures: ReportFigures | None = None
        self._pages: dict[str, str] = {}
        self.is_refreshing = False
        self.refreshed = threading.Event()  # set when a background gathering ends

    def close(self) -> None:
        self.store.close()

    def store_version(self) -> tuple[Any, ...]:
        with self.store.engine.connect() as conn:
            last_run = conn.execute(select(func.max(runs.c.id), func.max(runs.c.ended_at))).one()
            held = conn.execute(select(func.count(), func.max(quarantine.c.last_seen_at)).select_from(quarantine)).one()
        return (*last_run, *held)

    def figures(self) -> ReportFigures:
        """The figures to show. The first call gathers them; after that, a store with a new run or quarantine entry
        is gathered again in the background while pages keep answering from the figures they have (and say so)."""
        version = self.store_version()
        with self._lock:
            if self._figures is None:
                self._figures, self._version, self._pages = gather_figures(self.store, self.settings, self.store_label), version, {}
            elif version != self._version and not self.is_refreshing:
                self.is_refreshing = True
                self.refreshed.clear()
                threading.Thread(target=self._refresh, args=(version,), daemon=True).start()
            return self._figures

    def _refresh(self, version: tuple[Any, ...]) -> None:
        try:
            figures = gather_figures(self.store, self.settings, self.store_label)
        except RetentionError:  # e.g. the scores were erased meanwhile: keep showing what we have
            figures = None
        with self._lock:
            if figures is not None:
                self._figures, self._version, self._pages = figures, version, {}
            self.is_refreshing = False
            self.refreshed.set()

    def page(self, name: str) -> str | None:
        """The HTML of the page ``name`` ("" is the overview), or None for no such page."""
        self.figures()
        with self._lock:  # the figures and the pages rendered from them are swapped together, under this lock
            if name not in self._pages:
                body = self._body(name, self._figures)
                if body is None:
                    return None
                heading = VIEWS[name][0] if name in VIEWS else EXTRA_PAGES[name]
                self._pages[name] = page(f"Retention dashboard: {heading}", body, f'<script src="{PLOTLY_PATH}"></script>', self._nav())
            html = self._pages[name]
            if self.is_refreshing:
                html = html.replace("<body>", '<body><p class="note" id="updating">The store changed: the figures are being '
                                              "gathered again; reload in a moment.</p>", 1)
            return html

    def _body(self, name: str, figures: ReportFigures) -> str | None:
        if name in VIEWS:
            return VIEWS[name][1](figures)
        if name == "history":
            return history_view(self.store.recent_runs(SHOWN_HISTORY))
        if name == "quarantine":
            return quarantine_view(figures, self.allow_retry, self.form_nonce)
        if name == "settings":
            return settings_view(self.settings, self.store_label)
        return None

    def _nav(self) -> str:
        links = [(key, title) for key, (title, _) in VIEWS.items()] + list(EXTRA_PAGES.items())
        mode = "retry allowed" if self.allow_retry else "read-only"
        return "<nav>" + "".join(f'<a href="/{"" if key == "overview" else key}">{escape(title)}</a>' for key, title in links) \
            + f'<span class="note">({mode})</span></nav>'

    def retry(self, quarantine_id: int) -> str:
        message = mark_for_retry(self.store, quarantine_id)
        # The person who pressed it expects to see the entry gone: gather again now, not in the background.
        figures, version = gather_figures(self.store, self.settings, self.store_label), self.store_version()
        with self._lock:
            self._figures, self._version, self._pages = figures, version, {}
        return message


def history_view(recent: list[dict[str, Any]]) -> str:
    rows = []
    for run in recent:
        counts = "; ".join(f"{kind}: {c['read']:,} read, {c['written']:,} written, {c['unchanged']:,} unchanged, {c['quarantined']:,} quarantined"
                           for kind, c in run["counts"].items())
        ended = f"{run['ended_at']:%H:%M:%S}" if run["ended_at"] else "-"
        rows.append((run["id"], f"{run['started_at']:%Y-%m-%d %H:%M:%S}", ended, run["command"], run["detail"], run["status"], counts))
    return (f'<p class="note">The last <span data-figure="history-runs">{len(rows):,}</span> runs, newest first.</p>'
            + table(("run", "started (UTC)", "ended", "command", "what", "status", "counts"), rows, "history"))


def quarantine_view(figures: ReportFigures, allow_retry: bool, nonce: str) -> str:
    def retry_form(entry: dict[str, Any]) -> str:
        if entry["kind"] != "write":
            return '<span class="note">fix it at the source; read again next time</span>'
        if not allow_retry:
            return '<span class="note">retry: start with --allow-retry</span>'
        return (f'<form method="post" action="/quarantine/{int(entry["id"])}/retry"><input type="hidden" name="nonce" value="{nonce}">'
                '<button type="submit">retry on next sync</button></form>')

    return quarantine_section(figures, retry_form)


def settings_view(settings: Settings, store_label: str) -> str:
    values = settings.model_dump(mode="json", exclude={"source_file"})
    rows: list[tuple[str, str]] = []

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, inner)
        else:
            rows.append((prefix, redact(str(value))))

    flatten("", values)
    secrets_rows = [(name, "set (hidden)" if read_secret(name) else "not set") for name in SECRET_NAMES]
    return (f'<p class="note">From {escape(str(settings.source_file or "built-in defaults"))}, with RETENTION_ environment '
            f"overrides; store {escape(store_label)}.</p>" + table(("setting", "value"), rows, "settings")
            + "<h3>Credentials (never shown)</h3>" + table(("credential", "state"), secrets_rows, "credentials"))


def make_handler(dashboard: Dashboard, token: str | None, port_of: Callable[[], int]) -> type[BaseHTTPRequestHandler]:
    plotly_js = get_plotlyjs().encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "retention-ui"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # request lines carry the token in ?token=: they are never logged

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if not self._allowed():
                return
            path = urlsplit(self.path).path
            if path == PLOTLY_PATH:
                return self._send(HTTPStatus.OK, plotly_js, "application/javascript", cache=True)
            try:
                html = dashboard.page(path.strip("/") or "overview")
            except RetentionError as exc:  # e.g. the store has no scores (any more)
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, escape(str(exc)).encode(), "text/plain; charset=utf-8")
            if html is None:
                return self._send(HTTPStatus.NOT_FOUND, b"no such page", "text/plain; charset=utf-8")
            self._send(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:  # noqa: N802
            if not self._allowed():
                return
            parts = urlsplit(self.path).path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "quarantine" or parts[2] != "retry" or not parts[1].isdigit():
                return self._send(HTTPStatus.NOT_FOUND, b"no such action", "text/plain; charset=utf-8")
            if not dashboard.allow_retry:
                return self._send(HTTPStatus.FORBIDDEN, b"read-only: start `retention ui --allow-retry` to retry refused writes", "text/plain; charset=utf-8")
            length = min(int(self.headers.get("Content-Length") or 0), 4096)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            if not hmac.compare_digest(form.get("nonce", [""])[0], dashboard.form_nonce):
                return self._send(HTTPStatus.FORBIDDEN, b"this form did not come from the dashboard", "text/plain; charset=utf-8")
            try:
                dashboard.retry(int(parts[1]))
            except InputError as exc:
                return self._send(HTTPStatus.CONFLICT, escape(str(exc)).encode(), "text/plain; charset=utf-8")
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/quarantine")
            self.end_headers()

        def _allowed(self) -> bool:
            """The token check (off the loopback address) and, on it, that the Host is ours (no DNS rebinding)."""
            if token is None:
                expected = {f"{LOOPBACK}:{port_of()}", f"localhost:{port_of()}"}
                if self.headers.get("Host", "") not in expected:
                    self._send(HTTPStatus.FORBIDDEN, b"unexpected Host header", "text/plain; charset=utf-8")
                    return False
                return True
            given = parse_qs(urlsplit(self.path).query).get("token", [""])[0]
            cookie = SimpleCookie(self.headers.get("Cookie", "")).get("retention_token")
            bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            for candidate in (given, cookie.value if cookie else "", bearer):
                if candidate and hmac.compare_digest(candidate, token):
                    self._set_cookie = bool(given)
                    return True
            self._send(HTTPStatus.UNAUTHORIZED, b"a token is required: use the URL retention ui printed", "text/plain; charset=utf-8")
            return False

        def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if token is not None and getattr(self, "_set_cookie", False):
                self.send_header("Set-Cookie", f"retention_token={token}; HttpOnly; SameSite=Strict; Path=/")
            self.end_headers()
            self.wfile.write(body)

    return Handler


def start(dashboard: Dashboard, host: str, port: int) -> tuple[ThreadingHTTPServer, str | None]:
    """Bind and return the server (not yet serving) and the token it requires (None on 127.0.0.1)."""
    token = None if host == LOOPBACK else secrets.token_urlsafe(24)
    holder: dict[str, int] = {}
    try:
        server = ThreadingHTTPServer((host, port), make_handler(dashboard, token, lambda: holder["port"]))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}) — choose another with --port, or stop what uses it") from None
    holder["port"] = server.server_address[1]
    server.daemon_threads = True
    return server, token


def serve(dashboard: Dashboard, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve until Ctrl-C. The figures are gathered before the address is printed, so the first page is quick
    (and after binding, so a port in use is said at once)."""
    server, token = start(dashboard, host, port)
    try:
        dashboard.figures()
        url = f"http://{host}:{server.server_address[1]}/"
        mode = "retry of refused writes allowed" if dashboard.allow_retry else "read-only"
        if token is None:
            say(f"Dashboard at {url} ({mode}; Ctrl-C stops it)")
        else:
            say(f"Dashboard at {url}?token={token} ({mode}; every request needs this token; Ctrl-C stops it)")
        server.serve_forever()
    except KeyboardInterrupt:
        say("Stopped.")
    finally:
        server.server_close()
