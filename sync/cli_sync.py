"""`retention sync` and `retention demo`: the whole pipeline, against your tools or against local sandboxes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sync.cli import Context, app, err, out
from sync.pipeline import SyncReport, run_sync
from sync.redact import redact
from sync.scheduler import LEASE_NAME


@app.command()
def sync(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and score, print what would be written; change nothing, neither in your tools nor in the store.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Read everything again and compare everyone's values, instead of only what changed since the last run.")] = False,
    only: Annotated[Optional[str], typer.Option(metavar="TOOL,...", help="Sync only these tools (hubspot, mailchimp, typeform, surveymonkey, google_forms).")] = None,
) -> None:
    """Read every enabled tool, score every customer, and write back only the values that changed.

    Example: retention sync --dry-run
    """
    context: Context = ctx.obj
    settings = context.settings
    store = context.open_store()
    try:
        # The scheduler's lease: a sync by hand never overlaps a scheduled one (or another by hand) on this store.
        with store.lease(LEASE_NAME, ttl_s=settings.schedule.lease_s), err.status("starting") as status:
            report = run_sync(settings, store, dry_run=dry_run, full=full,
                              only=[name.strip() for name in only.split(",") if name.strip()] if only else None,
                              step=lambda what: status.update(what))
    finally:
        store.close()
    print_report(report)
    if report.errors:
        raise typer.Exit(max(error.exit_code for error in report.errors))


def print_report(report: SyncReport) -> None:
    """The run summary a user reads: per tool what was read and written, then what went wrong, one line each."""
    if report.dry_run:
        out.print("Dry run: nothing was written to your tools or to the store.")
    for source in report.sources:
        if source.error is not None:
            out.print(f"read  {source.name}: FAILED: {redact(str(source.error))}")
        elif source.counts is not None:
            kinds = "; ".join(f"{kind} {c.read:,} read, {c.written:,} new or changed, {c.quarantined:,} quarantined"
                              for kind, c in sorted(source.counts.by_kind.items()) if c.read or c.written)
            out.print(f"read  {source.name}: {kinds or 'nothing new'} ({source.seconds:.1f} s)")
    out.print(f"score {report.scoring} ({report.scoring_seconds:.1f} s)")
    if report.linking:
        out.print(f"link  {report.linking}")
    if report.compared:
        out.print(f"diff  {report.compared}")
    for target in report.targets:
        if target.error is not None:
            out.print(f"write {target.name}: FAILED: {redact(str(target.error))}")
            continue
        if report.dry_run:
            out.print(f"write {target.name}: would send {target.sent:,} values to {target.objects:,} records; "
                      f"{target.unchanged:,} unchanged, {target.held_back:,} held back (refused before)")
            for change in target.sample:
                was = "empty" if change.previous is None else repr(change.previous)
                out.print(f"      {change.object_id} {change.field_name} = {change.value!r} (was {was})")
            continue
        calls = f" in {target.calls:,} write calls" if target.calls is not None else ""
        line = (f"write {target.name}: {target.sent:,} values written{calls}; {target.unchanged:,} unchanged, "
                f"{target.held_back:,} held back, {target.rejected:,} refused (see `retention quarantine`)")
        if target.reconciled:
            line += f"; {target.reconciled:,} writes of an interrupted run found applied"
        out.print(f"{line} ({target.seconds:.1f} s)")
    seconds = (report.finished_at - report.started_at).total_seconds() if report.finished_at else 0.0
    state = "with errors" if report.errors else "ok"
    out.print(f"Sync {'planned' if report.dry_run else 'finished'} {state} in {seconds:.1f} s.")
