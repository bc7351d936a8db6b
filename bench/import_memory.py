"""L7 memory ceiling of `retention import` (RELIABILITY.md §4.1): peak RSS importing 500 MB CSV exports.

Two files, generated here into a temporary directory (never committed), each imported by the real CLI in a child
process whose own peak RSS (``ru_maxrss`` from ``os.wait4``) is the figure:
- ``orders``: a 500 MB orders export, about 5 million rows (one customer to four orders);
- ``responses``: a 500 MB survey export of about 48,000 respondents, 1% of whom wrote a 1 MB free-text answer.
Target: peak RSS at most 512 MB for each, and every row imported (none quarantined).

The part of L7 that needs the sync engine (100k contacts synced) is measured by bench/sync_bench.py.

Run: ``python bench/import_memory.py`` (several minutes on two cores; ``--megabytes 50`` for a quick look), or as
the L7 rows of ``python bench/reliability_report.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_table  # noqa: E402

TARGET_PEAK_RSS_MB = 512
DEFAULT_MEGABYTES = 500
LONG_ANSWER_SHARE = 0.01
LONG_ANSWER_CHARS = 1024 * 1024
SEED = 7
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
RETENTION = Path(sys.executable).with_name("retention")


def write_orders(path: Path, megabytes: int) -> int:
    """An orders export of about ``megabytes``, written row by row; returns its data rows."""
    rng, rows, limit = random.Random(SEED), 0, megabytes * 1024 * 1024
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Order ID", "Email", "Total", "Currency", "Status", "Created at"])
        while handle.tell() < limit:
            for _ in range(10_000):
                created_at = EPOCH + timedelta(seconds=rng.randrange(86_400 * 600))
                writer.writerow([f"#{rows + 1000}", f"customer.{rng.randrange(1_250_000)}@example.com",
                                 f"{rng.randrange(100, 500_000) / 100:.2f}", "USD", rng.choice(("paid", "refunded", "pending")),
                                 created_at.isoformat()])
                rows += 1
    return rows


def write_responses(path: Path, megabytes: int) -> int:
    """A Google Forms-style survey export of about ``megabytes``: 1% of respondents wrote a 1 MB answer."""
    rng, rows, limit = random.Random(SEED), 0, megabytes * 1024 * 1024
    essay = ("The delivery was late again and support never answered my emails. " * 16_000)[:LONG_ANSWER_CHARS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Timestamp", "Email Address", "How likely are you to recommend us?", "Comments"])
        while handle.tell() < limit:
            submitted = EPOCH + timedelta(seconds=rng.randrange(86_400 * 600))
            comment = essay if rng.random() < LONG_ANSWER_SHARE else rng.choice(("Great service", "ok", "Too slow", ""))
            writer.writerow([submitted.strftime("%Y-%m-%d %H:%M:%S"), f"person.{rows}@example.com", rng.randrange(11), comment])
            rows += 1
    return rows


FIXTURES: dict[str, tuple[str, Callable[[Path, int], int]]] = {
    "orders": ("orders", write_orders),
    "responses": ("responses", write_responses),
}


def import_in_child(path: Path, kind: str, data_dir: Path) -> dict:
    """`retention import PATH --kind KIND --json` in a child process: its result and its own peak RSS."""
    settings = data_dir / "settings.toml"
    settings.write_text(f'data_dir = "{data_dir / "data"}"\n')
    environment = {**os.environ, "RETENTION_SETTINGS": str(settings)}
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen([str(RETENTION), "import", str(path), "--kind", kind, "--json"], cwd=data_dir,
                                 env=environment, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        said = output.read().decode("utf-8", "replace")
    lines = [line for line in said.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else {"error": said.strip().splitlines()[-1:]}
    return {"exit_code": child.returncode, "seconds": time.monotonic() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024, **result}  # ru_maxrss is in KiB on Linux


def measure(megabytes: int = DEFAULT_MEGABYTES, fixtures: tuple[str, ...] = tuple(FIXTURES)) -> list[dict]:
    """Each fixture written into a scratch directory and imported into a fresh store there."""
    found = []
    for name in fixtures:
        kind, write = FIXTURES[name]
        with tempfile.TemporaryDirectory(prefix="retention-l7-") as scratch:
            path = Path(scratch) / f"{name}.csv"
            print(f"L7: writing a {megabytes} MB {name} export…", file=sys.stderr, flush=True)
            rows = write(path, megabytes)
            size_mb = path.stat().st_size / 1024 / 1024
            print(f"L7: importing it ({rows:,} rows)…", file=sys.stderr, flush=True)
            outcome = import_in_child(path, kind, Path(scratch))
            found.append({"fixture": name, "rows": rows, "file_mb": size_mb, **outcome})
    return found


def rows_for_table(results: list[dict]) -> list[list[str]]:
    """One L7 row per fixture: measured peak RSS against the target, and what was imported."""
    table = []
    for result in results:
        records = result.get("records") or {}
        imported = records.get("read", 0)
        complete = result["exit_code"] == 0 and imported == result["rows"] and not records.get("quarantined")
        verdict = "PASS" if complete and result["peak_rss_mb"] <= TARGET_PEAK_RSS_MB else "MISS"
        what = (f"{result['file_mb']:,.0f} MB {result['fixture']} CSV, {result['rows']:,} rows: {imported:,} imported, "
                f"{records.get('quarantined', 0):,} quarantined, {result['seconds']:,.0f} s"
                if result["exit_code"] == 0 else f"exit {result['exit_code']}: {result.get('error')}")
        table.append([f"L7 import peak RSS ({result['fixture']})", f"{result['peak_rss_mb']:,.0f} MB",
                      f"<= {TARGET_PEAK_RSS_MB} MB", verdict, what])
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=DEFAULT_MEGABYTES, help="size of each generated file (default: %(default)s)")
    parser.add_argument("--fixtures", nargs="*", default=list(FIXTURES), choices=list(FIXTURES))
    args = parser.parse_args()
    rows = rows_for_table(measure(args.megabytes, tuple(args.fixtures)))
    print_table(["figure", "measured", "target", "verdict", "how"], rows)
    return 0 if all(row[3] == "PASS" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
