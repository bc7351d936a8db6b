"""Scheduled runs and the store lease: never two syncs at once, missed runs logged and coalesced, dead holders expire.

The job is a real function that records when it started and ended (wall-clock seconds, appended to a file every
worker shares), so overlap is judged from what actually ran, across threads and processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from sync import schema
from sync.lease import LeaseHeld, acquire
from sync.scheduler import LeasedRuns, Schedule, build_scheduler
from sync.store import Store
from tests.conftest import REPO, Workspace

UTC = timezone.utc
DEADLINE_S = 20.0  # generous: the machine is shared; the tests themselves finish in a few seconds


class RunRecorder:
    """The job under schedule: works for ``run_s`` seconds and appends "start end" to ``path``."""

    def __init__(self, path: Path, run_s: float) -> None:
        self.path = path
        self.run_s = run_s

    def __call__(self, store: Store | None = None) -> None:
        started = time.time()
        time.sleep(self.run_s)  # the run's work
        ended = time.time()
        with open(self.path, "a") as log_file:
            log_file.write(f"run {started:.6f} {ended:.6f}\n")


def recorded_runs(path: Path) -> list[tuple[float, float]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((float(a), float(b)) for kind, a, b in (line.split() for line in lines if line.startswith("run ")))


def refusals(path: Path) -> int:
    return sum(1 for line in (path.read_text().splitlines() if path.exists() else []) if line.startswith("refused"))


def assert_never_two_at_once(runs: list[tuple[float, float]]) -> None:
    for (_, previous_end), (start, _) in zip(runs, runs[1:]):
        assert start >= previous_end, f"a run started at {start} while another ran until {previous_end}"


def contend(store_url: str, path: str, stop_file: str, run_s: float, lease_s: float) -> None:
    """One lease user: try to run again and again until ``stop_file`` appears; log runs and refusals."""
    store = Store.open(store_url)
    recorder = RunRecorder(Path(path), run_s)
    while not os.path.exists(stop_file):
        try:
            with store.lease("sync", ttl_s=lease_s):
                recorder()
        except LeaseHeld:
            with open(path, "a") as log_file:
                log_file.write("refused\n")
            time.sleep(0.002)  # pace the retries, as a scheduler's interval would
    store.close()


def hold_until_killed(store_url: str, ttl_s: float) -> None:
    store = Store.open(store_url)
    with store.lease("sync", ttl_s=ttl_s):
        print("holding", flush=True)
        time.sleep(600)


def python_child(call: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"from tests.test_scheduler import *; {call}"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'retention.db'}"


# --- the lease ------------------------------------------------------------------------------------------------------


def test_a_held_lease_refuses_a_second_holder_naming_the_first_and_until_when(store_url: str) -> None:
    store = Store.open(store_url)
    with store.lease("sync", ttl_s=60, holder="shop-server:4242:abc123"):
        with pytest.raises(LeaseHeld) as refused:
            with store.lease("sync", ttl_s=60):
                pytest.fail("a second holder ran")
    message = str(refused.value)
    assert "shop-server:4242:abc123" in message and "lease until" in message and refused.value.exit_code == 4
    with store.lease("sync", ttl_s=60) as lease:  # released at the end of the block: the next run proceeds
        assert lease.is_held
    store.close()


def test_a_lease_nobody_renews_expires_and_the_next_holder_takes_it(store_url: str) -> None:
    store = Store.open(store_url)
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    acquire(store, "sync", "dead-process", 30, now=start)

    with pytest.raises(LeaseHeld):
        acquire(store, "sync", "next-run", 30, now=start + timedelta(seconds=29))
    expires_at = acquire(store, "sync", "next-run", 30, now=start + timedelta(seconds=31))

    assert expires_at == start + timedelta(seconds=61)
    with store.engine.connect() as conn:
        assert conn.execute(select(schema.leases.c.holder)).scalars().all() == ["next-run"]
    store.close()


@pytest.mark.fault("F19")
def test_a_kill_9_of_the_holder_on_this_computer_lets_the_next_run_proceed_at_once(sqlite_url: str) -> None:
    Store.open(sqlite_url).close()
    victim = python_child(f"hold_until_killed({sqlite_url!r}, ttl_s=600)")
    assert victim.stdout.readline().strip() == "holding"
    store = Store.open(sqlite_url)
    with pytest.raises(LeaseHeld, match=f":{victim.pid}:"):  # alive: refused
        with store.lease("sync", ttl_s=5):
            pytest.fail("ran beside a live holder")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    with store.lease("sync", ttl_s=5) as lease:  # its process is gone: no waiting for its 600 s lease
        assert lease.is_held
    store.close()


@pytest.mark.fault("F19")
def test_a_killed_holder_on_another_computer_blocks_until_its_lease_expires(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    acquire(store, "sync", "other-host:4242:abc123", 1.0)  # its process cannot be seen from here
    with pytest.raises(LeaseHeld, match="other-host:4242"):
        with store.lease("sync", ttl_s=5):
            pytest.fail("ran while the other computer's lease was still valid")
    killed_at = time.monotonic()

    def next_run_proceeds() -> bool:
        try:
            with store.lease("sync", ttl_s=5):
                return True
        except LeaseHeld:
            return False

    wait_for(next_run_proceeds, "the other computer's lease to expire")
    assert time.monotonic() - killed_at < 1.0 + 2.0  # its lifetime, plus slack for a busy machine
    store.close()


@pytest.mark.fault("F19")
def test_a_hundred_forced_overlaps_from_threads_and_two_processes_never_run_two_at_once(tmp_path: Path, sqlite_url: str) -> None:
    Store.open(sqlite_url).close()
    path, stop_file = tmp_path / "runs.log", tmp_path / "stop"
    call = f"contend({sqlite_url!r}, {str(path)!r}, {str(stop_file)!r}, run_s=0.02, lease_s=2.0)"
    processes = [python_child(call) for _ in range(2)]
    threads = [threading.Thread(target=contend, args=(sqlite_url, str(path), str(stop_file), 0.02, 2.0)) for _ in range(2)]
    for thread in threads:
        thread.start()

    wait_for(lambda: refusals(path) >= 100 and len(recorded_runs(path)) >= 20, "100 refused overlaps")
    stop_file.touch()
    for thread in threads:
        thread.join()
    for process in processes:
        assert process.wait(timeout=DEADLINE_S) == 0

    assert refusals(path) >= 100
    assert_never_two_at_once(recorded_runs(path))


# --- the scheduler ----------------------------------------------------------------------------------------------------


@pytest.mark.fault("F19")
def test_two_schedulers_whose_runs_outlast_the_interval_never_run_two_at_once(tmp_path: Path, sqlite_url: str) -> None:
    Store.open(sqlite_url).close()
    path = tmp_path / "runs.log"
    schedule = Schedule(IntervalTrigger(seconds=0.05), misfire_grace_s=5, lease_s=2.0, description="every 50 ms")
    users = [LeasedRuns(lambda: Store.open(sqlite_url), RunRecorder(path, 0.12), lease_s=2.0) for _ in range(2)]
    schedulers = [build_scheduler(runs, schedule, scheduler_class=BackgroundScheduler)[0] for runs in users]
    for scheduler in schedulers:
        scheduler.start()

    wait_for(lambda: len(recorded_runs(path)) >= 8 and sum(u.refused for u in users) >= 3, "runs and refusals")
    for scheduler in schedulers:
        scheduler.shutdown(wait=True)

    assert_never_two_at_once(recorded_runs(path))
    assert sum(u.completed for u in users) == len(recorded_runs(path))


@pytest.mark.fault("F19")
def test_runs_missed_while_asleep_are_coalesced_into_one_run_and_each_logged(tmp_path: Path, sqlite_url: str, caplog) -> None:
    path = tmp_path / "runs.log"
    runs = LeasedRuns(lambda: Store.open(sqlite_url), RunRecorder(path, 0.05), lease_s=5)
    schedule = Schedule(IntervalTrigger(seconds=10), misfire_grace_s=60, lease_s=5, description="every 10 s")
    slept_since = datetime.now(UTC) - timedelta(seconds=45)  # due at -45, -35, -25, -15 and -5 s: five runs
    scheduler, missed_log = build_scheduler(runs, schedule, scheduler_class=BackgroundScheduler, first_run_at=slept_since)

    with caplog.at_level(logging.WARNING, logger="retention.schedule"):
        scheduler.start()
        wait_for(lambda: runs.completed == 1, "the coalesced run")
        scheduler.shutdown(wait=True)

    assert len(recorded_runs(path)) == 1
    missed_lines = [r.getMessage() for r in caplog.records if "coalesced into the run" in r.getMessage()]
    assert len(missed_lines) == missed_log.missed == 4
    store = Store.open(sqlite_url)
    assert [run["status"] for run in store.recent_runs(10)].count("missed") == 4
    store.close()


@pytest.mark.fault("F19")
def test_a_run_later_than_the_grace_is_logged_as_missed_and_the_next_run_records_it(tmp_path: Path, sqlite_url: str, caplog) -> None:
    path = tmp_path / "runs.log"
    runs = LeasedRuns(lambda: Store.open(sqlite_url), RunRecorder(path, 0.0), lease_s=5)
    schedule = Schedule(IntervalTrigger(hours=1), misfire_grace_s=1, lease_s=5, description="hourly")
    scheduler, missed_log = build_scheduler(runs, schedule, scheduler_class=BackgroundScheduler,
                                            first_run_at=datetime.now(UTC) - timedelta(seconds=30))

    with caplog.at_level(logging.WARNING, logger="retention.schedule"):
        scheduler.start()
        wait_for(lambda: missed_log.missed == 1, "the missed-run event")
        scheduler.shutdown(wait=True)
    runs()  # the next run

    assert len(recorded_runs(path)) == 1 and runs.completed == 1  # only the run made by hand
    assert any("past the 1 s grace" in r.getMessage() for r in caplog.records)
    store = Store.open(sqlite_url)
    [missed] = [run for run in store.recent_runs(10) if run["status"] == "missed"]
    assert "past the 1 s grace" in missed["detail"]
    store.close()


# --- settings and the command -----------------------------------------------------------------------------------------


def test_a_bad_cron_expression_is_one_line_naming_the_key_and_value(workspace: Workspace) -> None:
    settings = workspace.root / "settings.toml"
    settings.write_text(settings.read_text() + '\n[schedule]\ncron = "61 * * * *"\n')

    result = workspace.run("schedule")

    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "schedule.cron is not a cron expression" in result.stderr and "'61 * * * *'" in result.stderr


def test_a_lease_below_five_seconds_is_refused_with_its_bounds(workspace: Workspace) -> None:
    result = workspace.run("schedule", env={"RETENTION_SCHEDULE__LEASE_S": "1"})

    assert result.exit_code == 2
    assert "RETENTION_SCHEDULE__LEASE_S (environment) must be between 5 and 86400 (got '1')" in result.stderr


def test_schedule_with_no_tool_enabled_stops_at_once_in_one_line(workspace: Workspace) -> None:
    result = workspace.run("schedule")

    assert result.exit_code == 2 and "schedule: no tool is enabled" in result.stderr


def test_retention_schedule_runs_a_sync_now_logs_a_failing_tool_and_stops_cleanly_on_sigterm(workspace: Workspace) -> None:
    settings = workspace.root / "settings.toml"
    settings.write_text(settings.read_text() + "\n[hubspot]\nenabled = true\n")  # and no token: the run fails in one line
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    command = subprocess.Popen([sys.executable, "-c", "from sync.cli import main; main()", "schedule", "--now"], cwd=workspace.root, text=True,
                               env={**environment, "RETENTION_SETTINGS": str(settings), "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logged = []
    while not any("scheduled sync finished" in line for line in logged):
        line = command.stderr.readline()
        assert line, f"retention schedule ended early: {''.join(logged)}"
        logged.append(line)

    command.send_signal(signal.SIGTERM)
    stdout, _ = command.communicate(timeout=DEADLINE_S)

    assert command.returncode == 0
    assert any("scheduled sync: no HubSpot token found" in line for line in logged)
    assert "Syncing every 60 minutes, starting now" in stdout and "Stopped after 1 runs" in stdout
    assert not any("Traceback" in line for line in logged)
