"""Crashes at every named point of a sync and at seeded random moments, each followed by a normal run, on a small
shop in the HubSpot and Mailchimp sandboxes (RELIABILITY.md §4.2 F1, F2, F3).

Each round, a user first edits some last names in HubSpot and phones in Mailchimp, so every round has something
to read, link and write both ways. Then a sync runs in a child process and dies:
- at a named crash point (sync/crash_points.py: ``RETENTION_CRASH_AT=POINT:N``, exit 137 with no cleanup), for
  every N the run reaches: each page commit (after-cursor), each tool's read (after-read), scoring (after-score),
  each write batch the tool acknowledged before the ledger confirmed it (after-remote-2xx), each store transaction
  before its COMMIT (mid-commit);
- or by SIGKILL once the sandboxes have answered a seeded random number of its requests.
In a quarter of the rounds a customer also places an order in both this shop and a twin, so scores move and are written
under the crash. A normal run follows, and the oracle is checked after every one of them: the scores and tags in
both tools equal those of the twin, which syncs the same orders and is never killed (the edits touch no input of
scoring); every
edit is in both tools; nothing was created twice; no subscription moved and no request carried a status; the store
passes SQLite's full integrity check; and the normal run re-sent at most one request's worth of writes the killed
run had already delivered.

The children are forked (not spawned): a fork starts in milliseconds with every module already imported, which is
what lets CI afford ~200 kill points. RETENTION_SOAK=1 runs a larger shop and more random kills.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import signal
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from sync.crash_points import CRASH_AT_VARIABLE, CRASH_EXIT_CODE
from sync.demo import DemoShop, open_demo_shop
from sync.pipeline import run_sync
from sync.scheduler import LEASE_NAME
from sync.settings import Settings
from sync.store import Store
from tests.test_sync_kill import edit_between_runs, members, positions, state, writes

SOAK = os.environ.get("RETENTION_SOAK") == "1"
CONTACTS = 200 if SOAK else 40
RANDOM_KILLS = 500 if SOAK else 200
EDITS_PER_TOOL = 4  # people whose last name (HubSpot) and phone (Mailchimp) a user edits before each round
SEED = 23
ORDER_SHARE = 0.25  # share of rounds in which a customer places an order first (so scores move and are written)
NAMED_POINTS = {  # point → the most passes swept (a run that passes it fewer times ends the sweep)
    "after-cursor": 8, "after-read": 2, "after-score": 1, "after-remote-2xx": 6, "mid-commit": 60,
}


def _crashing_sync(settings: Settings, endpoints: dict, crash_at: str | None) -> None:
    """What `retention sync` does, in a forked child that a crash point or the test ends."""
    if crash_at:
        os.environ[CRASH_AT_VARIABLE] = crash_at
    store = Store.open(settings.store_url)
    with store.lease(LEASE_NAME, ttl_s=settings.schedule.lease_s):
        run_sync(settings, store, endpoints=endpoints)


def open_small_shop(data_dir: Path, now: datetime) -> DemoShop:
    """Small write batches, so even a small shop's run has several batches to die between. The limits are
    generous and Typeform is left out, so a round lasts a fraction of a second, not the seconds the demo account's
    pacing (4 searches a second, Typeform's 2 requests a second) would make it: the limits have their own tests, and
    the spawned kill test (tests/test_sync_kill.py) covers them and a survey tool under kills."""
    shop = open_demo_shop(Settings(data_dir=data_dir), CONTACTS, seed=SEED, now=now)
    shop.sandboxes["hubspot"].requests_per_10s, shop.sandboxes["hubspot"].searches_per_s = 1_000, 50
    shop.settings = shop.settings.model_copy(deep=True, update={
        "hubspot": shop.settings.hubspot.model_copy(update={"batch_size": 2, "requests_per_10s": 900, "searches_per_s": 45}),
        "mailchimp": shop.settings.mailchimp.model_copy(update={"batch_size": 2}),
        "typeform": shop.settings.typeform.model_copy(update={"enabled": False}),
    })
    return shop


@pytest.fixture
def shops(tmp_path: Path):
    # A forked child that enters an OpenMP region (scoring's gradient boosting) waits for ever on the parent's
    # OpenMP threads, which it does not have: one OpenMP thread in this test, so there is no team to wait on.
    limits = threadpool_limits(limits=1, user_api="openmp")
    now = datetime.now(timezone.utc) - timedelta(minutes=5)  # both shops hold the very same business
    killed, twin = open_small_shop(tmp_path / "killed", now), open_small_shop(tmp_path / "twin", now)
    yield killed, twin
    for shop in (killed, twin):
        for box in shop.sandboxes.values():
            box.stop()
    limits.restore_original_limits()


def sync_normally(shop: DemoShop) -> None:
    store = Store.open(shop.settings.store_url)
    try:
        with store.lease(LEASE_NAME, ttl_s=shop.settings.schedule.lease_s):  # a killed holder must not block this
            report = run_sync(shop.settings, store, endpoints=shop.endpoints)
        assert store.integrity() == "ok"
    finally:
        store.close()
    assert not report.errors, [str(e) for e in report.errors]


def add_order(shops: tuple[DemoShop, ...], rng: random.Random, round_: int) -> None:
    """A customer places an order (a won HubSpot deal) in both shops: rescoring moves their scores, so the round has
    score writes for the crash to land among, and the twin gets the same inputs for the final comparison."""
    contact_ids = sorted(shops[0].sandboxes["hubspot"].objects["contacts"], key=int)
    contact_id, amount = rng.choice(contact_ids), f"{rng.randrange(20, 400)}.{round_ % 100:02d}"
    # One close date for both shops: each shop's own last-modified time of the contact differs (edits and writes touch
    # only the first), and a close date apart by seconds moves the customer-value model's fit, so the twin's oracle.
    closed = shops[0].sandboxes["hubspot"].objects["contacts"][contact_id]["properties"]["lastmodifieddate"]
    for shop in shops:
        hubspot = shop.sandboxes["hubspot"]
        deal_id = hubspot.create("deals", {"dealname": f"Order {90_000 + round_}", "amount": amount, "pipeline": "default",
                                           "dealstage": "closedwon", "deal_currency_code": "EUR", "closedate": closed})
        hubspot.associations.setdefault(deal_id, set()).add(contact_id)


def requests_made(shop: DemoShop) -> int:
    return sum(len(box.journal) for box in shop.sandboxes.values())


def status_requests(shop: DemoShop) -> int:
    """Requests whose body would set a Mailchimp subscription status (the tool must never send one)."""
    found = 0
    for entry in shop.sandboxes["mailchimp"].journal:
        body = entry.body if isinstance(entry.body, dict) else {}
        operations = [op.get("body") or "" for op in body.get("operations", [])]
        found += "status" in body or any('"status"' in op for op in operations)
    return found


def lost_values(shop: DemoShop, oracle: tuple[dict, dict], expected: dict[tuple[str, str], str]) -> list[str]:
    """What the oracle says should be in the tools and is not: scores and tags by email, then each edit."""
    hubspot, mailchimp = state(shop)
    lost = [f"hubspot {email}" for email, values in oracle[0].items() if hubspot.get(email) != values]
    lost += [f"mailchimp {email}" for email, values in oracle[1].items() if mailchimp.get(email) != values]
    contacts = {c["properties"]["email"].lower(): c["properties"] for c in shop.sandboxes["hubspot"].objects["contacts"].values()}
    by_email = {m["email_address"].lower(): m for m in members(shop).values()}
    for (email, field), value in expected.items():
        if contacts[email]["lastname" if field == "last_name" else "phone"] != value:
            lost.append(f"hubspot {email} {field}")
        if email in by_email and by_email[email]["merge_fields"]["LNAME" if field == "last_name" else "PHONE"] != value:
            lost.append(f"mailchimp {email} {field}")
    return lost


def duplicates(shop: DemoShop, member_count: int) -> int:
    """Objects created twice: contacts, members, tag segments, merge fields."""
    audience = next(iter(shop.sandboxes["mailchimp"].lists.values()))
    segment_names = Counter(s["name"] for s in audience["segments"].values())
    field_tags = Counter(f["tag"] for f in audience["merge_fields"].values())
    return (len(shop.sandboxes["hubspot"].objects["contacts"]) - CONTACTS + len(audience["members"]) - member_count
            + sum(c - 1 for c in segment_names.values()) + sum(c - 1 for c in field_tags.values()))


def crash_plan(rng: random.Random) -> list[str | float]:
    """Every named point at every pass up to its sweep's end (first passes first, so a sweep ends at the first pass
    a run does not reach), then seeded request counts to SIGKILL after."""
    named: list[str | float] = [f"{point}:{n}" for n in range(1, max(NAMED_POINTS.values()) + 1)
                              for point, most in NAMED_POINTS.items() if n <= most]
    return named + [rng.random() for _ in range(RANDOM_KILLS)]  # where in the run: a share of its requests


@pytest.mark.fault("F1", "F2", "F3")
def test_a_crash_at_every_named_point_and_random_moment_then_a_normal_run_reaches_the_oracle(shops, reliability_figures):
    shop, twin = shops
    sync_normally(twin)
    oracle = state(twin)
    rng = random.Random(SEED)
    fork = multiprocessing.get_context("fork")
    expected: dict[tuple[str, str], str] = {}
    statuses_before = {h: m["status"] for h, m in members(shop).items()}
    member_count = len(statuses_before)
    kills: Counter[str] = Counter()
    unreached: dict[str, int] = {}  # named point → the first pass a run did not reach: later passes are skipped
    redundant_requests: list[int] = []
    redundant_values = 0
    failures: list[str] = []
    started, span = time.monotonic(), 20

    for round_, crash in enumerate(crash_plan(rng)):
        point, _, nth = crash.partition(":") if isinstance(crash, str) else ("random", "", "0")
        if int(nth) >= unreached.get(point, 10**9):
            continue
        if round_:  # not before the first run: with no agreed value yet, the record changed last wins every field
            edit_between_runs(shop, rng, round_, expected, per_tool=EDITS_PER_TOOL)
        if round_ and rng.random() < ORDER_SHARE:  # not before the first run: both shops fit their model on the same data
            add_order((shop, twin), rng, round_)
            sync_normally(twin)
            oracle = state(twin)
        mark, start = positions(shop), requests_made(shop)
        child = fork.Process(target=_crashing_sync, args=(shop.settings, shop.endpoints, crash if point != "random" else None))
        child.start()
        if point == "random":
            kill_after = max(1, round(crash * span))
            while child.is_alive() and requests_made(shop) - start < kill_after:
                time.sleep(0.0005)
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=120)
        if child.is_alive():  # a hung child would hang CI: fail the round instead
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            failures.append(f"round {round_} ({crash}): the child hung")
        elif child.exitcode in (CRASH_EXIT_CODE, -signal.SIGKILL):
            kills[point] += 1
        elif child.exitcode == 0 and point != "random":
            unreached[point] = int(nth)
        elif child.exitcode != 0:
            failures.append(f"round {round_} ({crash}): the child ended with {child.exitcode}")
        sent_by_killed = set().union(*(w.items for w in writes(shop, mark)))
        before_normal, requests_before_normal = positions(shop), requests_made(shop)
        sync_normally(shop)
        # The next random kill lands anywhere in a run of about this size.
        span = max(3, requests_made(shop) - requests_before_normal)
        redundant = [w for w in writes(shop, before_normal) if w.items <= sent_by_killed]
        redundant_requests.append(len(redundant))
        redundant_values += sum(len(w.items) for w in redundant)
        lost = lost_values(shop, oracle, expected)
        if lost:
            failures.append(f"round {round_} ({crash}): {len(lost)} lost, e.g. {lost[:3]}")
        if {h: m["status"] for h, m in members(shop).items()} != statuses_before:
            failures.append(f"round {round_} ({crash}): a subscription status moved")

    figures = {
        "kills": sum(kills.values()), "named_kills": sum(n for p, n in kills.items() if p != "random"),
        "random_kills": kills["random"],
        "named_kills_by_point": ", ".join(f"{p} {n}" for p, n in sorted(kills.items()) if p != "random"),
        "records_lost": len(lost_values(shop, oracle, expected)),
        "duplicates_created": duplicates(shop, member_count), "redundant_requests_max_per_kill": max(redundant_requests),
        "redundant_values_total": redundant_values, "status_changing_requests": status_requests(shop),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "seconds": round(time.monotonic() - started),
    }
    reliability_figures.record(**figures)
    assert not failures, failures[:10]
    assert all(kills[point] >= 1 for point in NAMED_POINTS), kills  # every named point was reached and crashed at
    assert figures["kills"] >= 200, figures
    assert figures["duplicates_created"] == 0 and figures["status_changing_requests"] == 0, figures
    assert figures["redundant_requests_max_per_kill"] <= 1, redundant_requests
