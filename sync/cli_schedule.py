"""`retention schedule`: run the sync on the schedule in settings until stopped; registered on the app in sync/cli.py."""

from __future__ import annotations

import logging
import signal
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from connectors.base import CONNECTOR_MODULES, ConfigError
from sync.cli import Context, app, err, out
from sync.scheduler import LeasedRuns, build_scheduler, schedule_from_settings
from sync.settings import Settings
from sync.store import Store

log = logging.getLogger("retention.schedule")


@app.command()
def schedule(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Also run once right away, then on the schedule.")] = False,
) -> None:
    """Run `retention sync` on the schedule set in settings ([schedule]) until stopped with Ctrl-C or SIGTERM.

    Only one sync runs at a time per store: a run that finds another one going (here, another `retention schedule`
    or a `retention sync` by hand) is skipped and logged. Runs missed while the computer slept are logged and
    folded into one.

    Example: RETENTION_SCHEDULE__CRON="0 3 * * *" retention schedule --now
    """
    context: Context = ctx.obj
    settings = context.settings
    plan = schedule_from_settings(settings)
    if not any(getattr(settings, name).enabled for name in CONNECTOR_MODULES):
        raise ConfigError("schedule: no tool is enabled, so there is nothing to sync; set enabled = true in the hubspot, "
                          "mailchimp or a survey tool's section of settings.toml")
    context.open_store().close()  # an unusable store stops here, in one line, not at the first run
    runs = LeasedRuns(context.open_store, _sync_job(settings), lease_s=plan.lease_s)
    scheduler, _ = build_scheduler(runs, plan, first_run_at=datetime.now(timezone.utc) if now else None)
    # Our listener reports missed and skipped runs in one line each; APScheduler's own warnings would repeat them.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _stop)  # systemd stops services with SIGTERM: finish the current run first
    out.print(f"Syncing {plan.description}{', starting now' if now else ''}; misfire grace {plan.misfire_grace_s:g} s, "
              f"lease {plan.lease_s:g} s. Ctrl-C stops.")
    try:
        scheduler.start()
    except KeyboardInterrupt:
        err.print("retention schedule: stopping; a run in progress finishes first")
        scheduler.shutdown(wait=True)
    out.print(f"Stopped after {runs.completed} runs ({runs.refused} skipped: another sync was running, {runs.failed} failed).")


def _sync_job(settings: Settings) -> Any:
    def run_sync_once(store: Store) -> None:
        from sync.pipeline import run_sync  # imported per run: the scheduler starts even before a connector is set up

        report = run_sync(settings, store)
        seconds = (report.finished_at - report.started_at).total_seconds() if report.finished_at else 0.0
        for error in report.errors:  # a failing tool does not stop the others, nor the schedule
            log.error("scheduled sync: %s", error)
        log.info("scheduled sync finished %s in %.1f s", "with errors" if report.errors else "ok", seconds)

    return run_sync_once


def _stop(signal_number: int, frame: Any) -> None:
    raise KeyboardInterrupt
