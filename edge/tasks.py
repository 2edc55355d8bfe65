"""An owner for background tasks: every task it starts is tracked, and ``close`` lets them
finish within a bound, then cancels and awaits the rest (STYLE.md: no orphan tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskOwner"]

log = logging.getLogger("minicdn.edge.tasks")


class TaskOwner:
    def __init__(self, name: str, limit: int = 1024) -> None:
        self.name = name
        self.limit = limit
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Start ``coro`` in the background; False (and the coroutine closed) when
        ``limit`` tasks are already running — background work is shed, never queued."""
        if len(self._tasks) >= self.limit:
            coro.close()
            return False
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task failed", self.name, exc_info=task.exception())

    async def close(self, grace: float = 0.0) -> None:
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        tasks = set(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
