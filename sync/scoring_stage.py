"""The sync's scoring stage: the store's orders, email events and survey answers in, a Score record per customer out.

A large store is scored in a process of its own (``python -m sync.scoring_stage``, started by ``score_for_sync``): its
hundreds of MB of frames and models go back to the system when it ends, and the sync's own process never loads
scikit-learn, SciPy or TextBlob (~120 MB it would hold through the writes). The request comes on stdin and the
answer goes back on stdout, both pickled: the two are the same program, and nothing else writes to that pipe
(whatever the scoring prints goes to stderr).
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from connectors.base import RetentionError
from connectors.records import AnswerKind, Order, OrderStatus, Score, from_payload
from scoring import MODEL_VERSION
from scoring.threads import scoring_threads
from sync.crash_points import CRASH_AT_VARIABLE, CRASH_EXIT_CODE
from sync.score_history import record_run, stored_bands, summarise_run
from sync.redact import configure_logging
from sync.settings import Settings
from sync.store import RunCounts, Store

if TYPE_CHECKING:
    from sync.pipeline import SyncReport


@dataclass
class Scored:
    """What scoring hands the writes: who was scored, by which run, and the records themselves only where they were
    not kept in the store (a dry run); otherwise the writes read each part's back from the store."""

    customers: list[str]  # every customer scored (Score.source_id)
    run: tuple[str, datetime] | None  # the (source, scored_at) of every score of the run; None: nothing scored
    records: list[Score] | None
    last_nps: dict[str, int]  # each customer's last NPS, for the writes

    @classmethod
    def of(cls, records: list[Score], last_nps: dict[str, int], *, kept: bool) -> Scored:
        run = (records[0].source, records[0].scored_at) if records else None
        return cls([score.source_id for score in records], run, None if kept else records, last_nps)


def score_for_sync(settings: Settings, store: Store, report: SyncReport, *, keep: bool) -> Scored:
    """``score_store`` for a sync: in this process for a small store, in one of its own from
    ``scoring.own_process_from`` records of orders, email events and survey answers (where starting it, ~2 s, is
    small beside the scoring and the memory matters)."""
    if store.count_records(SCORING_INPUTS) < settings.scoring.own_process_from:
        return _score_here(settings, store, report, keep=keep)
    request = {"settings": settings, "store": store.engine.url.render_as_string(hide_password=False), "keep": keep,
               "parent": os.getpid(), "log_level": logging.getLogger().getEffectiveLevel()}
    child = subprocess.run([sys.executable, "-m", "sync.scoring_stage"], input=pickle.dumps(request),
                           stdout=subprocess.PIPE, check=False)
    if child.returncode == CRASH_EXIT_CODE and os.environ.get(CRASH_AT_VARIABLE):
        os._exit(CRASH_EXIT_CODE)  # the fault suite's crash point fired in the scoring process: the sync dies with it
    try:
        answer = pickle.loads(child.stdout)
    except Exception:  # noqa: BLE001 - no answer at all: the process died; what it printed is on stderr above
        raise ScoringFailed(f"scoring stopped: its process ended with code {child.returncode} and no answer "
                            f"(see the lines above; nothing was written)") from None
    if isinstance(answer, BaseException):
        raise answer
    report.scored, report.scoring, report.riskiest = answer["scored"], answer["scoring"], answer["riskiest"]
    report.scoring_peak_mb = answer["peak_mb"]
    return answer["result"]


def _score_here(settings: Settings, store: Store, report: SyncReport | SimpleNamespace, *, keep: bool) -> Scored:
    with scoring_threads():
        records, last_nps = score_store(settings, store, report, keep=keep)
    return Scored.of(records, last_nps, kept=keep)


class ScoringFailed(RetentionError):
    """The scoring process ended without an answer."""


def _serve_one_request() -> None:
    """``python -m sync.scoring_stage``: one request from the sync's process, scored, answered, and gone."""
    answer_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr: stdout carries the answer alone
    request = pickle.load(sys.stdin.buffer)
    _die_with_parent(request["parent"])
    configure_logging(logging.getLevelName(request["log_level"]))
    report = SimpleNamespace(scored=0, scoring="", riskiest=None)
    try:
        # It reads each kind of record once, in order: a small page cache does (and saves ~10 MB at the peak).
        store = Store.open(request["store"], cache_mib=2)
        try:
            scored = _score_here(request["settings"], store, report, keep=request["keep"])
        finally:
            store.close()
        answer: object = {"result": scored, "scored": report.scored,
                          "scoring": report.scoring, "riskiest": report.riskiest,
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    except RetentionError as exc:  # the user's to act on: raised again in the sync's process, with its one line
        answer = exc if _round_trips(exc) else ScoringFailed(str(exc))
    pickle.dump(answer, answer_out)
    answer_out.close()


def _round_trips(error: RetentionError) -> bool:
    """Whether ``error`` comes out of pickle as it went in (an error type whose __init__ wants more than its
    message does not)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure to rebuild it means: send its words instead
        return False
    return True


def _die_with_parent(parent: int) -> None:
    """A sync killed while scoring must not leave its scoring running on (writing scores under no lease)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that was set
        os._exit(1)


# --- scoring the store (in whichever process) -------------------------------------------------------------------


def score_as_of(settings: Settings, now: datetime | None = None) -> pd.Timestamp:
    """The end of today in the business's time zone: every order so far counts, and every run of one day scores
    against the same moment, so a rerun with the same data gives the same scores and writes nothing."""
    local = pd.Timestamp(now or datetime.now(timezone.utc)).tz_convert(settings.zone)
    return (local.normalize() + pd.Timedelta(days=1)).tz_convert("UTC")


def orders_frame(orders: Iterable[Order]) -> tuple[pd.DataFrame, set[str]]:
    """The completed ones among ``orders`` as (customer, at, amount), and their currencies. Built a column at a
    time from a stream, so the order records are never all in memory (400,000 deals would hold ~350 MB)."""
    customers: list[str | None] = []
    times, amounts, currencies = [], [], set()
    same: dict[str, str] = {}  # one string per customer, not one per order
    for order in orders:
        if order.status is not OrderStatus.WON:
            continue
        customer = order.match_email or order.customer_source_id
        customers.append(customer if customer is None else same.setdefault(customer, customer))
        times.append(order.created_at)
        amounts.append(float(order.amount))
        currencies.add(order.currency)
    frame = pd.DataFrame({"customer": customers, "at": pd.to_datetime(times, utc=True), "amount": amounts})
    return frame, currencies


def responses_frame(store: Store, *, sentiment: bool = True) -> pd.DataFrame | None:
    """Survey answers in the store with a known respondent: (customer, at, nps, sentiment of the free text; left
    empty without ``sentiment``, when only the NPS is wanted). Built a column at a time from a stream: holding
    every response record at once pinned ~100 MB at 100,000 customers (the few strings the frame keeps were
    scattered over all the memory the records had used, so none of it could be given back)."""
    customers: list[str] = []
    times, nps, texts = [], [], []
    for _, payload in store.stored_records("survey_response"):
        response = from_payload("survey_response", payload)
        if not response.match_email:
            continue
        customers.append(response.match_email)
        times.append(response.submitted_at)
        answers = response.answers.values()
        nps.append(next((float(a.value) for a in answers if a.answer_kind is AnswerKind.NPS), np.nan))
        texts.append(". ".join(a.value for a in answers if a.answer_kind is AnswerKind.TEXT))
    if not customers:
        return None
    from scoring.sentiment import SentimentModel  # TextBlob and the lexicons: only where answers are scored

    scored = SentimentModel().score(texts) if sentiment else np.full(len(texts), np.nan)
    return pd.DataFrame({
        "customer": customers,
        "at": pd.to_datetime(times, utc=True),
        "nps": nps,
        "sentiment": np.where([bool(text.strip()) for text in texts], scored, np.nan),
    })


def events_frame(store: Store) -> pd.DataFrame | None:
    """Email events in the store: (customer = the normalised address, at, event kind), a column at a time."""
    customers: list[str | None] = []
    times, kinds = [], []
    for _, payload in store.stored_records("email_event"):
        event = from_payload("email_event", payload)
        customers.append(event.match_email)
        times.append(event.occurred_at)
        kinds.append(event.event.value)
    if not customers:
        return None
    return pd.DataFrame({"customer": customers, "at": pd.to_datetime(times, utc=True), "event": kinds})


def score_store(settings: Settings, store: Store, report: SyncReport, *, keep: bool) -> tuple[list[Score], dict[str, int]]:
    """Score every customer with a completed order (or, with no orders at all, everyone who engaged), reusing the
    saved model while it is young; keep the Score records (and a newly fitted model) when ``keep``."""
    as_of = score_as_of(settings)
    fingerprint = _scoring_inputs(settings, store, as_of)
    if store.cursor(*SCORED_INPUTS_CURSOR) == fingerprint:
        kept = _kept_scores(store, as_of)
        if kept:
            # The kept scores carry their sentiment: only each customer's last NPS is wanted from the answers.
            return _scores_stand(kept, responses_frame(store, sentiment=False), as_of, report)
    from scoring.scores import NotEnoughCustomers, ScoringParameters, as_score_records, score_with_saved_model

    orders, currencies = orders_frame(from_payload("order", payload) for _, payload in store.stored_records("order"))
    responses = responses_frame(store)
    parameters = ScoringParameters(horizon_days=settings.scoring.horizon_days or None, medium_risk=settings.scoring.medium_risk,
                                   high_risk=settings.scoring.high_risk, random_seed=settings.scoring.random_seed)
    try:
        table, model, model_note = score_with_saved_model(orders, as_of, parameters, responses, events_frame(store),
                                                          settings.data_dir / "models", settings.scoring.retrain_days, keep=keep)
    except NotEnoughCustomers as exc:
        report.scoring = f"nothing scored and nothing written: {exc}"
        return [], {}
    latest = _latest_answers(responses, as_of)
    currency = next(iter(currencies)) if len(currencies) == 1 else settings.currency
    records = [_with_sentiment(score, latest) for score in as_score_records(table, as_of, currency, MODEL_VERSION)]
    if keep:
        keep_scores(store, records, "sync", f"score {len(records):,} customers")
        with store.transaction() as conn:
            store.save_cursor(conn, *SCORED_INPUTS_CURSOR, fingerprint)
    heading = (f"{len(table):,} customers scored (churn = {model.label_} in the next {model.horizon_days_} days; "
               f"{model.describe()}; {model_note})")
    return records, _summarise(table, heading, latest, report)


def _summarise(table: pd.DataFrame, heading: str, latest: pd.DataFrame, report: SyncReport) -> dict[str, int]:
    """The scoring line and the riskiest customers into the report; each customer's last NPS for the writes."""
    bands = table["risk_band"].value_counts()
    report.scored = len(table)
    report.scoring = f"{heading}: " + ", ".join(f"{bands.get(b, 0):,} {b}" for b in ("high", "medium", "low", "new"))
    # Most at risk first; among equal risks, the ones with more to lose (and then the lifelong value) first.
    ranked = table[table["risk_band"] != "new"].assign(_value=table["clv_12_months"].fillna(0.0))
    report.riskiest = ranked.sort_values(["churn_probability", "_value"], ascending=False, kind="stable").drop(columns="_value").head(10)
    return {customer: int(row["nps"]) for customer, row in latest.iterrows() if not pd.isna(row["nps"])}


# What the kept scores were computed from: orders, email events and survey answers, the day, the settings and the
# model version. Unchanged, a rerun of the same day would compute the very same scores, so it reuses them instead.
SCORED_INPUTS_CURSOR = ("scoring", "inputs")
SCORING_INPUTS = ("order", "email_event", "survey_response")


def _scoring_inputs(settings: Settings, store: Store, as_of: pd.Timestamp) -> str:
    return "|".join([as_of.isoformat(), MODEL_VERSION, settings.scoring.what_scores_depend_on(), settings.currency,
                     store.kinds_fingerprint(SCORING_INPUTS)])


def _kept_scores(store: Store, as_of: pd.Timestamp) -> list[Score]:
    kept = (from_payload("score", payload) for _, payload in store.stored_records("score", "scoring"))
    return [score for score in kept if pd.Timestamp(score.scored_at) == as_of]


def _scores_stand(kept: list[Score], responses: pd.DataFrame | None, as_of: pd.Timestamp,
                  report: SyncReport) -> tuple[list[Score], dict[str, int]]:
    """The summary, the riskiest customers and the last NPS, from the scores kept by an earlier run of the day."""
    table = pd.DataFrame({
        "churn_probability": [s.churn_probability for s in kept],
        "risk_band": [s.risk_band.value for s in kept],
        "segment": [s.segment for s in kept],
        "clv_12_months": [np.nan if s.clv is None else float(s.clv) for s in kept],
        "reasons": ["; ".join(s.top_reasons) for s in kept],
    }, index=pd.Index([s.source_id for s in kept], name="customer"))
    heading = f"{len(table):,} customers: nothing they are scored on changed since the last run today, so their scores stand"
    return kept, _summarise(table, heading, _latest_answers(responses, as_of), report)


def keep_scores(store: Store, records: Sequence[Score], command: str, detail: str) -> tuple[int, RunCounts]:
    """Score records into the store in one run of its history; unchanged scores are not rewritten."""
    counts = RunCounts()
    # The scores being replaced, read before the write: the run's history row says how customers moved from them.
    summary = summarise_run(stored_bands(store), records)
    with store.transaction() as conn:
        run_id = store.begin_run(conn, command, detail, datetime.now(timezone.utc))
        for start in range(0, len(records), 2_000):
            store.upsert_records(conn, records[start : start + 2_000], counts)
        if records:
            record_run(conn, run_id, records[0].scored_at, len(records), summary)
        store.finish_run(conn, run_id, "succeeded", counts)
    return run_id, counts


def _latest_answers(responses: pd.DataFrame | None, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per customer: the NPS of their latest answer that had one, and the sentiment of their latest text."""
    if responses is None:
        return pd.DataFrame(columns=["nps", "sentiment"])
    known = responses[responses["at"] < as_of].sort_values("at", kind="stable")
    return pd.DataFrame({
        "nps": known.dropna(subset=["nps"]).groupby("customer")["nps"].last(),
        "sentiment": known.dropna(subset=["sentiment"]).groupby("customer")["sentiment"].last(),
    })


def _with_sentiment(score: Score, latest: pd.DataFrame) -> Score:
    if score.source_id not in latest.index or pd.isna(latest.at[score.source_id, "sentiment"]):
        return score
    return replace(score, sentiment=round(float(latest.at[score.source_id, "sentiment"]), 3))


if __name__ == "__main__":
    # Served by the module under its own name, so that what it pickles names sync.scoring_stage, not __main__.
    from sync.scoring_stage import _serve_one_request as serve

    serve()
