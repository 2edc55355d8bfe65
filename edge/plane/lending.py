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
from typing import Any, Protocol

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

__all__ = ["Borrower", "Lent", "Returned"]


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
