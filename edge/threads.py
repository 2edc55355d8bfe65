"""The threads an edge's event loop hands blocking work to (disk reads and writes, checks
of what upstreams send, file work): the loop's default executor, started whole when the
edge starts rather than one thread at a time as load first needs it.

A pool that grows lazily grows its process with it, long after start-up: every new thread
brings its own malloc arena and its own zstd contexts (common.codec keeps them per thread),
so a worker's resident memory stepped up each time a busier moment than any before
started one more thread, an hour into a run as well as a minute — growth a soak cannot
tell from a leak.  Started whole, the pool is the same size from the first request on,
and the first burst of misses does not wait for threads to be created.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

__all__ = ["default_size", "start_pool"]

START_TIMEOUT = 30.0  # seconds for every thread to start; a system that cannot is failing


def default_size() -> int:
    """asyncio's own default for its executor: min(32, CPUs + 4)."""
    return min(32, (os.cpu_count() or 1) + 4)


_started: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = (
    weakref.WeakKeyDictionary()
)


async def start_pool(size: int | None = None) -> ThreadPoolExecutor:
    """A pool of ``size`` threads, every one started, set as the running loop's default
    executor; the one already started on this loop if there is one (several edges in one
    process, as in tests, share it).  Each start-up task waits at a barrier until all have
    started, so none finds an idle thread and every submit starts a new one.  The loop
    shuts the pool down when it closes (``asyncio.run`` does)."""
    loop = asyncio.get_running_loop()
    if (pool := _started.get(loop)) is not None:
        return pool
    n = default_size() if size is None else size
    if n < 1:
        raise ValueError(f"a pool needs at least one thread, not {n}")
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="minicdn-edge")
    barrier = threading.Barrier(n)
    started = [asyncio.wrap_future(pool.submit(barrier.wait, START_TIMEOUT)) for _ in range(n)]
    await asyncio.gather(*started)
    loop.set_default_executor(pool)
    _started[loop] = pool
    return pool
