"""The origin's background retention (``--gc-every``): ``origin.gc.collect`` on its own store
every interval (jittered ±10 %, the first run one interval after start), in a worker
thread.  Any number of replicas may run it: a sweep holds ``locks/gc``, so a replica that
finds another sweeping skips its round (``gc_in_progress``), as it does while publishes run
for longer than the sweep waits (``publishes_running``).  Each round is counted in
``minicdn_origin_gc_runs_total{outcome}`` and what it deleted in
``minicdn_origin_gc_deleted_bytes_total``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random

from origin.gc import collect
from origin.gclock import LeaseLost, PublishesRunning, SweepInProgress
from origin.gcmark import Policy
from origin.metrics import OriginMetrics
from origin.storage import Store

__all__ = ["gc_forever"]

log = logging.getLogger("minicdn.origin.gc")


async def gc_forever(store: Store, policy: Policy, every: float, metrics: OriginMetrics) -> None:
    """Sweep ``store`` every ``every`` seconds until cancelled (owned by the app's cleanup_ctx)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every * random.uniform(0.9, 1.1))
        try:
            report = await loop.run_in_executor(
                None, functools.partial(collect, store, policy, dry_run=False)
            )
        except (SweepInProgress, PublishesRunning, LeaseLost) as exc:
            metrics.gc_runs.labels("busy").inc()
            log.info("gc round skipped: %s", exc)
            continue
        except Exception:  # keep the loop alive: the next round tries again
            metrics.gc_runs.labels("error").inc()
            log.exception("gc round failed")
            continue
        metrics.gc_runs.labels("ok").inc()
        metrics.gc_deleted_bytes.inc(report.total.bytes)
