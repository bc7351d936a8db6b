"""`retention score` and `retention sentiment`: scoring commands, registered on the app in sync/cli.py."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from connectors.base import ConfigError, InputError
from connectors.forms import csv_file
from connectors.records import OrderStatus, from_payload, normalise_email
from scoring import MODEL_VERSION
from scoring.features import rfm_summary
from scoring.sentence_encoder import EncoderUnavailable, INSTALL_HINT, is_encoder_installed
from scoring.sentiment_bands import sentiment_label
from sync.cli import Context, app, csv_source, err, out
from sync.export import write_csv
from sync.scoring_stage import events_frame, keep_scores, orders_frame, responses_frame
from sync.settings import Settings

if TYPE_CHECKING:
    from scoring.scores import ScoringParameters

# Contact fields --audit may name besides the columns an import kept (never anything else on the object).
CONTACT_FIELDS = {"first_name", "last_name", "company_name", "lifecycle_stage", "is_unsubscribed", "phone"}


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
    retrain: Annotated[bool, typer.Option("--retrain", help="Refit the store's churn model now instead of reusing the saved one (scoring.retrain_days).")] = False,
) -> None:
    """Churn risk with reasons, segment and 12-month value for every customer who has ordered.

    Only completed orders count (won deals, paid orders); refunded, lost and open ones do not. A store with no
    orders at all is scored from email opens, clicks and survey answers.

    Example: retention score --orders orders_export.csv --as-of 2024-03-31 --out scores.csv
    """
    # scikit-learn, SciPy and TextBlob are imported by the commands that use them: every other command starts without.
    from scoring.scores import NotEnoughCustomers, ScoringParameters, score_customers, score_with_saved_model

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
        if orders is None:  # the store: its saved model is reused while young, and saved when scores are kept
            responses, events = _engagement_frames(context)
            is_kept = explain is None and audit is None
            table, model, model_note = score_with_saved_model(frame, cutoff, parameters, responses, events, settings.data_dir / "models",
                                                              settings.scoring.retrain_days, retrain=retrain, keep=is_kept)
        else:
            (table, model), model_note = score_customers(frame, cutoff, parameters), ""
    except NotEnoughCustomers as exc:
        raise InputError(f"nothing to score: {exc}") from None
    bands = table["risk_band"].value_counts()
    out.print(
        f"Scored {len(table):,} customers as of {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d} (churn = {model.label_} in the next "
        f"{model.horizon_days_} days; model: {model.describe()}): "
        + ", ".join(f"{bands.get(band, 0):,} {band}" for band in ("high", "medium", "low", "new"))
    )
    if explain is not None:
        _print_explanation(explain, table, frame, cutoff)
        return
    if audit is not None:
        _print_audit(audit, table, frame)
        return
    if orders is None:  # scores of the store go back into it, for the sync to write out
        _store_scores(context, table, cutoff, currencies, model_note)
    if out_file is not None:
        cells = table.astype(object).where(table.notna(), "")  # an unknown value (no spend model) is an empty cell
        written = write_csv(out_file, ["customer", *table.columns], ([customer, *row] for customer, row in zip(table.index, cells.itertuples(index=False))))
        out.print(f"Wrote {written:,} rows to {out_file}")
        return
    riskiest = table[table["risk_band"] != "new"].sort_values("churn_probability", ascending=False, kind="stable").head(10)
    for customer, row in riskiest.iterrows():
        out.print(f"  {customer}  {row['churn_probability']:.1%} {row['risk_band']}  {row['segment']}  — {row['reasons']}")


class SentimentMethod(str, Enum):
    auto = "auto"
    encoder = "encoder"
    lexicon = "lexicon"


@app.command()
def sentiment(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A survey export (CSV).")],
    column: Annotated[str, typer.Option(help="The column holding the free-text answers.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the same rows with sentiment and sentiment_score added.")],
    nps: Annotated[Optional[str], typer.Option(metavar="COLUMN", help="An NPS column (0-10): answers scored 9-10 and 0-6 teach the method your customers' words.")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="The file's encoding when it is not UTF-8 or UTF-16.")] = None,
    method: Annotated[SentimentMethod, typer.Option(help="What --nps learns from: encoder (the optional sentence encoder, "
                                                         "with VADER and TextBlob), lexicon (VADER and TextBlob only), or auto "
                                                         "(encoder when installed).")] = SentimentMethod.auto,
) -> None:
    """Label every free-text answer positive, neutral or negative, with a score from -1 to 1.

    Example: retention sentiment "Customer survey.csv" --column "What could we do better?" --out labelled.csv --nps NPS
    """
    encoding_name = csv_file.detect_encoding(path, encoding) if path.is_file() else None
    if encoding_name is None:
        raise InputError(f"{path}: no such file")
    csv_file.check_decodes(path, encoding_name)
    delimiter = csv_file.detect_delimiter(csv_file.read_head(path, encoding_name))
    rows = csv_file.iter_rows(path, encoding_name, delimiter)
    _, header = next(rows, (0, []))
    text_at = _column_index(path, header, column, "--column")
    if method is SentimentMethod.encoder and not is_encoder_installed():
        raise EncoderUnavailable(f"--method encoder: the sentence encoder is not installed ({INSTALL_HINT})")
    from scoring.sentiment import SentimentModel

    model = SentimentModel(method=method.value)
    if nps is not None:
        nps_at = _column_index(path, header, nps, "--nps")
        rated = [(cells[text_at], int(cells[nps_at])) for _, cells in islice(csv_file.iter_rows(path, encoding_name, delimiter), 1, None)
                 if len(cells) > max(text_at, nps_at) and cells[text_at].strip() and cells[nps_at].strip().isdigit()]
        known = [(text, score >= 9) for text, score in rated if score >= 9 or score <= 6]
        model.fit([text for text, _ in known], [positive for _, positive in known])
        how = "calibrated on" if model.is_calibrated else "too few to calibrate on (the default method is used):"
        out.print(f"{how} {len(known):,} answers with an NPS of 9-10 or 0-6; method: {model.describe()}")

    def labelled() -> Iterator[list[str]]:
        for chunk in _chunks((cells for _, cells in rows), 2_000):
            scores = model.score([cells[text_at] if len(cells) > text_at else "" for cells in chunk])
            for cells, value in zip(chunk, scores):
                yield [*cells, sentiment_label(value), f"{value:.3f}"]

    written = write_csv(out_file, [*header, "sentiment", "sentiment_score"], labelled())
    out.print(f"Wrote {written:,} answers to {out_file}")


def _store_scores(context: Context, table: pd.DataFrame, cutoff: pd.Timestamp, currencies: set[str], model_note: str) -> None:
    settings = context.settings
    currency = settings.currency if len(currencies) != 1 else next(iter(currencies))
    from scoring.scores import as_score_records

    records = as_score_records(table, cutoff, currency, MODEL_VERSION)
    store = context.open_store()
    try:
        run_id, counts = keep_scores(store, records, "score", f"{len(records):,} customers as of {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d}")
    finally:
        store.close()
    stored = counts["score"]
    out.print(f"Stored {stored.written:,} new or changed scores ({stored.unchanged:,} unchanged, run #{run_id}); "
              f"{model_note}, in {settings.data_dir / 'models'}")


def _print_backtest(frame: pd.DataFrame, cutoff: pd.Timestamp, parameters: ScoringParameters) -> None:
    from scoring.churn import NothingToCompare, backtest
    from scoring.scores import NotEnoughCustomers

    if frame.empty:
        raise InputError("cannot backtest: there are no completed orders; the backtest measures how well order churn was foreseen")
    try:
        result = backtest(frame, cutoff, parameters.horizon_days, parameters.random_seed)
    except (NothingToCompare, NotEnoughCustomers) as exc:
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
    who_counts = "customers with completed orders" if not frame.empty else "contacts who opened, clicked or answered"
    if key not in table.index:
        raise InputError(f"{who}: not among the {len(table):,} {who_counts} by {(cutoff - pd.Timedelta(days=1)):%Y-%m-%d}")
    row = table.loc[key]
    if frame.empty:  # scored from engagement alone
        out.print(f"{key}: {row['churn_probability']:.1%} chance of no email open, click or survey answer soon — {row['risk_band']} risk")
        out.print(f"  why: {row['reasons']}")
        return
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
        source = csv_source(settings, path, "orders")
        plan = source.prepare()
        if plan.data_rows == 0:  # the file's own notice, not the store's "nobody has engaged" that would follow
            raise InputError("; ".join(plan.notices).replace("nothing to import", "nothing to score"), path=str(path))
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
    frame, currencies = orders_frame(found)
    if audit_field is not None:
        completed = [order for order in found if order.status is OrderStatus.WON]  # the frame's rows, in its order
        frame["audit"] = _audit_values(context, path, audit_field, completed)
    return frame, currencies, skipped


def _engagement_frames(context: Context) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Survey answers with a known respondent and email events in the store (sync.pipeline's frames)."""
    store = context.open_store()
    try:
        return responses_frame(store), events_frame(store)
    finally:
        store.close()


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
            # A named contact field (company_name, lifecycle_stage…), or one of the columns the import kept.
            field_value = getattr(contact, wanted) if wanted in CONTACT_FIELDS else None
            value = lookup(dict(contact.properties)) or (str(field_value) if field_value not in (None, "") else None)
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
