"""`retention report` and `retention ui`: the owner report as one HTML file, and the same views as a local
dashboard. Registered on the app in sync/cli.py."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from sqlalchemy.engine import make_url

from connectors.base import ConfigError, StoreError
from sync.cli import Context, app, err, out
from sync.settings import Settings, read_secret
from sync.store import Store


def report_settings(context: Context, demo: bool) -> tuple[Settings, str]:
    """The settings whose store to report on, and how to name it: the configured store, or with ``demo`` (or when
    the configured SQLite store does not exist yet but the demo's does) the store `retention demo` left."""
    settings = context.settings
    demo_dir = settings.data_dir / "demo"
    demo_settings = settings.model_copy(update={"data_dir": demo_dir, "store": settings.store.model_copy(update={"url": ""})})
    if demo:
        if not (demo_dir / "retention.db").is_file():
            raise StoreError(f"{demo_dir / 'retention.db'}: no demo store yet — run `retention demo` first")
        return demo_settings, f"{demo_dir / 'retention.db'} (the demo's store)"
    if settings.store.url:
        return settings, settings.store.url.split("@")[-1]
    configured = settings.data_dir / "retention.db"
    if not configured.is_file():
        if (demo_dir / "retention.db").is_file():
            err.print(f"No store at {configured} yet; reporting on the demo's store ({demo_dir / 'retention.db'}).")
            return demo_settings, f"{demo_dir / 'retention.db'} (the demo's store)"
        raise StoreError(f"{configured}: no store yet — run `retention demo`, `retention sync` or `retention import` first")
    return settings, str(configured)


def open_report_store(settings: Settings) -> Store:
    url = settings.store_url
    if make_url(url).get_backend_name() == "sqlite" and not Path(make_url(url).database or "").is_file():
        raise StoreError(f"{make_url(url).database}: no store yet — run `retention demo` or `retention sync` first")
    return Store.open(url, busy_timeout_s=settings.store.busy_timeout_s, password=read_secret("store_password"))


@app.command()
def report(
    ctx: typer.Context,
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the report (one HTML file that opens offline).")] = Path("report.html"),
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write every high-risk customer to this CSV file.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Report on the store `retention demo` left (.retention/demo).")] = False,
) -> None:
    """Write the owner report: churn risk and who is at risk and why, segments and how they moved, NPS and sentiment
    over time, the model's backtest, and the sync's health, as one self-contained HTML file.

    Example: retention report --out report.html --csv at-risk.csv
    """
    from sync.report import gather_figures, write_at_risk_csv
    from sync.report_html import render_report

    started = time.monotonic()
    settings, label = report_settings(ctx.obj, demo)
    store = open_report_store(settings)
    try:
        with err.status("reading the store (and backtesting the model, when the orders or the day changed)"):
            figures = gather_figures(store, settings, label)
    finally:
        store.close()
    with err.status("drawing the report"):
        html = render_report(figures)
    _write_private(out_file, html)
    out.print(f"Wrote {out_file} ({len(html.encode()) / 1e6:.1f} MB): {figures.scored:,} customers scored, "
              f"{len(figures.at_risk):,} at high risk, {_count(len(figures.score_runs), 'scoring run')}, "
              f"{_count(figures.quarantine_total, 'quarantined record')} ({time.monotonic() - started:.1f} s)")
    if csv_file is not None:
        written = write_at_risk_csv(csv_file, figures)
        out.print(f"Wrote {written:,} high-risk customers to {csv_file}")


@app.command()
def ui(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but 127.0.0.1 requires the printed token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    allow_retry: Annotated[bool, typer.Option("--allow-retry", help="Allow marking refused writes for retry on the next sync (read-only otherwise).")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="Show the store `retention demo` left (.retention/demo).")] = False,
) -> None:
    """Serve the report's views as a local dashboard, with the run history, the quarantine and the settings in
    effect. Read-only unless --allow-retry; on any address but 127.0.0.1 every request needs the printed token.

    Example: retention ui --port 8765
    """
    from sync.ui import Dashboard, serve

    if not 0 <= port <= 65_535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {port})")
    settings, label = report_settings(ctx.obj, demo)
    dashboard = Dashboard(settings, label, open_report_store(settings), allow_retry=allow_retry)
    try:
        serve(dashboard, host, port, say=out.print)
    finally:
        dashboard.close()


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _write_private(path: Path, text: str) -> None:
    """The report names customers: 0600, like every file the tool writes with customer data."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the report ({exc.strerror})") from None
