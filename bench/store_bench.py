"""Store throughput and memory: upsert rate and peak RSS for 10k, 100k and 1M records.

Target (the import issue): at least 50,000 records/s, and peak RSS under 300 MB at 1M records, because the
store streams and never holds a file whole. Scenarios, each size in a fresh child process so that the peak RSS
(``ru_maxrss``) belongs to that size alone:

The target rate is the store's: records / store seconds ("upsert rec/s"). Building the canonical records
(validating emails, times and amounts) is the mapping's work and is shown apart ("build s"); "end-to-end rec/s"
includes it, and for ``csv import`` covers reading, checking and mapping the file as well.

- ``upsert new``: a deterministic mix of Contact and Order records (one contact to three orders, seed 7),
  built lazily in batches of 2,000 and written with ``Store.upsert_records`` into a fresh SQLite store, one
  transaction per 50,000 records. Build time (making records) and store time are shown apart.
- ``upsert unchanged``: the same records again, which must write nothing. Its peak RSS is that of the whole
  child, the first pass included.
- ``csv import``: an orders CSV written row by row, then ``CsvImport.prepare`` and ``run_source_once``, as
  ``retention import`` does; seconds cover both passes over the file.

Run: ``python bench/store_bench.py`` (several minutes) or ``python bench/store_bench.py --sizes 10000,100000``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

from connectors.forms.csv import CsvImport
from connectors.records import Contact, EmailAddress, Order, Record
from sync.engine import run_source_once
from sync.store import IMPORT_CACHE_MIB, RunCounts, Store
from tables import print_table

TARGET_RECORDS_PER_S = 50_000
TARGET_PEAK_RSS_MB = 300
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
BATCH_RECORDS = 2_000  # the CSV source's page size
TRANSACTION_RECORDS = 50_000
SEED = 7
EPOCH = datetime(2023, 1, 1, tzinfo=timezone.utc)
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman")
STAGES = ("lead", "customer", "evangelist", None)
STATUSES = ("won", "won", "won", "lost", "open", "refunded")


def generate_batches(count: int) -> Iterator[list[Record]]:
    """``count`` records in batches, the same ones on every call; one contact to three orders."""
    rng = random.Random(SEED)
    batch: list[Record] = []
    for index in range(count):
        contacts_so_far = index // 4 + 1
        if index % 4 == 0:
            batch.append(_contact(rng, index // 4))
        else:
            batch.append(_order(rng, index, rng.randrange(contacts_so_far)))
        if len(batch) == BATCH_RECORDS:
            yield batch
            batch = []
    if batch:
        yield batch


def _contact(rng: random.Random, number: int) -> Contact:
    created_at = EPOCH + timedelta(seconds=rng.randrange(86_400 * 700))
    return Contact(
        source="bench", source_id=f"c{number}", email=EmailAddress.parse(f"Customer.{number}@Example.com"),
        first_name=rng.choice(FIRST_NAMES), last_name=rng.choice(LAST_NAMES), phone=f"+4420{rng.randrange(10**8):08d}",
        company_name=f"Company {rng.randrange(5_000)}", lifecycle_stage=rng.choice(STAGES),
        is_unsubscribed=rng.random() < 0.1, created_at=created_at, updated_at=created_at + timedelta(days=rng.randrange(60)),
        properties={"plan": rng.choice(("free", "team", "business"))},
    )


def _order(rng: random.Random, index: int, customer: int) -> Order:
    created_at = EPOCH + timedelta(seconds=rng.randrange(86_400 * 700))
    return Order(
        source="bench", source_id=f"o{index}", amount=Decimal(rng.randrange(100, 500_000)).scaleb(-2), currency="USD",
        status=rng.choice(STATUSES), created_at=created_at, closed_at=created_at + timedelta(hours=rng.randrange(48)),
        customer_email=EmailAddress.parse(f"Customer.{customer}@Example.com"), customer_source_id=f"c{customer}",
        title=f"Plan renewal {rng.randrange(100)}", properties={"channel": rng.choice(("web", "sales", "partner"))},
    )


def upsert_all(store: Store, count: int) -> dict[str, float]:
    """Write ``count`` generated records; seconds spent building records and in the store, and records written."""
    counts = RunCounts()
    build_s = store_s = 0.0
    batches = generate_batches(count)
    for _ in range(0, count, TRANSACTION_RECORDS):
        with store.transaction() as conn:  # bounded transactions, so the WAL and the lock stay small
            started = time.perf_counter()
            for batch in islice(batches, TRANSACTION_RECORDS // BATCH_RECORDS):
                built = time.perf_counter()
                build_s += built - started
                store.upsert_records(conn, batch, counts)
                started = time.perf_counter()
                store_s += started - built
    written = sum(kind.written for kind in counts.by_kind.values())
    return {"build_s": build_s, "store_s": store_s, "seconds": build_s + store_s, "written": written}


def write_orders_csv(path: Path, count: int) -> None:
    """An orders export of ``count`` rows, written row by row."""
    rng = random.Random(SEED)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Order ID", "Email", "Total", "Currency", "Status", "Created at"])
        for index in range(count):
            created_at = EPOCH + timedelta(seconds=rng.randrange(86_400 * 700))
            writer.writerow([
                f"#{index + 1000}", f"customer.{rng.randrange(max(count // 4, 1))}@example.com",
                f"{rng.randrange(100, 500_000) / 100:.2f}", "USD", rng.choice(("paid", "refunded", "pending")),
                created_at.isoformat(),
            ])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(scenario: str, count: int) -> None:
    """Measure one scenario at one size in this (fresh) process; print one JSON line per result."""
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store = Store.open(f"sqlite:///{tmp}/bench.db", cache_mib=IMPORT_CACHE_MIB)  # as `retention import` opens it
        try:
            if scenario == "upsert":
                for name in ("upsert new", "upsert unchanged"):
                    result = upsert_all(store, count)
                    print(json.dumps({"scenario": name, "records": count, **result, "rss_mb": peak_rss_mb()}), flush=True)
            else:
                path = Path(tmp) / "orders.csv"
                write_orders_csv(path, count)
                started = time.perf_counter()
                source = CsvImport(path, "orders", zone=ZoneInfo("UTC"), currency="USD")
                source.prepare()
                outcome = run_source_once(store, source, "import", "bench")
                seconds = time.perf_counter() - started
                read = sum(kind.read for kind in outcome.counts.by_kind.values())
                print(json.dumps({"scenario": "csv import", "records": read, "seconds": seconds, "rss_mb": peak_rss_mb()}), flush=True)
        finally:
            store.close()


def measure(scenario: str, count: int) -> list[dict]:
    print(f"running {scenario} {count:,}…", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, __file__, "--one", f"{scenario}:{count}"], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def verdict(row: dict) -> str:
    misses = []
    if row["scenario"].startswith("upsert") and row["records"] / row["store_s"] < TARGET_RECORDS_PER_S:
        misses.append("rate")
    if row["rss_mb"] >= TARGET_PEAK_RSS_MB:
        misses.append("RSS")
    if row["scenario"] == "upsert unchanged" and row["written"]:
        misses.append(f"wrote {row['written']:,}")
    return "PASS" if not misses else f"MISS ({', '.join(misses)})"


def print_results(rows: list[dict]) -> None:
    header = ("scenario", "records", "build s", "store s", "upsert rec/s", "target", "end-to-end rec/s", "peak RSS MB", "target", "verdict")
    lines = [header]
    for row in rows:
        is_upsert = row["scenario"].startswith("upsert")
        lines.append((
            row["scenario"], f"{row['records']:,}",
            f"{row['build_s']:.1f}" if is_upsert else "-", f"{row['store_s']:.1f}" if is_upsert else f"{row['seconds']:.1f}",
            f"{row['records'] / row['store_s']:,.0f}" if is_upsert else "-", f">= {TARGET_RECORDS_PER_S:,}" if is_upsert else "-",
            f"{row['records'] / row['seconds']:,.0f}", f"{row['rss_mb']:.0f}", f"< {TARGET_PEAK_RSS_MB}", verdict(row),
        ))
    print_table(header, lines[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="example: python bench/store_bench.py --sizes 10000,100000")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="record counts, comma-separated (default: %(default)s)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SCENARIO:COUNT, run in a child process
    args = parser.parse_args()
    if args.one:
        scenario, count = args.one.split(":")
        run_child(scenario, int(count))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = [row for scenario in ("upsert", "csv") for size in sizes for row in measure(scenario, size)]
    print_results(rows)


if __name__ == "__main__":
    main()
