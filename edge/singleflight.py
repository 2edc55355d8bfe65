"""Single-flight: at most one fill per key in flight in this process; later callers join it.

Rules beyond groupcache's:

- The fill runs in its own task, so a caller that goes away (its client disconnected and
  aiohttp cancelled the handler) never cancels a fill that others wait for.
- A caller that joined and waits past ``wait_bound`` stops waiting on that fill alone
  (nginx's proxy_cache_lock_timeout, Varnish's waiting-list timeout): one stuck upstream
  answer must not hold every client for the full upstream timeout.  It then waits on
  whichever lands first with an answer: the first fill, or a *second* one that ``alone``
  starts — one per key, shared by every caller that timed out, never one each (under
  load, every waiter of a slow fill times out together: one extra fetch each would
  multiply the origin's work exactly when it is slowest).
- A flight may begin with a ``look`` (edge.fill: memory again, the disk) that runs in the
  caller that starts it, not in a task: a disk hit costs a future, not a task and the
  loop turns that waking through one take (measured: about 20-30 us of a 150-250 us disk
  hit).  Only when the look finds nothing does ``fill`` start, in its own task.  If that
  caller leaves during its look, the look and the fill go on in a task for the others.
- A plain miss needs no coroutine at all: edge.fill ``open``s its flight and settles it
  from the upstream answer's callback, ``hand``ing it to a task only when it must wait
  again (another upstream, a worker thread).
- Many keys can be claimed at once (``claim``) by one fill that settles each key's
  flight itself, as it goes (a batch request): a caller of ``do`` for one of those keys
  joins it like any flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

from edge.loops import Bound

__all__ = ["Flights", "Unsettled"]

T = TypeVar("T")


class Unsettled(Exception):
    """A claimed flight its fill ended without settling (a bug in the fill, or it failed
    before it reached that key): the callers of that key see the fill's error instead."""


class Flights(Bound, Generic[T]):
    def __init__(self, wait_bound: float | None = None) -> None:
        self.wait_bound = wait_bound
        self._flights: dict[str, asyncio.Future[T]] = {}
        self._seconds: dict[str, asyncio.Future[T]] = {}  # second fills of timed-out waiters
        self._tasks: set[asyncio.Future[Any]] = set()  # claims' fills, fills a look handed on

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    async def do(
        self,
        key: str,
        fill: Callable[[], Coroutine[Any, Any, T]],
        alone: Callable[[], Coroutine[Any, Any, T]] | None = None,
        look: Callable[[], Awaitable[T | None]] | None = None,
    ) -> tuple[T, bool]:
        """The value of the one fill of ``key``, and whether this caller joined another's.
        With ``look``, the flight is ``look``, then ``fill`` only if it found None."""
        first = self._flights.get(key)
        if first is None and look is not None:
            return await self._lead(key, look, fill), False
        if first is None:
            first = self._start(self._flights, key, fill)
            return await asyncio.shield(first), False
        if alone is None or self.wait_bound is None:
            return await asyncio.shield(first), True
        try:
            return await asyncio.wait_for(asyncio.shield(first), self.wait_bound), True
        except TimeoutError:
            pass
        second = self._seconds.get(key) or self._start(self._seconds, key, alone)
        return await _first_answer(first, second), True

    async def _lead(
        self, key: str, look: Callable[[], Awaitable[T | None]], fill: Callable[[], Coroutine[Any, Any, T]]
    ) -> T:
        """Start the flight of ``key`` with ``look`` run here, then ``fill`` in a task."""
        flight: asyncio.Future[T] = self.loop().create_future()
        self._track(self._flights, key, flight)
        try:
            found = await look()
        except asyncio.CancelledError:
            # This caller left (its client went away): those who joined still get an answer.
            self._settle(flight, self._run(lambda: _look_then_fill(look, fill)))
            raise
        except BaseException as exc:
            self._land(key, flight)
            if not flight.done():
                flight.set_exception(exc)
            raise
        if found is not None:
            self._land(key, flight)
            if not flight.done():
                flight.set_result(found)
            return found
        self._settle(flight, self._run(fill))
        return await asyncio.shield(flight)

    def open(self, key: str) -> asyncio.Future[T]:
        """A flight of ``key`` (not in flight) that its caller settles itself, driven by
        callbacks (edge.fill's plain miss); other callers of ``key`` join it."""
        assert key not in self._flights
        flight: asyncio.Future[T] = self.loop().create_future()
        self._track(self._flights, key, flight)
        return flight

    def hand(self, flight: asyncio.Future[T], fill: Callable[[], Coroutine[Any, Any, T]]) -> None:
        """``flight`` (from ``open``) settled by ``fill``, run in a task of its own."""
        self._settle(flight, self._run(fill))

    def _land(self, key: str, flight: asyncio.Future[T]) -> None:
        """Out of the table now, not a loop turn later (when its callbacks run): this
        caller may ask for ``key`` again at once, and must find no flight."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _run(self, fill: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Future[T]:
        task = self.loop().create_task(fill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _settle(flight: asyncio.Future[T], task: asyncio.Future[T]) -> None:
        """``flight`` gets ``task``'s outcome (unless it was settled first: closed)."""

        def done(t: asyncio.Future[T]) -> None:
            if t.cancelled():
                flight.cancel()
            elif (error := t.exception()) is not None:
                if not flight.done():
                    flight.set_exception(error)
            elif not flight.done():
                flight.set_result(t.result())

        task.add_done_callback(done)

    def claim(
        self, keys: Iterable[str], fill: Callable[[dict[str, asyncio.Future[T]]], Coroutine[Any, Any, None]]
    ) -> dict[str, asyncio.Future[T]]:
        """Start one flight for each of ``keys`` not in flight yet, all settled by one run of
        ``fill`` (given them: it sets each one's result or exception) in its own task.
        Returns the flights claimed; keys already in flight are left to their fill."""
        loop = self.loop()
        claimed: dict[str, asyncio.Future[T]] = {}
        for key in keys:
            if key not in self._flights and key not in claimed:
                claimed[key] = future = loop.create_future()
                self._track(self._flights, key, future)
        if claimed:
            task = loop.create_task(fill(dict(claimed)))
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._claim_done(t, claimed))
        return claimed

    def _start(
        self, table: dict[str, asyncio.Future[T]], key: str, fill: Callable[[], Coroutine[Any, Any, T]]
    ) -> asyncio.Future[T]:
        task = self.loop().create_task(fill())
        self._track(table, key, task)
        return task

    def _track(self, table: dict[str, asyncio.Future[T]], key: str, future: asyncio.Future[T]) -> None:
        table[key] = future

        def landed(f: asyncio.Future[T]) -> None:
            if table.get(key) is f:
                del table[key]
            if not f.cancelled():
                f.exception()  # retrieved here: a fill whose callers all left must not warn

        future.add_done_callback(landed)

    def _claim_done(self, task: asyncio.Task[None], claimed: dict[str, asyncio.Future[T]]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        for future in claimed.values():
            if future.done():
                continue
            if task.cancelled():
                future.cancel()
            else:
                future.set_exception(
                    error or Unsettled("the fill that claimed this key gave no answer for it")
                )

    async def close(self) -> None:
        """Cancel every fill in flight and wait for them (the owner is shutting down)."""
        pending: list[asyncio.Future[Any]] = [*self._tasks, *self._flights.values(), *self._seconds.values()]
        for f in pending:
            f.cancel()
        for f in pending:
            with contextlib.suppress(BaseException):
                await f


async def _look_then_fill(look: Callable[[], Awaitable[T | None]], fill: Callable[[], Awaitable[T]]) -> T:
    found = await look()
    return found if found is not None else await fill()


async def _first_answer(first: asyncio.Future[T], second: asyncio.Future[T]) -> T:
    """The result of whichever of two fills succeeds first; when both fail, the first's
    error (the one every other caller of the key got)."""
    pending: set[asyncio.Future[T]] = {first, second}
    while pending:
        # asyncio.wait never cancels what it waits on: a caller that leaves cancels neither.
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for f in done:
            if not f.cancelled() and f.exception() is None:
                return f.result()
    return first.result()  # raises the first fill's error (or CancelledError)
