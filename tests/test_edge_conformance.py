"""HTTP/1.1 conformance of the edge, over raw sockets against a real edge process:
keep-alive, pipelining (a miss in the middle keeps the order), HEAD, 304, Range/416,
malformed and oversized heads, a slowloris, a client that leaves mid-response, HTTP/1.0,
and requests that fall through to aiohttp on the same connection.

Every test that takes ``serving`` runs against both serving paths: the data plane
(edge/plane/, ``--fast-path``, what production runs) and aiohttp alone (``--no-fast-path``),
and against the data plane over TLS (``tls``: its own TLS transport, edge.plane.tls; the
raw client wraps its socket, the metrics come from ``--metrics-listen``).
The few about what only the data plane has by design (its header timer) say why with
``fast_path_only``.  tests/test_edge_paths_agree.py compares
the two paths' answers byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from common import codec
from edge.memory import SEAL_MIN
from tests.edge_support import (
    App,
    batch_items,
    edge,
    eventually,
    publish_app,
    random_app,
    scripted,
    verify_chunk,
)
from tests.procs import Service, free_port, metric
from tests.test_tls_edge import client_context
from tests.test_tls_pki import Pki

HEADER_TIMEOUT = "1s"
KEEPALIVE_TIMEOUT = "2s"


@pytest.fixture(scope="module")
def apps(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, App]:
    from tests.conftest import DEMO

    tmp = tmp_path_factory.mktemp("conformance-apps")
    return {
        "demo": publish_app(origin.url, "conf-demo", DEMO),
        "big": publish_app(origin.url, "conf-big", random_app(tmp / "big", 1.5, seed=11)),
    }


# The serving paths, by test id: the flags that choose each (with TLS flags for "tls").
PATHS = {"fast": ("--fast-path",), "aiohttp": ("--no-fast-path",), "tls": ("--fast-path",)}

# The client context of each TLS edge's port: Raw speaks TLS to these.
TLS_PORTS: dict[int, ssl.SSLContext] = {}


@dataclass
class TlsService(Service):
    """An edge serving TLS on ``port``; its ``url`` (readiness, metrics) is the plain
    ``--metrics-listen``."""

    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


def conf_edge(tmp: Path, upstream: str, serving: str, extra: tuple[str, ...] = ()) -> Service:
    """An edge (not started) on the ``serving`` path."""
    if serving != "tls":
        return edge(tmp, upstream, extra=(*extra, *PATHS[serving]))
    pki = Pki(tmp / "pki")
    pair = pki.issue("conformance")
    port, mport = free_port(), free_port()
    TLS_PORTS[port] = client_context(pki)
    args = ["edge", "--cache-dir", str(tmp / f"edge-{port}"), "--listen", f"127.0.0.1:{port}",
            "--upstream", upstream, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
            "--metrics-listen", f"127.0.0.1:{mport}", *extra, *PATHS[serving]]  # fmt: skip
    return TlsService(args, port, tmp / f"edge-{port}.log", env={"MINICDN_TOKEN": "test-token"}, metrics_port=mport)

Test = Callable[..., None]


def fast_path_only(reason: str) -> Callable[[Test], Test]:
    """Run a test against the data plane only, for ``reason`` (what --no-fast-path lacks by
    design: docs/edge.md, "The data plane and hostile input")."""

    def mark(test: Test) -> Test:
        test.fast_path_only = reason  # type: ignore[attr-defined]
        return test

    return mark


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "serving" in metafunc.fixturenames:
        paths = ["fast", "tls"] if hasattr(metafunc.function, "fast_path_only") else list(PATHS)
        metafunc.parametrize("serving", paths, ids=paths, scope="module")


@pytest.fixture(scope="module")
def node(origin: Service, serving: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    extra = ("--header-timeout", HEADER_TIMEOUT, "--keepalive-timeout", KEEPALIVE_TIMEOUT)
    svc = conf_edge(tmp_path_factory.mktemp("conformance-edge"), origin.url, serving, extra).start()
    try:
        yield svc
    finally:
        svc.stop()


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""


@dataclass
class Raw:
    """One TCP connection; requests are bytes, responses are parsed from one buffer so
    that pipelined answers are read back in order."""

    port: int
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        ctx = TLS_PORTS.get(self.port)
        self.sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1") if ctx is not None else sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        piece = self.sock.recv(1 << 16)
        self.buf += piece
        return bool(piece)

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head; got {self.buf[:200]!r}")
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not head_only and headers.get("transfer-encoding") == "chunked":
            return Response(status, headers, self._chunked(), raw_head)
        length = 0 if head_only or status in (204, 304) else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed mid-body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body, raw_head)

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError("closed mid-body")
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise ConnectionError("closed mid-body")
            body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
            if size == 0:
                return body

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed (EOF or reset) within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                piece = self.sock.recv(1 << 16)
                if not piece:
                    return True
                self.buf += piece
        except TimeoutError:  # (before OSError: it is one)
            return False
        except (ConnectionResetError, ssl.SSLError):  # a reset, or TLS cut off
            return True

    def nothing_yet(self) -> bool:
        """Whether no bytes have arrived yet (the end of the stream brings none either).
        Over TLS, what has arrived is read into ``buf`` (a TLS socket cannot peek)."""
        self.sock.setblocking(False)
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                piece = self.sock.recv(1 << 16)
                self.buf += piece
                return not piece
            return not self.sock.recv(1 << 16, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(20)

    def close(self) -> None:
        self.sock.close()


def get(path: str, *fields: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: edge", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(hexid: str) -> str:
    return f"/v1/chunks/{hexid}"


def warm(node: Service, *ids: str) -> None:
    c = Raw(node.port)
    for h in ids:
        c.send(get(chunk(h), "Accept-Encoding: zstd"))
        verify_chunk(h, c.response())
    c.close()


# -- keep-alive and pipelining ----------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(apps: dict[str, App], node: Service) -> None:
    ids = apps["demo"].chunks
    warm(node, *ids)
    c = Raw(node.port)
    try:
        for round_ in range(3):
            for h in ids:
                c.send(get(chunk(h), "Accept-Encoding: zstd" if round_ % 2 == 0 else "Accept-Encoding: gzip"))
                r = c.response()
                verify_chunk(h, r)
                assert r.headers["etag"] == f'"{h}"' and "connection" not in r.headers
                assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
                assert "date" in r.headers and r.headers["vary"] == "Accept-Encoding"
                assert (r.headers.get("content-encoding") == "zstd") == (round_ % 2 == 0)
    finally:
        c.close()


def test_pipelined_requests_are_answered_in_order(apps: dict[str, App], node: Service) -> None:
    hot, cold = apps["demo"].chunks[0], apps["big"].chunks[5]
    warm(node, hot)
    c = Raw(node.port)
    try:
        c.send(
            get(chunk(hot), "Accept-Encoding: zstd")
            + get(chunk(cold), "Accept-Encoding: zstd")  # a miss between hits
            + get(chunk(hot), method="HEAD")
            + get(chunk(hot), "Range: bytes=0-9")
            + get(chunk(hot), f'If-None-Match: "{hot}"')
            + get(f"/v1/manifests/{apps['demo'].manifest}", "Accept-Encoding: zstd")
        )
        verify_chunk(hot, c.response())
        verify_chunk(cold, c.response())
        head = c.response(head_only=True)
        assert head.status == 200 and head.body == b"" and head.headers["etag"] == f'"{hot}"'
        part = c.response()
        assert part.status == 206 and len(part.body) == 10
        assert c.response().status == 304
        m = c.response()
        assert m.status == 200 and m.headers["content-encoding"] == "zstd"
        assert hashlib.sha256(codec.decompress(m.body, 1 << 24)).hexdigest() == apps["demo"].manifest
        assert c.nothing_yet() and not c.buf
    finally:
        c.close()


def test_a_held_miss_holds_back_the_answers_after_it(
    origin: Service, apps: dict[str, App], tmp_path: Path, serving: str
) -> None:
    first, held, last = apps["big"].chunks[10], apps["big"].chunks[11], apps["big"].chunks[12]
    with scripted(origin.url) as up:
        up.hold.add(held)
        svc = conf_edge(tmp_path, up.url, serving).start()
        try:
            warm(svc, first, last)
            c = Raw(svc.port)
            c.send(b"".join(get(chunk(h), "Accept-Encoding: zstd") for h in (first, held, last)))
            verify_chunk(first, c.response())
            eventually(lambda: up.held() == 1, what="the miss reached the upstream")
            assert c.nothing_yet() and not c.buf  # the hit after the miss waits its turn
            up.release()
            verify_chunk(held, c.response())
            verify_chunk(last, c.response())
            c.close()
        finally:
            up.release()
            svc.stop()


# -- HEAD, 304, Range, 416, errors ---------------------------------------------------------------


def test_head_304_range_and_416(apps: dict[str, App], node: Service) -> None:
    cid = apps["demo"].chunks[1]
    warm(node, cid)
    c = Raw(node.port)
    try:
        c.send(get(chunk(cid)))
        full = c.response()
        verify_chunk(cid, full)
        size = len(full.body)
        c.send(get(chunk(cid), method="HEAD", version="HTTP/1.1"))
        head = c.response(head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) == size
        c.send(get(chunk(cid), "Accept-Encoding: zstd", method="HEAD"))
        zhead = c.response(head_only=True)
        assert zhead.headers["content-encoding"] == "zstd" and int(zhead.headers["content-length"]) < size
        c.send(get(chunk(cid), f'If-None-Match: W/"x", "{cid}"'))
        nm = c.response()
        assert nm.status == 304 and nm.body == b"" and nm.headers["etag"] == f'"{cid}"'
        assert "content-length" not in nm.headers
        c.send(get(chunk(cid), "Range: bytes=-5"))
        tail = c.response()
        assert tail.status == 206 and tail.body == full.body[-5:]
        assert tail.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
        c.send(get(chunk(cid), "Range: bytes=3-7", 'If-Range: "other"'))
        assert c.response().status == 200  # If-Range names another version: the whole body
        c.send(get(chunk(cid), f"Range: bytes={size}-"))
        bad = c.response()
        assert bad.status == 416 and bad.headers["content-range"] == f"bytes */{size}"
        assert json.loads(bad.body)["error"] == "range_not_satisfiable"
        c.send(get(chunk("0" * 64)))  # a miss no upstream has: 404, and the connection lives on
        nf = c.response()
        assert nf.status == 404 and json.loads(nf.body)["error"] == "not_found"
        c.send(get(chunk(cid), "Accept-Encoding: zstd"))
        verify_chunk(cid, c.response())
    finally:
        c.close()


@pytest.mark.parametrize(
    "request_line",
    [b"GET /v1/chunks/a b HTTP/1.1", b"GARBAGE", b"GET /v1/chunks/x HTTP/9.9x", b"GET\x00 / HTTP/1.1"],
)
def test_a_malformed_request_is_400_and_closes(node: Service, request_line: bytes) -> None:
    c = Raw(node.port)
    try:
        c.send(request_line + b"\r\nHost: edge\r\n\r\n")
        r = c.response()
        assert r.status == 400 and r.headers["connection"] == "close"
        assert c.closed()
    finally:
        c.close()


def test_oversized_heads_are_refused(apps: dict[str, App], node: Service, serving: str) -> None:
    cid = apps["demo"].chunks[0]
    c = Raw(node.port)
    try:
        c.send(get(chunk(cid), "X-Big: " + "a" * 20000))
        r = c.response()
        assert r.status == 431 and r.headers["connection"] == "close" and c.closed()
    finally:
        c.close()
    c = Raw(node.port)
    try:
        c.send(b"GET /v1/chunks/" + b"a" * 9000)  # no end of line in sight
        r = c.response()
        assert r.status == 414 and c.closed()
    finally:
        c.close()
    c = Raw(node.port)
    try:
        c.send(get(chunk(cid), *(f"X-F{i}: v" for i in range(200))))
        assert c.response().status == 431 and c.closed()
    finally:
        c.close()
    c = Raw(node.port)
    try:
        c.send(get("/v1/apps/" + "a" * 9000))  # a whole head at once, its line past MAX_LINE
        r = c.response()
        assert r.status == 414 and c.closed()
        assert serving == "aiohttp" or r.headers["server"] == "minicdn"  # the data plane's own
    finally:
        c.close()


def sized(path: str, size: int, fields: int = 2) -> bytes:
    """A GET of ``path`` whose head is ``size`` bytes, CRLF CRLF included, with ``fields``
    fields (Host and X-Pad among them)."""
    pads = [f"X-{n}: v" for n in range(fields - 2)]
    head = get(path, *pads, "X-Pad: ")
    return get(path, *pads, "X-Pad: " + "p" * (size - len(head)))


LIMIT_LINE, LIMIT_HEAD, LIMIT_FIELDS = 8190, 16384, 100  # docs/edge.md, edge/plane/head.py


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (get("/healthz?" + "q" * (LIMIT_LINE - len("GET /healthz? HTTP/1.1"))), 200),
        (get("/healthz?" + "q" * (LIMIT_LINE + 1 - len("GET /healthz? HTTP/1.1"))), 414),
        (sized("/healthz", LIMIT_HEAD, 3), 200),
        (sized("/healthz", LIMIT_HEAD + 1, 3), 431),
        (sized("/healthz", 4000, LIMIT_FIELDS), 200),
        (sized("/healthz", 4000, LIMIT_FIELDS + 1), 431),
        (sized("/healthz", LIMIT_HEAD - 1000), 200),  # a field of 15 KiB
    ],
    ids=["line", "line+1", "head", "head+1", "fields", "fields+1", "big-field"],
)
def test_head_limits_are_exact(node: Service, data: bytes, status: int) -> None:
    """The data plane's limits to the byte, with or without it (aiohttp: common.http.HeadLimits)."""
    c = Raw(node.port)
    try:
        c.send(data)
        r = c.response()
        assert r.status == status, (r.status, r.body[:200])
        if status != 200:
            assert json.loads(r.body)["error"] == "too_large" and c.closed()
    finally:
        c.close()


def no_traceback(node: Service) -> None:
    out = node.output()
    assert "Traceback" not in out and " ERROR " not in out, out[-3000:]


@pytest.mark.parametrize("warm_first", [True, False], ids=["memory", "fill"])
def test_odd_range_digits_are_answered_on_the_same_connection(
    apps: dict[str, App], node: Service, warm_first: bool
) -> None:
    """Digits of other scripts ('²' passes str.isdigit) are no range: the whole body.
    Positions of thousands of digits (int() refuses more than 4300) are valid: a first one
    past the body is 416, a last one past it is clamped, so is a suffix (RFC 9110 §14.1.2)."""
    cid = apps["big"].chunks[70 if warm_first else 71]
    if warm_first:
        warm(node, cid)
    many = "9" * 5000
    c = Raw(node.port)
    try:
        cases = [
            (b"Range: bytes=\xb2-", 200),
            (b"Range: bytes=0-\xb3", 200),
            (b"Range: bytes=\xd9\xa3-", 200),  # ARABIC-INDIC DIGIT THREE, as UTF-8
            (f"Range: bytes={many}-".encode(), 416),
            (f"Range: bytes=0-{many}".encode(), 206),
            (f"Range: bytes=-{many}".encode(), 206),
            (f"Range: bytes={'0' * 5000}1-{'0' * 2000}2".encode(), 206),  # a field within 8190 B
        ]
        for field_line, status in cases:
            c.send(f"GET {chunk(cid)} HTTP/1.1\r\nHost: edge\r\n".encode() + field_line + b"\r\n\r\n")
            r = c.response()
            assert r.status == status, (field_line[:40], r.status, r.body[:200])
            if status == 206 and b"0001-" in field_line:
                assert len(r.body) == 2
            elif status != 416:
                verify_chunk(cid, Response(200, r.headers, r.body) if status == 200 else c_full(node, cid, r))
    finally:
        c.close()
    no_traceback(node)


def c_full(node: Service, cid: str, part: Response) -> Response:
    """A 206 that covers the whole body is the whole body."""
    size = part.headers["content-range"].rpartition("/")[2]
    assert part.headers["content-range"] == f"bytes 0-{int(size) - 1}/{size}"
    return Response(200, part.headers, part.body)


def test_odd_request_lines_and_lengths_are_answered(apps: dict[str, App], node: Service) -> None:
    """Heads llhttp takes but the fast path used to trip on: a request line without a
    version (llhttp reads HTTP/0.9), Content-Length with thousands of leading zeros, empty
    lines before a request line (RFC 9112 §2.2: ignored)."""
    cid = apps["demo"].chunks[0]
    c = Raw(node.port)
    try:
        c.send(f"GET {chunk(cid)}\r\nHost: edge\r\n\r\n".encode())
        r = c.response()
        assert r.status == 400 and json.loads(r.body)["error"] == "bad_request" and c.closed()
    finally:
        c.close()
    body = msgpack.packb([cid])
    c = Raw(node.port)
    try:
        c.send(
            f"POST /v1/chunks:batch HTTP/1.1\r\nHost: edge\r\nContent-Length: {'0' * 5000}{len(body)}\r\n\r\n".encode()
            + body
        )
        b = c.response()
        assert b.status == 200 and [i[0] for i in batch_items(b.body)] == [cid]
        c.send(b"\r\n\r\n\r\n" + get(chunk(cid), "Accept-Encoding: zstd"))
        verify_chunk(cid, c.response())
        c.send(b"\r\n")  # the empty lines come first, alone
        c.send(get(chunk(cid), "Accept-Encoding: zstd"))
        verify_chunk(cid, c.response())
    finally:
        c.close()
    no_traceback(node)


# -- slow and vanishing clients ----------------------------------------------------------------


@fast_path_only("--header-timeout is the data plane's; aiohttp has no header timer")
def test_a_slowloris_is_cut_off_after_the_header_timeout(apps: dict[str, App], node: Service) -> None:
    c = Raw(node.port)
    try:
        c.send(f"GET {chunk(apps['demo'].chunks[0])} HTTP/1.1\r\n".encode())
        started = time.monotonic()
        cut = False
        # The client's own behaviour, not a synchronisation: one header byte every 50 ms,
        # for at most 15 s (the edge's bound is 1 s).
        for _ in range(300):
            try:
                c.send(b"X")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if not c.nothing_yet():
                cut = True
                break
            time.sleep(0.05)
        assert cut, "a client trickling its head was never cut off"
        assert time.monotonic() - started < 10
        r = c.response()
        assert r.status == 408 and c.closed()
    finally:
        c.close()


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    apps: dict[str, App], node: Service
) -> None:
    c = Raw(node.port)
    try:
        c.send(get(chunk(apps["demo"].chunks[0]), "Accept-Encoding: zstd"))
        verify_chunk(apps["demo"].chunks[0], c.response())
        assert c.closed(timeout=15)
    finally:
        c.close()


def test_a_client_that_leaves_mid_response_does_not_hurt_the_next(
    apps: dict[str, App], node: Service
) -> None:
    ids = apps["big"].chunks[:24]
    warm(node, *ids)
    for _ in range(5):
        c = Raw(node.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(b"".join(get(chunk(h)) for h in ids) * 4)  # ~6 MiB of answers owed
        c.sock.recv(100)
        # Reset rather than close: the edge's next write fails at once.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    c = Raw(node.port)
    try:
        for h in ids[:3]:
            c.send(get(chunk(h), "Accept-Encoding: zstd"))
            verify_chunk(h, c.response())
    finally:
        c.close()
    assert node.proc is not None and node.proc.poll() is None


def test_a_client_that_reads_nothing_is_held_by_flow_control(apps: dict[str, App], node: Service) -> None:
    """Pipelining far more than the edge answers ahead: it stops reading instead of
    buffering answers without bound, and the connection still completes once read."""
    ids = apps["big"].chunks[:8]
    warm(node, *ids)
    c = Raw(node.port)
    try:
        c.sock.setblocking(False)
        sent = 0
        payload = b"".join(get(chunk(h)) for h in ids) * 40_000  # 320,000 requests, ~20 GiB owed
        with pytest.raises((BlockingIOError, ssl.SSLWantWriteError)):
            while sent < len(payload):
                sent += c.sock.send(payload[sent : sent + 65536])
        c.sock.setblocking(True)
        c.sock.settimeout(20)
        assert sent < len(payload)  # the edge stopped reading: TCP pushed back
        for i in range(200):  # and answers, in order, as they are read
            verify_chunk(ids[i % len(ids)], c.response())
    finally:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    assert node.proc is not None and node.proc.poll() is None


# -- large bodies, sent from sealed memfds -----------------------------------------------------


def memfds(node: Service) -> int:
    """How many sealed bodies (edge.objects.Sealed) the edge process holds open."""
    assert node.proc is not None
    n = 0
    for fd in os.listdir(f"/proc/{node.proc.pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{node.proc.pid}/fd/{fd}").startswith("/memfd:minicdn-body")
    return n


def large(node: Service, app: App, count: int) -> list[str]:
    """``count`` chunks whose zstd frame is large enough to be sealed, warmed."""
    c = Raw(node.port)
    found = []
    try:
        for h in app.chunks:
            if app.raw[h] >= SEAL_MIN:
                c.send(get(chunk(h), "Accept-Encoding: zstd"))
                r = c.response()
                verify_chunk(h, r)
                if len(r.body) >= SEAL_MIN:
                    found.append(h)
    finally:
        c.close()
    assert len(found) >= count, f"the big app has {len(found)} chunks of at least {SEAL_MIN} B stored"
    return found[-count:]


def test_large_bodies_go_out_of_sealed_memfds_whole_and_in_order(apps: dict[str, App], node: Service) -> None:
    ids = large(node, apps["big"], 3)
    assert memfds(node) >= len(ids)  # the memory tier seals them, whichever path serves
    zstd = "Accept-Encoding: zstd"
    c = Raw(node.port)
    try:
        for _ in range(3):  # the first parsed in full, the next ones by the known-shape path
            for h in ids:
                c.send(get(chunk(h), zstd))
                r = c.response()
                verify_chunk(h, r)
                assert r.headers["content-encoding"] == "zstd" and r.headers["etag"] == f'"{h}"'
        c.send(b"".join(get(chunk(h), zstd) for h in ids))  # pipelined: one read, three answers
        frames = []
        for h in ids:
            r = c.response()
            verify_chunk(h, r)
            frames.append(r.body)
        # Pipelined, small (written through the transport) and sealed (sent on the socket)
        # answers interleaved: a sealed one must not overtake what the transport holds.
        small = apps["demo"].chunks[:3]
        warm(node, *small)
        mixed = [x for pair in zip(small, ids, strict=True) for x in pair] * 3
        c.send(b"".join(get(chunk(h), zstd) for h in mixed))
        for h in mixed:
            verify_chunk(h, c.response())
        h, frame = ids[0], frames[0]
        c.send(get(chunk(h), zstd, method="HEAD"))
        head = c.response(head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) == len(frame)
        c.send(get(chunk(h), zstd, "Range: bytes=40000-40009"))
        part = c.response()
        assert part.status == 206 and part.body == frame[40000:40010]
        c.send(get(chunk(h), zstd, f'If-None-Match: "{h}"'))
        assert c.response().status == 304
        c.send(get(chunk(h)))  # identity: decoded from the sealed frame
        r = c.response()
        assert "content-encoding" not in r.headers and hashlib.sha256(r.body).hexdigest() == h
    finally:
        c.close()


def test_a_slow_reader_of_sealed_bodies_gets_every_byte(apps: dict[str, App], node: Service) -> None:
    """The socket takes part of a body: the rest, and every answer after it, go through
    the transport's buffer in order."""
    ids = large(node, apps["big"], 3)
    c = Raw(node.port)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        order = ids * 60  # ~6 MiB: more than the socket buffers on both sides hold
        for h in order:  # one request at a time, none of the answers read yet
            c.send(get(chunk(h), "Accept-Encoding: zstd"))
            time.sleep(0.002)
        time.sleep(0.2)
        for h in order:
            verify_chunk(h, c.response())
        c.send(get(chunk(ids[0]), "Accept-Encoding: zstd"))  # and the connection goes on
        verify_chunk(ids[0], c.response())
    finally:
        c.close()
    assert node.proc is not None and node.proc.poll() is None


# -- HTTP/1.0 and Connection: close -----------------------------------------------------------


def test_http10_and_connection_close(apps: dict[str, App], node: Service) -> None:
    cid = apps["demo"].chunks[0]
    warm(node, cid)
    c = Raw(node.port)
    try:
        c.send(get(chunk(cid), version="HTTP/1.0"))
        r = c.response()
        verify_chunk(cid, r)
        assert r.headers["connection"] == "close" and c.closed()
    finally:
        c.close()
    c = Raw(node.port)
    try:
        for _ in range(2):
            c.send(get(chunk(cid), "Connection: keep-alive", version="HTTP/1.0"))
            r = c.response()
            verify_chunk(cid, r)
            assert r.headers["connection"] == "keep-alive"
        c.send(get(chunk(cid), "Connection: close"))
        r = c.response()
        assert r.headers["connection"] == "close" and c.closed()
    finally:
        c.close()


def test_http10_is_answered_in_http11_and_a_stream_to_it_is_not_chunked(
    apps: dict[str, App], node: Service
) -> None:
    """RFC 9112 §2.3: the status line says HTTP/1.1 whatever the request's version, on both
    paths (aiohttp's: common.http.Http11); but a stream of unknown length (a batch) to an
    HTTP/1.0 client is not chunked: it keeps aiohttp's HTTP/1.0 answer, delimited by close."""
    cid = apps["demo"].chunks[0]
    c = Raw(node.port)
    try:
        for path in (chunk(cid), "/healthz", "/v1/nowhere"):  # the data plane's, aiohttp's, an error
            c.send(get(path, "Connection: keep-alive", version="HTTP/1.0"))
            r = c.response()
            assert r.raw_head.startswith(b"HTTP/1.1 "), r.raw_head
            assert r.headers["connection"] == "keep-alive" and "transfer-encoding" not in r.headers
    finally:
        c.close()
    body = msgpack.packb([cid])
    c = Raw(node.port)
    try:
        c.send(
            f"POST /v1/chunks:batch HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        while c._fill():
            pass  # the answer ends when the connection does
        head, _, items = c.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 "), head
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower(), head
        assert [i[0] for i in batch_items(items)] == [cid]
    finally:
        c.close()


# -- what the fast path does not answer goes to aiohttp, on the same connection -------------------


def test_other_requests_fall_through_to_aiohttp_on_the_same_connection(
    apps: dict[str, App], node: Service, serving: str
) -> None:
    ids = apps["demo"].chunks[:3]
    warm(node, *ids)
    c = Raw(node.port)
    try:
        c.send(get(chunk(ids[0]), "Accept-Encoding: zstd"))
        verify_chunk(ids[0], c.response())
        c.send(get("/metrics"))
        m = c.response()
        assert m.status == 200 and b"minicdn_edge_requests_total" in m.body
        body = msgpack.packb(ids)
        c.send(
            f"POST /v1/chunks:batch HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        b = c.response()
        assert b.status == 200 and [i[0] for i in batch_items(b.body)] == ids
        c.send(get("/v1/chunks/NOT-AN-ID"))
        assert c.response().status == 400
        c.send(get(f"/v1/apps/{apps['demo'].name}/channels/release"))
        assert c.response().status == 200
        c.send(get(chunk(ids[1]), "Accept-Encoding: zstd") + get("/healthz") + get(chunk(ids[2])))
        verify_chunk(ids[1], c.response())
        h = c.response()
        assert h.status == 200 and "aiohttp" in h.headers["server"]
        last = c.response()
        verify_chunk(ids[2], last)
        if serving != "aiohttp":  # the data plane, plain or over TLS
            assert last.headers["server"] == "minicdn"  # the connection came back to the data plane
    finally:
        c.close()


def test_a_body_aiohttp_did_not_read_is_skipped_and_chunked_bodies_go_to_aiohttp(
    apps: dict[str, App], node: Service, serving: str
) -> None:
    cid = apps["demo"].chunks[0]
    warm(node, cid)
    c = Raw(node.port)
    try:
        # 413 before the body is read (a batch names at most 1024 ids): the edge answers,
        # then reads the body it announced past, and the connection goes on.
        body = b"\x00" * 200_000
        c.send(
            f"POST /v1/chunks:batch HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert c.response().status == 413
        c.send(body + get(chunk(cid), "Accept-Encoding: zstd"))
        r = c.response()
        verify_chunk(cid, r)
        if serving != "aiohttp":  # the data plane, plain or over TLS
            assert r.headers["server"] == "minicdn"  # the data plane has the connection back
        # A chunked body: only parsing it tells where it ends, so aiohttp keeps the connection.
        ids = msgpack.packb([cid])
        c.send(
            b"POST /v1/chunks:batch HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(ids):x}\r\n".encode()
            + ids
            + b"\r\n0\r\n\r\n"
        )
        b = c.response()
        assert b.status == 200 and [i[0] for i in batch_items(b.body)] == [cid]
        c.send(get(chunk(cid), "Accept-Encoding: zstd"))
        verify_chunk(cid, c.response())
    finally:
        c.close()


def test_a_pipeline_handed_over_mid_way_keeps_its_order(apps: dict[str, App], node: Service) -> None:
    ids = apps["demo"].chunks[:2]
    warm(node, *ids)
    c = Raw(node.port)
    try:
        c.send(get(chunk(ids[0]), "Accept-Encoding: zstd") + get("/readyz") + get(chunk(ids[1])))
        verify_chunk(ids[0], c.response())
        assert json.loads(c.response().body)["ready"] is True
        verify_chunk(ids[1], c.response())
    finally:
        c.close()


# -- metrics and the access log, on either path -------------------------------------------------


def test_object_requests_are_counted(
    origin: Service, apps: dict[str, App], tmp_path: Path, serving: str
) -> None:
    node = conf_edge(tmp_path, origin.url, serving).start()
    try:
        _count_object_requests(apps, node)
    finally:
        node.stop()


def _count_object_requests(apps: dict[str, App], node: Service) -> None:
    ids = apps["demo"].chunks
    warm(node, *ids)

    def counts() -> tuple[float, ...]:
        return (
            metric(node.url, "minicdn_edge_requests_total", 'route="chunk"'),
            metric(node.url, "minicdn_edge_hits_total", 'tier="memory"'),
            metric(node.url, "minicdn_edge_sent_bytes_total"),
            metric(node.url, "minicdn_edge_request_seconds_count"),
        )

    before = counts()
    c = Raw(node.port)
    sent = 0
    try:
        for h in ids * 3:
            c.send(get(chunk(h), "Accept-Encoding: zstd"))
            sent += len(c.response().body)
        c.send(get(chunk(ids[0]), method="HEAD"))
        c.response(head_only=True)
    finally:
        c.close()
    after = counts()
    n = len(ids) * 3 + 1
    assert after[0] - before[0] == n
    assert after[1] - before[1] == n
    assert after[2] - before[2] == sent
    # and the four scrapes of counts() before the last, when they were made on --listen
    # (the plain --metrics-listen of a TLS edge counts no requests of its own)
    assert after[3] - before[3] == n + (0 if isinstance(node, TlsService) else 4)


def test_the_access_log_has_object_requests(
    origin: Service, apps: dict[str, App], tmp_path: Path, serving: str
) -> None:
    log = tmp_path / "access.jsonl"
    svc = conf_edge(tmp_path, origin.url, serving, ("--access-log", str(log))).start()
    try:
        cid = apps["demo"].chunks[0]
        c = Raw(svc.port)
        c.send(get(chunk(cid), "Accept-Encoding: zstd", "User-Agent: conformance/1"))
        first = c.response()  # a miss
        c.send(get(chunk(cid), "Accept-Encoding: zstd", "User-Agent: conformance/1"))
        c.response()  # a hit
        c.send(get(chunk(cid), method="HEAD"))
        c.response(head_only=True)
        c.close()

        def lines() -> list[dict[str, object]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        eventually(lambda: len([r for r in lines() if r["path"] == chunk(cid)]) == 3, what="three log lines")
        mine = [r for r in lines() if r["path"] == chunk(cid)]
        assert [r["method"] for r in mine] == ["GET", "GET", "HEAD"]
        assert [r["bytes"] for r in mine] == [len(first.body), len(first.body), 0]
        assert all(r["status"] == 200 and r["remote"] == "127.0.0.1" for r in mine)
        assert mine[0]["ua"] == "conformance/1" and isinstance(mine[0]["ms"], float)
        assert {"ts", "remote", "method", "path", "status", "bytes", "ms", "ua"} <= set(mine[0])
    finally:
        svc.stop()
