"""``--workers N``: N processes serving one port (SO_REUSEPORT), one disk tier, one set of
metrics.

- **Processes.** The command's process forks N workers after parsing its flags and
  supervises them: SIGTERM/SIGINT are passed on (each worker drains as one edge does); a
  worker that dies unasked is started again in its slot; the supervisor exits when every
  worker has, 0 when all did.  Each worker binds its own listening socket with
  SO_REUSEPORT, so the kernel spreads connections over them.
- **Memory.** Each worker has its own memory tier of ``--memory-size / N``, so the node's
  total stays the configured bound.
- **Disk.** One directory, shared.  Each key is *owned* by one worker
  (``crc32(key) % N``): only its owner indexes it, writes it and evicts it, with a limit of
  ``--disk-size / N``, so the node never holds more than ``--disk-size`` and no two
  workers evict each other's files by accident.  Every worker *reads* every key: a key it
  does not own is looked up on disk directly (the lookup-before-index path), so a file
  any worker wrote is a disk hit for all.  A worker that fills a key it does not own keeps
  it in memory only (its owner writes it when it fills it), so a key may be fetched from
  upstream once per worker at worst, never stored twice.
- **Admin calls.** Each worker also listens on a Unix socket in the supervisor's private
  directory.  A prefetch or purge that comes in on the port is passed on to every other
  worker there (edge.service): a purge drops the refs in every worker's memory, and a
  prefetch has each worker load the chunks it owns on disk, so the whole disk is warm.
- **Metrics.** Each worker's registry is its own; every second (and when it exits) a
  worker writes a snapshot of its samples to ``slot-<i>.json`` in a directory the
  supervisor made, and a scrape of any worker answers its own live samples plus every
  other worker's latest snapshot, summed (counters, histograms and gauges alike: each
  worker's gauges count its own share).  A scrape publishes its own worker's snapshot
  before reading the others', so no counter shows lower than an earlier scrape on another
  worker showed it.  A worker started again in a slot first renames
  the slot's last snapshot to ``retired-*``, whose counters and histograms keep counting,
  so the node's counters never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from common.fsutil import atomic_write

__all__ = ["Slot", "WorkerRegistry", "supervise"]

log = logging.getLogger("minicdn.edge.workers")

SNAPSHOT_EVERY = 1.0
RESTART_BACKOFF = 1.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Blocked from a fork until the worker's loop has its own SIGHUP handler (edge.server): one
# sent in between waits for it, instead of running the supervisor's handler in the child.
FORK_BLOCKED = STOP_SIGNALS | {signal.SIGHUP, signal.SIGALRM}


@dataclass(frozen=True)
class Slot:
    """Which worker this process is: ``index`` of ``count``, and the node's private
    directory (the supervisor's, mode 0700): metrics snapshots and control sockets."""

    index: int = 0
    count: int = 1
    metrics_dir: Path | None = None

    def owns(self, key: str) -> bool:
        return zlib.crc32(key.encode()) % self.count == self.index

    def control_socket(self, index: int | None = None) -> Path:
        """The Unix socket on which worker ``index`` (this one by default) takes the admin
        calls its siblings pass on."""
        assert self.metrics_dir is not None
        return self.metrics_dir / f"slot-{self.index if index is None else index}.sock"

    def siblings(self) -> dict[int, Path]:
        return {i: self.control_socket(i) for i in range(self.count) if i != self.index}

    def share(self, total: int) -> int:
        return total // self.count


# -- metrics ---------------------------------------------------------------------------------


Sample = tuple[str, tuple[tuple[str, str], ...]]


class WorkerRegistry(CollectorRegistry):
    """A registry whose ``collect`` first runs the ``before_collect`` hooks (the data
    plane's plain counters are added then) and, with several workers, adds the other
    workers' snapshots to this one's samples."""

    def __init__(self, slot: Slot = Slot()) -> None:
        super().__init__()
        self.slot = slot
        self.hooks: list[Callable[[], None]] = []

    def before_collect(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def own(self) -> list[Metric]:
        for hook in self.hooks:
            hook()
        return list(super().collect())

    def collect(self) -> Iterator[Metric]:
        own = self.own()
        if self.slot.metrics_dir is None:
            return iter(own)
        rows = _as_rows(own)
        # Publish what this scrape shows of us before reading the others: a later scrape on
        # another worker then reads our counts at least this fresh, so no counter a scrape
        # has shown ever goes down in the next (Prometheus would take that for a restart).
        self._publish(rows)
        return iter(merge([rows, *self._others()]))

    # -- snapshots between workers ----------------------------------------------------------

    def _path(self) -> Path:
        assert self.slot.metrics_dir is not None
        return self.slot.metrics_dir / f"slot-{self.slot.index}.json"

    def retire_previous(self) -> None:
        """A worker started again in a slot keeps its predecessor's counters counting."""
        path = self._path()
        if path.exists():
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(f"retired-{self.slot.index}-{time.time_ns()}.json"))

    def write_snapshot(self) -> None:
        if self.slot.metrics_dir is not None:
            self._publish(_as_rows(self.own()))

    def _publish(self, rows: list[Any]) -> None:
        """Replace our snapshot, on the loop's thread (so snapshots land in the order their
        counts were taken) and without fsync (the directory lives as long as the node)."""
        try:
            atomic_write(self._path(), json.dumps(rows).encode(), durable=False)
        except OSError as exc:  # a full $TMPDIR: the others see our older counts, no worse
            log.warning("cannot write the metrics snapshot %s: %s", self._path(), exc)

    def _others(self) -> Iterator[list[Any]]:
        assert self.slot.metrics_dir is not None
        mine = self._path().name
        for path in sorted(self.slot.metrics_dir.glob("*.json")):
            if path.name == mine:
                continue
            try:
                rows = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):
                continue  # a worker that has not written yet, or a snapshot being replaced
            if path.name.startswith("retired-"):
                rows = [r for r in rows if r[1] in ("counter", "histogram")]
            yield rows

    async def snapshots(self) -> None:
        """Write this worker's snapshot every second (owned by the server, cancelled at exit)."""
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY)
            self.write_snapshot()


def _as_rows(families: Iterable[Metric]) -> list[Any]:
    return [
        [m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]] for m in families
    ]


# Gauges that describe the node, not a worker's share: every worker sees the same ring.
NODE_GAUGES = frozenset({"minicdn_edge_ring_size", "minicdn_edge_peers"})


def merge(snapshots: Iterable[list[Any]]) -> list[Metric]:
    """Families by name, samples with equal names and labels summed (``_created`` is the
    earliest, not a sum; a node-wide gauge of NODE_GAUGES is the largest, not a sum)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[Sample, float]] = {}
    for rows in snapshots:
        for name, typ, doc, samples in rows:
            if name not in families:
                families[name] = Metric(name, doc, typ)
                values[name] = {}
            acc = values[name]
            for sname, labels, value in samples:
                key = (sname, tuple(sorted(labels.items())))
                if sname.endswith("_created"):
                    acc[key] = min(acc.get(key, value), value)
                elif name in NODE_GAUGES:
                    acc[key] = max(acc.get(key, value), value)
                else:
                    acc[key] = acc.get(key, 0.0) + value
    for name, family in families.items():
        for (sname, labels), value in values[name].items():
            family.add_sample(sname, dict(labels), value)
    return list(families.values())


# -- the supervisor --------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies, however it dies
    (a SIGKILL, the OOM killer): the worker then drains and exits as on a stop, instead of
    serving the port on, orphaned, with no one to pass it a signal.  The signal follows the
    *thread* that forked, here the supervisor's only one.  A supervisor already gone before
    the call is seen by the parent check.  Called with SIGTERM blocked, so the signal waits
    until the worker has its default handler back."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:  # not Linux: nothing watches the supervisor
        log.warning("worker %d: no prctl; it will not stop if the supervisor is killed", os.getpid())
    elif prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("worker %d: prctl(PR_SET_PDEATHSIG): %s", os.getpid(), os.strerror(ctypes.get_errno()))
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(
    count: int,
    work: Callable[[Slot], int],
    metrics_dir: Path,
    on_hup: Callable[[], object] | None = None,
    tick: tuple[float, Callable[[], object]] | None = None,
) -> int:
    """Fork ``count`` workers, each running ``work(slot)`` (its exit status); keep them
    running until SIGTERM/SIGINT, then pass the signal on and wait for all of them.
    ``on_hup``: run on SIGHUP before it is passed on to every worker (without it, SIGHUP
    keeps its default action).  ``tick``: (seconds, call) run in the supervisor every so
    many seconds (SIGALRM; workers do not inherit the timer)."""
    children: dict[int, Slot] = {}
    stopping = False
    failed = False
    supervisor = os.getpid()

    def spawn(slot: Slot) -> None:
        # Signals wait until the child has dropped the supervisor's handlers and the parent
        # has recorded the child: a SIGTERM in between would otherwise run on_signal in the
        # child (which then serves on, orphaned) or miss the child in the parent.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which passes it on
                    _die_with(supervisor)
                    for sig in (*STOP_SIGNALS, signal.SIGALRM):
                        signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS | {signal.SIGALRM})
                    code = work(slot)
                except BaseException:
                    log.exception("worker %d failed", slot.index)
                finally:
                    if os.getppid() != supervisor:  # orphaned: no one else will remove it
                        shutil.rmtree(metrics_dir, ignore_errors=True)
                    os._exit(code)
            children[pid] = slot
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
        log.info("worker %d: pid %d", slot.index, pid)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second signal: the operator wants out now
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_sighup(signum: int, _frame: object) -> None:
        if on_hup is not None:
            on_hup()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, on_signal)  # before the first fork: no worker left unsignalled
    signal.signal(signal.SIGINT, on_signal)
    if on_hup is not None:
        signal.signal(signal.SIGHUP, on_sighup)
    if tick is not None:
        signal.signal(signal.SIGALRM, lambda _signum, _frame: tick[1]())
        signal.setitimer(signal.ITIMER_REAL, tick[0], tick[0])
    for i in range(count):
        if not stopping:
            spawn(Slot(i, count, metrics_dir))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:  # (one stopped before it could install its handler exits by the signal)
            failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            continue
        log.error("worker %d (pid %d) exited with %d: starting it again", slot.index, pid, code)
        time.sleep(RESTART_BACKOFF)
        if not stopping:
            spawn(slot)
    if tick is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return 1 if failed else 0
