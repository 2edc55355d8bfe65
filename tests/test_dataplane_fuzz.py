"""Property-based tests of what parses request input on the edge's fast path.

- ``common.http.parse_range``, pure: any header, any size → a range inside the body, None
  (ignore it), or Unsatisfiable; never another exception, and the same answer as a model
  written with Python's unbounded integers.
- ``edge.plane.body.Chunked``, pure: where it says a chunked body ends, llhttp (which
  aiohttp parses the same bytes with) ends it too, fed in any pieces.
- A real edge in front of a real origin with one published app, sent hypothesis-made
  requests over raw sockets (methods, targets valid and not, versions or none, Host, Range,
  conditionals, encodings, framing, Expect, Upgrade, bytes outside ASCII, or plain
  garbage), each followed on the same connection by ``GET /healthz``: the first answer is
  exactly one well-formed HTTP response with an allowed status, the JSON error body on an
  error, and then either the connection closes (when the answer said so) or /healthz is
  answered — so nothing was dropped, doubled or left half-read.  At the end the edge's log
  holds no traceback.  ``make test`` runs a bounded number of examples; ``make bench``
  (``--run-slow``) a long run.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.http import ByteRange, Unsatisfiable, parse_range
from edge.plane.body import BadBody, Chunked
from tests.conftest import DEMO
from tests.edge_support import App, edge, publish_app
from tests.procs import Service
from tests.test_edge_conformance import warm

# -- parse_range -------------------------------------------------------------------------------

DIGITS = st.one_of(
    st.integers(0, 300).map(str),
    st.integers(0, 10**30).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "0" * n + "7"),
    st.sampled_from(["²", "٣", "1²", "\u0661", "１", "1_0", " 1", "+1", "-1", ""]),
)
RANGES = st.one_of(
    st.builds(
        lambda u, a, b: f"{u}={a}-{b}",
        st.sampled_from(["bytes", "BYTES", " bytes ", "items"]),
        DIGITS,
        DIGITS,
    ),
    st.builds(lambda a, b, c, d: f"bytes={a}-{b},{c}-{d}", DIGITS, DIGITS, DIGITS, DIGITS),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)

T = TypeVar("T")


def model(header: str, size: int) -> ByteRange | type[Unsatisfiable] | None:
    """RFC 9110 §14.1.1 / §14.1.2 with unbounded integers, read off the grammar."""
    m = re.fullmatch(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)-([0-9]*)[ \t]*", header, re.IGNORECASE | re.ASCII)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    big = 10**6000

    def value(d: str) -> int:  # for arithmetic: past any size, one huge number is as good as another
        return int(d.lstrip("0") or "0") if len(d.lstrip("0")) <= 4000 else big

    def order(d: str) -> tuple[int, str]:  # for comparing: exact, however many digits
        digits = d.lstrip("0") or "0"
        return len(digits), digits

    if not first:
        if not last:
            return None
        suffix = value(last)
        if suffix == 0 or size == 0:
            return Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = value(first)
    if last and order(last) < order(first):
        return None
    if start >= size:
        return Unsatisfiable
    return ByteRange(start, min(value(last), size - 1) if last else size - 1)


@settings(max_examples=2000)
@given(RANGES, st.integers(0, 1 << 26))
@example("bytes=\u00b2-", 100)  # '²' passes str.isdigit; int() refuses it
@example("bytes=" + "9" * 5000 + "-", 100)  # int() refuses more than 4300 digits
@example("bytes=0-" + "9" * 5000, 100)
@example("bytes=" + "9" * 5000 + "-" + "9" * 4500, 0)  # first > last, both past int()'s digits: invalid
@example("bytes=" + "9" * 5000 + "-" + "9" * 5000, 0)  # equal: valid, and past the end
@example("bytes=-" + "9" * 5000, 100)
def test_parse_range_matches_the_model_and_never_raises_anything_else(header: str, size: int) -> None:
    try:
        got: ByteRange | type[Unsatisfiable] | None = parse_range(header, size)
    except Unsatisfiable:
        got = Unsatisfiable
    assert got == model(header, size)
    if isinstance(got, ByteRange):
        assert 0 <= got.start <= got.end < size


# -- the chunked body's end, against llhttp ------------------------------------------------------


class _Messages:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


class Refused:
    """llhttp refused the body (aiohttp answers 400 and closes: no end to agree on)."""


def llhttp_end(body: bytes) -> int | type[Refused] | None:
    """Where llhttp ends a chunked request body (fed byte by byte): None if not within it."""
    seen = _Messages()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(len(body)):
        try:
            parser.feed_data(body[i : i + 1])
        except httptools.HttpParserError:
            return Refused
        if seen.complete:
            return i + 1
    return None


def framer_end(body: bytes, cuts: list[int]) -> int | type[BadBody] | None:
    """Where Chunked ends ``body`` fed in the pieces ``cuts`` make."""
    framer = Chunked()
    at = 0
    try:
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            at += framer.take(body[a:b])
            if framer.done:
                return at
    except BadBody:
        return BadBody
    return None


CHUNK = st.binary(min_size=1, max_size=40)
EXT = st.sampled_from([b"", b";a=b", b";a", b';a="q"', b";" + b"e" * 1500])
TRAILER = st.lists(st.sampled_from([b"T: v\r\n", b"X-Y: 1\r\n", b"Bad\r\n"]), max_size=2)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    chunks = draw(st.lists(CHUNK, max_size=4))
    body = b"".join(
        draw(st.sampled_from(["x", "X", "0x"]))
        .replace("x", f"{len(c):x}")
        .replace("X", f"{len(c):X}")
        .encode()
        + draw(EXT)
        + b"\r\n"
        + c
        + b"\r\n"
        for c in chunks
    )
    body += draw(st.sampled_from([b"0", b"000"])) + draw(EXT) + b"\r\n" + b"".join(draw(TRAILER)) + b"\r\n"
    if draw(st.booleans()):  # a mutation: a byte changed, dropped or added
        i = draw(st.integers(0, len(body) - 1))
        kind = draw(st.sampled_from(["set", "drop", "add"]))
        byte = bytes([draw(st.sampled_from(b"\r\n ;0aZ\x00\xff"))])
        body = {
            "set": body[:i] + byte + body[i + 1 :],
            "drop": body[:i] + body[i + 1 :],
            "add": body[:i] + byte + body[i:],
        }[kind]
    return body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"\r\n"]))


@given(chunked_bodies(), st.lists(st.integers(0, 400), max_size=4))
def test_a_chunked_body_ends_where_llhttp_ends_it(body: bytes, cuts: list[int]) -> None:
    """Whenever both accept a body, they end it at the same byte; Chunked never waits for
    more than llhttp does (nor the reverse).  (Where one refuses, the connection closes.)"""
    ours = framer_end(body, sorted(min(c, len(body)) for c in cuts))
    if ours is BadBody:
        return  # refused here (stricter): aiohttp never sees it
    assert ours is None or isinstance(ours, int)
    theirs = llhttp_end(body if ours is None else body[:ours])
    assert theirs is Refused or ours == theirs, (body, ours, theirs)


# -- the edge, fuzzed over raw sockets ----------------------------------------------------------

HEX0 = "0" * 64


@dataclass
class Target:
    node: Service
    app: App


@pytest.fixture(scope="module")
def app(origin: Service) -> App:
    return publish_app(origin.url, "fuzz", DEMO)


@pytest.fixture(scope="module")
def target(origin: Service, app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    extra = ("--header-timeout", "1s", "--body-timeout", "1s", "--keepalive-timeout", "5s")
    svc = edge(tmp_path_factory.mktemp("fuzz-edge"), origin.url, extra=extra).start()
    try:
        warm(svc, *app.chunks[::2])  # half in memory (the inline hot path), half filled on demand
        yield Target(svc, app)
    finally:
        svc.stop()


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def sometimes(plausible: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Mostly ``plausible``, one time in five ``hostile``: most requests reach the answers
    a valid request gets (200, 206, 304, 416), the rest every way of being refused."""
    return st.integers(0, 4).flatmap(lambda n: hostile if n == 0 else plausible)


def header(name: str, values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: name.encode() + b": " + v)


METHODS = sometimes(
    st.sampled_from([b"GET"] * 6 + [b"HEAD"] * 2 + [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
    st.sampled_from([b"get", b"G\x00T", "GÉT".encode(), b"", b"CONNECT", b"TRACE"])
    | st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=8).map(str.encode),
)
VERSIONS = sometimes(
    st.just(b"HTTP/1.1"),
    st.sampled_from([b"HTTP/1.0", b"", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 "]),
)
HOSTS = sometimes(
    st.sampled_from([[b"Host: fuzz"], [b"Host: fuzz:8081"], [b"Host: [::1]:80"], [b"Host:"]]),
    st.sampled_from([[], [b"Host: a", b"Host: b"], [b"Host: a b"], [b"Host: \xff"], [b"Host: a/b"]]),
)
RANGE_VALUES = sometimes(
    st.builds(
        lambda a, b: f"bytes={a}-{b}".encode(),
        st.sampled_from(["", "0", "5", "100", "99999"]),
        st.sampled_from(["", "0", "9", "20", "99999"]),
    ),
    RANGES.map(lambda t: t.encode("utf-8"))
    | st.sampled_from(
        [b"bytes=\xb2-", b"bytes=0-\xb3", b"bytes=-" + b"9" * 5000, b"bytes=" + b"9" * 5000 + b"-"]
    ),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))  # one field line
CONDITIONALS = st.one_of(
    header("Range", RANGE_VALUES),
    header("If-None-Match", st.sampled_from([b"ETAG", b'"x"', b"*", b'W/"a", ETAG'])),
    header("If-Range", st.sampled_from([b"ETAG", b'"x"'])),
)
PLAUSIBLE_FIELDS = st.one_of(
    CONDITIONALS,
    header(
        "Accept-Encoding", st.sampled_from([b"zstd", b"gzip", b"gzip, zstd;q=0", b"*;q=0.5", b"zstd, dcz"])
    ),
    header("Connection", st.sampled_from([b"keep-alive", b"close"])),
    header("User-Agent", st.sampled_from([b"fuzz/1", b"\xe6\x89\x8b\xe6\x9c\xba"])),
)
HOSTILE_FIELDS = st.one_of(
    header("If-None-Match", VALUE),
    header("Accept-Encoding", st.sampled_from([b"zstd;q=1e999", b"zstd;q=nan", b"zstd;q=\xb2"]) | VALUE),
    header("Available-Dictionary", st.sampled_from([b":" + b"A" * 43 + b"=:", b":x:"]) | VALUE),
    header("Connection", st.sampled_from([b"upgrade", b"Upgrade, close"]) | VALUE),
    header("Upgrade", st.sampled_from([b"websocket", b"h2c"]) | VALUE),
    header("Expect", st.sampled_from([b"100-continue", b"telepathy"]) | VALUE),
    header("Content-Length", st.sampled_from([b"abc", b"-1", b"1 1", b"99999999999999999999"])),
    header("Transfer-Encoding", st.sampled_from([b"gzip", b"chunked, gzip", b"identity"])),
    header("Via", st.sampled_from([b"1.1 someone", b"1.1 x, 1.1 y"]) | VALUE),
    header("X-Minicdn-Peer", st.text(alphabet=TOKEN_CHARS + " ", max_size=24).map(str.encode) | VALUE),
    header("X-Minicdn-Peer-Proof", VALUE),
    st.builds(
        lambda n, v: n.encode() + b": " + v, st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=10), VALUE
    ),
    VALUE.map(lambda v: v.replace(b":", b"") or b"x"),  # a line without a colon
)
FIELDS = sometimes(PLAUSIBLE_FIELDS, HOSTILE_FIELDS)


@st.composite
def targets(draw: st.DrawFn, app: App) -> tuple[bytes, str]:
    """A request target, and the ETag of the object it names (if any)."""
    chunk = draw(st.sampled_from(app.chunks))
    objects = [f"/v1/chunks/{chunk}"] * 4 + [f"/v1/manifests/{app.manifest}"]
    others = [
        f"/v1/bundles/{HEX0}",
        f"/v1/chunks/{HEX0}",
        "/v1/chunks/ABC",
        "/v1/chunks/",
        "/v1/chunks:batch",
        "/v1/apps",
        "/v1/apps/fuzz",
        "/v1/apps/fuzz/channels/release",
        "/v1/apps/Bad!/channels/x",
        "/v1/admin/purge",
        "/metrics",
        "/healthz",
        "/readyz",
        "*",
        "/",
        f"http://fuzz/v1/chunks/{chunk}",
        f"/v1/chunks/%3{chunk[1:]}",
        f"/v1//chunks/{chunk}",
    ]
    base = draw(st.sampled_from(objects * 3 + others))
    suffix = draw(sometimes(st.sampled_from([b"", b"", b"?x=1"]), st.binary(max_size=6) | st.just(b"#f")))
    etag = f'"{base.rsplit("/", 1)[1]}"' if base in objects else '"x"'
    return base.encode() + suffix, etag


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Framing fields and the body that goes with them: always consistent, so that the
    edge never waits for more than it is sent."""
    kind = draw(st.sampled_from(["none"] * 6 + ["length", "chunked", "zero"]))
    data = draw(st.binary(max_size=64))
    if kind == "length":
        zeros = draw(st.sampled_from([0, 0, 5000]))
        return [b"Content-Length: " + b"0" * zeros + str(len(data)).encode()], data
    if kind == "chunked":
        pieces = [data[i : i + 16] for i in range(0, len(data), 16)]
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        return [b"Transfer-Encoding: chunked"], body
    if kind == "zero":
        return [b"Content-Length: 0"], b""
    return [], b""


@st.composite
def requests(draw: st.DrawFn, app: App) -> bytes:
    """Half of them plausible throughout, half with hostile parts, and now and then plain
    garbage."""
    if draw(st.integers(0, 19)) == 0:  # plain garbage with a head's end
        return draw(st.binary(max_size=200)) + b"\r\n\r\n"
    if draw(st.booleans()):
        method, version = draw(st.sampled_from([b"GET"] * 3 + [b"HEAD"])), b"HTTP/1.1"
        hosts = [b"Host: fuzz", *draw(st.lists(CONDITIONALS, max_size=2))]
        fields_of = PLAUSIBLE_FIELDS
    else:
        method, version, hosts, fields_of = draw(METHODS), draw(VERSIONS), draw(HOSTS), FIELDS
    target, etag = draw(targets(app))
    line = method + b" " + target + (b" " + version if version else b"")
    framing, body = draw(bodies())
    fields = [f.replace(b"ETAG", etag.encode()) for f in draw(st.lists(fields_of, max_size=4))]
    order = draw(st.permutations([*hosts, *fields, *framing]))
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in order) + b"\r\n" + body


FOLLOW_UP = b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
# aiohttp (the origin) writes the request's version in its status line: a refused request
# line without a version gets "HTTP/0.9 400", an HTTP/2.0 one "HTTP/2.0 505" (see below).
STATUS_LINE = re.compile(rb"HTTP/(1\.[01]|0\.9|2\.0) ([1-5][0-9]{2}) [^\r\n]*")
ALLOWED = {200, 204, 206, 304, 400, 401, 404, 405, 408, 411, 413, 414, 416, 417, 431, 505}


@dataclass
class Answer:
    status: int
    head: bytes
    headers: dict[bytes, bytes]
    body: bytes


def read_answer(data: bytes, method: str) -> tuple[Answer, bytes]:
    """One response from the start of ``data`` (interim 1xx skipped), and what follows."""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"no complete response head in {data[:300]!r}"
        lines = head.split(b"\r\n")
        m = STATUS_LINE.fullmatch(lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name and name == name.strip(), f"bad field line {line!r}"
            assert name.lower() not in headers or name.lower() == b"set-cookie", f"repeated {name!r}"
            headers[name.lower()] = value.strip()
        status = int(m.group(2))
        assert m.group(1) in (b"1.0", b"1.1") or status in (400, 505), lines[0]
        if status >= 200:
            break
        data = rest
    if method == "HEAD" or status in (204, 304):
        return Answer(status, head, headers, b""), rest
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            assert sep, "chunked answer cut short"
            size = int(size_line.split(b";")[0], 16)
            body, rest = body + rest[:size], rest[size + 2 :]
            if size == 0:
                return Answer(status, head, headers, body), rest
    assert b"content-length" in headers, f"an answer without framing: {head!r}"
    n = int(headers[b"content-length"])
    assert len(rest) >= n, f"body cut short: {len(rest)} of {n} bytes"
    return Answer(status, head, headers, rest[:n]), rest[n:]


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and the follow-up on one connection; everything the edge sent until
    it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(OSError):  # refused and closed before all was sent: what came back counts
            sock.sendall(request + FOLLOW_UP)
        out = b""
        while True:
            try:
                piece = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not piece:
                break
            out += piece
        return out


def check_exchange(request: bytes, out: bytes) -> None:
    method = request.split(b" ", 1)[0].decode("latin-1")
    first, rest = read_answer(out, method)
    assert first.status in ALLOWED, (first.status, request[:300], first.head)
    line = request.split(b"\r\n", 1)[0]
    if first.status == 505:
        assert re.search(rb" HTTP/[2-9]\.[0-9]$", line), line
    if not first.head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        assert not re.search(rb" HTTP/1\.[01]$", line), (line, first.head)
    connection = first.headers.get(b"connection", b"").lower()
    closes = connection == b"close" or (
        not first.head.startswith(b"HTTP/1.1") and connection != b"keep-alive"
    )
    if method == "HEAD" and closes and first.status >= 400 and rest:
        # A head the parser refused does not tell it was a HEAD: its error body may follow,
        # and then the connection closes.
        first, rest = read_answer(out, "GET")
    if first.status >= 400 and first.body:
        assert first.headers.get(b"content-type", b"").startswith(b"application/json"), first.head
        err = json.loads(first.body)
        assert set(err) == {"error", "message"}, err
    if rest:
        follow, tail = read_answer(rest, "GET")
        assert follow.status == 200 and json.loads(follow.body) == {"ok": True} and not tail, (
            request[:300],
            rest[:300],
        )
    else:  # closed after the first answer: it said so, or it was HTTP/1.0, or an upgrade
        upgrade = b"CONNECT " in line or re.search(rb"(?i)\r\nconnection:[^\r]*upgrade", request)
        assert closes or upgrade, (request[:300], first.head)


def fuzz(target: Target, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(target.app))
    def one(request: bytes) -> None:
        check_exchange(request, exchange(target.node.port, request))

    one()
    out = target.node.output()
    assert "Traceback" not in out and " ERROR " not in out, out[-3000:]
    assert target.node.proc is not None and target.node.proc.poll() is None


def test_fuzzed_requests_each_get_one_well_formed_answer(target: Target) -> None:
    fuzz(target, 600)


def test_fuzzed_requests_to_the_origin_each_get_one_well_formed_answer(origin: Service, app: App) -> None:
    """The origin is aiohttp alone: the same oracle holds for its parser, router,
    middlewares and JsonErrors."""
    fuzz(Target(origin, app), 300)


@pytest.mark.slow
def test_fuzzed_requests_each_get_one_well_formed_answer_long(target: Target) -> None:
    fuzz(target, 20_000)


@pytest.mark.slow
def test_fuzzed_requests_to_the_origin_each_get_one_well_formed_answer_long(
    origin: Service, app: App
) -> None:
    fuzz(Target(origin, app), 5_000)
