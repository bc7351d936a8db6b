"""HubSpot connector throughput against the sandbox enforcing a rate limit: how close to the bound, how many calls.

The bound: every request the rate limit allows carries 100 records (HubSpot's batch size), so for a rolling window
of N requests per 10 s, a run of T seconds may send at most N * (1 + T / 10) requests (the opening window, then
N per window). The sandbox clock runs ``--speed`` times faster than real time to scale the limit up; all rates are
in sandbox seconds, the unit the limit is enforced in. The sandbox runs in a child process; peak RSS is the
connector's process (client, store, the desired values of 100k contacts).

    python bench/hubspot_bench.py --contacts 100000 --speed 2
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from multiprocessing import Process, Queue
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import print_table

from connectors.hubspot.client import HubSpotClient
from connectors.hubspot.destination import HubSpotDestination, default_names
from connectors.hubspot.sandbox import HubSpotSandbox
from connectors.hubspot.seed import seed_business
from connectors.hubspot.source import HubSpotSource
from connectors.sandbox import Clock, Journal
from sync.engine import push_changes, run_source_once
from sync.settings import HubSpotSettings
from sync.store import Store

RECORDS_PER_REQUEST = 100
WINDOW_S = 10.0
SEARCH_PAGE = 200


def fraction_of_bound(records: int, elapsed_s: float, calls_per_s: float, per_call: int, burst_calls: int) -> float:
    """Records moved against what the limit allows in ``elapsed_s``: the opening burst, then ``calls_per_s``."""
    return records / (per_call * (burst_calls + calls_per_s * elapsed_s))


def serve_sandbox(urls: Queue, contacts: int, speed: float, per_10s: int, searches_per_s: int) -> None:
    """The sandbox in its own process, so peak RSS measures the connector, not the emulator's 100k objects."""
    box = HubSpotSandbox(token="bench", clock=Clock(speed=speed), seed=1, requests_per_10s=per_10s, searches_per_s=searches_per_s)
    seed_business(box, contacts=contacts, seed=1, deals_per_contact=0, merges=0)
    box.journal = _NoJournal()
    urls.put(box.start())
    while True:
        time.sleep(3600)


class _NoJournal(Journal):
    """100k request bodies would only measure the journal; the bench counts calls on the client."""

    def add(self, entry: object) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=2.0, help="sandbox clock speed (scales the rate limit up)")
    parser.add_argument("--per-10s", type=int, default=100, help="requests per 10 s the sandbox allows (HubSpot free tier: 100)")
    args = parser.parse_args()

    urls: Queue = Queue()
    server = Process(target=serve_sandbox, args=(urls, args.contacts, args.speed, args.per_10s, 5), daemon=True)
    server.start()
    url = urls.get(timeout=600)
    clock = Clock(speed=args.speed)
    # The client stays under the sandbox's limits as it would under HubSpot's (90 % of the window, 4 of 5 searches / s).
    settings = HubSpotSettings(requests_per_10s=int(args.per_10s * 0.9), searches_per_s=4, lookback_minutes=0)
    names = default_names(settings.property_group)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = Store.open(f"sqlite:///{folder}/bench.db")
            client = HubSpotClient("bench", settings, host=url, clock=clock, rng=random.Random(1))

            source = HubSpotSource(client)
            contacts_stream = [s for s in source.streams() if s.name == "contacts"]
            started, real_started, calls_before = clock.monotonic(), time.monotonic(), client.calls
            read = run_source_once(store, _OneStream(source.name, contacts_stream), "bench", "hubspot")
            read_s, read_real_s, read_calls = clock.monotonic() - started, time.monotonic() - real_started, client.calls - calls_before
            count = read.counts["contact"].read
            minimum_reads = -(-count // SEARCH_PAGE)
            rows.append(("read: search", f"{count:,}", f"{read_s:.1f} s ({read_real_s:.1f} s real)", f"{count / read_s:,.0f}/s",
                         f"{fraction_of_bound(count, read_s, settings.searches_per_s, SEARCH_PAGE, settings.searches_per_s):.3f}", "(200 x 4 searches/s)",
                         f"{read_calls:,} / {minimum_reads:,} = {read_calls / minimum_reads:.3f}x", "<= 1.05x"))

            ids = [source_id for source_id, _ in store.stored_records("contact", "hubspot")]
            desired = {i: {names["churn_risk"]: f"{(n % 1000) / 10}", names["risk_band"]: ("low", "medium", "high")[n % 3],
                           names["segment"]: "Loyal", names["scored_at"]: "2025-03-01T00:00:00Z"} for n, i in enumerate(ids)}
            destination = HubSpotDestination(client)
            destination.ensure_properties()  # setup calls are not part of the write figure
            started, real_started, calls_before = clock.monotonic(), time.monotonic(), client.calls
            result = push_changes(store, destination, desired)
            write_s, write_real_s, write_calls = clock.monotonic() - started, time.monotonic() - real_started, client.calls - calls_before
            minimum_writes = -(-len(ids) // RECORDS_PER_REQUEST)
            assert result.sent == 4 * len(ids), result
            per_s = settings.requests_per_10s / WINDOW_S
            rows.append(("write: batch update", f"{len(ids):,}", f"{write_s:.1f} s ({write_real_s:.1f} s real)",
                         f"{len(ids) / write_s:,.0f}/s", f"{fraction_of_bound(len(ids), write_s, per_s, RECORDS_PER_REQUEST, settings.requests_per_10s):.3f}",
                         ">= 0.9", f"{write_calls:,} / {minimum_writes:,} = {write_calls / minimum_writes:.3f}x", "<= 1.05x"))
    finally:
        server.terminate()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(("path", "records", "elapsed (sandbox s)", "records/s", "of bound", "target", "calls / minimum", "target"), rows,
                title=f"HubSpot, {len(ids):,} contacts; client limit {settings.requests_per_10s} requests / 10 s and "
                      f"{settings.searches_per_s} searches / s; sandbox clock x{args.speed:g}")
    print_table(("peak RSS (connector process)", "target"), [(f"{peak_mb:,.0f} MB", "< 512 MB")])


class _OneStream:
    """The source limited to one stream, so the read figure is contacts only."""

    def __init__(self, name: str, streams: list) -> None:
        self.name, self._streams = name, streams

    def streams(self) -> list:
        return self._streams


if __name__ == "__main__":
    main()
