"""The plain miss driven by callbacks (edge.fill ``Filler.begin``, issue 15): no task and no
coroutine from the request to the upstream's answer, and still the fill ``load`` makes —
single flight, checked bytes, failover, 404 remembered, both tiers populated.  Against a
real HTTP/1.1 server on a loopback port, through the real lean client (edge.h1client)."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from common import codec
from common.errors import NotFound, UpstreamError
from common.ids import sha256
from edge.fill import INLINE_VERIFY
from edge.h1client import Pools
from edge.objects import Entry, Obj
from edge.upstream import HttpSource, Source
from tests.test_edge_fill import Node


def chunk(seed: int, size: int = 5000) -> tuple[Obj, bytes, bytes]:
    raw = random.Random(seed).randbytes(size)
    return Obj("chunk", sha256(raw)), raw, codec.compress(raw, 3)


Answer = tuple[int, dict[str, str], bytes]


class Upstream:
    """A raw HTTP/1.1 server: per path, the answer (404 otherwise); ``hang_up_at``: the
    request number on a connection at which it closes that connection without answering."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.connections = 0
        self.hang_up_at: int | None = None
        self.hold: set[str] = set()  # paths never answered (the connection stays open)
        self.delay: dict[str, float] = {}  # paths answered that many seconds late
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def chunk(self, obj: Obj, frame: bytes) -> None:
        self.answers[obj.path] = (200, {"Content-Encoding": "zstd"}, frame)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                n += 1
                if self.hang_up_at == n:
                    return
                if path in self.hold:
                    await reader.read()  # until the client closes
                    return
                if path in self.delay:
                    await asyncio.sleep(self.delay[path])
                status, fields, body = self.answers.get(path, (404, {}, b""))
                lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
                lines += [f"{k}: {v}" for k, v in fields.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def no_session() -> Any:
    raise AssertionError("a GET of the miss path goes through the lean client, never aiohttp")


class Setup:
    def __init__(self, tmp: Path, ups: list[Upstream], bases: list[str]) -> None:
        self.pools = Pools(limit=8)
        sources: list[Source] = [HttpSource(b, no_session, 5.0, 1 << 20, pools=self.pools) for b in bases]
        self.node = Node(tmp, sources)
        self.ups = ups
        self.bases = bases

    async def warm(self, seed: int = 900) -> None:
        """One miss through ``load`` on each upstream: a kept-alive connection to reuse."""
        for up, src in zip(self.ups, self.node.sources.sources, strict=True):
            obj, _, frame = chunk(seed)
            up.chunk(obj, frame)
            assert (await src.get(obj.path, {})).status == 200

    async def close(self) -> None:
        await self.node.settled()
        await self.pools.close()
        for up in self.ups:
            await up.close()


@pytest.fixture
async def two(tmp_path: Path) -> Any:
    ups = [Upstream(), Upstream()]
    bases = [await u.start() for u in ups]
    s = Setup(tmp_path, ups, bases)
    await s.node.disk.open()
    yield s
    await s.close()


def counting_tasks() -> list[str]:
    """The names of the coroutines of every task made on this loop from now on."""
    made: list[str] = []
    loop = asyncio.get_running_loop()

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", "?"))
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    return made


async def test_a_plain_miss_is_filled_from_callbacks_joined_verified_and_stored(two: Setup) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, _, frame = chunk(1)
    up.chunk(obj, frame)
    made = counting_tasks()
    try:
        flight = node.filler.begin(obj)
        assert flight is not None
        joiner = asyncio.ensure_future(node.filler.load(obj))  # joins the flight, no fill of its own
        entry = await flight
        assert (await joiner) is entry
    finally:
        asyncio.get_running_loop().set_task_factory(None)
    assert made == ["Filler.load"]  # the joiner's own task only: nothing of the fill
    assert entry.body == frame and node.memory.peek(obj.key) is entry
    assert up.requests.count(obj.path) == 1
    assert node.count("minicdn_edge_misses_total") == 2 and node.count("minicdn_edge_coalesced_total") == 1
    assert node.count("minicdn_edge_upstream_requests_total", "upstream") == 1
    await node.settled()
    assert (await node.disk.get(obj.key, obj.verify)) is not None


async def test_only_a_plain_miss_goes_the_callback_way(two: Setup) -> None:
    node, up = two.node, two.ups[0]
    obj, _, frame = chunk(2)
    up.chunk(obj, frame)
    assert node.filler.begin(obj) is None  # no idle connection yet: load connects
    await two.warm()
    absent, _, _ = chunk(3)
    node.negative.add(absent.key)
    assert node.filler.begin(absent) is None  # known absent: a negative hit, load's
    on_disk, _, on_disk_frame = chunk(4)
    assert await node.disk.put(on_disk.key, on_disk_frame)
    assert node.filler.begin(on_disk) is None  # a disk hit: read in a thread, load's
    manifest = Obj("manifest", sha256(b"m"))
    assert node.filler.begin(manifest) is None  # only chunks
    flight = node.filler.begin(obj)
    assert flight is not None and node.filler.begin(obj) is None  # in flight: join it (load)
    await flight
    assert node.filler.begin(obj) is None  # in memory


async def test_404_is_final_and_remembered(two: Setup) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, _, _ = chunk(5)
    flight = node.filler.begin(obj)
    assert flight is not None
    with pytest.raises(NotFound):
        await flight
    assert obj.key in node.negative and two.ups[1].requests.count(obj.path) == 0
    assert node.filler.begin(obj) is None
    with pytest.raises(NotFound):
        await node.filler.load(obj)
    assert up.requests.count(obj.path) == 1 and node.count("minicdn_edge_negative_hits_total") == 1


@pytest.mark.parametrize("bad", ["bytes", "status", "encoding"])
async def test_a_bad_first_answer_fails_over_to_the_next_upstream(two: Setup, bad: str) -> None:
    node, (first, second) = two.node, two.ups
    await two.warm()
    obj, _, frame = chunk(6)
    wrong = bytearray(frame)
    wrong[len(wrong) // 2] ^= 1
    first.answers[obj.path] = {
        "bytes": (200, {"Content-Encoding": "zstd"}, bytes(wrong)),
        "status": (503, {}, b"busy"),
        "encoding": (200, {"Content-Encoding": "br"}, frame),
    }[bad]
    second.chunk(obj, frame)
    flight = node.filler.begin(obj)
    assert flight is not None
    entry = await flight
    assert entry.body == frame and node.memory.peek(obj.key) is entry
    reason = "status" if bad == "status" else "integrity"
    assert node.count("minicdn_edge_upstream_errors_total", reason) == 1
    assert node.count("minicdn_edge_upstream_requests_total", "upstream") == 2
    assert (first.requests.count(obj.path), second.requests.count(obj.path)) == (1, 1)


async def test_every_upstream_failing_fails_the_flight_for_every_caller(two: Setup) -> None:
    node, (first, second) = two.node, two.ups
    await two.warm()
    obj, _, _ = chunk(7)
    first.answers[obj.path] = second.answers[obj.path] = (500, {}, b"")
    flight = node.filler.begin(obj)
    assert flight is not None
    joiner = asyncio.ensure_future(node.filler.load(obj))
    with pytest.raises(UpstreamError):
        await flight
    with pytest.raises(UpstreamError):
        await joiner
    assert obj.key not in node.memory.entries and obj.key not in node.negative


async def test_a_kept_alive_connection_the_server_closed_is_asked_again_once(two: Setup) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    up.hang_up_at = 2  # the warm-up was request 1 on the kept-alive connection
    obj, _, frame = chunk(8)
    up.chunk(obj, frame)
    flight = node.filler.begin(obj)
    assert flight is not None
    entry = await flight
    assert entry.body == frame
    assert up.requests.count(obj.path) == 2 and up.connections == 2  # again, on a new connection
    assert node.count("minicdn_edge_upstream_requests_total", "upstream") == 1  # one request
    assert node.count("minicdn_edge_upstream_errors_total", "connect") == 0


@pytest.mark.parametrize("form", ["large", "identity"])
async def test_an_answer_that_needs_a_thread_is_checked_off_the_loop(
    two: Setup, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, raw, frame = chunk(9, size=INLINE_VERIFY + 1000 if form == "large" else 3000)
    if form == "identity":
        up.answers[obj.path] = (200, {}, raw)
    else:
        up.chunk(obj, frame)
    threads: list[Callable[..., Any]] = []
    loop = asyncio.get_running_loop()
    real = loop.run_in_executor

    def recorded(executor: Any, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        threads.append(fn)
        return real(executor, fn, *args)

    monkeypatch.setattr(loop, "run_in_executor", recorded)
    flight = node.filler.begin(obj)
    assert flight is not None
    entry: Entry = await flight
    assert codec.decode_chunk(obj.id, entry.body) == raw and node.memory.peek(obj.key) is entry
    assert [f.__name__ for f in threads] == (["verify"] if form == "large" else ["_frame_of_raw"])


async def test_a_flight_cancelled_by_shutdown_ignores_the_late_answer(two: Setup) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, _, frame = chunk(10)
    up.chunk(obj, frame)
    flight = node.filler.begin(obj)
    assert flight is not None
    await node.filler.flights.close()  # the node is closing: every flight is cancelled
    assert flight.cancelled()
    await asyncio.sleep(0.2)  # the answer lands meanwhile, and is dropped
    assert node.memory.peek(obj.key) is None and obj.key not in node.filler.flights
    assert up.requests.count(obj.path) == 1 and two.pools.of(two.bases[0]).open == 1


async def test_shutdown_with_a_miss_in_flight_leaves_no_error_unretrieved(two: Setup) -> None:
    """The node cancels its flights, then closes its pools, which fails the answers still
    awaited: each such failure is read, not logged as "never retrieved" when collected."""
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, _, _ = chunk(12)
    up.hold.add(obj.path)
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        flight = node.filler.begin(obj)
        assert flight is not None
        while up.requests.count(obj.path) == 0:
            await asyncio.sleep(0.01)
        await node.filler.flights.close()
        await two.pools.close()
        await asyncio.sleep(0.05)
        del flight
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


async def test_a_bug_after_the_answer_fails_the_flight_instead_of_leaving_it_waiting(
    two: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, up = two.node, two.ups[0]
    await two.warm()
    obj, _, frame = chunk(11)
    up.chunk(obj, frame)

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in populating")

    monkeypatch.setattr(node.filler, "_populate", broken)
    flight = node.filler.begin(obj)
    assert flight is not None
    with pytest.raises(RuntimeError, match="a bug in populating"):
        await asyncio.wait_for(flight, 5)
    assert obj.key not in node.filler.flights


async def ask(port: int, request: bytes, answers: int = 1) -> list[tuple[bytes, bytes]]:
    """``request`` (one or more, pipelined) on a new connection: each answer's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    out = []
    for _ in range(answers):
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        body = b"" if request.startswith(b"HEAD ") else await reader.readexactly(length)
        out.append((head, body))
    writer.close()
    return out


def get(hexid: str, *fields: str, method: str = "GET") -> bytes:
    lines = [f"{method} /v1/chunks/{hexid} HTTP/1.1", "Host: edge", "Accept-Encoding: zstd", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_misses_through_a_real_edges_data_plane(tmp_path: Path) -> None:
    """Misses once the edge's pool holds a kept-alive connection (the callback way): HEAD,
    a range, a 404, pipelined misses in order, and a client that leaves mid-fill (the fill
    goes on, and the next request is a hit)."""
    from tests.procs import edge_service

    up = Upstream()
    base = await up.start()
    names = ["warm", "head", "range", "gone", "left", "one", "two"]
    objs = {name: chunk(100 + i) for i, name in enumerate(names)}
    for name, (obj, _, frame) in objs.items():
        if name != "gone":
            up.chunk(obj, frame)
    up.delay[objs["left"][0].path] = 0.5
    edge = await asyncio.to_thread(edge_service(tmp_path, base).start)
    try:
        port = edge.port
        (head, body), = await ask(port, get(objs["warm"][0].hex))
        assert head.startswith(b"http/1.1 200") and body == objs["warm"][2]
        (head, body), = await ask(port, get(objs["head"][0].hex, method="HEAD"))
        assert head.startswith(b"http/1.1 200") and f"content-length: {len(objs['head'][2])}".encode() in head
        (head, body), = await ask(port, get(objs["range"][0].hex, "Range: bytes=0-9"))
        assert head.startswith(b"http/1.1 206") and body == objs["range"][2][:10]
        (head, body), = await ask(port, get(objs["gone"][0].hex))
        assert head.startswith(b"http/1.1 404") and b'"not_found"' in body
        one, two = await ask(port, get(objs["one"][0].hex) + get(objs["two"][0].hex), answers=2)
        assert one[1] == objs["one"][2] and two[1] == objs["two"][2]
        left = objs["left"][0]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get(left.hex))
        await writer.drain()
        while up.requests.count(left.path) == 0:
            await asyncio.sleep(0.01)
        writer.close()  # gone before the upstream answers
        await asyncio.sleep(0.7)
        (head, body), = await ask(port, get(left.hex))
        assert head.startswith(b"http/1.1 200") and body == objs["left"][2]
        assert all(up.requests.count(o.path) == 1 for o, _, _ in objs.values())
        # One kept-alive connection for all but the second of the pipelined pair: it found
        # the connection taken by the first, so it went ``load``'s way, on a new one.
        assert up.connections == 2
    finally:
        await asyncio.to_thread(edge.stop)
        await up.close()
