"""The running loop, without asking for it on every call.

CPython 3.11's ``asyncio.get_running_loop()`` — and with it ``asyncio.ensure_future`` and
``asyncio.create_task`` of a coroutine, ``asyncio.timeout``, a ``Future()`` made without a
loop — makes a ``getpid()`` system call each time (a check that the loop was not inherited
through a fork; 3.12 dropped it).  The miss path asked several times per miss: 9% of the
loop thread's time in py-spy (issue 15).  An object on a hot path keeps the loop it first
ran on (``Bound.loop``) and asks again only once that loop is closed (a test's next loop,
an edge's next ``asyncio.run``).  Objects of one edge never run on two loops at once.
"""

from __future__ import annotations

import asyncio

__all__ = ["Bound"]


class Bound:
    """A mixin: ``self.loop()``, the running loop, asked for once."""

    _bound_loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._bound_loop
        if loop is None or loop.is_closed():
            loop = self._bound_loop = asyncio.get_running_loop()
        return loop
