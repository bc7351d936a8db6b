"""Reliability figures: the fault suite's scenarios per group and what its crash tests measured, against the targets.

Runs ``pytest -m fault`` (every test marked with the RELIABILITY.md §4 scenario it covers: L load, F fault, B bad
input, SEC security goals) in a subprocess with RETENTION_RELIABILITY_DIR pointing at a scratch directory, where
tests/conftest.py writes each scenario test's outcome and the figures the crash tests measured (kills, records
lost, duplicates created, redundant writes, status-changing requests, peak RSS of the synced children) and the
session's canary scan its count. Then prints two tables, the measured value beside the target with PASS/MISS.

Targets (issue 10): 0 records lost, 0 duplicates, 0 subscription-status changes and 0 canary occurrences, at most
one batch (one write request) re-sent per kill, over at least 200 seeded kill points; every scenario test passes.

Run: ``python bench/reliability_report.py`` (about 5 minutes on two cores; RETENTION_SOAK=1 adds the long kill
variants, about 40 minutes). ``--tests PATH ...`` runs only those test files (``--tests`` alone: none). ``--l7`` adds
the L7 memory rows: peak RSS of `retention import` on a generated 500 MB orders export and a 500 MB survey export
where 1% of respondents wrote 1 MB (bench/import_memory.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import import_memory  # noqa: E402
from tables import print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GROUPS = {"L": "load", "F": "fault", "B": "bad input", "SEC": "security"}
KILL_TARGET = 200


def group_of(scenario: str) -> str:
    return GROUPS["SEC"] if scenario.startswith("SEC") else GROUPS.get(scenario[:1], "other")


def run_suite(tests: list[str], directory: Path) -> tuple[int, float]:
    environment = {**os.environ, "RETENTION_RELIABILITY_DIR": str(directory)}
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "fault", "-p", "no:cacheprovider", *tests],
                              cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary = [line for line in finished.stdout.splitlines() if line.strip()][-1:]
    print(f"pytest -m fault: {summary[0] if summary else '(no output)'}", file=sys.stderr)
    return finished.returncode, time.monotonic() - started


def read_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("figures-*.jsonl")) for line in path.read_text().splitlines()]


def scenario_rows(lines: list[dict]) -> list[list[str]]:
    """Per group: scenarios run (a test of it ran, not skipped) and passed (every test of it that ran passed)."""
    outcomes: dict[str, dict[str, str]] = defaultdict(dict)  # test → worst outcome
    scenarios_of: dict[str, list[str]] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    for line in lines:
        if "outcome" in line:
            test = line["test"]
            scenarios_of[test] = line["scenarios"]
            previous = outcomes[test].get("outcome", "passed")
            outcomes[test]["outcome"] = max(previous, line["outcome"], key=rank.__getitem__)
    by_scenario: dict[str, list[str]] = defaultdict(list)
    for test, scenarios in scenarios_of.items():
        for scenario in scenarios:
            by_scenario[scenario].append(outcomes[test]["outcome"])
    rows = []
    for group in GROUPS.values():
        mine = {s: o for s, o in by_scenario.items() if group_of(s) == group}
        run = {s: o for s, o in mine.items() if any(x != "skipped" for x in o)}
        passed = [s for s, o in run.items() if all(x != "failed" for x in o)]
        tests = [o for s, o in mine.items() for o in o]
        failed = sorted(s for s in run if s not in passed)
        rows.append([group, f"{len(run)}", f"{len(passed)}", f"{tests.count('passed')}/{len(tests) - tests.count('skipped')}",
                     f"{tests.count('skipped')}", ("PASS" if not failed else "MISS: " + ", ".join(failed)) if run else "none run",
                     ", ".join(sorted(run, key=lambda s: (len(s), s)))])
    return rows


def figure_rows(lines: list[dict]) -> list[list[str]]:
    measured = [line["figures"] | {"test": line["test"].split("::")[0]} for line in lines if "figures" in line]
    canary = [line["canary_sightings"] for line in lines if "canary_sightings" in line]

    def total(name: str) -> int:
        return sum(int(m.get(name, 0)) for m in measured)

    kills, worst_resend = total("kills"), max((int(m.get("redundant_requests_max_per_kill", 0)) for m in measured), default=0)
    by_test = "; ".join(f"{m['test'].removeprefix('tests/')} {m['kills']}" for m in measured if "kills" in m)
    rss = max((int(m.get("peak_rss_children_mb", 0)) for m in measured), default=0)
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    return [
        ["seeded kill points", f"{kills:,}", f">= {KILL_TARGET}", verdict(kills >= KILL_TARGET), by_test],
        ["  of them at named crash points", f"{total('named_kills'):,}", "-", "-",
         "; ".join(m["named_kills_by_point"] for m in measured if m.get("named_kills_by_point"))],
        ["power-loss restores (F4)", f"{total('power_loss_restores'):,}", "-", "-",
         "store + WAL copied mid-sync (child frozen), restored after a cut or after the run, one more run; "
         f"{total('resent_values_after_restore'):,} field values re-sent because the restored ledger lost them"],
        ["records lost", f"{total('records_lost'):,}", "0", verdict(total("records_lost") == 0),
         "oracle: a twin shop with the same inputs, never killed nor restored"],
        ["duplicates created", f"{total('duplicates_created'):,}", "0", verdict(total("duplicates_created") == 0),
         "contacts, members, tag segments, merge fields"],
        ["redundant writes per kill (max)", f"{worst_resend} request(s)", "<= 1 batch", verdict(worst_resend <= 1),
         f"{total('redundant_values_total'):,} field values re-sent in all"],
        ["status-changing requests", f"{total('status_changing_requests'):,}", "0", verdict(total("status_changing_requests") == 0),
         "Mailchimp request bodies and batch operations carrying a status"],
        ["canary occurrences", f"{sum(canary):,}" if canary else "not scanned", "0", verdict(bool(canary) and sum(canary) == 0),
         "store, WAL, logs, exports, CLI output, captured logs and failures of the whole run"],
        # ru_maxrss of reaped children is the largest child of the whole pytest process so far, not of one test.
        ["peak RSS of a child process", f"{rss:,} MB", "-", "-",
         "largest child pytest reaped (the kill tests' syncs among them); L7: the --l7 rows (import) and "
         "bench/sync_bench.py (sync)"],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", nargs="*", default=["tests"], help="test files or directories (default: all of tests/)")
    parser.add_argument("--l7", action="store_true", help="also the L7 rows: peak RSS of `retention import` on generated "
                        "500 MB exports (bench/import_memory.py; adds several minutes)")
    parser.add_argument("--l7-megabytes", type=int, default=import_memory.DEFAULT_MEGABYTES, help="size of each L7 file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retention-reliability-") as scratch:
        code, seconds = run_suite(args.tests, Path(scratch)) if args.tests else (0, 0.0)
        lines = read_lines(Path(scratch))
    load_rows = import_memory.rows_for_table(import_memory.measure(args.l7_megabytes)) if args.l7 else []
    soak = " (RETENTION_SOAK=1)" if os.environ.get("RETENTION_SOAK") == "1" else ""
    print_table(["group", "scenarios run", "passed", "tests passed/run", "skipped", "verdict", "scenarios"], scenario_rows(lines),
                title=f"retention-sync reliability: pytest -m fault{soak}, {seconds:,.0f} s, exit code {code}")
    print_table(["figure", "measured", "target", "verdict", "how"], figure_rows(lines) + load_rows)
    return code or int(any(row[3] != "PASS" for row in load_rows))


if __name__ == "__main__":
    raise SystemExit(main())
