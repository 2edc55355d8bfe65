"""The connection's timers, draining and last resort (edge.plane.connection ``Connection``
is a ``Timers``): run by the plane's sweeper on its coarse clock, no timer per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edge.plane.answers import Reply, error
from edge.plane.body import Body
from edge.plane.failures import FAILURES
from edge.plane.lending import Lent, Phase

if TYPE_CHECKING:
    from edge.plane.head import Request
    from edge.plane.plane import Plane

__all__ = ["Timers"]


class Timers:
    plane: Plane
    transport: asyncio.Transport | None
    phase: Phase
    closing: bool
    _buf: bytes
    _queue: Any
    _write_paused: bool
    _paused_since: float
    _head_since: float
    _active: float
    _lent: tuple[Lent, asyncio.Protocol] | None
    _body: Body | None
    _body_since: float

    if TYPE_CHECKING:  # the connection's own, which it calls

        def _refuse(self, status: int, code: str, message: str, method: bytes | None = None) -> None: ...

        def _body_failed(self, status: int, code: str, message: str) -> None: ...

        def _drop_queue(self) -> None: ...

        def _take_back(self, exc: Exception | None) -> None: ...

        def _close_now(self, abort: bool = False) -> None: ...

        def _send(self, req: Request | None, reply: Reply) -> None: ...

    def check(self, now: float) -> None:
        with self._guard():
            limits = self.plane.limits
            body = self._body
            if (
                body is not None
                and self._body_since
                and limits.body.late(now - self._body_since, body.received)
            ):
                self._body_failed(408, "timeout", "request body not received in time")
            elif self._head_since and now - self._head_since > limits.header_timeout:
                if self._queue:
                    self.abort()
                else:
                    self._refuse(408, "timeout", "request head not received in time")
            elif self._write_paused and now - self._paused_since > limits.send_timeout:
                self.abort()
            elif (
                self.transport is not None
                and self._lent is None  # aiohttp answers: its handler takes the time it needs
                and not self._buf
                and not self._queue
                and not self._write_paused
                and body is None
                and now - self._active > limits.keepalive_timeout
                and not self.transport.get_write_buffer_size()  # an answer still leaving is not idle
            ):
                self.transport.close()

    def drain(self) -> None:
        if self.transport is None:
            return
        self.closing = True
        if not self._queue and self.phase is Phase.SERVING:  # a lent request closes once answered
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # the last resort: see _failed
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """An exception escaped one of this connection's callbacks: a bug (every request
        is meant to be answered without one).  Answer 500 after what has been sent, close,
        and log one line, at most every few seconds, instead of a traceback per request."""
        FAILURES.report(exc)
        self._drop_queue()
        with contextlib.suppress(Exception):  # the handler may be what failed
            self._take_back(None)
        self._lent = None
        self.phase = Phase.SERVING
        self._body = None
        self._body_since = 0.0
        if self.transport is None or self.closing:
            self._close_now(abort=True)
            return
        self.closing = True
        self._buf = b""
        self._send(None, error("other", 500, "internal", "internal error"))
