"""The run lease: at most one sync at a time on a store, across threads, processes and hosts.

One row per lease name in the ``leases`` table. Taking it is a single upsert that only succeeds when the row is
absent, expired, or already ours, so it is atomic on both backends (SQLite runs it under ``BEGIN IMMEDIATE``,
PostgreSQL under the row lock of ``ON CONFLICT``). While the holder runs, a heartbeat thread renews it every third
of its lifetime; a holder killed with -9 stops renewing and its lease lapses ``ttl_s`` later, after which the
next run proceeds (at once on the same computer, where the holder's process can be seen to be gone). Times come from the local clock: hosts sharing a PostgreSQL store need synchronised clocks
(NTP), and ``ttl_s`` should exceed their skew.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from connectors.base import StoreError
from sync.schema import leases

if TYPE_CHECKING:
    from sync.store import Store

log = logging.getLogger("retention.lease")
UTC = timezone.utc


class LeaseHeld(StoreError):
    """Another live process holds the lease: this run does not start (exit code 4, like any unusable store)."""

    def __init__(self, name: str, holder: str, acquired_at: datetime, expires_at: datetime) -> None:
        super().__init__(
            f"another retention process is already running a {name} on this store ({holder}, since "
            f"{acquired_at:%Y-%m-%d %H:%M:%S} UTC, lease until {expires_at:%H:%M:%S} UTC unless it renews it) — "
            "wait for it to finish; if that process was killed, its lease expires by itself and the next run proceeds"
        )
        self.holder = holder
        self.expires_at = expires_at


class LeaseLost(StoreError):
    """The lease lapsed while we ran (renewals failed for longer than its lifetime) and someone else took it."""


def new_holder_id() -> str:
    """host:pid:random — which process holds a lease, for the message another process prints."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def acquire(store: Store, name: str, holder: str, ttl_s: float, *, now: datetime | None = None) -> datetime:
    """Take the lease for ``ttl_s`` seconds and return when it expires; LeaseHeld when another holder has it."""
    now = now or datetime.now(UTC)
    expires_at = now + timedelta(seconds=ttl_s)
    statement = (sqlite_insert if store.is_sqlite else postgresql_insert)(leases).values(
        name=name, holder=holder, acquired_at=now, expires_at=expires_at
    )
    statement = statement.on_conflict_do_update(
        index_elements=[leases.c.name],
        set_={"holder": statement.excluded.holder, "acquired_at": statement.excluded.acquired_at,
              "expires_at": statement.excluded.expires_at},
        where=(leases.c.expires_at <= now) | (leases.c.holder == holder),
    ).returning(leases.c.holder)
    with store.transaction() as conn:
        if conn.execute(statement).first() is not None:
            return expires_at
        current = conn.execute(select(leases).where(leases.c.name == name)).one()
        if _died_here(current.holder):
            # Killed on this very computer: no need to wait for its lease to lapse. Only that holder's row goes.
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == current.holder))
            log.info("the %s lease of %s, a process that no longer runs on this computer, was taken over", name, current.holder)
            if conn.execute(statement).first() is not None:
                return expires_at
            current = conn.execute(select(leases).where(leases.c.name == name)).one()
    raise LeaseHeld(name, current.holder, current.acquired_at, current.expires_at)


def _died_here(holder: str) -> bool:
    """True when ``holder`` (host:pid:random) names this host and a process id that is not running."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def renew(store: Store, name: str, holder: str, ttl_s: float) -> bool:
    """Push the expiry ``ttl_s`` from now; False if the lease is no longer ours."""
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    with store.transaction() as conn:
        renewed = conn.execute(
            update(leases).where(leases.c.name == name, leases.c.holder == holder).values(expires_at=expires_at)
        )
        return renewed.rowcount == 1


def release(store: Store, name: str, holder: str) -> None:
    with store.transaction() as conn:
        conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


class Lease:
    """A held lease and its heartbeat. ``check()`` between steps stops a run whose lease was lost."""

    def __init__(self, store: Store, name: str, holder: str, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.expires_at = acquire(store, name, holder, ttl_s)
        self._is_lost = False
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{name}", daemon=True)
        self._heartbeat.start()

    @property
    def is_held(self) -> bool:
        return not self._is_lost

    def check(self) -> None:
        if self._is_lost:
            raise LeaseLost(f"the {self.name} lease was lost while this run went on (the store could not be written for "
                            f"longer than {self.ttl_s:g} s); stopped so two runs never overlap — run it again")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not renew(self.store, self.name, self.holder, self.ttl_s):
                    self._is_lost = True
                    log.error("the %s lease of %s was taken by another process; this run will stop", self.name, self.holder)
                    return
            except StoreError as exc:  # locked by our own long write, say: the next beat tries again
                log.warning("could not renew the %s lease yet (%s)", self.name, exc)

    def stop(self) -> None:
        self._stop.set()
        self._heartbeat.join()
        try:
            release(self.store, self.name, self.holder)
        except StoreError as exc:  # it lapses by itself after ttl_s; never hide the run's own outcome for this
            log.warning("could not release the %s lease (%s); it expires by itself", self.name, exc)


@contextmanager
def hold_lease(store: Store, name: str, *, ttl_s: float, holder: str | None = None) -> Iterator[Lease]:
    """Hold the lease while the block runs: taken at entry (LeaseHeld if busy), renewed, released at exit."""
    lease = Lease(store, name, holder or new_holder_id(), ttl_s)
    try:
        yield lease
    finally:
        lease.stop()
