"""HubSpot connector throughput against the sandbox enforcing a rate limit: how close to the bound, how many calls.

The bound: every request the rate limit allows carries 100 records (HubSpot's batch size), so for a rolling window
of N requests per 10 s, a run of T seconds may send at most N * (1 + T / 10) requests (the opening window, then
N per window). The sandbox clock runs ``--speed`` times faster than real time to scale the limit up; all rates are
in sandbox seconds, the unit the limit is enforced in. Peak RSS covers this process, the sandbox's 100k objects
included.

    python bench/hubspot_bench.py --contacts 100000 --speed 8
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import print_table  # noqa: E402

from connectors.hubspot.client import HubSpotClient, HubSpotSource  # noqa: E402
from connectors.hubspot.destination import HubSpotDestination, default_names  # noqa: E402
from connectors.hubspot.sandbox import HubSpotSandbox  # noqa: E402
from connectors.hubspot.seed import seed_business  # noqa: E402
from connectors.sandbox import Clock  # noqa: E402
from sync.engine import push_changes, run_source_once  # noqa: E402
from sync.settings import HubSpotSettings  # noqa: E402
from sync.store import Store  # noqa: E402

RECORDS_PER_REQUEST = 100
WINDOW_S = 10.0


def fraction_of_bound(records: int, elapsed_s: float, per_window: int) -> float:
    allowed_requests = per_window * (1 + elapsed_s / WINDOW_S)
    return records / (RECORDS_PER_REQUEST * allowed_requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=8.0, help="sandbox clock speed (scales the rate limit up)")
    parser.add_argument("--per-10s", type=int, default=100, help="requests per 10 s the sandbox and the client allow")
    args = parser.parse_args()

    box = HubSpotSandbox(token="bench", clock=Clock(speed=args.speed), seed=1, requests_per_10s=args.per_10s, searches_per_s=5)
    seed_business(box, contacts=args.contacts, seed=1, deals_per_contact=0, merges=0)
    ids = sorted(box.objects["contacts"])
    settings = HubSpotSettings(requests_per_10s=args.per_10s, searches_per_s=5, lookback_minutes=0)
    names = default_names(settings.property_group)
    rows = []
    with box, tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{folder}/bench.db")
        client = HubSpotClient("bench", settings, host=box.url, clock=box.clock, rng=random.Random(1))
        destination = HubSpotDestination(client)
        destination.ensure_properties()  # setup calls are not part of the write figure
        desired = {i: {names["churn_risk"]: f"{(n % 1000) / 10}", names["risk_band"]: ("low", "medium", "high")[n % 3],
                       names["segment"]: "Loyal", names["scored_at"]: "2025-03-01T00:00:00Z"} for n, i in enumerate(ids)}

        box.journal.clear()
        started, real_started = box.clock.monotonic(), time.monotonic()
        result = push_changes(store, destination, desired)
        write_s, write_real_s = box.clock.monotonic() - started, time.monotonic() - real_started
        write_calls = len(box.journal.entries(path="/batch/update"))
        minimum_writes = -(-len(ids) // RECORDS_PER_REQUEST)
        assert result.sent == 4 * len(ids), result
        rows.append(("write: batch update", f"{len(ids):,}", f"{write_s:.1f} s ({write_real_s:.1f} s real)",
                     f"{len(ids) / write_s:,.0f}/s", f"{fraction_of_bound(len(ids), write_s, args.per_10s):.3f}", ">= 0.9",
                     f"{write_calls:,} / {minimum_writes:,} = {write_calls / minimum_writes:.3f}x", "<= 1.05x"))

        box.journal.clear()
        search_per_10s = min(args.per_10s, 5 * WINDOW_S)  # HubSpot search pages hold 200, at most 5 searches a second
        started, real_started = box.clock.monotonic(), time.monotonic()
        source = HubSpotSource(client)
        contacts_stream = [s for s in source.streams() if s.name == "contacts"]
        read = run_source_once(store, _OneStream(source.name, contacts_stream), "bench", "hubspot")
        read_s, read_real_s = box.clock.monotonic() - started, time.monotonic() - real_started
        read_calls = len(box.journal.entries(path="/contacts/search"))
        minimum_reads = -(-len(ids) // 200) + 1  # the closing page confirms the end
        rows.append(("read: search", f"{read.counts['contact'].read:,}", f"{read_s:.1f} s ({read_real_s:.1f} s real)",
                     f"{read.counts['contact'].read / read_s:,.0f}/s",
                     f"{read.counts['contact'].read / (200 * search_per_10s / WINDOW_S * read_s + 200 * 5):.3f}", "(search: 200 x 5/s)",
                     f"{read_calls:,} / {minimum_reads:,} = {read_calls / minimum_reads:.3f}x", ""))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(("path", "records", "elapsed (sandbox)", "records/s", "of bound", "target", "calls / minimum", "target"), rows,
                title=f"HubSpot, {len(ids):,} contacts, limit {args.per_10s} requests / 10 s, sandbox clock x{args.speed:g}")
    print_table(("peak RSS", "target"), [(f"{peak_mb:,.0f} MB", "< 512 MB")])


class _OneStream:
    """The source limited to one stream, so the read figure is contacts only."""

    def __init__(self, name: str, streams: list) -> None:
        self.name, self._streams = name, streams

    def streams(self) -> list:
        return self._streams


if __name__ == "__main__":
    main()
