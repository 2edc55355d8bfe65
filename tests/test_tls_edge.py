"""``minicdn edge --tls-cert --tls-key``: real TLS on loopback, a CA made in the test.

The data plane over TLS (memory hits inline, bodies that would be sent with sendfile read
through the TLS transport, pipelining, HEAD, Range, 304), handshakes and their metric,
resumption, the plain metrics listener, hostile TLS input (a record cut short, a client
that never finishes its handshake), SIGHUP rotation under load with two workers (no failed
request; a bad pair keeps the old one), and certificates an edge's upstream client and
``minicdn fetch`` must refuse (wrong host, expired, unknown CA)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.ring import Ring
from tests.conftest import batch, http
from tests.edge_support import App, eventually, publish_app, random_app
from tests.procs import MINICDN, Service, free_port, metric
from tests.test_tls_pki import Pair, Pki, peer_serial

ZSTD = "Accept-Encoding: zstd\r\n"


@dataclass
class TlsEdge:
    svc: Service  # its url is the plain metrics listener (readiness, /metrics)
    port: int  # the TLS listener

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.svc.url, name, labels)

    def handshakes(self, outcome: str, resumed: str = "") -> float:
        labels = f'outcome="{outcome}"' + (f',resumed="{resumed}"' if resumed else "")
        return self.metric("minicdn_edge_tls_handshakes_total", labels)


def tls_edge(
    tmp: Path, pair: Pair, *upstreams: str, extra: tuple[str, ...] = (), name: str = "tls"
) -> TlsEdge:
    port, mport = free_port(), free_port()
    args = ["edge", "--cache-dir", str(tmp / f"{name}-{port}"), "--listen", f"127.0.0.1:{port}",
            "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
            "--metrics-listen", f"127.0.0.1:{mport}", *extra]  # fmt: skip
    for u in upstreams:
        args += ["--upstream", u]
    return TlsEdge(
        Service(args, mport, tmp / f"{name}-{port}.log", env={"MINICDN_TOKEN": "test-token"}), port
    )


@contextlib.contextmanager
def serving(edge: TlsEdge) -> Iterator[TlsEdge]:
    edge.svc.start()
    try:
        yield edge
    finally:
        edge.svc.stop()


def client_context(pki: Pki, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def connect(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
    except BaseException:
        raw.close()
        raise


class Reader:
    """Answers read off one connection, in order (pipelining)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.file = sock.makefile("rb")

    def answer(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        fields: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if head_only or status == 304:
            return status, fields, b""
        body = self.file.read(int(fields["content-length"]))
        return status, fields, body


def get(
    sock: ssl.SSLSocket, target: str, fields: str = ZSTD, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n".encode())
    return Reader(sock).answer(head_only=method == "HEAD")


def raw_of(frame: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(frame)


# -- one TLS edge in front of the origin ------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls-pki"))


@pytest.fixture(scope="module")
def app(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> App:
    tmp = tmp_path_factory.mktemp("tls-app")
    return publish_app(origin.url, "tlsapp", random_app(tmp / "app", 0.5, seed=31))


@pytest.fixture(scope="module")
def edge(origin: Service, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEdge]:
    tmp = tmp_path_factory.mktemp("tls-edge")
    e = tls_edge(tmp, pki.issue("edge"), origin.url, extra=("--header-timeout", "1s"))
    with serving(e):
        yield e


def warm(edge: TlsEdge, pki: Pki, ids: list[str]) -> None:
    with connect(client_context(pki), edge.port) as s:
        for hexid in ids:
            status, _, body = get(s, f"/v1/chunks/{hexid}")
            assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == hexid


def test_handshake_alpn_and_chunks_over_https(edge: TlsEdge, pki: Pki, app: App) -> None:
    before = edge.metric("minicdn_edge_hits_total", 'tier="memory"')
    with connect(client_context(pki), edge.port) as s:
        assert s.version() == "TLSv1.3"
        assert s.selected_alpn_protocol() == "http/1.1"
        for _ in range(2):  # a fill, then a memory hit (the data plane's inline answer)
            status, fields, body = get(s, f"/v1/chunks/{app.chunks[0]}")
            assert status == 200, body
            assert fields["content-encoding"] == "zstd"
            assert hashlib.sha256(raw_of(body)).hexdigest() == app.chunks[0]
    assert edge.metric("minicdn_edge_hits_total", 'tier="memory"') >= before + 1
    assert edge.handshakes("ok") >= 1


def test_tls12_when_allowed_and_aiohttp_alone_over_tls(
    origin: Service, pki: Pki, app: App, tmp_path: Path
) -> None:
    """--tls-min-version 1.2, and --no-fast-path (every request answered by aiohttp)."""
    e = tls_edge(
        tmp_path, pki.issue("nofast"), origin.url, extra=("--tls-min-version", "1.2", "--no-fast-path")
    )
    with serving(e), connect(client_context(pki, maximum=ssl.TLSVersion.TLSv1_2), e.port) as s:
        assert s.version() == "TLSv1.2" and s.selected_alpn_protocol() == "http/1.1"
        for _ in range(2):
            status, _, body = get(s, f"/v1/chunks/{app.chunks[0]}")
            assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == app.chunks[0]
        assert e.handshakes("ok", "false") == 1


def test_tls12_is_refused_by_default_and_counted(edge: TlsEdge, pki: Pki) -> None:
    failed = edge.handshakes("failed")
    with pytest.raises(ssl.SSLError):
        connect(client_context(pki, maximum=ssl.TLSVersion.TLSv1_2), edge.port).close()
    eventually(lambda: edge.handshakes("failed") >= failed + 1, what="the refused handshake counted")


def test_a_second_connection_resumes_the_first_ones_session(edge: TlsEdge, pki: Pki, app: App) -> None:
    ctx = client_context(pki)
    resumed = edge.handshakes("ok", "true")
    with connect(ctx, edge.port) as first:
        # TLS 1.3 tickets arrive after the handshake: an answer read makes sure they have.
        assert get(first, f"/v1/chunks/{app.chunks[0]}")[0] == 200
        session = first.session
        assert session is not None and not first.session_reused
    with connect(ctx, edge.port, session=session) as second:
        assert second.session_reused
        assert get(second, f"/v1/chunks/{app.chunks[0]}")[0] == 200
    eventually(lambda: edge.handshakes("ok", "true") >= resumed + 1, what="a resumed handshake counted")


def test_memory_hits_over_tls_get_head_range_304_and_sealed_bodies(edge: TlsEdge, pki: Pki, app: App) -> None:
    big = max(app.chunks, key=lambda c: app.raw[c])  # a body the plain path sends with sendfile
    assert app.raw[big] >= 32 << 10
    small = app.chunks[1]
    warm(edge, pki, [big, small])
    hits = edge.metric("minicdn_edge_hits_total", 'tier="memory"')
    with connect(client_context(pki), edge.port) as s:
        status, fields, frame = get(s, f"/v1/chunks/{big}")
        assert status == 200 and hashlib.sha256(raw_of(frame)).hexdigest() == big
        assert fields["etag"] == f'"{big}"'
        status, fields, body = get(s, f"/v1/chunks/{big}", method="HEAD")
        assert status == 200 and body == b"" and int(fields["content-length"]) == len(frame)
        status, fields, body = get(s, f"/v1/chunks/{big}", ZSTD + "Range: bytes=100-40099\r\n")
        assert status == 206 and body == frame[100:40100]
        assert fields["content-range"] == f"bytes 100-40099/{len(frame)}"
        status, _, body = get(s, f"/v1/chunks/{big}", ZSTD + f'If-None-Match: "{big}"\r\n')
        assert status == 304 and body == b""
        status, _, body = get(s, f"/v1/chunks/{big}", ZSTD + "Range: bytes=999999-\r\n")
        assert status == 416 and json.loads(body)["error"] == "range_not_satisfiable"
        # Not zstd: the raw bytes (decoded for this client).
        status, _, body = get(s, f"/v1/chunks/{small}", "")
        assert status == 200 and hashlib.sha256(body).hexdigest() == small
    assert edge.metric("minicdn_edge_hits_total", 'tier="memory"') >= hits + 3


def test_pipelined_requests_over_tls_answer_in_order(edge: TlsEdge, pki: Pki, app: App) -> None:
    ids = app.chunks[:12]
    big = max(app.chunks, key=lambda c: app.raw[c])
    ids.append(big)
    warm(edge, pki, ids[:6])  # half memory hits, half fills: the answers still leave in order
    with connect(client_context(pki), edge.port) as s:
        heads = "".join(f"GET /v1/chunks/{c} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ZSTD}\r\n" for c in ids)
        s.sendall(heads.encode() + b"GET /v1/chunks/zz HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(s)
        for c in ids:
            status, _, body = reader.answer()
            assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == c
        status, _, body = reader.answer()  # lent to aiohttp: a bad id, JSON
        assert status == 400 and json.loads(body)["error"] == "invalid_id"
        # Still usable after a lent request: the connection came back to the data plane.
        assert get(s, f"/v1/chunks/{ids[0]}")[0] == 200


def test_a_client_that_stops_reading_gets_every_byte_once_it_reads_again(
    edge: TlsEdge, pki: Pki, app: App
) -> None:
    """Answers that fill the socket: OpenSSL must be given an unfinished write again, the
    connection is told to pause, and everything arrives, in order, once the client reads."""
    big = max(app.chunks, key=lambda c: app.raw[c])
    warm(edge, pki, [big])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", edge.port))
    with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        n = 32
        s.sendall(f"GET /v1/chunks/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ZSTD}\r\n".encode() * n)
        threading.Event().wait(1.0)  # the edge writes until the socket is full, then waits
        reader = Reader(s)
        for _ in range(n):
            status, _, body = reader.answer()
            assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == big
        assert get(s, f"/v1/chunks/{big}", method="HEAD")[0] == 200


def test_answers_held_back_by_a_slow_reader_all_leave_before_the_close(
    edge: TlsEdge, pki: Pki, app: App
) -> None:
    """Pipelined answers the socket cannot take at once, the last one asked with
    ``Connection: close``: the close waits for every byte of them (then close_notify), also
    when it comes while the connection resumes writing."""
    big = max(app.chunks, key=lambda c: app.raw[c])
    warm(edge, pki, [big])
    for _ in range(3):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", edge.port))
        ctx = client_context(pki)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as s:
            one = f"GET /v1/chunks/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ZSTD}"
            n = 24
            s.sendall(((one + "\r\n") * (n - 1) + one + "Connection: close\r\n\r\n").encode())
            threading.Event().wait(0.5)  # the edge fills the socket and is told to pause
            reader = Reader(s)
            for i in range(n):
                status, fields, body = reader.answer()
                assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == big, i
                threading.Event().wait(0.02)  # slowly: the socket is full whenever the edge writes
            assert fields["connection"] == "close"
            assert reader.file.read(1) == b""  # then close_notify: a bare FIN raises SSLEOFError


def test_an_answer_before_a_close_arrives_whole_then_close_notify(edge: TlsEdge, pki: Pki, app: App) -> None:
    """``Connection: close`` with more requests already sent behind it (which the edge does
    not read): the answer arrives whole, then the session ends with close_notify, not a
    reset (the edge lingers on what the client sent)."""
    big = max(app.chunks, key=lambda c: app.raw[c])
    warm(edge, pki, [big])
    for _ in range(5):
        raw = socket.create_connection(("127.0.0.1", edge.port), timeout=20)
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as s:
            one = f"GET /v1/chunks/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ZSTD}"
            s.sendall((one + "Connection: close\r\n\r\n" + (one + "\r\n") * 20).encode())
            status, fields, body = Reader(s).answer()
            assert status == 200 and fields["connection"] == "close"
            assert hashlib.sha256(raw_of(body)).hexdigest() == big
            assert s.recv(1) == b""  # close_notify (a reset, or a FIN without it, would raise)


def test_the_metrics_listener_is_plain_and_serves_only_metrics_and_probes(edge: TlsEdge, app: App) -> None:
    r = http("GET", edge.svc.url + "/metrics")
    assert r.status == 200 and b"minicdn_edge_tls_handshakes_total" in r.body
    assert http("GET", edge.svc.url + "/readyz").status == 200
    r = http("GET", edge.svc.url + f"/v1/chunks/{app.chunks[0]}")
    assert r.status == 404 and json.loads(r.body)["error"] == "not_found"
    # The TLS listener speaks nothing but TLS: a plain request is a failed handshake.
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not s.recv(1024).startswith(b"HTTP/")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def test_a_client_that_never_finishes_its_handshake_is_timed_out_and_counted(edge: TlsEdge) -> None:
    failed = edge.handshakes("failed")
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as silent:
        assert closed_within(silent, 8.0)  # --header-timeout 1s bounds the handshake
    # Half a ClientHello, then silence.
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as slow:
        slow.sendall(hello[: len(hello) // 2])
        assert closed_within(slow, 8.0)
    eventually(lambda: edge.handshakes("failed") >= failed + 2, what="both counted as failed")


def _client_hello() -> bytes:
    """The first flight a real client sends (a ClientHello record), through memory BIOs."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_truncated_records_after_the_handshake_cost_only_their_connection(
    edge: TlsEdge, pki: Pki, app: App
) -> None:
    ctx = client_context(pki)
    for cut in (1, 3, 5, 20):
        with connect(ctx, edge.port) as s:
            assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
            # A record header that promises more than comes, straight on the TCP socket.
            raw = socket.socket(fileno=os.dup(s.fileno()))
            try:
                raw.sendall((bytes([23, 3, 3, 0x40, 0x00]) + b"\x00" * 15)[:cut])
                raw.shutdown(socket.SHUT_WR)
                assert closed_within(raw, 8.0)
            finally:
                raw.close()
    # Garbage where a handshake should be.
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as g:
        g.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(300))
        assert closed_within(g, 8.0)
    with connect(ctx, edge.port) as s:
        assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
        s.unwrap()  # close_notify: the session ends both ways
    with connect(ctx, edge.port) as s:
        assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
    log = edge.svc.output()
    assert "Traceback" not in log and "has no effect when using ssl" not in log


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.one_of(
        st.binary(min_size=1, max_size=600),  # anything
        st.builds(  # a record header (any type, TLS 1.2's version) then anything
            lambda kind, length, rest: bytes([kind, 3, 3]) + length.to_bytes(2, "big") + rest,
            st.integers(0, 255),
            st.integers(0, 0xFFFF),
            st.binary(max_size=300),
        ),
    ),
    answered=st.booleans(),
)
def test_hostile_bytes_after_the_handshake_cost_only_their_connection(
    edge: TlsEdge, pki: Pki, app: App, junk: bytes, answered: bool
) -> None:
    """Whatever a client puts on the TCP stream once the handshake is done, before or
    after a request, it closes that connection only; the edge answers the next one."""
    ctx = client_context(pki)
    with connect(ctx, edge.port) as s:
        if answered:
            assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
        raw = socket.socket(fileno=os.dup(s.fileno()))
        try:
            raw.sendall(junk)
            raw.shutdown(socket.SHUT_WR)
            assert closed_within(raw, 8.0)
        finally:
            raw.close()
    with connect(ctx, edge.port) as s:
        assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200


# -- SIGHUP: rotation under load, with two workers --------------------------------------------


def install(pair: Pair, cert: Path, key: Path) -> None:
    """Put ``pair`` in place the way a rotation job would: each file replaced whole."""
    for src, dst in ((pair.cert, cert), (pair.key, key)):
        tmp = dst.with_suffix(".new")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


class Load:
    """A client requesting without pause over new connections (and one kept-alive
    connection opened before anything changes), counting what failed."""

    def __init__(self, ctx: ssl.SSLContext, port: int, hexid: str) -> None:
        self.ctx, self.port, self.hexid = ctx, port, hexid
        self.ok = 0
        self.failures: list[str] = []
        self.serials: set[int] = set()
        self.kept = connect(ctx, port)
        self.kept_serial = peer_serial(self.kept)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.kept.close()

    def _one(self, sock: ssl.SSLSocket) -> None:
        status, _, body = get(sock, f"/v1/chunks/{self.hexid}")
        if status != 200 or hashlib.sha256(raw_of(body)).hexdigest() != self.hexid:
            self.failures.append(f"status {status}")
        else:
            self.ok += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self.ctx, self.port) as s:
                    self.serials.add(peer_serial(s))
                    self._one(s)
                self._one(self.kept)
            except (OSError, AssertionError, KeyError, ValueError) as exc:
                self.failures.append(repr(exc))


def serials_of_new_connections(ctx: ssl.SSLContext, port: int, n: int = 24) -> set[int]:
    """The certificates ``n`` new connections see: with SO_REUSEPORT the kernel spreads them
    by source port, so 24 of them miss one of two workers with odds of 2 in 2**24."""
    seen = set()
    for _ in range(n):
        with connect(ctx, port) as s:
            seen.add(peer_serial(s))
    return seen


def test_sighup_rotates_the_pair_in_every_worker_under_load_and_refuses_a_bad_one(
    origin: Service, pki: Pki, app: App, tmp_path: Path
) -> None:
    first, second, stray = pki.issue("rot1"), pki.issue("rot2"), pki.issue("rot3")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert, key)
    e = tls_edge(tmp_path, Pair(cert, key, first.serial), origin.url, extra=("--workers", "2"))
    ctx = client_context(pki)
    with serving(e):
        assert e.svc.proc is not None
        supervisor = e.svc.proc.pid
        assert serials_of_new_connections(ctx, e.port) == {first.serial}
        with connect(ctx, e.port) as s:  # a session made before the rotation
            assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
            session = s.session
        with Load(ctx, e.port, app.chunks[0]) as load:
            eventually(lambda: load.ok >= 20, what="the load under way")
            install(second, cert, key)
            os.kill(supervisor, signal.SIGHUP)
            eventually(
                lambda: serials_of_new_connections(ctx, e.port) == {second.serial},
                what="every worker serving the new pair",
            )
            # A half-done rotation (the new certificate with another key) is refused by
            # every process (the supervisor and both workers), and the pair in force serves on.
            install(Pair(second.cert, stray.key, 0), cert, key)
            os.kill(supervisor, signal.SIGHUP)
            eventually(lambda: e.svc.output().count("TLS reload refused") >= 3, what="three refusals logged")
            assert serials_of_new_connections(ctx, e.port) == {second.serial}
            done = load.ok
            eventually(lambda: load.ok >= done + 20, what="the load going on")
        assert load.failures == [], load.failures[:5]
        assert load.kept_serial == first.serial  # the connection opened before kept serving throughout
        assert {first.serial, second.serial} <= load.serials
        # The ticket keys are the node's, and a reload keeps them: a session made before
        # the rotation resumes on whichever worker a new connection lands.
        for _ in range(8):
            with connect(ctx, e.port, session=session) as s:
                assert s.session_reused
                assert get(s, f"/v1/chunks/{app.chunks[0]}")[0] == 200
        # (the other worker's count arrives with its next snapshot, within a second)
        eventually(lambda: e.handshakes("ok", "true") >= 8, what="the resumed handshakes of both workers")
    assert "Traceback" not in e.svc.output()


# -- https upstreams, peers and minicdn fetch: certificates verified -------------------------


def public_key_file(origin: Service) -> Path:
    return Path(origin.args[origin.args.index("--signing-key") + 1]).parent / "public.key"


def test_an_edge_fills_from_an_https_upstream_signed_by_its_tls_ca(
    origin: Service, pki: Pki, app: App, tmp_path: Path
) -> None:
    shield = tls_edge(tmp_path, pki.issue("shield"), origin.url, name="shield")
    with serving(shield):
        pop = Service(
            ["edge", "--cache-dir", str(tmp_path / "pop"), "--listen", f"127.0.0.1:{(p := free_port())}",
             "--upstream", shield.https, "--tls-ca", str(pki.ca_file)],
            p, tmp_path / "pop.log",
        )  # fmt: skip
        with contextlib.ExitStack() as stack:
            pop.start()
            stack.callback(pop.stop)
            # A GET (the lean client) and a batch (aiohttp's session) both cross TLS.
            r = http("GET", f"{pop.url}/v1/chunks/{app.chunks[2]}")
            assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == app.chunks[2]
            answers = batch(pop.url, app.chunks[3:9])
            assert [a[0] for a in answers] == app.chunks[3:9]
            assert all(hashlib.sha256(raw_of(a[1])).hexdigest() == a[0] for a in answers)  # type: ignore[arg-type]
            assert metric(pop.url, "minicdn_edge_upstream_errors_total") == 0
    assert shield.svc.output().count("Traceback") == 0


def test_an_upstream_certificate_that_is_expired_for_another_host_or_unknown_is_refused(
    origin: Service, pki: Pki, app: App, tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "stranger", name="unknown CA")
    bad = [
        tls_edge(tmp_path, pki.issue("expired", expired=True), origin.url, name="expired"),
        tls_edge(tmp_path, pki.issue("wronghost", hosts=("other.example",)), origin.url, name="wronghost"),
        tls_edge(tmp_path, stranger.issue("unknown"), origin.url, name="unknown"),
    ]
    with contextlib.ExitStack() as stack:
        for b in bad:
            b.svc.start()
            stack.callback(b.svc.stop)
        args = ["edge", "--cache-dir", str(tmp_path / "pop"), "--listen", f"127.0.0.1:{(p := free_port())}",
                "--tls-ca", str(pki.ca_file)]  # fmt: skip
        for b in bad:
            args += ["--upstream", b.https]
        pop = Service(args, p, tmp_path / "pop.log")
        pop.start()
        stack.callback(pop.stop)
        # Every upstream refused: were any of them taken, this would be a 200.
        r = http("GET", f"{pop.url}/v1/chunks/{app.chunks[0]}")
        assert r.status == 502, r.body
        assert metric(pop.url, "minicdn_edge_upstream_errors_total", 'reason="connect"') >= 3
        r = http("POST", f"{pop.url}/v1/chunks:batch", msgpack.packb(app.chunks[:2]))
        assert r.status == 502, r.body
        assert metric(pop.url, "minicdn_edge_upstream_errors_total", 'reason="connect"') >= 6
        for b in bad:
            assert b.handshakes("failed") >= 1


def test_a_ring_of_tls_edges_asks_owners_over_https(
    origin: Service, pki: Pki, app: App, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(2)]
    urls = [f"https://127.0.0.1:{p}" for p in ports]
    members: list[TlsEdge] = []
    for i, p in enumerate(ports):
        pair = pki.issue(f"member{i}")
        mport = free_port()
        args = ["edge", "--cache-dir", str(tmp_path / f"m{i}"), "--listen", f"127.0.0.1:{p}",
                "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-ca", str(pki.ca_file),
                "--metrics-listen", f"127.0.0.1:{mport}", "--peer-check-interval", "200ms",
                "--upstream", origin.url, *[a for u in urls for a in ("--peer", u)]]  # fmt: skip
        members.append(
            TlsEdge(Service(args, mport, tmp_path / f"m{i}.log", env={"MINICDN_TOKEN": "test-token"}), p)
        )
    with contextlib.ExitStack() as stack:
        for m in members:
            m.svc.start()
            stack.callback(m.svc.stop)
        eventually(
            lambda: all(m.metric("minicdn_edge_ring_size") == 2 for m in members),
            what="a ring of 2 over https",
        )
        ring = Ring(urls)
        # A chunk the second member owns, asked of the first: it goes to its owner over TLS.
        hexid = next(c for c in app.chunks if ring.owner(f"chunks/{c}") == urls[1])
        with connect(client_context(pki), members[0].port) as s:
            status, _, body = get(s, f"/v1/chunks/{hexid}")
        assert status == 200 and hashlib.sha256(raw_of(body)).hexdigest() == hexid
        assert members[0].metric("minicdn_edge_upstream_requests_total", 'kind="peer"') >= 1
        assert members[0].metric("minicdn_edge_peer_errors_total") == 0
        assert (
            members[1].metric("minicdn_edge_hits_total") + members[1].metric("minicdn_edge_misses_total") >= 1
        )


def fetch(edge: str, origin: Service, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MINICDN, "fetch", "tlsapp", "--edge", edge, "--public-key", str(public_key_file(origin)),
         "--out", str(out), "--retry-for", "0", "--timeout", "10s", *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_minicdn_fetch_over_https_trusts_its_ca_and_refuses_bad_certificates(
    origin: Service, edge: TlsEdge, pki: Pki, app: App, tmp_path: Path
) -> None:
    done = fetch(edge.https, origin, tmp_path / "ok", "--ca", str(pki.ca_file))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / "app.json").exists()
    # The system's trust store alone does not know the test CA.
    refused = fetch(edge.https, origin, tmp_path / "noca")
    assert refused.returncode == 3 and "certificate" in refused.stderr.lower(), refused.stderr
    wrong = tls_edge(tmp_path, pki.issue("fetch-wronghost", hosts=("other.example",)), origin.url, name="fw")
    with serving(wrong):
        refused = fetch(wrong.https, origin, tmp_path / "wrong", "--ca", str(pki.ca_file))
    assert refused.returncode == 3 and "certificate" in refused.stderr.lower(), refused.stderr
    assert not (tmp_path / "wrong").exists()
    usage = fetch(edge.https, origin, tmp_path / "badca", "--ca", str(tmp_path / "missing.pem"))
    assert usage.returncode == 2 and "--ca" in usage.stderr, usage.stderr


def test_the_edge_refuses_a_bad_pair_at_start_naming_the_flag(pki: Pki, tmp_path: Path) -> None:
    good, other = pki.issue("start-a"), pki.issue("start-b")
    for args, flag in (
        (["--tls-cert", str(good.cert)], "--tls-cert and --tls-key"),
        (["--tls-cert", str(good.cert), "--tls-key", str(other.key)], "--tls-key"),
        (["--tls-cert", str(tmp_path / "nope"), "--tls-key", str(good.key)], "--tls-cert"),
        (["--tls-ca", str(tmp_path / "nope")], "--tls-ca"),
    ):
        r = subprocess.run(
            [*MINICDN, "edge", "--cache-dir", str(tmp_path / "c"), "--listen", f"127.0.0.1:{free_port()}",
             "--upstream", "http://127.0.0.1:9", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2 and f"minicdn: config: {flag}" in r.stderr, (args, r.stderr)
