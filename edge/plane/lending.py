"""Lending a connection to aiohttp.

A request the fast path does not answer is *lent* to aiohttp: once every reply before it
has left, a RequestHandler made by the application's web.Server is connected to a
stand-in transport (``Lent``) that writes to the real one, and is fed exactly that
request: its head, then its body as it arrives, framed by the connection (edge.plane.body)
under the body pace.  When aiohttp has written the response (its access logger,
``Returned``, is told), the handler is disconnected and the connection comes back to the
data plane; the rest of a body aiohttp did not read is dropped as it arrives.  An upgrade
is lent too, and the connection closed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from edge.plane.body import BadBody, Body, Length
from edge.plane.clock import CLOCK

if TYPE_CHECKING:
    from edge.plane.plane import Plane

__all__ = ["MAX_SKIP", "Borrower", "Lending", "Lent", "Phase", "Returned"]

MAX_SKIP = 1 << 20  # body bytes an answered request may still owe before we close instead


class Phase(enum.Enum):
    SERVING = "serving"  # the data plane reads and answers
    HANDOFF = "handoff"  # a request is to be lent once the answers before it have left
    LENT = "lent"  # aiohttp answers the lent request; its body is fed to it as it comes


class Borrower(Protocol):
    """The connection, as a lent transport sees it."""

    closing: bool

    def returned(self, keep_alive: bool) -> None: ...


class Lent:
    """The transport an aiohttp handler sees while it answers one lent request: writes go
    to the real transport until its answer is complete (or the connection is taken back);
    reading is the data plane's."""

    def __init__(self, conn: Borrower, real: asyncio.Transport) -> None:
        self.conn = conn
        self.real = real
        self.attached = True
        self.wrote = False  # whether aiohttp has begun an answer (then none other can be sent)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.attached:
            self.wrote = True
            self.real.write(data)

    def writelines(self, chunks: Any) -> None:
        if self.attached:
            self.wrote = True
            self.real.writelines(chunks)

    def is_closing(self) -> bool:
        return not self.attached or self.real.is_closing()

    def close(self) -> None:
        if self.attached:
            self.conn.closing = True
            self.real.close()

    def abort(self) -> None:
        if self.attached:
            self.conn.closing = True
            self.real.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the connection's, not the handler's

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass  # the data plane feeds the handler only its request's bytes, bounded

    def resume_reading(self) -> None:
        pass

    def returned(self, keep_alive: bool) -> None:
        # Detached at once: nothing aiohttp might write after its one answer reaches the
        # client (it was given one request's bytes, so it has no other to answer).
        if self.attached:
            self.attached = False
            asyncio.get_running_loop().call_soon(self.conn.returned, keep_alive)


class Returned(AbstractAccessLogger):
    """aiohttp's access logger, told when a response has been written (RequestHandler
    calls it after write_eof, answered or failed): a lent connection comes back then.
    (The edge's JSON access log is the observe middleware's, not this.)"""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        transport = request.transport
        if isinstance(transport, Lent):
            transport.returned(bool(response.keep_alive))


class Lending:
    """The connection's side of lending (edge.plane.connection ``Connection`` is one):
    hand a request over once the answers before it have left, feed it its body, take the
    connection back when aiohttp has answered."""

    plane: Plane
    transport: asyncio.Transport | None
    phase: Phase
    closing: bool
    _buf: bytes
    _fed: int
    _eof: bool
    _queue: Any
    _write_paused: bool
    _head_since: float
    _active: float
    _parsed: Any
    _parser: Any
    _handoff_end: int
    _handoff_body: Body | None
    _last: bool
    _lent: tuple[Lent, asyncio.Protocol] | None
    _body: Body | None
    _body_since: float
    _skipped: int

    if TYPE_CHECKING:  # the connection's own, which it calls

        def _settle_reading(self) -> None: ...

        def _process(self, t0: float) -> None: ...

        def _refuse(self, status: int, code: str, message: str, method: bytes | None = None) -> None: ...

        def eof_received(self) -> bool: ...

        def _guard(self) -> contextlib.AbstractContextManager[None]: ...

    #
    # A request the fast path does not answer is *lent* to aiohttp: once every reply before
    # it has left, a RequestHandler made by the application's web.Server is connected to a
    # stand-in transport (_Lent) that writes to the real one, and is fed exactly that
    # request: its head, then its body as it arrives, framed here (Content-Length, or a
    # chunked body's end found by Chunked), under the body pace.  When aiohttp has written
    # the response (its access logger, Returned, is told), the handler is disconnected and
    # the connection comes back to the data plane; the rest of a body aiohttp did not read
    # is dropped as it arrives (at most MAX_SKIP bytes, under the same pace).  An upgrade is
    # lent too, and the connection closed after.

    def _start_handoff(self, head_end: int, body: Body | None, last: bool = False) -> None:
        """Lend the request whose head ends at ``head_end`` in the buffer, with ``body``
        (its framing) after it, once the replies before it have left."""
        self.phase = Phase.HANDOFF
        self._handoff_end = head_end
        self._handoff_body = body
        self._last = last
        self._head_since = 0.0
        self._settle_reading()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.phase is not Phase.SERVING:
            if self.phase is Phase.HANDOFF and not self._queue and not self._write_paused:
                self._lend(transport)
            return
        if self._queue:
            return
        if self.closing or (self._eof and self._fed == len(self._buf) and not self._has_complete_head()):
            transport.close()

    def _has_complete_head(self) -> bool:
        return b"\r\n\r\n" in self._buf

    def _lend(self, transport: asyncio.Transport) -> None:
        lent = Lent(cast(Borrower, self), transport)
        handler = self.plane.fallback()
        self._lent = (lent, handler)
        self.phase = Phase.LENT
        handler.connection_made(cast(asyncio.Transport, lent))
        head, rest = self._buf[: self._handoff_end], self._buf[self._handoff_end :]
        self._buf = b""
        body, self._handoff_body = self._handoff_body, None
        self._body = body if body is not None and not body.done else None
        self._body_since = CLOCK.now if self._body is not None else 0.0
        self._skipped = 0
        if self._last:
            self.closing = True  # nothing after an upgrade is read
        handler.data_received(head)
        if self._body is not None and rest:
            rest = self._take_body(rest)
        if rest and not self.closing:
            self._buf = rest
        self._settle_reading()
        if self._eof and self._lent is not None:
            self.eof_received()

    def _take_body(self, data: bytes) -> bytes:
        """Hand the lent request's body bytes at the start of ``data`` to its handler (or
        drop them, once aiohttp has answered without reading them); the rest of ``data``."""
        body = self._body
        assert body is not None
        try:
            n = body.take(data)
        except BadBody as exc:
            self._body_failed(400, "bad_request", f"malformed request body: {exc}")
            return b""
        if self._lent is not None:
            self._lent[1].data_received(data[:n])
        else:
            self._skipped += n
            if self._skipped > MAX_SKIP:
                self._close_now()
                return b""
        if body.done:
            self._body = None
            self._body_since = 0.0
            self._settle_reading()
        return data[n:]

    def returned(self, keep_alive: bool) -> None:
        """aiohttp has written the lent request's response: take the connection back."""
        with self._guard():
            if self._lent is None:
                return
            self._take_back(None)
            transport = self.transport
            if transport is None:
                return
            body = self._body
            if not keep_alive or self.closing or (isinstance(body, Length) and body.left > MAX_SKIP):
                self._close_now()
                return
            # Our parser saw the lent request's head, not its body: start it afresh.
            self._parsed.complete = False
            self._parser = self._parsed.parser = httptools.HttpRequestParser(self._parsed)
            self._fed = 0
            self._active = CLOCK.now
            self._process(time.perf_counter())
            self._settle_reading()

    def _take_back(self, exc: Exception | None) -> None:
        """Disconnect the lent request's handler: it ends its loop (it would wait for a
        next request) and leaves the web.Server's connections; its transport is detached,
        so whatever it still writes or closes is not ours."""
        if self._lent is None:
            return
        lent, handler = self._lent
        self._lent = None
        self.phase = Phase.SERVING
        lent.attached = False
        handler.connection_lost(exc)

    def _body_failed(self, status: int, code: str, message: str) -> None:
        """The lent request's body cannot be had (too slow, broken framing, cut short): the
        answer is ours when aiohttp has written none yet, then the connection closes."""
        lent = self._lent
        self._take_back(None)
        self._body = None
        self._body_since = 0.0
        if lent is None or lent[0].wrote:  # answered, or half-answered: nothing can follow
            self._close_now(abort=lent is not None)
        else:
            self._refuse(status, code, message)

    def _close_now(self, abort: bool = False) -> None:
        self.closing = True
        self._buf = b""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
