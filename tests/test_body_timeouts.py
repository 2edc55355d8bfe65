"""Request bodies under a pace (common.http.BodyPace: ``--body-timeout`` plus a second per
``--body-min-rate`` bytes), on the edge (its data plane frames every body, chunked too, and
keeps every head under its header timer) and on the origin (its handlers read bodies
under the pace): a trickle is cut with a JSON 408, a steady body is not, whatever its
size; an honest client is served meanwhile.  Real processes, raw sockets; the trickling
clients send a byte every so often (their behaviour, not a synchronisation)."""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from tests.conftest import DEMO, TOKEN, tar_gz_of
from tests.edge_support import (
    App,
    batch_items,
    edge,
    eventually,
    get_chunk,
    publish_app,
    scripted,
    verify_chunk,
)
from tests.procs import Service, origin_service, running
from tests.test_edge_conformance import Raw, Response, get

BODY_TIMEOUT = 1.0
TRICKLERS = 200


@pytest.fixture(scope="module")
def app(origin: Service) -> App:
    return publish_app(origin.url, "paced", DEMO)


@pytest.fixture(scope="module")
def node(origin: Service, app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    extra = ("--body-timeout", f"{BODY_TIMEOUT}s", "--header-timeout", "1s")
    svc = edge(tmp_path_factory.mktemp("paced-edge"), origin.url, extra=extra).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def slow_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An origin of its own whose bodies must arrive within 1 s, plus 1 s per KiB."""
    with running(origin_service(tmp_path_factory.mktemp("paced-origin"), TOKEN, "--body-timeout", "1s")) as svc:
        yield svc


def post_head(path: str, length: int | None = None, *fields: str) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    lines = [f"POST {path} HTTP/1.1", "Host: t", framing, *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_error(r: Response, status: int) -> None:
    assert r.status == status, (r.status, r.body[:200])
    body = json.loads(r.body)
    assert r.headers["content-type"].startswith("application/json") and set(body) == {"error", "message"}


def parse_answer(data: bytes) -> Response | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return Response(int(lines[0].split()[1]), headers, body[: int(headers.get("content-length", "0"))])


def trickle(port: int, heads: list[bytes], every: float, deadline: float, honest: Service | None = None,
            honest_chunk: str = "") -> tuple[list[bytes], int]:
    """A connection per head sends it, then one body byte every ``every`` s, until the
    server closes it or ``deadline`` s pass; meanwhile (if ``honest``) another client is
    served on fresh connections.  What each received, and how many the server left open."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in heads]
    got = {s: b"" for s in socks}
    open_ = set(socks)
    for s, head in zip(socks, heads, strict=True):
        s.sendall(head)
    stop = time.monotonic() + deadline
    try:
        while open_ and time.monotonic() < stop:
            if honest is not None:
                verify_chunk(honest_chunk, get_chunk(honest.url, honest_chunk, zstd=True))
            for s in list(open_):
                try:
                    s.send(b"\xa0")
                except OSError:
                    open_.discard(s)
            end = time.monotonic() + every
            while open_ and (left := end - time.monotonic()) > 0:
                readable, _, _ = select.select(list(open_), [], [], left)
                for s in readable:
                    try:
                        piece = s.recv(65536)
                    except OSError:
                        piece = b""
                    got[s] += piece
                    if not piece:
                        open_.discard(s)
        return list(got.values()), len(open_)
    finally:
        for s in socks:
            s.close()


# -- the edge ------------------------------------------------------------------------------------


def test_trickled_bodies_are_cut_with_408_while_an_honest_client_is_served(node: Service, app: App) -> None:
    # A batch body under the 80 KiB bound: aiohttp's handler waits for all of it.
    answers, still_open = trickle(node.port, [post_head("/v1/chunks:batch", 50_000) + b"\xdc"] * TRICKLERS,
                                  every=0.5, deadline=20, honest=node, honest_chunk=app.chunks[0])
    # (20 s: far past the 1 s pace and its sweep, far short of what held them before: ever.)
    assert still_open == 0, f"{still_open} trickling connections still open after 20 s"
    parsed = [parse_answer(a) for a in answers if a]
    assert parsed, "no trickling connection got an answer before it was closed"
    for r in parsed:  # (a close may reset an answer the client had not read yet)
        assert r is not None
        json_error(r, 408)
    assert "Traceback" not in node.output()


def test_a_body_aiohttp_answered_without_reading_is_cut_when_it_trickles(node: Service) -> None:
    # Past the batch bound: 413 at once; the rest of the body may follow, but at the pace.
    answers, still_open = trickle(node.port, [post_head("/v1/chunks:batch", 200_000)] * 5, every=0.5, deadline=20)
    assert still_open == 0
    for a in answers:
        r = parse_answer(a)
        assert r is not None and r.status == 413, a[:200]


def test_a_steady_body_slower_than_the_timeout_is_not_cut(node: Service, app: App) -> None:
    """1.5 KiB a second for ~3 s: past --body-timeout, never behind its pace."""
    body = msgpack.packb(app.chunks[:1] * 60)  # 60 ids, ~4 KiB
    c = Raw(node.port)
    try:
        c.send(post_head("/v1/chunks:batch", len(body)))
        for i in range(0, len(body), 512):
            c.send(body[i : i + 512])
            time.sleep(1 / 3)  # the client's pace, not a synchronisation
        r = c.response()
        assert r.status == 200 and len(batch_items(r.body)) == 60
    finally:
        c.close()


def test_every_head_is_timed_even_after_a_chunked_body(node: Service, app: App) -> None:
    """A chunked body used to hand the connection to aiohttp for good, out of reach of
    the header timer: now its end is found here, and the next head is the data plane's."""
    ids = msgpack.packb(app.chunks[:2])
    c = Raw(node.port)
    try:
        c.send(post_head("/v1/chunks:batch") + f"{len(ids):x};x=y\r\n".encode() + ids + b"\r\n0\r\nT: v\r\n\r\n")
        r = c.response()
        assert r.status == 200 and [i[0] for i in batch_items(r.body)] == app.chunks[:2]
        c.send(get(f"/v1/chunks/{app.chunks[0]}", "Accept-Encoding: zstd"))
        r = c.response()
        verify_chunk(app.chunks[0], r)
        assert r.headers["server"] == "minicdn"  # the data plane answers again
        c.send(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(300):  # a slowloris: a header byte every 50 ms, for at most 15 s
            c.send(b"X")
            if not c.nothing_yet():
                break
            time.sleep(0.05)
        json_error(c.response(), 408)
        assert c.closed()
    finally:
        c.close()


@pytest.mark.parametrize(
    "body",
    [b"5\nhello\r\n0\r\n\r\n", b"5\r\nhelloX\r\n0\r\n\r\n", b"zz\r\n", b"5 \r\nhello\r\n0\r\n\r\n", b"1" * 2000],
    ids=["bare-lf", "long-data", "not-hex", "space", "endless-size"],
)
def test_a_broken_chunked_body_is_400_and_closes(node: Service, body: bytes) -> None:
    c = Raw(node.port)
    try:
        c.send(post_head("/v1/chunks:batch") + body)
        json_error(c.response(), 400)
        assert c.closed()
    finally:
        c.close()


def test_a_body_cut_short_by_the_client_is_400(node: Service) -> None:
    c = Raw(node.port)
    try:
        c.send(post_head("/v1/chunks:batch", 5000) + b"\xdc\x00")
        c.sock.shutdown(socket.SHUT_WR)
        json_error(c.response(), 400)
        assert c.closed()
    finally:
        c.close()


def test_sigterm_lets_a_lent_request_finish(origin: Service, app: App, tmp_path: Path) -> None:
    """Draining closes a connection aiohttp is answering once it has answered, not before."""
    first, held = app.chunks[0], app.chunks[1]
    with scripted(origin.url) as up:
        up.hold.add(held)
        svc = edge(tmp_path, up.url, extra=("--drain-delay", "0s")).start()
        try:
            result: list[Response | Exception] = []
            body = msgpack.packb([first, held])

            def ask() -> None:
                c = Raw(svc.port)
                try:
                    c.send(post_head("/v1/chunks:batch", len(body)) + body)
                    result.append(c.response())
                except ConnectionError as exc:  # (it was: the drain cut the answer short)
                    result.append(exc)
                finally:
                    c.close()

            t = threading.Thread(target=ask)
            t.start()
            eventually(lambda: up.held() == 1, what="the batch reached the upstream")
            assert svc.proc is not None
            svc.proc.send_signal(signal.SIGTERM)
            up.release()
            t.join(20)
            assert result and isinstance(result[0], Response) and result[0].status == 200, result
            assert [i[0] for i in batch_items(result[0].body)] == [first, held]
            assert svc.proc.wait(20) == 0
        finally:
            up.release()
            svc.kill()


# -- the origin ----------------------------------------------------------------------------------


def test_trickled_bodies_to_the_origin_are_cut_with_408(slow_origin: Service) -> None:
    """A batch (read_limited), an upload (_spool) and a channel move, each trickled: 408
    after about --body-timeout (then aiohttp reads on for its lingering time, 10 s, so that
    the client sees the answer, and closes)."""
    auth = f"Authorization: Bearer {TOKEN}"
    heads = [
        post_head("/v1/chunks:batch", 50_000),
        post_head("/v1/apps/paced/versions/9.0.0", 1 << 20, auth),
        post_head("/v1/apps/paced/channels/release", 500, auth).replace(b"POST", b"PUT"),
    ]
    answers, still_open = trickle(slow_origin.port, heads, every=0.5, deadline=40)
    assert still_open == 0
    for a in answers:
        r = parse_answer(a)
        assert r is not None, a[:200]
        json_error(r, 408)
    assert "Traceback" not in slow_origin.output()


def test_a_steady_upload_slower_than_the_timeout_is_published(slow_origin: Service) -> None:
    archive = tar_gz_of(DEMO)
    c = Raw(slow_origin.port)
    try:
        c.send(post_head("/v1/apps/steady/versions/1.0.0", len(archive), f"Authorization: Bearer {TOKEN}"))
        piece = max(1, len(archive) // 8)
        for i in range(0, len(archive), piece):  # ~3 s at several KiB a second
            c.send(archive[i : i + piece])
            time.sleep(0.4)  # the client's pace, not a synchronisation
        r = c.response()
        assert r.status == 201, r.body
    finally:
        c.close()
