"""`retention`: the command line. User mistakes print one line and a documented exit code; --debug shows more."""

from __future__ import annotations

import json
from datetime import datetime
import logging
import re
import sys
import traceback
from dataclasses import dataclass
import importlib
from importlib import metadata as package_metadata
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.base import CONNECTOR_MODULES, CheckResult, ConfigError, RetentionError, registered_checks
from connectors.forms.csv import KINDS, CsvImport
from scoring.threads import limit_this_process
from sync.engine import run_source_once
from sync.export import write_csv
from sync.redact import configure_logging, redact
from sync.settings import Settings, load_settings, read_secret
from sync.store import IMPORT_CACHE_MIB, SYNC_CACHE_MIB, Store

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
    "you already use.\n\nStart with `retention init`, then `retention import YOUR-EXPORT.csv --kind orders`, then "
    "`retention score --out scores.csv`.\n\n"
    + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# No markup, no emoji codes: every line quotes the user's data (names, columns, file and source names), and rich
# would read "[/b]" in a cell as a tag (an internal error), ":o:" in "csv:o: 3 new" as an emoji, and swallow the
# "[redacted]" mask. What a user's file holds is printed as it is.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
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

    def open_store(self, cache_mib: int = SYNC_CACHE_MIB) -> Store:
        settings = self.settings
        return Store.open(settings.store_url, busy_timeout_s=settings.store.busy_timeout_s, password=read_secret("store_password"),
                          cache_mib=cache_mib)


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
    limit_this_process()  # one native thread when other programs already keep the cores busy (scoring/threads.py)


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
        source_csv = csv_source(
            settings, path, kind, date_order=chosen_order if chosen_order == "auto" else chosen_order.upper(),
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
        store = context.open_store(IMPORT_CACHE_MIB)
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
        f"{counts.unchanged:,} unchanged, {counts.quarantined:,} quarantined"
        + (f", {counts.forgotten:,} skipped (forgotten on request)" if counts.forgotten else "")
        + f" (run #{result.run_id})"
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
                + (f", {c['forgotten']:,} forgotten" if c["forgotten"] else "")
                for kind, c in run["counts"].items()
            )
            out.print(f"  #{run['id']} {run['started_at']:%Y-%m-%d %H:%M} UTC {run['command']} {run['detail']}: {run['status']}; {totals}")
    out.print(f"Quarantine: {quarantined:,} record{'s' if quarantined != 1 else ''}" + (" (see `retention quarantine`)" if quarantined else ""))
    if state_checksum:
        out.print(f"State checksum: {state_checksum}")


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
            verdict = store.integrity()  # the full check: opening did only the quick one
            results.append(CheckResult("store", verdict == "ok", f"{_store_label(settings)}: integrity {verdict}, schema {store.version()}"))
            store.close()
        except RetentionError as exc:
            results.append(CheckResult("store", False, str(exc)))
        for connector, module in CONNECTOR_MODULES.items():
            if not getattr(settings, connector).enabled:
                results.append(CheckResult(connector, True, "disabled in settings (skipped)"))
                continue
            importlib.import_module(module)  # registers the connector's check
            check = registered_checks().get(connector)
            if check is None:
                results.append(CheckResult(connector, False, "enabled in settings, but this version has no check for it"))
                continue
            try:
                results.append(check(settings))
            except RetentionError as exc:
                results.append(CheckResult(connector, False, str(exc)))
    if as_json:
        out.print(json.dumps([vars(r) for r in results]))
    else:
        for result in results:
            out.print(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<12} {redact(result.detail)}")
    if not all(r.ok for r in results):
        raise typer.Exit(DOCTOR_FAILED)


# --- helpers ------------------------------------------------------------------------------------------------------


def csv_source(settings: Settings, path: Path, kind: str, **options: Any) -> CsvImport:
    """A CSV import configured from the settings; ``options`` are what the command line adds or overrides."""
    return CsvImport(
        path, kind, zone=settings.zone, currency=settings.currency, date_order=options.pop("date_order", settings.csv.date_order),
        max_text_chars=settings.csv.max_text_chars, max_bad_row_fraction=settings.csv.max_bad_row_fraction, **options,
    )


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


# The scoring commands live in their own module and register on this app.
from sync import cli_scoring  # noqa: E402,F401  (imported for its commands)
from sync import cli_sandbox  # noqa: E402,F401  (imported for its command)
from sync import cli_schedule  # noqa: E402,F401  (imported for its command)
from sync import cli_forget  # noqa: E402,F401  (imported for its command)
from sync import cli_sync  # noqa: E402,F401  (imported for its command)
from sync import demo  # noqa: E402,F401  (imported for its command)
from sync import cli_report  # noqa: E402,F401  (imported for its commands)

if __name__ == "__main__":
    main()
