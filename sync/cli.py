"""`retention`: the command line. User mistakes print one line and a documented exit code; --debug shows more."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
import logging
import re
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata as package_metadata
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.base import CheckResult, ConfigError, InputError, RetentionError, registered_checks
from connectors.forms import csv_file
from connectors.forms.csv import KINDS, CsvImport
from connectors.records import OrderStatus, from_payload, normalise_email
from scoring.churn import backtest
from scoring.features import rfm_summary
from scoring.churn import MODEL_VERSION
from scoring.scores import ScoringParameters, as_score_records, save_model, score_customers
from scoring.sentiment import SentimentModel, sentiment_label
from sync.engine import run_source_once
from sync.export import write_csv
from sync.redact import configure_logging, redact
from sync.settings import Settings, load_settings, read_secret
from sync.store import RunCounts, Store

EXIT_CODES = """Exit codes: 0 success · 1 internal error (a bug: rerun with --debug and report it) · 2 usage or settings
error · 3 the input file was rejected (nothing was imported) · 4 the local store cannot be used · 5 a connected tool
failed · 6 a connected tool refused our credentials · 7 `doctor` found a problem · 130 interrupted."""
DOCTOR_FAILED = 7

class RetentionGroup(TyperGroup):
    """Runs a command and turns every failure into one line on stderr and a documented exit code."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(args) if args is not None else sys.argv[1:]
        debug = "--debug" in argv
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:  # a usage mistake: unknown option, missing argument, bad value
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":
                out.print(exc.format_message())
                sys.exit(0)
            command = context.command_path if context else "retention"
            err.print(redact(f"{command}: {exc.format_message()} (see `{command} --help`)"))
            code = 2
        except (typer.Abort, KeyboardInterrupt):
            err.print("retention: interrupted; nothing from the unfinished step was saved")
            code = 130
        except RetentionError as exc:
            if debug:
                err.print(redact(traceback.format_exc()))
            err.print(redact(f"retention: {exc}"))
            code = exc.exit_code
        except Exception as exc:  # a bug: still one line for the user, the details behind --debug
            if debug:
                err.print(redact(traceback.format_exc()))
            err.print(redact(f"retention: internal error ({type(exc).__name__}: {exc}) — rerun with --debug and report it"))
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=RetentionGroup,
    help="retention-sync: churn risk, segments, lifetime value and sentiment for your customers, from the tools "
    "you already use.\n\nStart with `retention init`, then `retention import YOUR-EXPORT.csv --kind contacts`.\n\n"
    + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("retention")


@dataclass
class Context:
    settings_path: Path | None
    debug: bool
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.settings_path)
            configure_logging("debug" if self.debug else self.settings.log_level)
        return self._settings

    def open_store(self) -> Store:
        settings = self.settings
        return Store.open(settings.store_url, busy_timeout_s=settings.store.busy_timeout_s, password=read_secret("store_password"))


def _version(value: bool) -> None:
    if value:
        out.print(f"retention-sync {package_metadata.version('retention-sync')}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    settings: Annotated[Optional[Path], typer.Option("--settings", help="Settings file (default: $RETENTION_SETTINGS, else ./settings.toml).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show debug logs and full error details.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    ctx.obj = Context(settings_path=settings, debug=debug)
    configure_logging("debug" if debug else "warning")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create settings.toml and the data directory.")] = Path("."),
) -> None:
    """Create a commented settings.toml and the local data directory. Never overwrites.

    Example: retention init ~/my-shop
    """
    target = directory / "settings.toml"
    if target.exists():
        raise ConfigError(f"{target}: already exists; nothing was changed — edit it, or remove it to start over")
    template = resources.files("sync").joinpath("default_settings.toml").read_text(encoding="utf-8")
    zone = _local_zone()
    text = re.sub(r'(?m)^timezone = ".*?"', f'timezone = "{zone}"', template, count=1)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    settings = load_settings(target)
    store = Store.open(settings.store_url)
    store.close()
    out.print(f"Wrote {target} (time zone {zone}, currency {settings.currency}) and created the store in {settings.data_dir}")
    out.print("Next: retention import YOUR-EXPORT.csv --kind contacts   (or --kind orders, --kind responses)")


@app.command("import")
def import_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The CSV export to import.")],
    kind: Annotated[str, typer.Option("--kind", help="What the rows are: contacts, orders or responses.")],
    maps: Annotated[Optional[list[str]], typer.Option("--map", metavar="COLUMN=FIELD", help="Use COLUMN for FIELD (repeatable), e.g. --map 'E-Mail Adresse=email'.")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="The file's encoding when it is not UTF-8 or UTF-16, e.g. cp1252.")] = None,
    date_order: Annotated[Optional[str], typer.Option("--date-order", help="DMY or MDY, for dates like 03/05/2024.")] = None,
    source: Annotated[Optional[str], typer.Option(help="Name these records' source (default: csv:<tool>, detected).")] = None,
    form: Annotated[Optional[str], typer.Option(help="Form id for responses (default: the file name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Import a CSV export of contacts, orders or survey responses into the local store.

    Recognises exports of Zoho CRM, Freshsales, Shopify, Stripe, Brevo, Constant Contact, Typeform, SurveyMonkey and
    Google Forms; --map covers anything else. Importing the same file again changes nothing.

    Example: retention import customers_export.csv --kind contacts
    """
    context: Context = ctx.obj
    settings = context.settings
    if date_order is not None and date_order.upper() not in ("DMY", "MDY"):
        raise ConfigError(f"--date-order must be DMY or MDY (got {date_order!r})")
    overrides = _parse_maps(maps or [])
    chosen_order = date_order or settings.csv.date_order
    with _progress(as_json) as progress:
        task = progress.add_task("checking", total=None)
        source_csv = CsvImport(
            path, kind, zone=settings.zone, currency=settings.currency,
            date_order=chosen_order if chosen_order == "auto" else chosen_order.upper(),
            max_text_chars=settings.csv.max_text_chars, max_bad_row_fraction=settings.csv.max_bad_row_fraction,
            overrides=overrides, encoding=encoding, source_name=source, form_id=form,
            on_progress=lambda phase, done, total: progress.update(task, description=phase, completed=done, total=total or None),
        )
        plan = source_csv.prepare()
        for notice in plan.notices:
            (err if as_json else out).print(notice)
        if plan.data_rows == 0:
            if as_json:
                out.print(json.dumps({"file": str(path), "rows": 0, "notices": plan.notices}))
            return
        store = context.open_store()
        try:
            result = run_source_once(store, source_csv, "import", f"{kind} from {path.name}")
        finally:
            store.close()
    counts = result.counts[KINDS[kind]]
    if as_json:
        out.print(json.dumps({"file": str(path), "run": result.run_id, "source": result.source, "rows": plan.data_rows,
                              "records": vars(counts), "profile": plan.profile, "encoding": plan.encoding,
                              "notices": plan.notices, "quarantined": [f"{r.record_ref}: {r.reason}" for r in result.first_rejects]}))
        return
    mapped = ", ".join(f"{plan.headers[c]} → {f}" for f, c in sorted(plan.mapping.items(), key=lambda item: item[1]))
    out.print(f"{path.name}: {plan.profile or 'generic'} export, {plan.encoding}, {plan.data_rows:,} rows; columns: {mapped}")
    for column, answer_type in plan.answer_columns.items():
        scale = f" {answer_type.scale[0]}-{answer_type.scale[1]}" if answer_type.scale else ""
        out.print(f"  question {plan.headers[column]!r}: {answer_type.kind}{scale} (from the {answer_type.inferred_from})")
    out.print(
        f"Imported {counts.read:,} {kind} into source {result.source}: {counts.written:,} new or changed, "
        f"{counts.unchanged:,} unchanged, {counts.quarantined:,} quarantined (run #{result.run_id})"
    )
    for reject in result.first_rejects:
        out.print(f"  quarantined {reject.record_ref}: {reject.reason}")
    if counts.quarantined > len(result.first_rejects):
        out.print("  see them all with: retention quarantine")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    checksum: Annotated[bool, typer.Option("--checksum", help="Also print a digest of the stored state (reads every record).")] = False,
) -> None:
    """Show what the store holds: records per type and source, the last runs, and the quarantine.

    Example: retention status --checksum   (the digest is equal before and after anything that changed nothing)
    """
    context: Context = ctx.obj
    store = context.open_store()
    try:
        counts, runs, quarantined = store.record_counts(), store.recent_runs(5), store.quarantine_size()
        state_checksum = store.checksum() if checksum else None
        if as_json:
            out.print(json.dumps({
                "store": _store_label(context.settings), "schema_version": store.version(),
                "records": [{"kind": k, "source": s, "count": n} for k, s, n in counts],
                "runs": runs, "quarantined": quarantined,
                **({"state_checksum": state_checksum} if checksum else {}),
            }, default=_json_default))
            return
    finally:
        store.close()
    out.print(f"Store: {_store_label(context.settings)}")
    table = Table("type", "source", "records", box=None, pad_edge=False)
    for kind, source, number in counts:
        table.add_row(kind, source, f"{number:,}")
    out.print(table if counts else "No records yet: try `retention import YOUR-EXPORT.csv --kind contacts`.")
    if runs:
        out.print("Last runs:")
        for run in runs:
            totals = "; ".join(
                f"{kind} {c['read']:,} read, {c['written']:,} written, {c['unchanged']:,} unchanged, {c['quarantined']:,} quarantined"
                for kind, c in run["counts"].items()
            )
            out.print(f"  #{run['id']} {run['started_at']:%Y-%m-%d %H:%M} UTC {run['command']} {run['detail']}: {run['status']}; {totals}")
    out.print(f"Quarantine: {quarantined:,} record{'s' if quarantined != 1 else ''}" + (" (see `retention quarantine`)" if quarantined else ""))
    if state_checksum:
        out.print(f"State checksum: {state_checksum}")


@app.command()
def score(
    ctx: typer.Context,
    orders: Annotated[Optional[Path], typer.Option(help="Score the orders in this CSV export instead of the store.")] = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Score as of this date (YYYY-MM-DD): orders on or before it count, nothing after. Default: today.")] = None,
    horizon_days: Annotated[Optional[int], typer.Option("--horizon-days", help="Days without an order that count as churned (default: from settings, else the purchase cycle).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write one row per customer to this CSV file.")] = None,
    explain: Annotated[Optional[str], typer.Option(metavar="EMAIL", help="Show one customer's score and the history behind it.")] = None,
    run_backtest: Annotated[bool, typer.Option("--backtest", help="Check the model on the past: score as of one horizon ago, compare with what happened.")] = False,
    audit: Annotated[Optional[str], typer.Option(metavar="FIELD", help="Show risk by the groups of FIELD (a column of the orders export, or a contact field), flagging large gaps.")] = None,
) -> None:
    """Churn risk with reasons, segment and 12-month value for every customer who has ordered.

    Only completed orders count (won deals, paid orders); refunded, lost and open ones do not.

    Example: retention score --orders orders_export.csv --as-of 2024-03-31 --out scores.csv
    """
    context: Context = ctx.obj
    settings = context.settings
    cutoff = _as_of_timestamp(as_of, settings)
    if horizon_days is not None and not 1 <= horizon_days <= 730:
        raise ConfigError(f"--horizon-days must be between 1 and 730 (got {horizon_days})")
    frame, currencies, skipped = _orders_frame(context, orders, audit)
    if skipped:
        err.print(f"{orders.name}: {skipped:,} rows could not be read and were left out (`retention import` shows why)")
    if len(currencies) > 1:
        err.print(f"orders are in several currencies ({', '.join(sorted(currencies))}); lifetime value adds them as if they were one")
    parameters = ScoringParameters(
        horizon_days=horizon_days or settings.scoring.horizon_days or None, medium_risk=settings.scoring.medium_risk,
        high_risk=settings.scoring.high_risk, random_seed=settings.scoring.random_seed,
    )
    if run_backtest:
        _print_backtest(frame, cutoff, parameters)
        return
    try:
        table, model = score_customers(frame, cutoff, parameters)
    except ValueError as exc:
        raise InputError(f"nothing to score: {exc}") from None
    bands = table["risk_band"].value_counts()
    out.print(
        f"Scored {len(table):,} customers as of {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d} (churn = no order in the next "
        f"{model.horizon_days_} days; model: {model.method_}): "
        + ", ".join(f"{bands.get(band, 0):,} {band}" for band in ("high", "medium", "low", "new"))
    )
    if explain is not None:
        _print_explanation(explain, table, frame, cutoff)
        return
    if audit is not None:
        _print_audit(audit, table, frame)
        return
    if orders is None:  # scores of the store go back into it, for the sync to write out
        _store_scores(context, table, model, cutoff, currencies)
    if out_file is not None:
        written = write_csv(out_file, ["customer", *table.columns], ([customer, *row] for customer, row in zip(table.index, table.itertuples(index=False))))
        out.print(f"Wrote {written:,} rows to {out_file}")
        return
    riskiest = table[table["risk_band"] != "new"].sort_values("churn_probability", ascending=False, kind="stable").head(10)
    for customer, row in riskiest.iterrows():
        out.print(f"  {customer}  {row['churn_probability']:.1%} {row['risk_band']}  {row['segment']}  — {row['reasons']}")


@app.command()
def sentiment(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A survey export (CSV).")],
    column: Annotated[str, typer.Option(help="The column holding the free-text answers.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the same rows with sentiment and sentiment_score added.")],
    nps: Annotated[Optional[str], typer.Option(metavar="COLUMN", help="An NPS column (0-10): answers scored 9-10 and 0-6 teach the method your customers' words.")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="The file's encoding when it is not UTF-8 or UTF-16.")] = None,
) -> None:
    """Label every free-text answer positive, neutral or negative, with a score from -1 to 1.

    Example: retention sentiment "Customer survey.csv" --column "What could we do better?" --out labelled.csv
    """
    encoding_name = csv_file.detect_encoding(path, encoding) if path.is_file() else None
    if encoding_name is None:
        raise InputError(f"{path}: no such file")
    csv_file.check_decodes(path, encoding_name)
    delimiter = csv_file.detect_delimiter(csv_file.read_head(path, encoding_name))
    rows = csv_file.iter_rows(path, encoding_name, delimiter)
    _, header = next(rows, (0, []))
    text_at = _column_index(path, header, column, "--column")
    model = SentimentModel()
    if nps is not None:
        nps_at = _column_index(path, header, nps, "--nps")
        rated = [(cells[text_at], int(cells[nps_at])) for _, cells in islice(csv_file.iter_rows(path, encoding_name, delimiter), 1, None)
                 if len(cells) > max(text_at, nps_at) and cells[text_at].strip() and cells[nps_at].strip().isdigit()]
        known = [(text, score >= 9) for text, score in rated if score >= 9 or score <= 6]
        model.fit([text for text, _ in known], [positive for _, positive in known])
        how = "calibrated on" if hasattr(model, "calibration_") else "too few to calibrate on (the default method is used):"
        out.print(f"{how} {len(known):,} answers with an NPS of 9-10 or 0-6")

    def labelled() -> Iterator[list[str]]:
        for chunk in _chunks((cells for _, cells in rows), 2_000):
            scores = model.score([cells[text_at] if len(cells) > text_at else "" for cells in chunk])
            for cells, value in zip(chunk, scores):
                yield [*cells, sentiment_label(value), f"{value:.3f}"]

    written = write_csv(out_file, [*header, "sentiment", "sentiment_score"], labelled())
    out.print(f"Wrote {written:,} answers to {out_file}")


@app.command()
def quarantine(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 20,
    export: Annotated[Optional[Path], typer.Option(help="Write every quarantined record to this CSV file.")] = None,
) -> None:
    """List the records that could not be imported, with where they were and why."""
    store = ctx.obj.open_store()
    try:
        if export is not None:
            entries = store.quarantined()
            written = write_csv(
                export, ["source", "type", "where", "reason", "first seen", "last seen", "data"],
                ([e["source"], e["kind"], e["record_ref"], e["reason"], e["first_seen_at"], e["last_seen_at"], e["raw"]] for e in entries),
            )
            out.print(f"Wrote {written:,} quarantined records to {export}")
            return
        entries = store.quarantined(limit)
    finally:
        store.close()
    if not entries:
        out.print("The quarantine is empty.")
    for entry in entries:
        out.print(f"{entry['source']} {entry['kind']} {entry['record_ref']}: {entry['reason']} (last seen {entry['last_seen_at']:%Y-%m-%d %H:%M} UTC)")


@app.command()
def doctor(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Check the settings, the store, and that each enabled connector is reachable and authorised."""
    context: Context = ctx.obj
    results: list[CheckResult] = []
    try:
        settings = context.settings
        results.append(CheckResult("settings", True, f"{settings.source_file or 'built-in defaults'} is valid"))
    except ConfigError as exc:
        results.append(CheckResult("settings", False, str(exc)))
        settings = None
    if settings is not None:
        try:
            store = context.open_store()
            results.append(CheckResult("store", True, f"{_store_label(settings)}: integrity {store.integrity()}, schema {store.version()}"))
            store.close()
        except RetentionError as exc:
            results.append(CheckResult("store", False, str(exc)))
        checks = registered_checks()
        for connector in ("hubspot", "mailchimp"):
            if not getattr(settings, connector).enabled:
                results.append(CheckResult(connector, True, "disabled in settings (skipped)"))
            elif connector in checks:
                results.append(checks[connector](settings))
            else:
                results.append(CheckResult(connector, False, "enabled in settings, but this version has no connector for it yet"))
    if as_json:
        out.print(json.dumps([vars(r) for r in results]))
    else:
        for result in results:
            out.print(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<10} {redact(result.detail)}")
    if not all(r.ok for r in results):
        raise typer.Exit(DOCTOR_FAILED)


# --- helpers ------------------------------------------------------------------------------------------------------


def _store_scores(context: Context, table: pd.DataFrame, model: Any, cutoff: pd.Timestamp, currencies: set[str]) -> None:
    settings = context.settings
    currency = settings.currency if len(currencies) != 1 else next(iter(currencies))
    records = as_score_records(table, cutoff, currency, MODEL_VERSION)
    store = context.open_store()
    try:
        counts = RunCounts()
        with store.transaction() as conn:
            run_id = store.begin_run(conn, "score", f"{len(records):,} customers as of {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d}", datetime.now(timezone.utc))
            for start in range(0, len(records), 2_000):
                store.upsert_records(conn, records[start : start + 2_000], counts)
            store.finish_run(conn, run_id, "succeeded", counts)
    finally:
        store.close()
    saved = save_model(model, settings.data_dir / "models", cutoff, len(records))
    stored = counts["score"]
    out.print(f"Stored {stored.written:,} new or changed scores ({stored.unchanged:,} unchanged, run #{run_id}); model saved to {saved}")


def _print_backtest(frame: pd.DataFrame, cutoff: pd.Timestamp, parameters: ScoringParameters) -> None:
    try:
        result = backtest(frame, cutoff, parameters.horizon_days, parameters.random_seed)
    except ValueError as exc:
        raise InputError(f"cannot backtest: {exc}") from None
    out.print(
        f"Backtest: scored as of {result.scored_at:%Y-%m-%d}, compared with orders up to {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d} "
        f"(churn = no order in {result.horizon_days} days); model: {result.model_method}"
    )
    table = Table("method", "ROC-AUC", "PR-AUC", "Brier", "calib. error", "top10% prec.", "top10% recall", "lift", box=None, pad_edge=False)
    for method, m in result.metrics.items():
        table.add_row(method, *(("-" if np.isnan(m[k]) else f"{m[k]:.3f}") for k in ("roc_auc", "pr_auc", "brier", "ece", "top10_precision", "top10_recall", "lift")))
    out.print(table)


def _print_explanation(who: str, table: pd.DataFrame, frame: pd.DataFrame, cutoff: pd.Timestamp) -> None:
    try:
        key = normalise_email(who) if "@" in who else who.strip()
    except ValueError:
        key = who.strip()
    if key not in table.index:
        raise InputError(f"{who}: not among the {len(table):,} customers with completed orders by {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d}")
    row = table.loc[key]
    summary = rfm_summary(frame[frame["at"] < cutoff], cutoff).loc[key]
    usual = "" if np.isnan(summary["mean_gap_days"]) else f"; usually orders every {summary['mean_gap_days']:.0f} days"
    out.print(f"{key}: {row['churn_probability']:.1%} chance of no order soon — {row['risk_band']} risk, segment {row['segment']}")
    out.print(f"  why: {row['reasons']}")
    out.print(f"  history: {row['orders']} orders, {summary['total']:,.2f} in all, last on {row['last_order']}{usual}")
    value = "unknown (too few repeat customers to model spend)" if np.isnan(row["clv_12_months"]) else f"{row['clv_12_months']:,.2f}"
    out.print(f"  expected spend in the next 12 months: {value}")


def _column_index(path: Path, header: list[str], wanted: str, option: str) -> int:
    keys = [h.strip().lower() for h in header]
    if wanted.strip().lower() not in keys:
        raise InputError(f"{option} {wanted}: {path.name} has no such column; its columns are: {', '.join(header)}")
    return keys.index(wanted.strip().lower())


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _as_of_timestamp(as_of: str | None, settings: Settings) -> pd.Timestamp:
    """The end of the as-of day in the business's time zone (exclusive), in UTC; now when no date is given."""
    if as_of is None:
        return pd.Timestamp.now(tz="UTC")
    try:
        day = datetime.strptime(as_of, "%Y-%m-%d")
    except ValueError:
        raise ConfigError(f"--as-of must be a date like 2024-03-31 (got {as_of!r})") from None
    return pd.Timestamp(day + timedelta(days=1)).tz_localize(settings.zone).tz_convert("UTC")


def _orders_frame(context: Context, path: Path | None, audit_field: str | None = None) -> tuple[pd.DataFrame, set[str], int]:
    """Completed orders as (customer, at, amount), from a CSV export or from the store; also their currencies and
    how many CSV rows could not be read. With ``audit_field``, a column ``audit`` holds that field per customer."""
    settings = context.settings
    if path is not None:
        source = CsvImport(path, "orders", zone=settings.zone, currency=settings.currency, date_order=settings.csv.date_order,
                           max_text_chars=settings.csv.max_text_chars, max_bad_row_fraction=settings.csv.max_bad_row_fraction)
        source.prepare()
        pages = list(source.read())
        found = [record for page in pages for record in page.records]
        skipped = sum(len(page.rejected) for page in pages)
    else:
        store = context.open_store()
        try:
            found = [from_payload("order", payload) for _, payload in store.stored_records("order")]
        finally:
            store.close()
        skipped = 0
    completed = [order for order in found if order.status is OrderStatus.WON]
    frame = pd.DataFrame(
        {
            "customer": [order.match_email or order.customer_source_id for order in completed],
            "at": pd.to_datetime([order.created_at for order in completed], utc=True),
            "amount": [float(order.amount) for order in completed],
        }
    )
    if audit_field is not None:
        frame["audit"] = _audit_values(context, path, audit_field, completed)
    return frame, {order.currency for order in completed}, skipped


def _audit_values(context: Context, path: Path | None, field: str, completed: list[Any]) -> list[str | None]:
    """The field per order: the order's own column, else (store only) the customer's contact field of that name."""
    wanted = field.strip().lower()

    def lookup(properties: dict[str, str]) -> str | None:
        return next((value for key, value in properties.items() if key.strip().lower() == wanted), None)

    values = [lookup(dict(order.properties)) for order in completed]
    if path is None and not any(values):
        store = context.open_store()
        try:
            contacts = [from_payload("contact", payload) for _, payload in store.stored_records("contact")]
        finally:
            store.close()
        by_customer = {}
        for contact in contacts:
            value = lookup(dict(contact.properties)) or (str(getattr(contact, wanted)) if getattr(contact, wanted, None) else None)
            for key in (contact.match_email, contact.source_id):
                if key and value:
                    by_customer[key] = value
        values = [by_customer.get(order.match_email or order.customer_source_id) for order in completed]
    if not any(values):
        where = path.name if path is not None else "the store's orders and contacts"
        raise InputError(f"--audit {field}: no values for {field!r} in {where}; name a column of the export or a contact field")
    return values


AUDIT_GAP = 0.10  # a group whose average risk differs from everyone's by this much is flagged


def _print_audit(field: str, table: pd.DataFrame, frame: pd.DataFrame) -> None:
    group = frame.dropna(subset=["audit"]).sort_values("at").groupby("customer")["audit"].last()  # latest value
    joined = table.join(group.rename("group"), how="inner")
    overall = joined["churn_probability"].mean()
    out.print(f"Risk by {field} ({len(joined):,} customers with a value; average churn probability {overall:.1%}):")
    summary = joined.groupby("group").agg(customers=("churn_probability", "size"), average=("churn_probability", "mean"),
                                          high=("risk_band", lambda bands: (bands == "high").mean()))
    report = Table(field, "customers", "average risk", "high risk", "", box=None, pad_edge=False)
    flagged = []
    for name, row in summary.sort_values("customers", ascending=False).iterrows():
        is_gap = abs(row["average"] - overall) >= AUDIT_GAP and row["customers"] >= 20
        if is_gap:
            flagged.append(str(name))
        report.add_row(str(name), f"{int(row['customers']):,}", f"{row['average']:.1%}", f"{row['high']:.1%}", "GAP" if is_gap else "")
    out.print(report)
    if flagged:
        out.print(f"Large gaps (average risk {AUDIT_GAP:.0%} or more from everyone's, groups of 20+): {', '.join(flagged)}. "
                  f"{field} is not a model input; the gap comes from how these customers buy — check it is not a proxy for something it should not be.")
    else:
        out.print(f"No group's average risk is {AUDIT_GAP:.0%} or more from everyone's.")


def _parse_maps(maps: list[str]) -> dict[str, str]:
    overrides = {}
    for item in maps:
        column, sep, field_name = item.rpartition("=")
        if not sep or not column.strip() or not field_name.strip():
            raise ConfigError(f"--map {item!r}: write it as COLUMN=FIELD, e.g. --map 'E-Mail Adresse=email'")
        overrides[column.strip()] = field_name.strip()
    return overrides


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=quiet or not err.is_terminal,
    )


def _store_label(settings: Settings) -> str:
    return settings.store.url.split("@")[-1] if settings.store.url else str(settings.data_dir / "retention.db")


def _local_zone() -> str:
    try:
        import tzlocal

        return tzlocal.get_localzone_name() or "UTC"
    except Exception:  # no zone configured on this machine: UTC, and init says so
        return "UTC"


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def main() -> None:
    """The `retention` console script."""
    app()


if __name__ == "__main__":
    main()
