"""Scoring speed and memory: everyone rescored end to end, as `retention score` does, at growing sizes.

Target (issue 8): 1M customers (10 orders each) scored end to end in under 120 s on 2 cores, peak RSS under
4 GB, and cost growing linearly; plus the time to label 200k free-text answers (20k with the slower encoder method). Each size runs in a fresh child process so its peak RSS is its own. Orders are
generated with a fixed seed: each customer buys at their own pace from a random start and may stop.

Run: python bench/scoring_speed.py   or   python bench/scoring_speed.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from scoring.scores import ScoringParameters, score_customers
from scoring.sentence_encoder import is_encoder_installed
from scoring.sentiment import SentimentModel
from tables import print_table

TARGET_SECONDS_AT_1M = 120
TARGET_PEAK_RSS_MB = 4096
ORDERS_PER_CUSTOMER = 10
START = pd.Timestamp("2023-01-01", tz="UTC")
AS_OF = pd.Timestamp("2025-01-01", tz="UTC")


def generate_orders(customers: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 500, size=customers)  # day of the first order
    pace = rng.choice([7, 15, 30, 60, 120], size=customers)  # usual days between orders
    gaps = rng.exponential(pace[:, None], size=(customers, ORDERS_PER_CUSTOMER)).astype(int) + 1
    gaps[:, 0] = 0
    days = first[:, None] + np.cumsum(gaps, axis=1)
    at = START + pd.to_timedelta(days.ravel(), unit="D")
    return pd.DataFrame({
        "customer": np.repeat(np.arange(customers), ORDERS_PER_CUSTOMER),
        "at": at,
        "amount": np.round(rng.gamma(2.0, 20.0, size=customers * ORDERS_PER_CUSTOMER), 2),
    })


def run_child(customers: int) -> None:
    orders = generate_orders(customers)
    started = time.perf_counter()
    table, model = score_customers(orders, AS_OF, ScoringParameters(None, 0.4, 0.7, 7))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"customers": customers, "scored": len(table), "seconds": seconds, "rss_mb": peak_mb, "method": model.method_}))


SENTIMENT_TEXTS = 200_000
PHRASES = ("the tea was lovely", "delivery took two weeks", "not bad at all", "the box was crushed 😡", "great service 👍",
           "I would not order again", "ok", "More green teas please", "the kettle stopped working after a month", "")


ENCODER_TEXTS = 20_000  # the encoder runs ~100x slower than VADER: a tenth of the texts keeps the bench short


def sentiment_texts(count: int) -> list[str]:
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(PHRASES), size=(count, 2))
    return [f"{PHRASES[a]}, {PHRASES[b]}" for a, b in picks]


def run_sentiment_child(method: str) -> None:
    """Label texts with the default method (VADER), or with the encoder method learnt from rated answers."""
    if method == "encoder":
        rated = sentiment_texts(400)
        # Labels for speed only: answers with "not" or "crushed" count as negative; accuracy is scoring_quality.py's job.
        model = SentimentModel(method="encoder").fit(rated, [("not" in text or "crushed" in text) is False for text in rated])
        texts = sentiment_texts(ENCODER_TEXTS)
    else:
        model, texts = SentimentModel(), sentiment_texts(SENTIMENT_TEXTS)
    started = time.perf_counter()
    scores = model.score(texts)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"texts": len(scores), "seconds": seconds, "rss_mb": peak_mb, "method": model.describe()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="customer counts, comma-separated (default: %(default)s)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sentiment-child", choices=("default", "encoder"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_child(args.one)
        return
    if args.sentiment_child:
        run_sentiment_child(args.sentiment_child)
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"scoring {size:,} customers…", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = ("customers", "orders", "seconds", "µs per customer", "peak RSS MB", "target", "model")
    lines = [header]
    for row in rows:
        within = row["rss_mb"] < TARGET_PEAK_RSS_MB and (row["customers"] < 1_000_000 or row["seconds"] < TARGET_SECONDS_AT_1M)
        lines.append((f"{row['customers']:,}", f"{row['customers'] * ORDERS_PER_CUSTOMER:,}", f"{row['seconds']:.1f}",
                      f"{row['seconds'] / row['customers'] * 1e6:.0f}", f"{row['rss_mb']:.0f}",
                      f"1M < {TARGET_SECONDS_AT_1M} s, RSS < {TARGET_PEAK_RSS_MB} MB: {'PASS' if within else 'MISS'}", row["method"]))
    print_table(header, lines[1:])
    methods = ("default", "encoder") if is_encoder_installed() else ("default",)
    for method in methods:
        print(f"labelling texts with the {method} sentiment method…", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--sentiment-child", method], capture_output=True, text=True, check=True)
        sentiment = json.loads(done.stdout.strip().splitlines()[-1])
        rate = sentiment["texts"] / sentiment["seconds"]
        print(f"sentiment: {sentiment['texts']:,} texts in {sentiment['seconds']:.1f} s ({rate:,.0f} texts/s, so 200,000 in "
              f"{SENTIMENT_TEXTS / rate:,.0f} s), peak RSS {sentiment['rss_mb']:.0f} MB ({method} method: {sentiment['method']})")
    if len(methods) == 1:
        print("sentiment, encoder method: not measured (the encoder extra is not installed)")


if __name__ == "__main__":
    main()
