"""Scheduled runs: APScheduler fires a job on a cron line or an interval; the store's lease keeps runs apart.

APScheduler alone is not enough (RELIABILITY.md FM-19): its default misfire grace is one second, so a run delayed
by a sleeping machine is skipped silently, and ``max_instances`` only guards one process. Here every job has an
explicit grace, ``coalesce=True`` and ``max_instances=1``; every missed or skipped run time is logged, one line
each, and written to the run history by the next run; and each run holds the store's "sync" lease, so a second
scheduler, a `retention sync` by hand or another host on the same PostgreSQL store never runs alongside.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
)
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connectors.base import RetentionError
from sync.lease import LeaseHeld
from sync.store import RunCounts

if TYPE_CHECKING:
    from sync.settings import Settings
    from sync.store import Store

log = logging.getLogger("retention.schedule")
UTC = timezone.utc
LEASE_NAME = "sync"
JOB_ID = "sync"
LOGGED_GAP_RUNS = 100  # missed runs logged one by one after a long sleep; the rest in one summary line


@dataclass(frozen=True)
class Schedule:
    trigger: BaseTrigger
    misfire_grace_s: float
    lease_s: float
    description: str  # "every 60 minutes", for the start-up line


def schedule_from_settings(settings: Settings) -> Schedule:
    section = settings.schedule
    if section.cron:
        trigger: BaseTrigger = CronTrigger.from_crontab(section.cron, timezone=settings.zone)
        description = f'on cron "{section.cron}" ({settings.timezone})'
    else:
        trigger = IntervalTrigger(minutes=section.interval_minutes, timezone=UTC)
        description = f"every {section.interval_minutes} minutes"
    return Schedule(trigger, float(section.misfire_grace_s), float(section.lease_s), description)


class LeasedRuns:
    """The callable the scheduler fires: open the store, take the lease, record missed runs, run ``job(store)``.

    A run refused because another process holds the lease is logged and skipped; a failed run is logged in one
    line and the schedule goes on.
    """

    def __init__(self, open_store: Callable[[], Store], job: Callable[[Store], Any], *, lease_s: float) -> None:
        self.open_store = open_store
        self.job = job
        self.lease_s = lease_s
        self.completed = 0
        self.refused = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._missed: list[tuple[datetime, str]] = []  # (scheduled time, why), not yet in the run history

    def note_missed(self, scheduled_at: datetime, why: str) -> None:
        with self._lock:
            self._missed.append((scheduled_at, why))

    def __call__(self) -> None:
        try:
            store = self.open_store()
        except RetentionError as exc:
            self.failed += 1
            log.error("scheduled run failed: %s", exc)
            return
        try:
            with store.lease(LEASE_NAME, ttl_s=self.lease_s) as lease:
                self._record_missed(store)
                self.job(store)
                lease.check()
            self.completed += 1
        except LeaseHeld as exc:
            self.refused += 1
            log.warning("scheduled run skipped: %s", exc)
        except RetentionError as exc:
            self.failed += 1
            log.error("scheduled run failed: %s", exc)
        finally:
            store.close()

    def _record_missed(self, store: Store) -> None:
        with self._lock:
            missed, self._missed = self._missed, []
        if not missed:
            return
        with store.transaction() as conn:
            for scheduled_at, why in missed:
                run_id = store.begin_run(conn, "sync", f"scheduled for {scheduled_at:%Y-%m-%d %H:%M:%S} UTC: {why}", scheduled_at)
                store.finish_run(conn, run_id, "missed", RunCounts())


class MissedRunLog:
    """Listens to the scheduler and logs every run time that did not run, one line each.

    APScheduler reports a run that started too late (EVENT_JOB_MISSED) and one skipped because the previous is
    still going (EVENT_JOB_MAX_INSTANCES); with coalescing it says nothing about the run times folded into the
    next one, so those are counted here from the trigger, between the run time expected and the one that fired.
    """

    def __init__(self, runs: LeasedRuns, trigger: BaseTrigger, grace_s: float, first_run_at: datetime | None) -> None:
        self.runs = runs
        self.trigger = trigger
        self.grace_s = grace_s
        self.expected_at = first_run_at  # the next run time we know of; None until the first one fires
        self.missed = 0

    def __call__(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            late_s = (datetime.now(UTC) - event.scheduled_run_time).total_seconds()
            self._missed(event.scheduled_run_time, f"missed: started {late_s:.0f} s late, past the {self.grace_s:g} s grace")
        elif event.code == EVENT_JOB_ERROR:
            log.error("scheduled run failed: %s: %s", type(event.exception).__name__, event.exception)
        else:  # submitted or refused for max_instances: the one (coalesced) run time that fired now
            fired_at = event.scheduled_run_times[-1]
            self._coalesced_before(fired_at)
            if event.code == EVENT_JOB_MAX_INSTANCES:
                self._missed(fired_at, "skipped: the previous run was still going")
            self.expected_at = self.trigger.get_next_fire_time(fired_at, fired_at)

    def _coalesced_before(self, fired_at: datetime) -> None:
        at, logged = self.expected_at, 0
        while at is not None and at < fired_at:
            if logged < LOGGED_GAP_RUNS:
                self._missed(at, f"missed: coalesced into the run of {fired_at.astimezone(UTC):%H:%M:%S} UTC")
            logged += 1
            at = self.trigger.get_next_fire_time(at, at)
        if logged > LOGGED_GAP_RUNS:
            self.missed += logged - LOGGED_GAP_RUNS
            log.warning("and %d more scheduled runs missed before %s", logged - LOGGED_GAP_RUNS, f"{fired_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")

    def _missed(self, scheduled_at: datetime, why: str) -> None:
        scheduled_at = scheduled_at.astimezone(UTC)
        self.missed += 1
        log.warning("run scheduled for %s UTC %s", f"{scheduled_at:%Y-%m-%d %H:%M:%S}", why)
        self.runs.note_missed(scheduled_at, why)


def build_scheduler(
    runs: LeasedRuns, schedule: Schedule, *, scheduler_class: type[BaseScheduler] = BlockingScheduler,
    first_run_at: datetime | None = None,
) -> tuple[BaseScheduler, MissedRunLog]:
    """A scheduler firing ``runs`` on ``schedule`` (not started). ``first_run_at``: the first run time, e.g. now for
    `retention schedule --now`; a time in the past acts as a machine that slept through its runs."""
    options = {"coalesce": True, "max_instances": 1, "misfire_grace_time": int(max(schedule.misfire_grace_s, 1))}
    scheduler = scheduler_class(timezone=UTC, job_defaults=options)
    missed_log = MissedRunLog(runs, schedule.trigger, schedule.misfire_grace_s, first_run_at)
    scheduler.add_listener(missed_log, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    first = {"next_run_time": first_run_at} if first_run_at is not None else {}
    scheduler.add_job(runs, schedule.trigger, id=JOB_ID, name="retention sync", **options, **first)
    return scheduler, missed_log
