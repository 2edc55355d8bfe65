"""Processes as /proc shows them: a process's descendants, the processes that carry a
marker in their environment, and waiting for processes to be gone.

A process that outlives its parent is re-parented to init and is no longer anyone's
descendant, so finding leftovers by ancestry misses exactly the ones that matter.  A
variable set in the environment of the first process is inherited by every child,
grandchild, spawn worker and resource tracker it starts, and stays readable in
``/proc/PID/environ`` whoever the parent is now: that is how the test suite and the soak
find what they left behind.  (A process's own changes to ``os.environ`` do not show in its
``/proc/PID/environ``, which holds the environment it was started with.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["alive", "cmdline", "descendants", "kill", "marked", "wait_gone"]


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie has exited; it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children of any of its threads, recursively)."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def marked(name: str, value: str, exclude: Iterable[int] = ()) -> list[int]:
    """Live processes started with ``name=value`` in their environment."""
    needle = f"{name}={value}".encode()
    skip = set(exclude)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0") and alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Poll until every one of ``pids`` is gone; those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def kill(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` (by PID; one already gone is no error)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
