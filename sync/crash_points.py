"""Named crash points: the places in a sync where a crash is most likely to lose or repeat something.

The fault suite (tests/test_crash_points.py) runs a sync in a child process with ``RETENTION_CRASH_AT=POINT[:N]``;
the child ends with ``os._exit(137)`` (what a SIGKILL leaves: no cleanup, no flush, no rollback handler) the Nth time
it passes POINT (the first time without ``:N``). The points, in the order a run passes them:

- ``after-cursor``: a page of a source's records and the cursor after it have committed;
- ``after-read``: one tool's read has finished (each tool is read in its own thread, so N counts tools);
- ``after-score``: the scores are computed and kept, before anything is written;
- ``after-remote-2xx``: a write batch's intents are committed and the tool acknowledged the batch, but the ledger
  has not recorded the confirmation yet;
- ``mid-commit``: inside any store transaction, its statements executed, before its COMMIT.

It is a test hook, not a setting, so it is read straight from the environment (and not from settings.toml): when the
variable is unset a pass costs one dictionary look-up, at places passed once per page, batch or transaction.
"""

from __future__ import annotations

import os
import threading

CRASH_AT_VARIABLE = "RETENTION_CRASH_AT"
CRASH_EXIT_CODE = 137  # what a shell reports for a process SIGKILL ended
POINTS = ("after-cursor", "after-read", "after-score", "after-remote-2xx", "mid-commit")

_passes: dict[str, int] = {}
_lock = threading.Lock()  # tools are read in threads: each pass is counted once


def crash_point(name: str) -> None:
    """End the process at once if ``RETENTION_CRASH_AT`` names this point and this is its Nth pass."""
    wanted = os.environ.get(CRASH_AT_VARIABLE)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] == int(nth or 1):
            os._exit(CRASH_EXIT_CODE)
