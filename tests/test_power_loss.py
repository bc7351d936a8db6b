"""Power-loss-style loss of the last commits (RELIABILITY.md §4.2 F4): the store goes back in time, the tools do not.

Each round, a user edits some last names in HubSpot and phones in Mailchimp (and, in a quarter of the rounds, a
customer places an order in this shop and in a never-disturbed twin), then a sync runs in a forked child. Once the
sandboxes have answered a seeded random number of its requests, the child is frozen (SIGSTOP), the store's database
file and its ``-wal`` are copied as they are on disk at that instant (the ``-shm`` index is not: power loss takes it
and SQLite rebuilds it), and the child resumes. Then, alternately:
- the child is killed at once (the power went out at that instant), or
- the child finishes its run, and the copy replaces the store afterwards (the disk lost the commits it had
  acknowledged since, as a restored backup or a disk cache that ignored fsync would).
The tools keep every write the child made; the store starts from the older state in the copy. After a finished run the
user edits both tools again before the next one (the store's own agreed values are older than the tools' then, so a
value the lost commits copied from one tool to the other must not be taken for a user's newer edit). One normal sync
follows and must converge: the store opens with SQLite's full integrity check ok, the scores and tags in both tools equal
the twin's, every edit is in both tools, nothing was created twice, no subscription status moved and no request
carried a status.

Copies are taken with the child frozen because a copy of two files made while a writer runs is not a state the
disk could ever have held (a checkpoint between the two copies pairs an old database with a restarted WAL).
RETENTION_SOAK=1 runs more rounds on a larger shop.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sync.demo import DemoShop
from tests.test_crash_points import (
    EDITS_PER_TOOL,
    ORDER_SHARE,
    _crashing_sync,
    add_order,
    duplicates,
    lost_values,
    shops,  # noqa: F401 - the fixture: a shop and its never-disturbed twin, one OpenMP thread
    requests_made,
    status_requests,
    sync_normally,
)
from tests.test_sync_kill import edit_between_runs, members, positions, state, writes

SOAK = os.environ.get("RETENTION_SOAK") == "1"
ROUNDS = 100 if SOAK else 12
SEED = 41
STORE_FILES = ("", "-wal")  # what a power cut leaves on disk; "-shm" is a memory index SQLite rebuilds


def store_path(shop: DemoShop) -> Path:
    return Path(make_url(shop.settings.store_url).database or "")


def copy_store(database: Path, into: Path) -> None:
    """The database and its WAL as they are on disk now; a file that does not exist yet stays absent."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for suffix in STORE_FILES:
        if Path(f"{database}{suffix}").exists():
            shutil.copyfile(f"{database}{suffix}", into / f"store{suffix}")


def restore_store(copy: Path, database: Path) -> None:
    for suffix in (*STORE_FILES, "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    for suffix in STORE_FILES:
        if (copy / f"store{suffix}").exists():
            shutil.copyfile(copy / f"store{suffix}", f"{database}{suffix}")
            os.chmod(f"{database}{suffix}", 0o600)


@pytest.mark.fault("F4")
def test_a_store_restored_from_a_copy_taken_mid_sync_converges_on_the_next_run(shops, tmp_path, reliability_figures):
    shop, twin = shops
    sync_normally(twin)
    oracle = state(twin)
    rng = random.Random(SEED)
    fork = multiprocessing.get_context("fork")
    database, copy = store_path(shop), tmp_path / "copy"
    expected: dict[tuple[str, str], str] = {}
    statuses_before = {h: m["status"] for h, m in members(shop).items()}
    member_count = len(statuses_before)
    restores: Counter[str] = Counter()
    failures: list[str] = []
    resent_values = 0  # field values the normal run sent again because the restored ledger had lost their confirmation
    started, span = time.monotonic(), 40

    for round_ in range(ROUNDS):
        if round_:
            edit_between_runs(shop, rng, round_, expected, per_tool=EDITS_PER_TOOL)
            if rng.random() < ORDER_SHARE:
                add_order((shop, twin), rng, round_)
                sync_normally(twin)
                oracle = state(twin)
        is_cut = round_ % 2 == 0  # the power went out at the copy's instant; otherwise the run finished first
        start, mark, copy_after = requests_made(shop), positions(shop), max(1, round(rng.random() * span))
        child = fork.Process(target=_crashing_sync, args=(shop.settings, shop.endpoints, None))
        child.start()
        while child.is_alive() and requests_made(shop) - start < copy_after:
            time.sleep(0.0005)
        with suppress(ProcessLookupError):  # the run ended before that many requests: the copy is its final state
            os.kill(child.pid, signal.SIGSTOP)
        copy_store(database, copy)
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL if is_cut else signal.SIGCONT)
        child.join(timeout=120)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            failures.append(f"round {round_}: the child hung")
            continue
        if not is_cut and child.exitcode != 0:
            failures.append(f"round {round_}: the undisturbed run ended with {child.exitcode}")
        finished_requests = requests_made(shop)
        sent_by_child = set().union(*(w.items for w in writes(shop, mark)))
        restore_store(copy, database)
        restores["cut" if is_cut else "after the run"] += 1
        if not is_cut:
            # While the store was being restored, the user edited more. Mailchimp stamps a change to the whole
            # second: an edit in the very second of the child's last write could not be told from it by anyone.
            time.sleep(1 - time.time() % 1)
            edit_between_runs(shop, rng, round_ + ROUNDS, expected, per_tool=EDITS_PER_TOOL)

        before_normal = positions(shop)

        sync_normally(shop)  # opens the restored store (quick check), syncs, then runs the full integrity check
        span = max(3, requests_made(shop) - finished_requests)
        resent_values += sum(len(w.items & sent_by_child) for w in writes(shop, before_normal))
        lost = lost_values(shop, oracle, expected)
        if lost:
            failures.append(f"round {round_} (copy after {copy_after} requests, {'cut' if is_cut else 'after the run'}): "
                            f"{len(lost)} lost, e.g. {lost[:3]}")
        if duplicates(shop, member_count):
            failures.append(f"round {round_} (copy after {copy_after} requests): {duplicates(shop, member_count)} duplicates")
        if {h: m["status"] for h, m in members(shop).items()} != statuses_before:
            failures.append(f"round {round_} (copy after {copy_after} requests): a subscription status moved")

    figures = {
        "power_loss_restores": sum(restores.values()),
        "resent_values_after_restore": resent_values, "records_lost": len(lost_values(shop, oracle, expected)),
        "duplicates_created": duplicates(shop, member_count), "status_changing_requests": status_requests(shop),
        "seconds": round(time.monotonic() - started),
    }
    reliability_figures.record(**figures)
    assert not failures, failures[:10]
    assert sum(restores.values()) == ROUNDS, restores
    assert figures["records_lost"] == 0 and figures["duplicates_created"] == 0, figures
    assert figures["status_changing_requests"] == 0, figures


@pytest.mark.fault("F4")
def test_a_score_written_in_the_lost_commits_is_corrected_when_its_input_goes_back(shops, tmp_path):
    """The disk keeps a state from before an order; the order is synced (scores written), its commits are lost, then
    the order is cancelled: the next run must put the scores back to the twin's, who never had the order."""
    shop, twin = shops
    sync_normally(shop)
    sync_normally(twin)
    database, copy = store_path(shop), tmp_path / "copy"
    copy_store(database, copy)  # what the disk will keep
    hubspot = shop.sandboxes["hubspot"]
    contact_id = sorted(hubspot.objects["contacts"], key=int)[0]
    deal_id = hubspot.create("deals", {"dealname": "Order 99999", "amount": "900.00", "pipeline": "default",
                                       "dealstage": "closedwon", "deal_currency_code": "EUR",
                                       "closedate": hubspot.objects["contacts"][contact_id]["properties"]["lastmodifieddate"]})
    hubspot.associations.setdefault(deal_id, set()).add(contact_id)
    sync_normally(shop)  # the order moves scores, and they are written: commits the disk loses
    moved = state(shop)
    assert moved != state(twin)
    restore_store(copy, database)
    hubspot.archive("deals", deal_id)  # the order is cancelled: the inputs are the twin's again
    sync_normally(shop)
    assert state(shop) == state(twin)
