"""The data plane: a lean HTTP/1.1 protocol for the hot path, with aiohttp behind it.

One ``Connection`` (an ``asyncio.Protocol``) per accepted socket.  It answers, itself,
GET and HEAD of ``/v1/chunks/{id}``, ``/v1/bundles/{id}`` and ``/v1/manifests/{id}``:

- a memory hit is answered synchronously, inside ``data_received``, with the response
  head prebuilt once per cached object and variant (kept on ``Entry.heads``) and the body
  the memory tier holds, in one ``writelines`` (one ``writev``);
- anything else those routes need (a disk hit, a miss, a chunk decoded for a client that
  does not accept zstd, a manifest's first zstd encoding) runs in a task; responses of
  pipelined requests leave strictly in request order, at most ``DEPTH`` outstanding.

Every other request — other routes, methods, a body, ``Expect``, an upgrade, an id that
is not 64 lowercase hex digits, a miss carrying ``Via``/``X-Minicdn-Peer`` (edge-to-edge
hops keep aiohttp's loop checks), a manifest asked with ``Available-Dictionary`` — is
*lent* to an aiohttp ``RequestHandler`` (see "lending to aiohttp" below): once every
response before it has left, the handler is given exactly that request's bytes, and the
connection comes back when aiohttp has answered.  Every head on every connection is
therefore read here, under the limits and timers below.

Request heads are delimited here (CRLF CRLF) and validated by llhttp (``httptools``),
which is fed exactly the bytes of each head, as they arrive; once a head has passed it,
the few fields the fast path reads are found in it by a plain search (a validated head
has one field per CRLF-started line, no obs-fold, no whitespace before the colon).

Limits (RFC 9112 §3, RFC 6585 §5): a request line over ``MAX_LINE`` bytes → 414, a head
over ``MAX_HEAD`` bytes or ``MAX_FIELDS`` fields → 431, a malformed head → 400, a request
line without an HTTP/1.x version (llhttp reads it as HTTP/0.9) → 400, HTTP/2.x → 505, a
missing (HTTP/1.1), repeated or invalid Host → 400 (RFC 9112 §3.2); each closes the
connection.  Timeouts, checked by one sweeper per process on a coarse clock (no timer per
request): a head not complete ``header_timeout`` after its first byte (slowloris) → 408
and close; a request body slower than ``body`` (common.http.BodyPace) → 408 and close
(aborted if aiohttp has begun its answer); a connection idle ``keepalive_timeout`` →
closed; a client that reads nothing for ``send_timeout`` while responses wait → aborted.

A bug here must not cost more than its connection: an exception escaping a callback is
answered 500 and the connection closed, with one log line (rate-limited), not a traceback
per request.

Metrics and the access log are recorded when a response is written: plain integers in
``Stats`` (no lock, no prometheus_client call per request), added into the Prometheus
metrics when they are collected (``Stats.flush``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import re
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from common import codec, dcz
from common.errors import MinicdnError
from common.http import (
    HOST_RULE,
    IMMUTABLE,
    NO_VERSION,
    BodyPace,
    Unsatisfiable,
    etag_matches,
    host_ok,
    parse_range,
    status_of,
)
from common.negotiate import accepts_coding
from edge.metrics import EdgeMetrics
from edge.objects import Entry, Obj, Sealed
from edge.service import Edge

__all__ = [
    "DEPTH",
    "MAX_FIELDS",
    "MAX_HEAD",
    "MAX_LINE",
    "Connection",
    "Limits",
    "Plane",
    "Returned",
    "Stats",
]

log = logging.getLogger("minicdn.edge.dataplane")

MAX_LINE = 8190  # request line, as aiohttp's default
MAX_HEAD = 16384  # request line and every field
MAX_FIELDS = 100
MAX_SKIP = 1 << 20  # body bytes an answered request may still owe before we close instead
MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions
CRLF = b"\r\n"
DEPTH = 32  # pipelined requests answered ahead of the one being written
OCTETS = "application/octet-stream"
MSGPACK = "application/x-msgpack"
KINDS = {b"chunks": "chunk", b"bundles": "bundle", b"manifests": "manifest"}
HEX64 = re.compile(r"[0-9a-f]{64}")

# Field names as they appear in a lowercased head: a field line starts after a CRLF.
F_ACCEPT_ENCODING = b"\r\naccept-encoding:"
F_IF_NONE_MATCH = b"\r\nif-none-match:"
F_RANGE = b"\r\nrange:"
F_IF_RANGE = b"\r\nif-range:"
F_USER_AGENT = b"\r\nuser-agent:"
F_EXPECT = b"\r\nexpect:"
F_AVAILABLE_DICTIONARY = b"\r\navailable-dictionary:"
F_HOST = b"\r\nhost:"
F_CONTENT_LENGTH = b"\r\ncontent-length:"
F_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
HOP_FIELDS = (b"\r\nvia:", b"\r\nx-minicdn-peer:")
# Variants of a cached object's 200 head: (Content-Type, Content-Encoding, Vary).
CHUNK_ZSTD = (OCTETS, "zstd", "Accept-Encoding")
MANIFEST_ZSTD = (MSGPACK, "zstd", dcz.VARY)
MANIFEST_RAW = (MSGPACK, None, dcz.VARY)
BUNDLE = (OCTETS, None, None)
ROUTE_200 = {"chunks": ("chunk", 200), "bundles": ("bundle", 200), "manifests": ("manifest", 200)}


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    body: BodyPace = field(default_factory=BodyPace)


# -- the clock and the Date field ------------------------------------------------------------


class _Clock:
    """Coarse time for timeouts and the ``Date`` field, advanced by the sweeper: reading it
    costs an attribute load, not a system call."""

    def __init__(self) -> None:
        self.now = 0.0
        self.date = b""
        self._second = -1
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        second = int(time.time())
        if second != self._second:
            self._second = second
            self.date = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n\r\n"


CLOCK = _Clock()


# -- metrics ---------------------------------------------------------------------------------


class Stats:
    """What the fast path counts, as plain integers on the loop's thread; ``flush`` adds
    them to the Prometheus metrics (called before every collection)."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics
        hist: Any = metrics.request_seconds
        self.bounds: list[float] = list(hist._upper_bounds)
        self.requests: dict[tuple[str, int], int] = {}
        self.memory_hits = 0
        self.sent = 0
        self.first_bound = self.bounds[0]
        self.buckets = [0] * len(self.bounds)
        self.seconds = 0.0
        self.hot = dict.fromkeys(ROUTE_200, 0)  # 200s of the inline hot path, by URL segment

    def record(self, route: str, status: int, sent: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.sent += sent
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.seconds += seconds

    def flush(self) -> None:
        m = self.metrics
        for segment, n in self.hot.items():
            if n:
                self.requests[ROUTE_200[segment]] = self.requests.get(ROUTE_200[segment], 0) + n
                self.hot[segment] = 0
        for (route, status), n in self.requests.items():
            m.requests.labels(route, str(status)).inc(n)
        self.requests.clear()
        if self.memory_hits:
            m.hits.labels("memory").inc(self.memory_hits)
            self.memory_hits = 0
        if self.sent:
            m.sent_bytes.inc(self.sent)
            self.sent = 0
        # prometheus_client's Histogram has no bulk observe; its per-bucket values are the
        # documented-by-code way (Histogram.observe does exactly this, one at a time).
        hist: Any = m.request_seconds
        if any(self.buckets):
            for i, n in enumerate(self.buckets):
                if n:
                    hist._buckets[i].inc(n)
                    self.buckets[i] = 0
            hist._sum.inc(self.seconds)
            self.seconds = 0.0


def _plain_shape(shape: bytes) -> bool | None:
    """``shape`` is a validated head from the space after its target: None when the
    inline hot path must not answer it (not HTTP/1.1, a conditional, a range, Expect, a
    dictionary offer, or a Host to refuse), else whether it accepts zstd."""
    low = shape.lower()
    if (
        not low.startswith(b" http/1.1\r\n")
        or b"\r\nif-" in low
        or F_RANGE in low
        or F_EXPECT in low
        or F_AVAILABLE_DICTIONARY in low
        or not _host_ok(low, True)
    ):
        return None
    i = low.find(F_ACCEPT_ENCODING)
    if i < 0:
        return False
    i += len(F_ACCEPT_ENCODING)
    return accepts_zstd(shape[i : low.find(b"\r\n", i)].strip(b" \t").decode("latin-1"))


def _host_ok(low: bytes, http11: bool) -> bool:
    """RFC 9112 §3.2 on a lowercased validated head (or its shape): one Host field with a
    valid value; none at all only before HTTP/1.1."""
    i = low.find(F_HOST)
    if i < 0:
        return not http11
    i += len(F_HOST)
    j = low.find(CRLF, i)
    return low.find(F_HOST, j) < 0 and host_ok(low[i:j].strip(b" \t").decode("latin-1"))


# -- requests and replies --------------------------------------------------------------------


class Request:
    __slots__ = ("close", "head", "http10", "key", "kind", "low", "method", "path", "t0")

    def __init__(
        self, head: bytes, low: bytes, method: bytes, path: bytes, kind: str, close: bool, t0: float
    ) -> None:
        self.head = head
        self.low = low
        self.method = method
        self.path = path
        self.kind = kind
        self.key = path[4:].decode("ascii")  # "chunks/<hex>": the tiers' key
        self.close = close
        self.t0 = t0
        line = head.find(b"\r\n")
        self.http10 = head[line - 3 : line] == b"1.0"  # kept alive only when it asks for it

    def field(self, name: bytes) -> str | None:
        i = self.low.find(name)
        if i < 0:
            return None
        i += len(name)
        return self.head[i : self.head.find(b"\r\n", i)].strip(b" \t").decode("latin-1")

    @property
    def hexid(self) -> str:
        return self.key.partition("/")[2]

    @property
    def etag(self) -> str:
        return f'"{self.hexid}"'


class Reply:
    __slots__ = ("body", "head", "route", "sent", "status")

    def __init__(
        self, route: str, status: int, head: bytes, body: bytes | memoryview | Sealed | None, sent: int
    ) -> None:
        self.route = route
        self.status = status
        self.head = head  # status line and fields, without Date and the blank line
        self.body = body  # None: nothing to send (HEAD, 304); Sealed: sent from its memfd
        self.sent = sent


class Handoff(Exception):
    """The request is aiohttp's: hand the connection over at this request."""


def _head(status: int, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in fields]
    lines.append("Server: minicdn\r\n")
    return "".join(lines).encode("latin-1")


def _error(
    route: str,
    status: int,
    code: str,
    message: str,
    fields: list[tuple[str, str]] | None = None,
    method: bytes = b"GET",
) -> Reply:
    body = json.dumps({"error": code, "message": message}).encode()
    head = _head(
        status, [*(fields or []), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    if method == b"HEAD":
        return Reply(route, status, head, None, 0)
    return Reply(route, status, head, body, len(body))


@lru_cache(maxsize=512)
def accepts_zstd(header: str) -> bool:
    """common.http.accepts_coding for zstd, cached per distinct header value."""
    return accepts_coding(header, "zstd")


def immutable(
    req: Request,
    entry: Entry | None,
    body: bytes | Sealed,
    *,
    content_type: str = OCTETS,
    content_encoding: str | None = None,
    vary: str | None = None,
) -> Reply:
    """common.http.serve_immutable on the fast path: 304, Range/206/416, HEAD.  The plain
    200 head is built once per entry and variant and kept on the entry.  A sealed body is
    read only for the bytes a range selects, and sent from its memfd otherwise."""
    route, low = req.kind, req.low
    size = body.size if isinstance(body, Sealed) else len(body)
    if entry is not None and entry.heads is not None and F_IF_NONE_MATCH not in low and F_RANGE not in low:
        cached = entry.heads.get((content_type, content_encoding, vary))
        if cached is not None:  # the hot path: a plain 200 of a cached object
            if req.method == b"HEAD":
                return Reply(route, 200, cached, None, 0)
            return Reply(route, 200, cached, body, size)
    etag = req.etag
    fields = [("ETag", etag), ("Cache-Control", IMMUTABLE), ("Accept-Ranges", "bytes")]
    if content_encoding:
        fields.append(("Content-Encoding", content_encoding))
    if vary:
        fields.append(("Vary", vary))
    if F_IF_NONE_MATCH in req.low:
        inm = req.field(F_IF_NONE_MATCH)
        if inm is not None and etag_matches(inm, etag):  # RFC 9110 §13.1.2
            return Reply(route, 304, _head(304, fields), None, 0)
    if F_RANGE in req.low:
        rng_header, if_range = req.field(F_RANGE), req.field(F_IF_RANGE)
        if rng_header and (if_range is None or if_range == etag):  # RFC 9110 §13.1.5
            try:
                rng = parse_range(rng_header, size)
            except Unsatisfiable:
                fields.append(("Content-Range", f"bytes */{size}"))
                return _error(
                    route, 416, "range_not_satisfiable", "range selects no bytes", fields, req.method
                )
            if rng is not None:
                fields += [
                    ("Content-Range", f"bytes {rng.start}-{rng.end}/{size}"),
                    ("Content-Type", content_type),
                ]
                part = (
                    body.read(rng.start, rng.end + 1)
                    if isinstance(body, Sealed)
                    else memoryview(body)[rng.start : rng.end + 1]
                )
                fields.append(("Content-Length", str(len(part))))
                if req.method == b"HEAD":
                    return Reply(route, 206, _head(206, fields), None, 0)
                return Reply(route, 206, _head(206, fields), part, len(part))
    variant = (content_type, content_encoding, vary)
    if entry is not None:
        heads = entry.heads
        if heads is None:
            heads = entry.heads = {}
        head = heads.get(variant)
        if head is None:
            head = heads[variant] = _head(
                200, [*fields, ("Content-Type", content_type), ("Content-Length", str(size))]
            )
    else:
        head = _head(200, [*fields, ("Content-Type", content_type), ("Content-Length", str(size))])
    if req.method == b"HEAD":
        return Reply(route, 200, head, None, 0)
    return Reply(route, 200, head, body, size)


# -- request bodies --------------------------------------------------------------------------


class BadBody(Exception):
    """A request body that breaks its framing (RFC 9112 §7.1)."""


class _Length:
    """Where a Content-Length body ends (RFC 9112 §6.2)."""

    __slots__ = ("left", "received")

    def __init__(self, length: int) -> None:
        self.left = length
        self.received = 0

    @property
    def done(self) -> bool:
        return not self.left

    def take(self, data: bytes) -> int:
        """How many bytes at the start of ``data`` are the body's."""
        n = min(self.left, len(data))
        self.left -= n
        self.received += n
        return n


class Chunked:
    """Where a chunked body ends (RFC 9112 §7.1), found as its bytes pass, without keeping
    them: chunk-size lines, chunk data, the last chunk and the trailer section.

    Stricter than llhttp (which aiohttp parses the same bytes with): lines end in CRLF and
    hold no other CR or LF, a chunk size is hex digits alone (64 bits at most), a chunk-size
    line is at most ``MAX_CHUNK_LINE`` bytes and the trailer section ``MAX_HEAD``.  So a
    body this accepts ends exactly where llhttp's parse of it ends, and what llhttp would
    read differently is refused here (BadBody) before aiohttp sees it."""

    __slots__ = ("done", "left", "line", "received", "state", "trailer")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.left = 0  # chunk data bytes still to come
        self.line = b""  # an incomplete line
        self.trailer = 0  # bytes of the trailer section so far
        self.received = 0
        self.done = False

    def take(self, data: bytes) -> int:
        """How many bytes at the start of ``data`` are the body's (BadBody if it breaks)."""
        i, n = 0, len(data)
        while i < n and not self.done:
            if self.state == self.DATA:
                k = min(self.left, n - i)
                i += k
                self.left -= k
                if not self.left:
                    self.state = self.DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                i = n
                if len(self.line) > (MAX_HEAD if self.state == self.TRAILER else MAX_CHUNK_LINE):
                    raise BadBody("a line of a chunked body is too long")
                break
            line, self.line = self.line + data[i : j + 1], b""
            i = j + 1
            self._line(line)
        self.received += i
        return i

    def _line(self, line: bytes) -> None:
        if not line.endswith(CRLF) or b"\r" in line[:-2]:
            raise BadBody("a line of a chunked body must end in CRLF, and only there")
        if self.state == self.SIZE:
            size = line[:-2].partition(b";")[0]
            if not size or size.strip(b"0123456789abcdefABCDEF") or len(size.lstrip(b"0")) > 16:
                raise BadBody("a chunk size must be hexadecimal digits")
            if len(line) > MAX_CHUNK_LINE:
                raise BadBody("a chunk-size line is too long")
            self.left = int(size, 16)
            self.state = self.DATA if self.left else self.TRAILER
        elif self.state == self.DATA_END:
            if line != CRLF:
                raise BadBody("chunk data must end in CRLF")
            self.state = self.SIZE
        elif line == CRLF:
            self.done = True
        elif b":" not in line:
            raise BadBody("a trailer line must be a field")
        else:
            self.trailer += len(line)
            if self.trailer > MAX_HEAD:
                raise BadBody("the trailer section is too large")


Body = _Length | Chunked


def _framer(low: bytes) -> Body | None:
    """How the body of a request ends, from its lowercased head, validated by llhttp and
    found to have a body: chunked when Transfer-Encoding is there (llhttp refuses one that
    does not end in chunked, or one beside Content-Length: RFC 9112 §6.1, §6.3), else
    Content-Length (digits llhttp has checked, under 2**64; maybe thousands of leading
    zeros, which int() would refuse)."""
    if F_TRANSFER_ENCODING in low:
        return Chunked()
    i = low.find(F_CONTENT_LENGTH)
    if i < 0:
        return None
    i += len(F_CONTENT_LENGTH)
    return _Length(int(low[i : low.find(CRLF, i)].strip(b" \t").lstrip(b"0") or b"0"))


class _Lent:
    """The transport an aiohttp handler sees while it answers one lent request: writes go
    to the real transport until its answer is complete (or the connection is taken back);
    reading is the data plane's."""

    def __init__(self, conn: Connection, real: asyncio.Transport) -> None:
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
            self.conn._closing = True
            self.real.close()

    def abort(self) -> None:
        if self.attached:
            self.conn._closing = True
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
        if isinstance(transport, _Lent):
            transport.returned(bool(response.keep_alive))


# -- the process-wide part -------------------------------------------------------------------


class Plane:
    """What every connection of one process shares: the node, the fallback (aiohttp's
    ``web.Server``: called, it makes a ``RequestHandler``), limits, stats, the sweeper."""

    def __init__(
        self, node: Edge, fallback: Callable[[], asyncio.Protocol], limits: Limits, stats: Stats
    ) -> None:
        self.node = node
        self.fallback = fallback
        self.limits = limits
        self.stats = stats
        self.connections: set[Connection] = set()
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> Connection:
        return Connection(self)

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        limits = self.limits
        tick = max(
            0.05, min(1.0, limits.header_timeout / 4, limits.keepalive_timeout / 4, limits.body.timeout / 4)
        )
        while True:
            await asyncio.sleep(tick)
            CLOCK.tick()
            for conn in list(self.connections):
                conn.check(CLOCK.now)
                # (check is guarded: one connection's bug cannot stop every timer.)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, the others once their responses have left; abort
        what is left after ``timeout``."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def log_access(self, conn: Connection, req: Request | None, reply: Reply, seconds: float) -> None:
        access_log = self.node.access_log
        if access_log is None:
            return
        access_log.write(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "remote": conn.remote,
                "method": req.method.decode() if req else "-",
                "path": req.path.decode() if req else "-",
                "status": reply.status,
                "bytes": reply.sent,
                "ms": round(seconds * 1000, 3),
                "ua": (req.field(F_USER_AGENT) or "") if req else "",
            }
        )


# -- one connection --------------------------------------------------------------------------


class _Parsed:
    """llhttp's callbacks: only the end of a message matters (a head without a body ends
    its message; one with a body does not, and goes to aiohttp)."""

    __slots__ = ("complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.complete = False
        self.keep_alive = True
        self.parser: Any = None

    def on_message_complete(self) -> None:
        # llhttp resets the message's flags once it is complete: read them now.
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


class _Borrowed(socket.socket):
    """The connection's own socket, wrapped to ``send`` with MSG_MORE and to ``sendfile``
    from: the descriptor stays the transport's, so this never closes it (the connection
    detaches it when it is lost or handed over; if it is ever dropped undetached, its
    finalizer detaches instead of closing)."""

    def __del__(self) -> None:
        self.detach()


class Connection(asyncio.Protocol):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.node = plane.node
        self.memory = plane.node.memory
        self.stats = plane.stats
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self._parsed = _Parsed()
        self._parser = self._parsed.parser = httptools.HttpRequestParser(self._parsed)
        self._buf = b""
        self._fed = 0  # bytes of the head at the start of _buf already given to the parser
        self._queue: deque[Reply | asyncio.Task[Reply]] = deque()
        self._pending: deque[Request | None] = deque()  # the request of each queued reply
        self._handoff = False
        self._closing = False  # answer what is queued, read nothing more, then close
        self._eof = False
        self._write_paused = False
        self._read_paused = False
        self._head_since = 0.0  # coarse time the current incomplete head began
        self._active = CLOCK.now
        self._paused_since = 0.0
        self._shape = b""  # see _hot
        self._zstd: bool | None = None
        self._keep = False
        self.entries = plane.node.memory.entries
        self._touch = plane.node.memory.policy.touch  # the tier's policy is fixed at start
        self._sock: _Borrowed | None = None  # see _send_sealed
        self._no_sock = False
        self._logging = plane.node.access_log is not None  # the inline hot path does not log
        self._handoff_end = 0  # where the head of the request to lend ends in _buf
        self._handoff_body: Body | None = None  # how its body ends, if it has one
        self._last = False  # close once aiohttp has answered the lent request (an upgrade)
        self._lent: tuple[_Lent, asyncio.Protocol] | None = None  # the request aiohttp answers
        # The lent request's body still coming: to its handler while lent, dropped once
        # aiohttp has answered without reading it; since when (coarse clock), how much dropped.
        self._body: Body | None = None
        self._body_since = 0.0
        self._skipped = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else str(peer or "")
        self.plane.connections.add(self)
        if self.plane.draining:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_back()
        self.plane.connections.discard(self)
        self.transport = None
        self._closing = True
        self._drop_queue()
        self._take_back(exc)

    def _drop_queue(self) -> None:
        for item in self._queue:
            if isinstance(item, asyncio.Task):
                item.cancel()  # a fill itself runs in a task of its own and goes on
        self._queue.clear()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._active = CLOCK.now
            if not (
                self._buf or self._queue or self._body or self._closing or self._handoff or self._write_paused
            ) and self._hot(data, time.perf_counter(), True):
                return
            if self._body is not None:
                data = self._take_body(data)
                if not data:
                    return
            if self._closing:
                return
            self._buf = self._buf + data if self._buf else data
            self._process(time.perf_counter())
        except Exception as exc:  # the last resort: see _failed
            self._failed(exc)

    def eof_received(self) -> bool:
        self._eof = True
        with self._guard():
            if self._body is not None and self._lent is not None:
                self._body_failed(400, "bad_request", "the request body ended before its framing did")
            elif self._lent is not None:
                self._lent[1].eof_received()
            else:
                self._maybe_finish()
        return True  # keep writing what is owed; closed once it has left

    def pause_writing(self) -> None:
        self._write_paused = True
        self._paused_since = CLOCK.now
        if self._lent is not None:
            self._lent[1].pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        with self._guard():
            if self._lent is not None:
                self._lent[1].resume_writing()
                return
            self._process(time.perf_counter())
            if self._handoff:
                self._maybe_finish()

    # -- reading requests ------------------------------------------------------------------------

    def _process(self, t0: float) -> None:
        """Answer the complete heads in the buffer, in order, while answers may be queued."""
        while self._buf and not (
            self._closing or self._handoff or self._write_paused or len(self._queue) >= DEPTH
        ):
            buf = self._buf
            if buf[0] in CRLF:
                buf = self._skip_empty_lines(buf)
                if not buf:
                    break
            end = buf.find(b"\r\n\r\n", self._fed - 3 if self._fed > 3 else 0)
            if end < 0:
                self._partial(buf)
                return
            end += 4
            if end > MAX_LINE and buf.find(CRLF, 0, end) > MAX_LINE:
                self._refuse(414, "too_large", "request line is too long")
                return
            # (A head of more than MAX_FIELDS fields has more than 4 bytes a field.)
            if end > MAX_HEAD or (end > 4 * MAX_FIELDS and buf.count(b"\r\n", 0, end) > MAX_FIELDS + 2):
                self._refuse(431, "too_large", "request head is too large")
                return
            upgrade = False
            try:
                self._parser.feed_data(buf[self._fed : end])
            except httptools.HttpParserUpgrade:
                upgrade = True  # CONNECT, or Upgrade with Connection: upgrade
            except httptools.HttpParserError as exc:
                self._refuse(400, "bad_request", f"malformed request: {exc}")
                return
            self._fed = 0
            self._head_since = 0.0
            if upgrade or not self._parsed.complete:  # a body follows, or an upgrade: aiohttp's
                self._parsed.complete = False
                self._lend_with_body(buf[:end], upgrade)
                return
            self._parsed.complete = False
            head = buf[:end]
            self._buf = buf[end:]
            if self._queue or not self._hot(head, t0):
                try:
                    self._answer(head, t0)
                except Handoff:
                    self._buf = buf
                    self._start_handoff(end, None)
                    return
        if self._buf or self._read_paused:
            self._settle_reading()
        if self._eof or self._closing:
            self._maybe_finish()

    def _skip_empty_lines(self, buf: bytes) -> bytes:
        """Empty lines before a request line are ignored (RFC 9112 §2.2), llhttp skips them
        too; they start the head's timer, so a stream of them is a slowloris like any."""
        if self._head_since == 0.0:
            self._head_since = CLOCK.now
        rest = buf.lstrip(CRLF)
        self._fed = max(0, self._fed - (len(buf) - len(rest)))
        self._buf = rest
        return rest

    def _lend_with_body(self, head: bytes, upgrade: bool) -> None:
        """A request aiohttp answers with its body (framed here, so the connection comes
        back after it) or an upgrade (no protocol is switched to here: aiohttp answers it,
        and the connection closes, since the client may already speak another)."""
        low = head.lower()
        refusal = self._refusal(low)
        body = None if upgrade else _framer(low)
        if refusal is None and not upgrade and body is None:
            refusal = 400, "bad_request", "a request body needs Content-Length or chunked framing"
        if refusal is not None:
            self._refuse(*refusal, self._parser.get_method())
            return
        self._start_handoff(len(head), body, last=upgrade)

    def _refusal(self, low: bytes) -> tuple[int, str, str] | None:
        """Why a head llhttp has taken is still refused (lowercased): a request line
        without an HTTP/1.x version (llhttp reads it as HTTP/0.9, and takes 2.x; RFC 9110
        §15.6.6), or its Host fields (RFC 9112 §3.2)."""
        version = self._parser.get_http_version()
        if version == "1.1" or version == "1.0":
            return None if _host_ok(low, version == "1.1") else (400, "bad_request", HOST_RULE)
        if version >= "2":
            return 505, "version_not_supported", f"HTTP/{version[0]}.x is not supported"
        return 400, "bad_request", NO_VERSION

    def _partial(self, buf: bytes) -> None:
        """An incomplete head: enforce the limits, let llhttp reject garbage early."""
        if self._head_since == 0.0:
            self._head_since = CLOCK.now
        line_end = buf.find(b"\r\n")
        if (line_end < 0 and len(buf) > MAX_LINE) or line_end > MAX_LINE:
            self._refuse(414, "too_large", "request line is too long")
            return
        if len(buf) > MAX_HEAD:
            self._refuse(431, "too_large", "request head is too large")
            return
        try:
            self._parser.feed_data(buf[self._fed :])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (An upgrade is only seen at the end of a head, which llhttp finds where we do.)
            self._refuse(400, "bad_request", f"malformed request: {exc}")
            return
        self._fed = len(buf)
        self._settle_reading()
        self._maybe_finish()

    def _settle_reading(self) -> None:
        """Read only while there is room: a client that pipelines more than DEPTH requests
        or does not read its answers is held by TCP's window, not by our memory."""
        transport = self.transport
        if transport is None:
            return
        stalled = (
            bool(self._buf)
            and self._fed < len(self._buf)
            and (self._write_paused or (self._handoff and self._body is None) or len(self._queue) >= DEPTH)
        )
        if stalled and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not stalled and self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # -- answering -------------------------------------------------------------------------------

    def _hot(self, head: bytes, t0: float, quick: bool = False) -> bool:
        """The common case, inline (one call instead of a dozen): a keep-alive HTTP/1.1 GET
        or HEAD, without conditionals or ranges, of an object in memory whose 200 head for
        the variant is prebuilt.  False, having changed nothing, for anything else.

        What the head says besides its method and target (its *shape*: version and fields)
        is judged once per connection while it stays the same: a client sends the same
        fields with every request."""
        if head[:4] == b"GET ":
            start = 4
        elif head[:5] == b"HEAD ":
            start = 5
        else:
            return False
        end = head.find(b" ", start)
        shape = head[end:]
        if shape != self._shape:
            if quick:
                return False
            self._shape = shape
            self._zstd = _plain_shape(shape)
            self._keep = self._parsed.keep_alive
        zstd = self._zstd
        if zstd is None or self._logging or head[start : start + 4] != b"/v1/" or not self._keep:
            return False
        try:
            key = head[start + 4 : end].decode("ascii")
        except UnicodeDecodeError:
            return False
        entry = self.entries.get(key)
        if entry is None or entry.heads is None:
            return False
        kind = key[: key.find("/")]
        body, sealed = entry.data, entry.sealed
        if kind == "chunks":
            if not zstd:
                return False
            prebuilt = entry.heads.get(CHUNK_ZSTD)
        elif kind == "manifests":
            if zstd:
                body, sealed = entry.encoded, None
            prebuilt = entry.heads.get(MANIFEST_ZSTD if zstd else MANIFEST_RAW)
        else:
            prebuilt = entry.heads.get(BUNDLE)
        if prebuilt is None or (body is None and sealed is None):
            return False
        self._touch(key)
        transport = self.transport
        assert transport is not None
        stats = self.stats
        if start == 5:
            transport.write(prebuilt + CLOCK.date)
        elif body is not None:
            transport.writelines((prebuilt + CLOCK.date, body))
            stats.sent += len(body)
        else:
            assert sealed is not None
            self._send_sealed(transport, prebuilt + CLOCK.date, sealed)
            stats.sent += sealed.size
        stats.memory_hits += 1
        stats.hot[kind] += 1
        seconds = time.perf_counter() - t0
        stats.seconds += seconds
        if seconds <= stats.first_bound:
            stats.buckets[0] += 1
        else:
            stats.buckets[bisect.bisect_left(stats.bounds, seconds)] += 1
        return True

    def _send_sealed(self, transport: asyncio.Transport, head: bytes, sealed: Sealed) -> None:
        """``head`` and then a sealed body, without copying the body: ``send`` with
        MSG_MORE (head and body leave in full segments) and ``sendfile`` straight to the
        socket, which is in order only while the transport's buffer is empty.  What the
        socket does not take now goes to the transport, which sends it after, in order;
        so does everything when the socket cannot be borrowed (TLS, not TCP)."""
        sock = self._sock
        if sock is None and not self._no_sock:
            sock = self._sock = self._borrow(transport)
        # Once the transport is closing (an abort closes the descriptor at once, and its
        # number may be reused before connection_lost), only the transport may write.
        if sock is None or transport.get_write_buffer_size() or transport.is_closing():
            transport.writelines((head, sealed.read()))
            return
        try:
            n = sock.send(head, socket.MSG_MORE)
        except OSError:  # full (EAGAIN) or broken: the transport finds out and tells us
            n = 0
        if n < len(head):
            transport.writelines((head[n:], sealed.read()))
            return
        try:
            m = os.sendfile(sock.fileno(), sealed.fd, 0, sealed.size)
        except OSError:
            m = 0
        if m < sealed.size:
            transport.write(sealed.read(m))

    def _borrow(self, transport: asyncio.Transport) -> _Borrowed | None:
        raw = transport.get_extra_info("socket")
        if (
            raw is None
            or transport.get_extra_info("sslcontext") is not None
            or raw.family not in (socket.AF_INET, socket.AF_INET6)
        ):
            self._no_sock = True
            return None
        sock = _Borrowed(raw.family, raw.type, fileno=raw.fileno())
        sock.settimeout(0)
        return sock

    def _give_back(self) -> None:
        if self._sock is not None:
            self._sock.detach()
            self._sock = None
        self._no_sock = True

    def _answer(self, head: bytes, t0: float) -> None:
        low = head.lower()
        method = self._parser.get_method()
        refusal = self._refusal(low)
        if refusal is not None:
            self._refuse(*refusal, method)
            return
        if method != b"GET" and method != b"HEAD":
            raise Handoff
        # An HTTP/1.x request line llhttp has taken: method SP target SP version.
        target = head[len(method) + 1 : head.find(b" ", len(method) + 1)]
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        slash = path.find(b"/", 4)
        kind = KINDS.get(path[4:slash]) if slash > 0 and path.startswith(b"/v1/") else None
        if kind is None or b"%" in path:
            raise Handoff
        try:
            req = Request(head, low, method, path, kind, not self._parsed.keep_alive, t0)
        except UnicodeDecodeError:
            raise Handoff from None
        if F_EXPECT in req.low or (kind == "manifest" and F_AVAILABLE_DICTIONARY in req.low):
            raise Handoff  # Expect: aiohttp answers 100/417; dcz is get_manifest's
        reply = self._reply_now(req)
        if not isinstance(reply, Reply):
            task = asyncio.ensure_future(self._reply_later(req, reply))
            self._enqueue(req, task)
            task.add_done_callback(self._task_done)
        elif self._queue:
            self._enqueue(req, reply)
        else:
            self._send(req, reply)

    def _reply_now(self, req: Request) -> Reply | Entry | None:
        """The reply, when it can be made without waiting; else what a task needs to make
        it: the entry (found in memory) or None (a miss)."""
        kind = req.kind
        if kind != "bundle" and F_IF_NONE_MATCH in req.low:
            # The id is the content's hash: a client naming it already has it, wherever it
            # is cached (RFC 9110 §13.1.2), so no lookup is needed.
            inm = req.field(F_IF_NONE_MATCH)
            if inm is not None and etag_matches(inm, req.etag):
                return immutable(req, None, b"", vary=dcz.VARY if kind == "manifest" else "Accept-Encoding")
        entry = self.memory.get(req.key)
        if entry is None:
            if not HEX64.fullmatch(req.hexid) or any(f in req.low for f in HOP_FIELDS):
                raise Handoff
            return None
        self.stats.memory_hits += 1
        return self._finish(req, entry) or entry

    def _finish(self, req: Request, entry: Entry) -> Reply | None:
        kind = req.kind
        if kind == "bundle":
            return immutable(req, entry, entry.stored)
        zstd = accepts_zstd(req.field(F_ACCEPT_ENCODING) or "")
        if kind == "chunk":
            if zstd:
                return immutable(req, entry, entry.stored, content_encoding="zstd", vary="Accept-Encoding")
            return None  # decoded in a task
        if not zstd:
            return immutable(req, entry, entry.stored, content_type=MSGPACK, vary=dcz.VARY)
        if entry.encoded is None:
            return None  # encoded in a task
        return immutable(
            req, entry, entry.encoded, content_type=MSGPACK, content_encoding="zstd", vary=dcz.VARY
        )

    async def _reply_later(self, req: Request, entry: Entry | None) -> Reply:
        try:
            obj = Obj(req.kind, bytes.fromhex(req.hexid))
            if entry is None:
                entry = await self.node.objects.load(obj)
            reply = self._finish(req, entry)
            if reply is not None:
                return reply
            loop = asyncio.get_running_loop()
            if req.kind == "chunk":
                raw = await loop.run_in_executor(None, codec.decode_chunk, obj.id, entry.body)
                return immutable(req, None, raw, vary="Accept-Encoding")
            entry.encoded = await loop.run_in_executor(None, codec.compress, entry.body, 19)
            reply = self._finish(req, entry)
            assert reply is not None
            return reply
        except MinicdnError as exc:
            status = status_of(exc)
            if status >= 500:
                log.warning("%s %s: %s", req.method.decode(), req.path.decode(), exc.message)
            return _error(req.kind, status, exc.code, exc.message, method=req.method)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", req.method.decode(), req.path.decode())
            return _error(req.kind, 500, "internal", "internal error", method=req.method)

    def _enqueue(self, req: Request | None, item: Reply | asyncio.Task[Reply]) -> None:
        self._queue.append(item)
        self._pending.append(req)

    def _task_done(self, _task: asyncio.Task[Reply]) -> None:
        with self._guard():
            self._flush()
            if self.transport is not None and not self._closing:
                self._process(time.perf_counter())
            self._maybe_finish()

    def _flush(self) -> None:
        queue = self._queue
        while queue and self.transport is not None:
            item = queue[0]
            if isinstance(item, asyncio.Task):
                if not item.done():
                    return
                if item.cancelled():
                    return
                reply = item.result()
            else:
                reply = item
            queue.popleft()
            self._send(self._pending.popleft(), reply)

    def _send(self, req: Request | None, reply: Reply) -> None:
        transport = self.transport
        if transport is None:
            return
        close = req is None or req.close or (self.plane.draining and not self._queue)
        if close:
            head = reply.head + b"Connection: close\r\n" + CLOCK.date
        elif req is not None and req.http10:
            head = reply.head + b"Connection: keep-alive\r\n" + CLOCK.date
        else:
            head = reply.head + CLOCK.date
        if reply.body is None:
            transport.write(head)
        elif isinstance(reply.body, Sealed):
            self._send_sealed(transport, head, reply.body)
        else:
            transport.writelines((head, reply.body))
        seconds = time.perf_counter() - (req.t0 if req is not None else time.perf_counter())
        self.stats.record(reply.route, reply.status, reply.sent, seconds)
        if self.node.access_log is not None:
            self.plane.log_access(self, req, reply, seconds)
        if close:
            self._closing = True
            self._drop_queue()
            transport.close()

    def _refuse(self, status: int, code: str, message: str, method: bytes | None = None) -> None:
        """Answer a request we cannot parse or serve (after those before it), then close;
        ``method``: the request's, when its head was parsed (a HEAD answer has no body)."""
        if method is None:
            method = b"HEAD" if self._buf.startswith(b"HEAD ") else b"GET"
        self._closing = True
        self._buf = b""
        reply = _error("other", status, code, message, method=method)
        if self._queue:
            self._enqueue(None, reply)
        else:
            self._send(None, reply)

    # -- lending to aiohttp -------------------------------------------------------------------
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
        self._handoff = True
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
        if self._handoff:
            if self._lent is None and not self._queue and not self._write_paused:
                self._lend(transport)
            return
        if self._queue:
            return
        if self._closing or (self._eof and self._fed == len(self._buf) and not self._has_complete_head()):
            transport.close()

    def _has_complete_head(self) -> bool:
        return b"\r\n\r\n" in self._buf

    def _lend(self, transport: asyncio.Transport) -> None:
        lent = _Lent(self, transport)
        handler = self.plane.fallback()
        self._lent = (lent, handler)
        handler.connection_made(cast(asyncio.Transport, lent))
        head, rest = self._buf[: self._handoff_end], self._buf[self._handoff_end :]
        self._buf = b""
        body, self._handoff_body = self._handoff_body, None
        self._body = body if body is not None and not body.done else None
        self._body_since = CLOCK.now if self._body is not None else 0.0
        self._skipped = 0
        if self._last:
            self._closing = True  # nothing after an upgrade is read
        handler.data_received(head)
        if self._body is not None and rest:
            rest = self._take_body(rest)
        if rest and not self._closing:
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
            if not keep_alive or self._closing or (isinstance(body, _Length) and body.left > MAX_SKIP):
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
        self._handoff = False
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
        self._closing = True
        self._buf = b""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # -- timeouts, draining, and the last resort ---------------------------------------------------

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
        self._closing = True
        if not self._queue and not self._handoff:  # a lent request closes once answered
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
        self._handoff = False
        self._body = None
        self._body_since = 0.0
        if self.transport is None or self._closing:
            self._close_now(abort=True)
            return
        self._closing = True
        self._buf = b""
        self._send(None, _error("other", 500, "internal", "internal error"))


class _Failures:
    """One log line for the data plane's bugs every ``every`` seconds, naming where the
    last one was raised and how many were not logged since."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.next = 0.0
        self.missed = 0

    def report(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self.next:
            self.missed += 1
            return
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        log.error(
            "data plane bug, answered 500: %s: %s at %s (%d more since the last report)",
            type(exc).__name__,
            exc,
            where,
            self.missed,
        )
        self.next = now + self.every
        self.missed = 0


FAILURES = _Failures()
