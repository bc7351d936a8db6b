"""`retention ui`: the dashboard's pages render their plots in a real browser without console errors and show the
store's numbers; it is read-only unless told otherwise, its retry only marks a refused write for the next sync,
off the loopback address every request needs the token, and no secret is ever shown."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.hubspot.destination import HubSpotDestination
from connectors.records import Score
from sync.engine import push_changes
from sync.scoring_stage import keep_scores
from sync.settings import Settings
from sync.store import Store
from sync.ui import Dashboard, start
from tests.conftest import ReportedShop, open_page
from tests.test_hubspot_read import hubspot_sandbox, make_client
from tests.test_hubspot_write import NAMES, desired_for
from tests.test_report import PageText, number, store_figures

PAGES = {"": 1, "risk": 2, "at-risk": 0, "segments": 2, "sentiment": 2, "model": 2, "sync": 2, "history": 0,
         "quarantine": 1, "settings": 0}  # page -> plots it must draw


@contextmanager
def running(dashboard: Dashboard, host: str = "127.0.0.1") -> Iterator[tuple[str, str | None]]:
    """Serve ``dashboard`` on a free port in a thread; yield its base URL and token."""
    server, token = start(dashboard, host, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/", token
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()


def shop_dashboard(shop: ReportedShop, **options: object) -> Dashboard:
    settings = Settings(data_dir=shop.data_dir)
    return Dashboard(settings, str(shop.data_dir / "retention.db"), shop.open_store(), **options)


def fetch(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_every_page_renders_its_plots_in_a_real_browser_without_console_errors(browser, reported_shop: ReportedShop) -> None:
    with running(shop_dashboard(reported_shop)) as (url, _):
        for name, plots in PAGES.items():
            page, errors = open_page(browser, url + name, screenshot=f"dashboard-{name or 'overview'}.png", plots=plots)
            try:
                assert errors == [], name
                assert page.locator(".js-plotly-plot").count() >= plots, name
            finally:
                page.close()


def test_the_dashboard_shows_the_store_numbers(reported_shop: ReportedShop) -> None:
    store = reported_shop.open_store()
    try:
        expected = store_figures(store)
        history = len(store.recent_runs(200))
    finally:
        store.close()
    with running(shop_dashboard(reported_shop)) as (url, _):
        overview = PageText(fetch(url)[1])
        at_risk = PageText(fetch(url + "at-risk")[1])
        runs = PageText(fetch(url + "history")[1])
        quarantined = PageText(fetch(url + "quarantine")[1])
        status, script, headers = fetch(url + "static/plotly.min.js")

    assert number(overview.figures["scored"]) == expected["scored"]
    assert {band: number(overview.figures[f"band-{band}"]) for band in ("high", "medium", "low", "new")} == expected["bands"]
    assert [row[0] for row in at_risk.tables["at-risk"]] == expected["at_risk"][:500]
    assert number(runs.figures["history-runs"]) == len(runs.tables["history"]) == history
    assert len(quarantined.tables["quarantine"]) == expected["quarantine"] == 1
    assert "fix it at the source" in quarantined.tables["quarantine"][0][-1]  # a read refusal: nothing to retry here
    assert status == 200 and "plotly" in script[:2000] and headers["Content-Type"] == "application/javascript"


def test_pages_answer_from_memory_once_gathered(reported_shop: ReportedShop) -> None:
    import time

    with running(shop_dashboard(reported_shop)) as (url, _):
        fetch(url)  # gathers the figures
        for name in PAGES:
            fetch(url + name)  # renders each page once
        started = time.perf_counter()
        for name in PAGES:
            assert fetch(url + name)[0] == 200
        assert (time.perf_counter() - started) / len(PAGES) < 0.3


def test_settings_show_which_credentials_are_set_and_never_their_values(reported_shop: ReportedShop, monkeypatch) -> None:
    monkeypatch.setenv("RETENTION_HUBSPOT_TOKEN", "pat-eu1-0000-secret-value")
    with running(shop_dashboard(reported_shop)) as (url, _):
        status, html, _ = fetch(url + "settings")
    shown = PageText(html)
    assert status == 200 and "pat-eu1-0000-secret-value" not in html
    assert dict(map(tuple, shown.tables["credentials"]))["hubspot_token"] == "set (hidden)"
    assert dict(map(tuple, shown.tables["settings"]))["scoring.high_risk"] == "0.7"


def test_off_the_loopback_address_every_request_needs_the_token(reported_shop: ReportedShop) -> None:
    # 127.0.0.2 is another address than 127.0.0.1 (still this machine), so the token rule applies.
    with running(shop_dashboard(reported_shop), host="127.0.0.2") as (url, token):
        assert token
        assert fetch(url)[0] == 401 and fetch(url + "static/plotly.min.js")[0] == 401
        assert fetch(url + "?token=wrong")[0] == 401
        status, _, headers = fetch(url + f"?token={token}")
        assert status == 200 and f"retention_token={token}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
        assert fetch(url + "risk", headers={"Cookie": f"retention_token={token}"})[0] == 200
        assert fetch(url + "risk", headers={"Authorization": f"Bearer {token}"})[0] == 200


def test_on_loopback_a_foreign_host_name_is_refused(reported_shop: ReportedShop) -> None:
    with running(shop_dashboard(reported_shop)) as (url, _):
        assert fetch(url, headers={"Host": "attacker.example:80"})[0] == 403  # DNS rebinding


def test_port_in_use_is_one_line(reported_shop: ReportedShop) -> None:
    from connectors.base import ConfigError

    with running(shop_dashboard(reported_shop)) as (url, _):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port} .* choose another with --port"):
            start(shop_dashboard(reported_shop), "127.0.0.1", port)


@pytest.fixture
def refused_write(tmp_path: Path) -> Iterator[tuple[Store, object, dict, str]]:
    """A store with scores, and one HubSpot contact whose segment value the sandbox refused (no such option)."""
    store = Store.open(f"sqlite:///{tmp_path}/retention.db")
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    keep_scores(store, [Score(source="scoring", source_id=f"c{i}@example.com", churn_probability=i / 30, risk_band="low",
                              scored_at=at, segment="Loyal") for i in range(30)], "score", "30 customers")
    with hubspot_sandbox(5) as box:
        ids = sorted(box.objects["contacts"])
        desired = desired_for(box, ids)
        desired[ids[0]][NAMES["segment"]] = "VIP"
        result = push_changes(store, HubSpotDestination(make_client(box)), desired)
        assert {r.change.object_id for r in result.rejected} == {ids[0]}
        yield store, box, desired, ids[0]
    store.close()


def test_the_dashboard_is_read_only_unless_started_to_allow_retry(refused_write, tmp_path: Path) -> None:
    store, _, _, _ = refused_write
    before = store.checksum()
    dashboard = Dashboard(Settings(data_dir=tmp_path), "test store", Store.open(f"sqlite:///{tmp_path}/retention.db"))
    with running(dashboard) as (url, _):
        html = fetch(url + "quarantine")[1]
        entry = store.quarantined()[0]
        status, body, _ = fetch(url + f"quarantine/{entry['id']}/retry", data=f"nonce={dashboard.form_nonce}".encode())
    assert "start with --allow-retry" in html and "<form" not in html
    assert status == 403 and "read-only" in body
    assert store.checksum() == before


def test_retry_marks_a_refused_write_and_the_next_sync_sends_it(refused_write, tmp_path: Path) -> None:
    store, box, desired, contact_id = refused_write
    again = push_changes(store, HubSpotDestination(make_client(box)), desired)
    assert again.held_back == 5 and again.sent == 0  # refused once: not re-sent while the values are the same
    assert len(store.quarantined()) == 5  # HubSpot refused the contact's input whole: each field is an entry
    dashboard = Dashboard(Settings(data_dir=tmp_path), "test store", Store.open(f"sqlite:///{tmp_path}/retention.db"), allow_retry=True)
    with running(dashboard) as (url, _):
        entry = next(e for e in store.quarantined() if e["record_ref"].endswith(NAMES["segment"]))
        assert f'action="/quarantine/{entry["id"]}/retry"' in fetch(url + "quarantine")[1]
        forged = fetch(url + f"quarantine/{entry['id']}/retry", data=b"nonce=guessed")
        status, _, headers = fetch(url + f"quarantine/{entry['id']}/retry", data=f"nonce={dashboard.form_nonce}".encode())
    assert forged[0] == 403
    assert status == 303 and headers["Location"] == "/quarantine"
    assert store.quarantined() == [] and box.objects["contacts"][contact_id]["properties"].get(NAMES["segment"]) != "VIP"

    # The owner adds the option in HubSpot; the next sync sends the value through its usual path.
    box.properties["contacts"][NAMES["segment"]]["options"].append({"label": "VIP", "value": "VIP", "displayOrder": 99, "hidden": False})
    retried = push_changes(store, HubSpotDestination(make_client(box)), desired)
    assert retried.sent >= 1 and not retried.rejected
    assert box.objects["contacts"][contact_id]["properties"][NAMES["segment"]] == "VIP"


def test_after_a_new_run_pages_keep_answering_and_the_new_figures_follow(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/retention.db")
    day_one, day_two = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
    customers = [f"c{i}@example.com" for i in range(30)]
    keep_scores(store, [Score(source="scoring", source_id=c, churn_probability=0.1, risk_band="low", scored_at=day_one) for c in customers],
                "score", "day one")
    dashboard = Dashboard(Settings(data_dir=tmp_path), "test store", Store.open(f"sqlite:///{tmp_path}/retention.db"))
    with running(dashboard) as (url, _):
        assert number(PageText(fetch(url)[1]).figures["band-high"]) == 0
        keep_scores(store, [Score(source="scoring", source_id=c, churn_probability=0.9, risk_band="high", scored_at=day_two)
                            for c in customers], "score", "day two")

        during = fetch(url)[1]
        assert dashboard.refreshed.wait(60)
        after = fetch(url)[1]
    # While it gathers again, a page shows what it had and says so; once done, the new figures.
    high_during = number(PageText(during).figures["band-high"])
    assert (high_during, 'id="updating"' in during) in ((0, True), (30, False))
    assert number(PageText(after).figures["band-high"]) == 30 and 'id="updating"' not in after
    store.close()
