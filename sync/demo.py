"""`retention demo`: one made-up tea shop in local HubSpot, Mailchimp and Typeform sandboxes, synced end to end.

No account and nothing outside this machine: the sandboxes listen on 127.0.0.1, the store is a separate SQLite
file under the data directory (``demo/``), started afresh each time, so the demo never mixes with real data.
"""

from __future__ import annotations

import shutil
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer

from connectors.base import Endpoint
from connectors.demo_business import make_business
from connectors.forms.typeform_sandbox import DEMO_FORM_ID, TypeformSandbox, feedback_form
from connectors.hubspot.sandbox import HubSpotSandbox
from connectors.hubspot.seed import load_business as load_hubspot
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID
from connectors.mailchimp.seed import load_business as load_mailchimp
from connectors.sandbox import Sandbox
from sync.cli import Context, app, err, out
from sync.cli_sync import print_report
from sync.pipeline import run_sync
from sync.settings import Settings
from sync.store import Store

# The demo account's tier: HubSpot's paid-tier burst limit (190 / 10 s, 5 searches / s); clients keep below it.
DEMO_LIMITS = {"requests_per_10s": 190, "searches_per_s": 5}
CREDENTIALS = {"hubspot": "sandbox-token", "mailchimp": "sandbox-key-us6", "typeform": "tfp_sandbox_token"}


@dataclass
class DemoShop:
    sandboxes: dict[str, Sandbox]
    endpoints: dict[str, Endpoint]
    settings: Settings


def open_demo_shop(settings: Settings, customers: int, seed: int, now: datetime | None = None) -> DemoShop:
    """Seed and start the three sandboxes with one business (dated relative to ``now``, by default a few minutes
    ago); settings that point every connector at them."""
    now = now or datetime.now(timezone.utc) - timedelta(minutes=5)
    business = make_business(customers, seed, now)
    hubspot = HubSpotSandbox(token=CREDENTIALS["hubspot"], seed=seed, **DEMO_LIMITS)
    hubspot.missing_scopes.add("events")  # a free CRM has no event analytics: engagement comes from Mailchimp
    load_hubspot(hubspot, business)
    mailchimp = MailchimpSandbox(api_key=CREDENTIALS["mailchimp"], seed=seed)
    load_mailchimp(mailchimp, business)
    typeform = TypeformSandbox(token=CREDENTIALS["typeform"], seed=seed)
    typeform.add_form(feedback_form())
    typeform.add_answer_sets(DEMO_FORM_ID, business.answers)
    sandboxes: dict[str, Sandbox] = {"hubspot": hubspot, "mailchimp": mailchimp, "typeform": typeform}
    endpoints = {name: Endpoint(box.start(), CREDENTIALS[name]) for name, box in sandboxes.items()}
    demo_settings = settings.model_copy(deep=True, update={
        "data_dir": settings.data_dir / "demo",
        "store": settings.store.model_copy(update={"url": ""}),
        "currency": "EUR",
        "hubspot": settings.hubspot.model_copy(update={"enabled": True, "requests_per_10s": 180, "searches_per_s": 4, "lookback_minutes": 10}),
        "mailchimp": settings.mailchimp.model_copy(update={"enabled": True, "audiences": [LIST_ID], "add_new_contacts": False}),
        "typeform": settings.typeform.model_copy(update={"enabled": True, "forms": [DEMO_FORM_ID]}),
        "surveymonkey": settings.surveymonkey.model_copy(update={"enabled": False}),
        "google_forms": settings.google_forms.model_copy(update={"enabled": False}),
    })
    return DemoShop(sandboxes, endpoints, demo_settings)


@app.command()
def demo(
    ctx: typer.Context,
    customers: Annotated[int, typer.Option(help="How many customers the made-up shop has.")] = 2_000,
    seed: Annotated[int, typer.Option(help="Seed for the made-up shop: the same seed gives the same shop.")] = 1,
    serve: Annotated[Optional[bool], typer.Option("--serve/--no-serve", help="Keep the sandboxes running afterwards so you can look at them (Ctrl-C stops them). Default: when run from a terminal.")] = None,
) -> None:
    """Try everything without an account: a made-up shop in local HubSpot, Mailchimp and Typeform sandboxes, read,
    scored and written back, then the ten customers most at risk and why.

    Example: retention demo
    """
    context: Context = ctx.obj
    if not 20 <= customers <= 200_000:
        raise typer.BadParameter("must be between 20 and 200,000", param_hint="--customers")
    with err.status("starting the sandboxes"):
        shop = open_demo_shop(context.settings, customers, seed)
    try:
        directory = shop.settings.data_dir
        shutil.rmtree(directory, ignore_errors=True)  # the demo's own store only: a fresh shop every time
        store = Store.open(shop.settings.store_url)
        try:
            with err.status("syncing") as status:
                report = run_sync(shop.settings, store, endpoints=shop.endpoints, step=lambda what: status.update(what))
        finally:
            store.close()
        print_report(report)
        if report.riskiest is not None and len(report.riskiest):
            out.print("\nThe ten customers most at risk:")
            for customer, row in report.riskiest.iterrows():
                value = "" if row["clv_12_months"] != row["clv_12_months"] else f", worth {row['clv_12_months']:,.0f} EUR in 12 months"
                out.print(f"  {customer}  {row['churn_probability']:.1%} {row['risk_band']} risk, {row['segment']}{value}: {row['reasons']}")
        out.print(f"\nStore: {directory / 'retention.db'} (see it with: RETENTION_DATA_DIR={directory} retention status)")
        for name, endpoint in shop.endpoints.items():
            out.print(f"{name:<9} sandbox: {endpoint.base_url}  (credential {endpoint.credential})")
        if report.errors:
            raise typer.Exit(max(error.exit_code for error in report.errors))
        if serve is None:  # a person at a terminal gets to look around; a script or a pipe gets its exit
            serve = sys.stdin.isatty() and sys.stdout.isatty()
        if serve:
            out.print("The sandboxes keep running so you can look at them; Ctrl-C stops them.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                out.print("Stopped.")
    finally:
        for box in shop.sandboxes.values():
            box.stop()
