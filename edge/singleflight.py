"""Single-flight: at most one fill per key in flight in this process; later callers join it.

Two rules beyond groupcache's: the fill runs in its own task, so a caller that goes away
(its client disconnected and aiohttp cancelled the handler) never cancels a fill that
others wait for; and a caller that joined and waits past ``wait_bound`` stops waiting
and runs ``alone`` itself (nginx's proxy_cache_lock_timeout, Varnish's waiting-list
timeout): one slow upstream answer must not hold every client for the full timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Flights"]

T = TypeVar("T")


class Flights(Generic[T]):
    def __init__(self, wait_bound: float | None = None) -> None:
        self.wait_bound = wait_bound
        self._flights: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def do(
        self,
        key: str,
        fill: Callable[[], Awaitable[T]],
        alone: Callable[[], Awaitable[T]] | None = None,
    ) -> tuple[T, bool]:
        """The value of the one fill of ``key``, and whether this caller joined another's."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(fill())
            self._flights[key] = task
            task.add_done_callback(lambda t: self._landed(key, t))
            return await asyncio.shield(task), False
        if alone is None or self.wait_bound is None:
            return await asyncio.shield(task), True
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.wait_bound), True
        except TimeoutError:
            return await alone(), True

    def _landed(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a fill whose callers all left must not warn

    async def close(self) -> None:
        """Cancel every fill in flight and wait for them (the owner is shutting down)."""
        tasks = list(self._flights.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
