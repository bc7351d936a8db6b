"""A whole `retention sync` against the HubSpot, Mailchimp and Typeform sandboxes at the vendors' real limits, one
made-up shop in all three: end-to-end rate against the rate-limit bound, an incremental run after 1% of the
contacts changed, and peak RSS.

The sandboxes enforce HubSpot's limits (100 requests per 10 s, 5 searches per s) and Typeform's (2 requests per s)
in real time; the tool keeps under them at its settings (90 per 10 s, 4 searches per s). The bound is the least
time those settings allow for the fewest calls that can carry the data. The tools' limits are independent, so
the sync reads them side by side, then scores, then writes them side by side: reading takes at least the slowest
tool's reading time (HubSpot searches, 200 records each: contacts, companies and deals, at 4 per s, and the deals'
contact associations, 100 a call, within 90 requests per 10 s; Typeform pages of 1,000 responses at 2 per s), and
writing at least HubSpot's batch updates (100 contacts each, within the same 90 per 10 s). Mailchimp documents no
rate, only 10 connections: its calls add no bound time. Everything else (scoring, the store, Mailchimp) shows as
the gap between the bound and the real figure.

Every write moves HubSpot's modified date, so the run after the first re-reads what it wrote (the "echo" run). As
between scheduled runs, two look-back windows pass (one minute each here; ten by default), one quiet run follows,
then 1% of the people change and the measured run reads them.

The sandboxes run in a child process, so the peak RSS is the tool's own: its sync process's, or its scoring
process's (a store this size is scored in a process of its own) where that is larger.

    python bench/sync_bench.py --customers 100000 --answers 20000
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from math import ceil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import print_table

from connectors.base import Endpoint
from connectors.demo_business import make_business
from connectors.forms.typeform_sandbox import TypeformSandbox, feedback_form
from connectors.hubspot.sandbox import HubSpotSandbox
from connectors.hubspot.seed import load_business as load_hubspot
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID
from connectors.mailchimp.seed import load_business as load_mailchimp
from sync.demo import CREDENTIALS, DEMO_FORM_ID
from sync.pipeline import run_sync
from sync.settings import Settings
from sync.store import Store

SEARCH_PAGE, UPDATE_BATCH, TYPEFORM_PAGE = 200, 100, 1_000
SEARCHES_PER_S, REQUESTS_PER_S, TYPEFORM_PER_S = 4.0, 9.0, 2.0
CHANGED = 0.01
LOOKBACK_MIN = 1


def serve(customers: int, answers: int, years: float, pipe) -> None:  # the child process
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    business = make_business(customers, 3, now, years=years, answers=answers)
    hubspot = HubSpotSandbox(token=CREDENTIALS["hubspot"], seed=3, requests_per_10s=100, searches_per_s=5)
    hubspot.missing_scopes.add("events")
    load_hubspot(hubspot, business)
    mailchimp = MailchimpSandbox(api_key=CREDENTIALS["mailchimp"], seed=3)
    load_mailchimp(mailchimp, business)
    typeform = TypeformSandbox(token=CREDENTIALS["typeform"], seed=3)
    typeform.add_form(feedback_form())
    typeform.add_answer_sets(DEMO_FORM_ID, business.answers)
    boxes = {"hubspot": hubspot, "mailchimp": mailchimp, "typeform": typeform}
    pipe.send({name: box.start() for name, box in boxes.items()})
    rng = random.Random(3)
    while True:
        command = pipe.recv()
        if command == "stop":
            break
        if command == "journal":
            # Requests as sent: the operations a Mailchimp batch carried are journaled too, but cost no call.
            pipe.send({name: [(e.method, e.path) for e in box.journal if e.fault != "batch-operation"]
                       for name, box in boxes.items()})
            for box in boxes.values():
                box.journal.clear()
        elif command == "change":  # 1% of the people: a new last name in HubSpot, a new phone in Mailchimp
            contacts = sorted(hubspot.objects["contacts"])
            for contact_id in rng.sample(contacts, max(1, int(len(contacts) * CHANGED / 2))):
                hubspot.update("contacts", contact_id, {"lastname": f"Changed{rng.randrange(10**6)}"})
            members = sorted(h for h, m in mailchimp.lists[LIST_ID]["members"].items() if m["status"] == "subscribed")
            for member_hash in rng.sample(members, max(1, int(len(members) * CHANGED / 2))):
                member = mailchimp.lists[LIST_ID]["members"][member_hash]
                member["merge_fields"]["PHONE"] = f"+49 40 {rng.randrange(10**7):07d}"
                mailchimp._touch(member)
            pipe.send(len(contacts))
    for box in boxes.values():
        box.stop()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bound_s(read: dict[str, int], written_contacts: int) -> float:
    """The fewest calls that carry what was read and written, at the limits: the slowest tool's reading, then
    HubSpot's writing. Reading deals needs their contact associations too (HubSpot's search does not return them):
    one batch read per 100 deals. Reads and writes share the 90-per-10-s window; searches also have their own 4
    per second."""
    searches = sum(ceil(read.get(kind, 0) / SEARCH_PAGE) for kind in ("contact", "company", "order"))
    associations = ceil(read.get("order", 0) / UPDATE_BATCH)
    reading = max(searches / SEARCHES_PER_S, (searches + associations) / REQUESTS_PER_S)
    writing = ceil(written_contacts / UPDATE_BATCH) / REQUESTS_PER_S
    pages = ceil(read.get("survey_response", 0) / TYPEFORM_PAGE)
    return max(reading, pages / TYPEFORM_PER_S) + writing


SCORING_PEAKS: list[float] = []  # peak RSS of each run's scoring process, where it had one


def one_run(settings: Settings, endpoints: dict[str, Endpoint], pipe) -> tuple[float, dict, object]:
    store = Store.open(settings.store_url)
    started = time.monotonic()
    try:
        report = run_sync(settings, store, endpoints=endpoints)
    finally:
        store.close()
    elapsed = time.monotonic() - started
    if report.scoring_peak_mb is not None:
        SCORING_PEAKS.append(report.scoring_peak_mb)
    if report.errors:
        raise SystemExit(f"the sync failed: {report.errors[0]}")
    pipe.send("journal")
    return elapsed, pipe.recv(), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--answers", type=int, default=20_000)
    parser.add_argument("--years", type=float, default=0.5, help="of order history (about 5 orders a customer-year)")
    args = parser.parse_args()

    parent, child = multiprocessing.get_context("fork").Pipe()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(args.customers, args.answers, args.years, child))
    server.start()
    urls = parent.recv()
    data_dir = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    settings = Settings(data_dir=data_dir).model_copy(deep=True, update={
        "currency": "EUR",
        # A one-minute look-back (default 10), so the 1%-change run can start past the window the echo run re-read.
        "hubspot": Settings().hubspot.model_copy(update={"enabled": True, "lookback_minutes": LOOKBACK_MIN}),
        "mailchimp": Settings().mailchimp.model_copy(update={"enabled": True, "audiences": (LIST_ID,), "lookback_minutes": LOOKBACK_MIN}),
        "typeform": Settings().typeform.model_copy(update={"enabled": True, "forms": (DEMO_FORM_ID,), "lookback_minutes": LOOKBACK_MIN}),
    })
    endpoints = {name: Endpoint(url, CREDENTIALS[name]) for name, url in urls.items()}

    rows = []
    first_s, journal, first = one_run(settings, endpoints, parent)
    report = first
    by_source = {s.name: s.counts for s in report.sources}
    read = {kind: by_source["hubspot"][kind].read for kind in ("contact", "company", "order")}
    read["survey_response"] = by_source["typeform"]["survey_response"].read
    everything = sum(c.read for counts in by_source.values() for c in counts.by_kind.values())
    written = next(t for t in report.targets if t.name == "hubspot")
    hubspot_written = min(args.customers, sum(1 for _, path in journal["hubspot"] if path.endswith("/batch/update")) * UPDATE_BATCH)
    records = everything + hubspot_written
    bound = bound_s(read, hubspot_written)
    fraction = bound / first_s
    calls = {name: len(entries) for name, entries in journal.items()}
    rows.append(["initial sync", f"{records:,}", f"{first_s:,.0f} s", f"{bound:,.0f} s",
                 f"{fraction:.2f}", ">= 0.85", "PASS" if fraction >= 0.85 else "MISS",
                 ", ".join(f"{name} {n:,}" for name, n in calls.items())])

    echo_s, journal, _ = one_run(settings, endpoints, parent)
    rows.append(["rerun (reads back what it wrote)", "-", f"{echo_s:,.0f} s", "-", f"{echo_s / first_s:.1%} of initial",
                 "-", "-", ", ".join(f"{name} {len(e):,}" for name, e in journal.items())])

    # As between scheduled runs: two look-back windows pass, one quiet run, then 1% of the people change.
    time.sleep(2 * LOOKBACK_MIN * 60 + 5)
    one_run(settings, endpoints, parent)
    parent.send("change")
    parent.recv()
    changed_s, journal, report = one_run(settings, endpoints, parent)
    share = changed_s / first_s
    rows.append([f"{CHANGED:.0%} of the people changed", "-", f"{changed_s:,.0f} s", "-", f"{share:.1%} of initial",
                 "<= 2%", "PASS" if share <= 0.02 else "MISS", ", ".join(f"{name} {len(e):,}" for name, e in journal.items())])
    parent.send("stop")
    server.join()

    print_table(["run", "records", "time", "bound", "of bound / initial", "target", "verdict", "requests"], rows,
                title=f"retention sync: {args.customers:,} customers ({read['contact']:,} HubSpot contacts, "
                      f"{read['order']:,} deals), Mailchimp audience, {read['survey_response']:,} Typeform responses; real limits")
    # The tool's memory is its sync process's and, while it lives, its scoring process's: the larger peak counts.
    sync_rss, scoring_rss = peak_rss_mb(), max(SCORING_PEAKS, default=0.0)
    rss = max(sync_rss, scoring_rss)
    print(f"peak RSS {rss:,.0f} MB (target < 512 MB: {'PASS' if rss < 512 else 'MISS'}): the sync's process "
          f"{sync_rss:,.0f} MB, its scoring process {scoring_rss:,.0f} MB" if SCORING_PEAKS else
          f"peak RSS (the sync's process; it scored in-process) {rss:,.0f} MB (target < 512 MB: {'PASS' if rss < 512 else 'MISS'})")
    for name, run in (("initial run", first), (f"{CHANGED:.0%}-change run", report)):
        stages = [*(f"read {o.name} {o.seconds:,.1f}" for o in run.sources), f"score {run.scoring_seconds:,.1f}",
                  *(f"write {o.name} {o.seconds:,.1f}" for o in run.targets)]
        print(f"{name}, real seconds per stage (tools side by side): {', '.join(stages)}")
    print(f"initial run: {written.sent:,} HubSpot values written; scoring: {first.scoring}")


if __name__ == "__main__":
    main()
