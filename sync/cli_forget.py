"""`retention forget EMAIL [--propagate]`: erasure on request; registered on the app in sync/cli.py."""

from __future__ import annotations

from typing import Annotated

import typer

from sync.cli import Context, app, err, out
from sync.forget import erasers_from_settings, forget_person, parse_address, propagate
from sync.scheduler import LEASE_NAME


@app.command()
def forget(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The person's email address, in any case.")],
    with_propagation: Annotated[bool, typer.Option("--propagate", help="Also erase them in the enabled tools: HubSpot GDPR delete, Mailchimp delete-permanent on every allow-listed audience.")] = False,
) -> None:
    """Erase a person from the store, for good: records, identity links, ledger rows and quarantine entries.

    Only a salted hash of the address is kept, so later imports and syncs skip the person. An address the store
    does not hold yet is remembered the same way, so it is never imported. Output and run history never show it.

    Example: retention forget alice@example.com --propagate
    """
    context: Context = ctx.obj
    settings = context.settings
    parse_address(email)  # a typo stops here, before the store is opened
    store = context.open_store()
    try:
        with store.lease(LEASE_NAME, ttl_s=settings.schedule.lease_s):  # no sync may run while a person is erased
            erasure = forget_person(store, email)
    finally:
        store.close()
    totals = (f"erased {erasure.records:,} records, {erasure.identity_links:,} identity links, {erasure.ledger_rows:,} ledger rows "
              f"and {erasure.quarantine_entries:,} quarantine entries")
    where = f"(tombstone #{erasure.tombstone}, run #{erasure.run_id})"
    if erasure.was_forgotten_before:
        out.print(f"That address was already forgotten; {totals} left since, and scrubbed the store files again {where}.")
    elif erasure.was_known:
        out.print(f"Forgot 1 person: {totals}; only a salted hash is kept, so imports and syncs skip them from now on {where}.")
    else:
        out.print(f"That address was not in the store; it is remembered as a salted hash, so imports and syncs will skip it {where}.")
    if with_propagation:
        _propagate(context, email)


def _propagate(context: Context, email: str) -> None:
    erasers, without = erasers_from_settings(context.settings)
    if not erasers and not without:
        out.print("--propagate: no connected tool is enabled in settings; nothing else to erase")
    failed_code = 0
    for result in propagate(email, erasers):
        for outcome in result.outcomes:
            out.print(f"{result.connector}: {outcome}")
        if result.error is not None:
            err.print(f"retention: {result.connector}: {result.error} — erased here already; run the same command again to retry")
            failed_code = failed_code or result.exit_code
    for name in without:
        out.print(f"{name}: retention-sync has no erasure call for it; delete this person's answers in the tool itself")
    if failed_code:
        raise typer.Exit(failed_code)
