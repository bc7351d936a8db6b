"""How many threads scoring's native code (scikit-learn's OpenMP, NumPy's BLAS) may use.

All the cores when they are free; one when other programs already keep them busy. The gradient boosting's OpenMP
threads wait by spinning: on a busy machine two of them fight the other programs and each other. On the 2-core
development machine at load 6-9, scoring 100,000 customers took 296 s with the default two threads and 33.5 s with
one (bench/scoring_speed.py); the demo's scoring, 44 s against 2.6 s. The scores are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


def threads_for_this_machine() -> int | None:
    """1 when the last minute's load already fills the cores, else None (the libraries' own default: every core)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system (Windows): trust the libraries' default
        return None
    return 1 if load >= (os.cpu_count() or 1) - 0.5 else None


@contextmanager
def scoring_threads() -> Iterator[int | None]:
    """Score within the thread limit ``threads_for_this_machine`` decides when entered; yields that limit."""
    limit = threads_for_this_machine()
    if limit is None:
        yield None
        return
    with threadpool_limits(limits=limit):
        yield limit


def limit_this_process() -> int | None:
    """Apply ``threads_for_this_machine`` for the rest of this process (a CLI command); the limit set, if any. The
    libraries must be loaded already: threadpoolctl limits the thread pools it can see."""
    limit = threads_for_this_machine()
    if limit is not None:
        threadpool_limits(limits=limit)
    return limit
