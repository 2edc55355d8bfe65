"""One data-plane connection (an ``asyncio.Protocol`` per accepted socket).

It answers, itself, GET and HEAD of ``/v1/chunks/{id}``, ``/v1/bundles/{id}`` and
``/v1/manifests/{id}`` (edge.plane.answers):

- a memory hit is answered synchronously, inside ``data_received``, with the response
  head prebuilt once per cached object and variant and the body the memory tier holds, in
  one ``writelines`` (one ``writev``) or one ``sendfile`` (edge.plane.send);
- anything else those routes need (a disk hit, a miss, a chunk decoded for a client that
  does not accept zstd, a manifest's first zstd encoding) runs in a task; responses of
  pipelined requests leave strictly in request order, at most ``DEPTH`` outstanding.

Every other request — other routes, methods, a body, ``Expect``, an upgrade, an id that
is not 64 lowercase hex digits, a miss carrying ``Via``/``X-Minicdn-Peer`` (edge-to-edge
hops keep aiohttp's loop checks), a manifest asked with ``Available-Dictionary`` — is
lent to aiohttp (edge.plane.lending).  Every head on every connection is therefore read
here (edge.plane.head), under the limits and the plane's timers.

Its ``phase`` says who answers next: SERVING (the data plane), HANDOFF (a request waits to
be lent until the answers before it have left), LENT (aiohttp).  ``closing`` is apart from
it: answer what is owed, read nothing more, then close.

A bug here must not cost more than its connection: an exception escaping a callback is
answered 500 and the connection closed, with one log line (rate-limited), not a traceback
per request.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from edge.objects import Sealed
from edge.plane.answers import Handoff, Reply, error
from edge.plane.body import Body, framer
from edge.plane.clock import CLOCK
from edge.plane.head import (
    CRLF,
    F_AVAILABLE_DICTIONARY,
    F_EXPECT,
    KINDS,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_LINE,
    Request,
    plain_shape,
    refusal,
)
from edge.plane.lending import Lending, Lent, Phase
from edge.plane.send import Sender
from edge.plane.timers import Timers
from edge.representation import BUNDLE, CHUNK_ZSTD, MANIFEST_RAW, MANIFEST_ZSTD

if TYPE_CHECKING:
    from edge.plane.plane import Plane

__all__ = ["DEPTH", "Connection", "Phase"]

DEPTH = 32  # pipelined requests answered ahead of the one being written


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


class Connection(Timers, Lending, asyncio.Protocol):
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
        self._queue: deque[Reply | asyncio.Future[Reply]] = deque()
        self._pending: deque[Request | None] = deque()  # the request of each queued reply
        self.phase = Phase.SERVING
        self.closing = False  # answer what is queued, read nothing more, then close
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
        self.answers = plane.answers
        self._prebuilt = plane.answers.prebuilt.forms
        self._touch = plane.node.memory.policy.touch  # the tier's policy is fixed at start
        self._sender = Sender()
        self._logging = plane.node.access_log is not None  # the inline hot path does not log
        self._half_close = True  # False under TLS, which has no half-close (see eof_received)
        self._handoff_end = 0  # where the head of the request to lend ends in _buf
        self._handoff_body: Body | None = None  # how its body ends, if it has one
        self._last = False  # close once aiohttp has answered the lent request (an upgrade)
        self._lent: tuple[Lent, asyncio.Protocol] | None = None  # the request aiohttp answers
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
        self._half_close = transport.get_extra_info("sslcontext") is None
        self.plane.connections.add(self)
        if self.plane.draining:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._sender.give_back()
        self.plane.connections.discard(self)
        self.transport = None
        self.closing = True
        self._drop_queue()
        self._take_back(exc)

    def _drop_queue(self) -> None:
        for item in self._queue:
            if isinstance(item, asyncio.Future):
                item.cancel()  # a fill itself runs on its own (a flight) and goes on
        self._queue.clear()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._active = CLOCK.now
            if not (
                self._buf
                or self._queue
                or self._body
                or self.closing
                or self.phase is not Phase.SERVING
                or self._write_paused
            ) and self._hot(data, time.perf_counter(), True):
                return
            if self._body is not None:
                data = self._take_body(data)
                if not data:
                    return
            if self.closing:
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
        # Keep writing what is owed; closed once it has left.  A TLS close_notify ends the
        # session both ways (the TLS transport flushes what was written, then closes, and
        # warns if told to keep it open).
        return self._half_close

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
            if self.phase is not Phase.SERVING:
                self._maybe_finish()

    # -- reading requests ------------------------------------------------------------------------

    def _process(self, t0: float) -> None:
        """Answer the complete heads in the buffer, in order, while answers may be queued."""
        while self._buf and not (
            self.closing or self.phase is not Phase.SERVING or self._write_paused or len(self._queue) >= DEPTH
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
        if self._eof or self.closing:
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
        refused = refusal(self._parser.get_http_version(), low)
        body = None if upgrade else framer(low)
        if refused is None and not upgrade and body is None:
            refused = 400, "bad_request", "a request body needs Content-Length or chunked framing"
        if refused is not None:
            self._refuse(*refused, self._parser.get_method())
            return
        self._start_handoff(len(head), body, last=upgrade)

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
            and (
                self._write_paused
                or (self.phase is not Phase.SERVING and self._body is None)
                or len(self._queue) >= DEPTH
            )
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
            self._zstd = plain_shape(shape)
            self._keep = self._parsed.keep_alive
        zstd = self._zstd
        if zstd is None or self._logging or head[start : start + 4] != b"/v1/" or not self._keep:
            return False
        try:
            key = head[start + 4 : end].decode("ascii")
        except UnicodeDecodeError:
            return False
        entry = self.entries.get(key)
        if entry is None:
            return False
        forms = self._prebuilt.get(entry)
        if forms is None:
            return False
        kind = key[: key.find("/")]
        if kind == "chunks":
            if not zstd:
                return False
            made = forms.get(CHUNK_ZSTD)
        elif kind == "manifests":
            made = forms.get(MANIFEST_ZSTD if zstd else MANIFEST_RAW)
        else:
            made = forms.get(BUNDLE)
        if made is None:
            return False
        prebuilt, body = made
        self._touch(key)
        transport = self.transport
        assert transport is not None
        stats = self.stats
        if start == 5:
            transport.write(prebuilt + CLOCK.date)
        elif isinstance(body, Sealed):
            self._sender.sealed(transport, prebuilt + CLOCK.date, body)
            stats.sent.n += body.size
        else:
            transport.writelines((prebuilt + CLOCK.date, body))
            stats.sent.n += len(body)
        stats.memory_hits.n += 1
        stats.hot[kind] += 1
        seconds = time.perf_counter() - t0
        stats.seconds += seconds
        if seconds <= stats.first_bound:
            stats.buckets[0] += 1
        else:
            stats.buckets[bisect.bisect_left(stats.bounds, seconds)] += 1
        return True

    def _answer(self, head: bytes, t0: float) -> None:
        low = head.lower()
        method = self._parser.get_method()
        refused = refusal(self._parser.get_http_version(), low)
        if refused is not None:
            self._refuse(*refused, method)
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
        reply = self.answers.now(req)
        if not isinstance(reply, Reply):
            # A plain miss is answered from callbacks (a future); the rest in a task.
            later = self.answers.begin(req) if reply is None else None
            if later is None:
                later = self.plane.loop().create_task(self.answers.later(req, reply))
            self._enqueue(req, later)
            later.add_done_callback(self._task_done)
        elif self._queue:
            self._enqueue(req, reply)
        else:
            self._send(req, reply)

    def _enqueue(self, req: Request | None, item: Reply | asyncio.Future[Reply]) -> None:
        self._queue.append(item)
        self._pending.append(req)

    def _task_done(self, _task: asyncio.Future[Reply]) -> None:
        with self._guard():
            self._flush()
            if self.transport is not None and not self.closing:
                self._process(time.perf_counter())
            self._maybe_finish()

    def _flush(self) -> None:
        queue = self._queue
        while queue and self.transport is not None:
            item = queue[0]
            if isinstance(item, asyncio.Future):
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
            self._sender.sealed(transport, head, reply.body)
        else:
            transport.writelines((head, reply.body))
        seconds = time.perf_counter() - (req.t0 if req is not None else time.perf_counter())
        self.stats.record(reply.route, reply.status, reply.sent, seconds)
        if self.node.access_log is not None:
            self.plane.log_access(self, req, reply, seconds)
        if close:
            self.closing = True
            self._drop_queue()
            transport.close()

    def _refuse(self, status: int, code: str, message: str, method: bytes | None = None) -> None:
        """Answer a request we cannot parse or serve (after those before it), then close;
        ``method``: the request's, when its head was parsed (a HEAD answer has no body)."""
        if method is None:
            method = b"HEAD" if self._buf.startswith(b"HEAD ") else b"GET"
        self.closing = True
        self._buf = b""
        reply = error("other", status, code, message, method=method)
        if self._queue:
            self._enqueue(None, reply)
        else:
            self._send(None, reply)
