"""A lean HTTP/1.1 client for the miss path: keep-alive connections per upstream, each an
asyncio protocol whose responses llhttp parses (httptools).  aiohttp's client cost
130-160 us of CPU per GET (issue 15: yarl URLs, a ClientResponse, a StreamReader, timer
objects, header multidicts built and copied); this one costs a fraction of that.

Strict, because what it reads comes from the network:

- a body is refused past ``max_body`` bytes (TooLarge, the connection dropped);
- a response must say where it ends (``Content-Length`` or chunked; 1xx/204/304 have no
  body): one that runs until the connection closes is refused (ProtocolError);
- the whole exchange (connecting included) is bounded by ``timeout`` (TimeoutError);
- redirects are answers like any other (never followed: edge.upstream says why);
- a connection goes back to its pool only after a complete response that allows keep-alive;
  anything else closes it.  A GET that finds a kept-alive connection closed under it
  before a byte of the answer came is sent once more on a new connection (the server
  may close an idle connection at any moment: RFC 9112 §9.3.1).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from common.errors import TooLarge
from edge.loops import Bound

__all__ = ["Pool", "Pools", "ProtocolError", "Response"]

USER_AGENT = "minicdn-edge"
NO_BODY = (204, 304)


class ProtocolError(ConnectionError):
    """The server broke HTTP/1.1 (or closed the connection mid-answer)."""


class Stale(ProtocolError):
    """A kept-alive connection the server had closed before any byte of the answer: the
    request may be sent once more, on a new connection."""


class Response:
    """An answer: its status, body and header fields, raw as they came (the multidict is
    made only if asked for: a miss needs one field, ``field``)."""

    __slots__ = ("_headers", "body", "raw", "status")

    def __init__(self, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.raw = raw
        self.body = body
        self._headers: CIMultiDict[str] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw)
        return self._headers

    def field(self, name: bytes) -> str | None:
        """The first field named ``name`` (lower case), else None."""
        for k, v in self.raw:
            if k.lower() == name:
                return v.decode("latin-1")
        return None


class _Conn(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # asked once (edge.loops)
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reused = False
        self.received = 0  # bytes of the current answer so far
        self.max_body = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: bytes | None = None  # Content-Length, as sent
        self._chunked = False
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False
        self.keep = False  # may carry another request once this answer is complete

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            # A callback's own error (TooLarge, ProtocolError) comes back wrapped: unwrap it.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, TooLarge | ProtocolError) else ProtocolError(str(exc)))

    def eof_received(self) -> bool:
        self._fail(self._lost("the server closed the connection mid-answer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(self._lost(f"connection lost: {exc}" if exc else "the server closed the connection"))

    def _lost(self, message: str) -> ProtocolError:
        return Stale(message) if self.reused and self.received == 0 else ProtocolError(message)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None:
            raise ProtocolError("the server sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        low = name.lower()
        if low == b"content-length":
            if self._length is None:
                self._length = value
        elif low == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (RFC 9110 §15.2): the real one follows
            self._headers, self._length, self._chunked = [], None, False
            return
        length = self._length
        self._framed = length is not None or self._chunked
        if not (self._framed or status in NO_BODY):
            raise ProtocolError(f"an answer ({status}) without Content-Length or chunked framing")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise TooLarge(f"the body ({length.decode()} bytes) is larger than {self.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            raise TooLarge(f"the body is larger than {self.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return
        self.keep = self.parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, self._headers, body))

    # --

    def send(self, request: bytes, max_body: int) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        assert self.loop is not None
        self.waiter = self.loop.create_future()
        self.received, self.max_body, self.keep = 0, max_body, False
        self._headers, self._body, self._size = [], [], 0
        self._length, self._chunked = None, False
        self.transport.write(request)
        return self.waiter

    def _fail(self, exc: BaseException) -> None:
        self.keep = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def expire(self) -> None:
        """The answer's time is up (a timer of ``Pool.get``)."""
        self._fail(TimeoutError("no complete answer in time"))

    def close(self) -> None:
        self.keep = False
        if self.transport is not None:
            self.transport.close()


class Pool(Bound):
    """Keep-alive connections to one ``scheme://host:port``, at most ``limit`` open; a
    request beyond that waits for one to come back."""

    def __init__(self, base: str, limit: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # https: certificates and the host name verified (by ``ssl_context``: a private CA's).
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        default = 443 if parts.scheme == "https" else 80
        self.authority = parts.hostname if self.port == default else f"{parts.hostname}:{self.port}"
        if ":" in parts.hostname:  # an IPv6 literal
            self.authority = f"[{parts.hostname}]" + ("" if self.port == default else f":{self.port}")
        self.limit = limit
        self.open = 0
        self._idle: collections.deque[_Conn] = collections.deque()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._all: set[_Conn] = set()
        self._fields: dict[tuple[tuple[str, str], ...], str] = {}  # see ``request``
        self._woken = 0  # waiters handed a connection that have not taken it yet

    def request(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The bytes of ``GET path`` with ``headers`` (the fields after the request line are
        made once per set of headers: a miss sends the same ones every time)."""
        key = tuple(headers.items())
        fields = self._fields.get(key)
        if fields is None:
            lines = [f"Host: {self.authority}", f"User-Agent: {USER_AGENT}"]
            lines += [f"{k}: {v}" for k, v in key]
            if any("\r" in line or "\n" in line for line in lines):  # each line on its own:
                raise ValueError("a header with a line break")  # a whole CRLF is one too
            fields = "\r\n".join(lines) + "\r\n\r\n"
            if len(self._fields) >= 64:  # bounded: headers may carry per-request values
                self._fields.clear()
            self._fields[key] = fields
        if "\n" in path or "\r" in path:
            raise ValueError("a request line with a line break")
        return f"GET {path} HTTP/1.1\r\n{fields}".encode("latin-1")

    def begin(self, request: bytes, max_body: int, timeout: float) -> asyncio.Future[Response] | None:
        """``request`` (from ``request``) sent on an idle kept-alive connection: the future
        of its answer, failed as ``get`` fails (Stale: the server had closed that connection,
        the request may go once more, through ``get``); None when no connection is idle.
        For the miss path's callbacks (edge.fill): no coroutine, no task.  A request of
        ``get`` waiting for a connection (the pool is at its limit) has it first: a woken
        waiter takes the connection a loop turn later, and must find it still idle."""
        waiting = self._waiting
        while waiting and waiting[0].done():
            waiting.popleft()
        conn = None if waiting or self._woken else self._take_idle()
        if conn is None:
            return None
        loop = self.loop()
        timer = loop.call_at(loop.time() + timeout, conn.expire)
        try:
            waiter = conn.send(request, max_body)
        except BaseException:
            timer.cancel()
            conn.close()
            self._release(conn)
            raise
        waiter.add_done_callback(functools.partial(self._answered, conn, timer))
        return waiter

    def _answered(self, conn: _Conn, timer: asyncio.TimerHandle, waiter: asyncio.Future[Response]) -> None:
        timer.cancel()
        if waiter.cancelled():
            conn.close()
        self._release(conn)

    async def get(self, path: str, headers: Mapping[str, str], max_body: int, timeout: float) -> Response:
        """The answer to ``GET path``: TimeoutError past ``timeout``, TooLarge past
        ``max_body``, OSError (ProtocolError among them) for anything else gone wrong."""
        request = self.request(path, headers)
        loop = self.loop()
        deadline = loop.time() + timeout
        conn = self._take_idle()
        if conn is not None:
            # The common case: nothing to connect or wait for, so the bound is one timer on
            # the answer (asyncio.timeout cost about 5% of a miss's loop time, issue 15).
            timer = loop.call_at(deadline, conn.expire)
            try:
                response = await self._send(conn, request, max_body)
            finally:
                timer.cancel()
            if response is not None:
                return response
        async with asyncio.timeout_at(deadline):
            for _ in range(2):
                response = await self._send(await self._acquire(), request, max_body)
                if response is not None:
                    return response
        raise ProtocolError("a kept-alive connection and a new one both closed unanswered")

    async def _send(self, conn: _Conn, request: bytes, max_body: int) -> Response | None:
        """``conn``'s answer to ``request``; None when ``conn`` was a kept-alive connection
        the server had closed before any byte of the answer (it may be sent once more)."""
        try:
            response = await conn.send(request, max_body)
        except Stale:
            self._release(conn)
            return None
        except BaseException:
            conn.close()
            self._release(conn)
            raise
        self._release(conn)
        return response

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()  # the most recent: the least likely to be timed out
            if not conn.closed:
                conn.reused = True
                return conn
            self._forget(conn)
        return None

    async def _acquire(self) -> _Conn:
        while True:
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self.open < self.limit:
                return await self._connect()
            wake = asyncio.get_running_loop().create_future()
            self._waiting.append(wake)
            try:
                await wake
            except asyncio.CancelledError:
                if wake.done() and not wake.cancelled():  # woken, then cancelled: pass it on
                    self._woken -= 1
                    self._wake()
                raise
            finally:
                if not wake.done():
                    wake.cancel()
            self._woken -= 1

    async def _connect(self) -> _Conn:
        self.open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Conn, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
            )
        except BaseException:
            self.open -= 1
            self._wake()
            raise
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.keep and not conn.closed and conn.waiter is None:
            self._idle.append(conn)
        else:
            conn.close()
            self._forget(conn)
        self._wake()

    def _forget(self, conn: _Conn) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self.open -= 1

    def _wake(self) -> None:
        while self._waiting:
            wake = self._waiting.popleft()
            if not wake.done():
                wake.set_result(None)
                self._woken += 1
                return

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self.open = 0


class Pools:
    """One ``Pool`` per upstream base URL, made on first use; ``close`` ends them all."""

    def __init__(self, limit: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.ssl_context = ssl_context
        self._pools: dict[str, Pool] = {}

    def of(self, base: str) -> Pool:
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = Pool(base, self.limit, self.ssl_context)
        return pool

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # let the transports' connection_lost run
