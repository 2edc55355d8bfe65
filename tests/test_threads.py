"""edge.threads: the loop's executor is started whole when an edge starts.  A pool that
grew one thread at a time grew its process with it (each thread its own malloc arena and
zstd contexts), long after start-up: the 60 s soak saw an edge worker's threads go from
5 to 9 and its resident memory step up with them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from edge.service import Edge, EdgeSettings
from edge.threads import default_size, start_pool


def pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("minicdn-edge")}


async def test_every_thread_runs_from_the_start_and_a_burst_starts_none() -> None:
    before = pool_threads()
    pool = await start_pool(4)
    started = pool_threads() - before
    assert len(started) == 4
    assert await start_pool(4) is pool  # a second edge on this loop shares it
    loop = asyncio.get_running_loop()

    def work() -> threading.Thread:
        time.sleep(0.01)
        return threading.current_thread()

    ran = await asyncio.gather(*(loop.run_in_executor(None, work) for _ in range(40)))
    assert set(ran) <= started  # the loop's default executor is this pool, and it did not grow
    assert pool_threads() - before == started


async def test_an_edge_starts_its_loops_threads_with_itself(tmp_path: Path) -> None:
    before = pool_threads()
    node = Edge(EdgeSettings(upstreams=["http://127.0.0.1:9"], cache_dir=tmp_path / "cache"))
    try:
        await node.start()
        assert len(pool_threads() - before) == default_size()
    finally:
        await node.close()
