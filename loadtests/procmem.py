"""Memory and descriptors of processes, from /proc.

``memfd_bytes``: memory a process holds outside its resident set, the sealed memfds the
edge's memory tier keeps large bodies in (edge.objects.Sealed).  They are mapped by no
one, so RSS and PSS do not count them; the edge soak test and the edge benchmark add them.

``usage``: one process's RSS, memfd bytes and open descriptors (sockets counted apart:
their number follows the connections clients hold, not leaks), what the soak samples
every second."""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from loadtests.proctree import descendants

__all__ = ["Usage", "memfd_bytes", "tcp_states", "usage"]

MEMFD_PREFIX = "/memfd:minicdn-body"


def memfd_bytes(pids: list[int]) -> int:
    """Bytes allocated to the edge's memfds open in ``pids`` (each counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD_PREFIX):
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
    return total


@dataclass(frozen=True)
class Usage:
    rss: int  # bytes resident (VmRSS): anon + file + shmem
    peak: int  # the most resident since the previous reset (VmHWM), or since it started
    anon: int  # of which anonymous (RssAnon): the heap, where a leak shows
    file: int  # of which file-backed (RssFile): code and mapped files, which the kernel can drop
    memfd: int  # bytes of the edge's sealed memfds it holds open
    fds: int  # open descriptors, sockets and memfds included
    sockets: int
    close_wait: int  # of which TCP connections the other end has closed and this one has not
    memfds: int  # descriptors of the edge's sealed memfds (each body in them is one)
    started: int  # start time in clock ticks since boot: with the PID, names the process


CLOSE_WAIT = "08"  # include/net/tcp_states.h


def tcp_states() -> dict[str, str]:
    """The state of every TCP socket of this network namespace, by inode (/proc/net/tcp*)."""
    states: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                states[fields[9]] = fields[3]
    return states


def usage(pid: int, states: dict[str, str] | None = None, reset_peak: bool = False) -> Usage | None:
    """``pid``'s usage now, or None when it is gone; ``states`` (tcp_states()) to count its
    connections in CLOSE_WAIT.  ``reset_peak``: start its high-water mark afresh (writing 5
    to /proc/PID/clear_refs resets only that), so that the next call's ``peak`` is the most
    it held in between: a burst shorter than the sampling period is still seen."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    kib = {
        k: int(v.split()[0]) * 1024
        for k, _, v in (line.partition(":") for line in status.splitlines())
        if v.endswith("kB")
    }
    if "VmRSS" not in kib:  # a zombie: its memory is gone, only its exit status is left
        return None
    sockets = memfds = close_wait = 0
    for fd in names:
        with suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            memfds += link.startswith(MEMFD_PREFIX)
            if link.startswith("socket:["):
                sockets += 1
                close_wait += (states or {}).get(link[8:-1]) == CLOSE_WAIT
    if reset_peak:
        with suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    started = int(stat.rpartition(")")[2].split()[19])  # field 22, counted after the name
    memfd = memfd_bytes([pid]) if memfds else 0
    return Usage(
        kib["VmRSS"],
        kib["VmHWM"],
        kib["RssAnon"],
        kib["RssFile"],
        memfd,
        len(names),
        sockets,
        close_wait,
        memfds,
        started,
    )


def rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its descendants, plus their sealed memfds (an edge's large bodies:
    memory no mapping shows)."""
    pids = [pid, *descendants(pid)]
    total = memfd_bytes(pids)
    for p in pids:
        with suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class PeakRss:
    """The most ``rss_bytes(pid)`` was while the ``with`` block ran, sampled in a thread
    every ``period`` seconds (``peak``, bytes)."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid = pid
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            if self._stop.wait(self.period):  # the sampling period, not a synchronisation
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
