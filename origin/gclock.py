"""The two leases that keep a gc sweep and publishes apart (why: origin/gc.py's docstring).

- ``publish_guard(store)``: each publish holds its own lease ``locks/publish/<owner>``
  (create-only, a unique name) from before its first chunk-existence check until its
  version record is written; it takes it, *then* looks at ``locks/gc``, and while a live
  sweep holds that it steps back (drops its lease) and waits, bounded.
- ``sweep_lock(store)``: a sweep takes ``locks/gc`` (create-only, or over an expired one),
  *then* waits, bounded, until no live publish lease is left; only then does it mark.

Each side writes its own lease before it reads the other's, so with the store's
read-after-write and list-after-write consistency at least one of the two sees the other
(the store-as-memory version of Dekker's algorithm): never both proceed.

``Held`` keeps a lease alive with a heartbeat thread, and its ``check()`` says whether it
was live all along: a process paused longer than the lease (SIGSTOP, a VM freeze, a clock
jump) finds it lapsed, and must abandon its work, since the other side may have acted on
the expiry in between.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator

from common.errors import StorageUnavailable
from origin import paths
from origin.leases import Lease, Leases
from origin.storage import Store

__all__ = [
    "LEASE_TTL",
    "PUBLISH_WAIT",
    "SWEEP_WAIT",
    "Held",
    "LeaseLost",
    "PublishesRunning",
    "SweepInProgress",
    "publish_guard",
    "sweep_lock",
]

LEASE_TTL = 60.0  # seconds a lease lives unless renewed (renewed every quarter of it)
PUBLISH_WAIT = 30.0  # a publish waits this long for a sweep to end, then fails (503)
SWEEP_WAIT = 120.0  # a sweep waits this long for running publishes to end, then gives up
POLL = (0.05, 1.0)  # first and longest pause between two looks at the other side's lease


class SweepInProgress(StorageUnavailable):
    """A gc sweep holds ``locks/gc``: a publish waited for it and gave up (503, Retry-After),
    or a second sweep was refused."""

    code = "gc_in_progress"


class PublishesRunning(StorageUnavailable):
    """A sweep waited for publishes in progress to end, and gave up: run gc again later."""

    code = "publishes_running"


class LeaseLost(StorageUnavailable):
    """A lease lapsed while its holder worked (it was paused longer than the lease): the
    other side may have acted meanwhile, so the work is abandoned; retrying is safe."""

    code = "lease_lost"


class Held:
    """A lease of ours, renewed every ``ttl / 4`` by a daemon thread until ``close``."""

    def __init__(self, leases: Leases, lease: Lease, ttl: float) -> None:
        self.leases = leases
        self.ttl = ttl
        self._lease = lease
        self._lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._run, name=f"lease {lease.key}", daemon=True)
        self._beat.start()

    @property
    def lease(self) -> Lease:
        with self._mutex:
            return self._lease

    def check(self) -> None:
        """LeaseLost unless the lease has been live all along and has half its life left
        (margin for the step about to be taken and for clock skew between hosts)."""
        with self._mutex:
            lost = self._lost
            if lost is None and self.leases.clock() >= self._lease.expires - self.ttl / 2:
                lost = self._lost = f"{self._lease.key} was about to lapse (a pause longer than its renewal)"
        if lost is not None:
            raise LeaseLost(f"lease lost: {lost}; nothing more was done, try again")

    def renew(self) -> None:
        with self._mutex:
            if self._lost is not None:
                return
            old = self._lease
            if self.leases.clock() >= old.expires - self.ttl / 4:
                self._lost = f"{old.key} lapsed: renewed too late"
                return
            new = self.leases.renew(old, self.ttl)
            if new is None:
                self._lost = f"{old.key} was taken by another holder"
            elif self.leases.clock() >= old.expires:  # the renewal itself outlived the lease
                self._lost = f"{old.key} lapsed while being renewed"
            else:
                self._lease = new

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with contextlib.suppress(StorageUnavailable):  # the store is down: check() will notice
                self.renew()

    def close(self) -> None:
        self._stop.set()
        self._beat.join()
        with contextlib.suppress(StorageUnavailable):  # it expires on its own
            self.leases.release(self.lease)


def _pause(attempt: int, deadline: float) -> None:
    low, high = POLL
    time.sleep(max(0.0, min(high, low * 2**attempt, deadline - time.monotonic())))


@contextlib.contextmanager
def publish_guard(
    store: Store,
    *,
    ttl: float | None = None,
    wait: float | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Held]:
    """Hold a publish lease for the block; SweepInProgress when a sweep holds ``locks/gc``
    for longer than ``wait`` seconds.  Call ``check()`` on it just before writing the
    version record."""
    ttl = LEASE_TTL if ttl is None else ttl
    deadline = time.monotonic() + (PUBLISH_WAIT if wait is None else wait)
    leases = Leases(store, clock=clock)
    key = paths.publish_lock_key(f"{leases.owner}:{secrets.token_hex(4)}")
    attempt = 0
    while True:
        lease = leases.take(key, ttl)
        if lease is None:  # cannot happen: the name is ours alone
            raise StorageUnavailable(f"{key}: could not create a publish lease")
        try:
            sweep = leases.read(paths.GC_LOCK)  # read after our lease is written: see the docstring
        except StorageUnavailable:
            with contextlib.suppress(StorageUnavailable):
                leases.release(lease)
            raise
        if sweep is None or not sweep.live(clock()):
            break
        leases.release(lease)  # step back so the sweep can start
        if time.monotonic() >= deadline:
            raise SweepInProgress(
                f"a gc sweep ({sweep.owner}) holds {paths.GC_LOCK}; publish again in a minute"
            )
        _pause(attempt, deadline)
        attempt += 1
    held = Held(leases, lease, ttl)
    try:
        yield held
    finally:
        held.close()


@contextlib.contextmanager
def sweep_lock(
    store: Store,
    *,
    ttl: float | None = None,
    wait: float | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Held]:
    """Hold ``locks/gc`` for the block, once no live publish lease is left.
    SweepInProgress when another sweep holds it; PublishesRunning when publishes still
    run after ``wait`` seconds (the lock is released then)."""
    ttl = LEASE_TTL if ttl is None else ttl
    wait = SWEEP_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    leases = Leases(store, clock=clock)
    lease = leases.take(paths.GC_LOCK, ttl)
    if lease is None:
        other = leases.read(paths.GC_LOCK)
        owner = other.owner if other is not None else "?"
        raise SweepInProgress(f"another gc sweep ({owner}) holds {paths.GC_LOCK}")
    held = Held(leases, lease, ttl)
    try:
        for attempt in itertools.count():
            running = leases.live(paths.PUBLISH_LOCKS)  # listed after our lock is written
            if not running:
                break
            if time.monotonic() >= deadline:
                raise PublishesRunning(
                    f"{len(running)} publish(es) still running after {wait:.0f}s "
                    f"(e.g. {running[0].owner}); run gc again later"
                )
            _pause(attempt, deadline)
        held.check()
        yield held
    finally:
        held.close()
