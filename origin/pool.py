"""The origin's process pool and upload files: small pieces origin/service.py uses."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
from pathlib import Path

__all__ = ["die_with_parent", "new_upload_path"]


def die_with_parent() -> None:
    """Pool initializer: exit as soon as the origin process is gone, however it went.

    A worker otherwise outlives a SIGKILLed origin forever: it waits on the pool's call
    queue, whose write end every sibling holds too, so no EOF ever comes (and the resource
    tracker, which exits on EOF once every holder of its pipe is gone, stays with it).
    ``parent_process().join()`` waits on the pipe the origin spawned the worker through:
    only the origin holds its write end, so it reads EOF when the origin dies.  A thread,
    not PR_SET_PDEATHSIG: that fires when the *thread* that started the worker ends, and
    the pool starts workers lazily from whichever executor thread submits."""
    parent = multiprocessing.parent_process()
    if parent is None:  # run in the origin's own process (a test): nothing to watch
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="minicdn-die-with-parent", daemon=True).start()


def new_upload_path(tmp_dir: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    os.close(fd)
    return Path(name)
