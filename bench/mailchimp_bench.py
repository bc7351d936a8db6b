"""Mailchimp: 100k members tagged across 6 tags and given 2 merge fields — write calls against the minimum, read speed,
peak memory.

The sandbox runs in a child process, so the peak RSS measured here is the tool's own (client, engine, store).
Run: python bench/mailchimp_bench.py [--members 100000]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tables import print_table
from connectors.mailchimp.client import PAGE_SIZE, MailchimpClient
from connectors.mailchimp.destination import MailchimpDestination
from connectors.mailchimp.mapping import WRITABLE_MERGE_FIELDS, desired_from_scores
from connectors.mailchimp.sandbox import MailchimpSandbox
from connectors.mailchimp.seed import LIST_ID, member_email, seed_audience, status_for
from connectors.records import Score
from sync.engine import push_changes, run_source_once
from sync.settings import MailchimpSettings
from sync.store import Store

KEY = "bench0000000000000000-us6"
BANDS = ("high", "medium", "low")
SEGMENTS = ("Champions", "At risk", "Hibernating")


def serve(members: int, pipe) -> None:  # runs in the child process
    sandbox = MailchimpSandbox(api_key=KEY, seed=1)
    seed_audience(sandbox, members, seed=1, campaigns=2, orders=1_000)
    pipe.send(sandbox.start())
    pipe.recv()  # until the parent is done
    sandbox.stop()


def scores(members: int) -> list[Score]:
    as_of = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        Score(
            source="scoring",
            source_id=member_email(i),
            churn_probability=0.5,
            risk_band=BANDS[i % 3],
            scored_at=as_of,
            segment=SEGMENTS[(i // 3) % 3],
        )
        for i in range(members)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    members = parser.parse_args().members
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=serve, args=(members, child_end), daemon=True)
    child.start()
    url = parent_end.recv()
    settings = MailchimpSettings(enabled=True, audiences=(LIST_ID,))
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = Store.open(f"sqlite:///{folder}/bench.db")
            client = MailchimpClient(settings, api_key=KEY, base_url=url)
            # One page alone, to know what a request costs here: the concurrency bound follows from it.
            started = time.perf_counter()
            client.call(
                "timing one page",
                client.sdk.lists.get_list_members_info,
                LIST_ID,
                count=PAGE_SIZE,
                offset=0,
            )
            page_s = time.perf_counter() - started
            started = time.perf_counter()
            read = run_source_once(store, _members_only(client), "bench", "mailchimp")
            read_s = time.perf_counter() - started
            contacts = read.counts["contact"].read

            desired = desired_from_scores(scores(members))
            destination = MailchimpDestination(client, LIST_ID)
            started = time.perf_counter()
            pushed = push_changes(store, destination, desired)
            push_s = time.perf_counter() - started
            again = MailchimpDestination(client, LIST_ID)
            push_changes(store, again, desired)
            client.close()
    finally:
        parent_end.send("stop")
        child.join(timeout=10)

    reachable = [i for i in range(members) if status_for(i, members) != "archived"]
    per_tag = Counter(BANDS[i % 3] for i in reachable) + Counter("s" + SEGMENTS[(i // 3) % 3] for i in reachable)
    tag_minimum = sum(math.ceil(n / settings.batch_size) for n in per_tag.values()) + len(per_tag)  # + creating 6 tags
    merge_fields = {n for fields in desired.values() for n, v in fields.items() if n in WRITABLE_MERGE_FIELDS and v}
    # One batch per 500 members, plus creating the tool's merge fields a new audience lacks (all on first need).
    missing_fields = set(WRITABLE_MERGE_FIELDS) - {"FNAME", "LNAME", "PHONE"}
    minimum = tag_minimum + math.ceil(len(reachable) / settings.batch_size) + len(missing_fields)
    bound = settings.max_connections * PAGE_SIZE / page_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(
        ("measure", "result", "target"),
        [
            (
                f"members given 2 tags (of 6) and {len(merge_fields)} merge fields",
                f"{len(reachable):,} in {push_s:.1f} s",
                "all but archived",
            ),
            (
                "write calls / minimum",
                f"{destination.write_calls} / {minimum} = {destination.write_calls / minimum:.3f}x",
                "<= 1.05x",
            ),
            ("write calls on an unchanged rerun", f"{again.write_calls}", "0"),
            (
                "refused receipts",
                f"{len(pushed.rejected):,} = {members - len(reachable):,} archived x {2 + len(merge_fields)} fields",
                "archived only",
            ),
            (
                "members read",
                f"{contacts:,} in {read_s:.1f} s = {contacts / read_s:,.0f}/s",
                f"bound {bound:,.0f}/s",
            ),
            (
                "one 1000-member page",
                f"{page_s * 1000:.0f} ms",
                f"x {settings.max_connections} connections",
            ),
            ("peak RSS (tool, sandbox in a child)", f"{peak_mb:,.0f} MB", "< 512 MB"),
        ],
        title=f"Mailchimp, {members:,} members",
    )


def _members_only(client: MailchimpClient):
    from connectors.mailchimp.source import MailchimpSource

    source = MailchimpSource(client)

    class MembersOnly:
        name = source.name

        def streams(self):
            return [s for s in source.streams() if s.name == "members"]

    return MembersOnly()


if __name__ == "__main__":
    main()
