"""The lean HTTP/1.1 client of the miss path (edge.h1client) against raw servers on
127.0.0.1 that answer exactly the bytes each test scripts: what the contract suite
(tests/test_source_contract.py) cannot make aiohttp's server send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from common.errors import TooLarge
from edge.h1client import Pool, Pools, ProtocolError
from edge.upstream import HttpSource, SourceError

Script = Callable[[int], bytes | None]  # the n-th request on a connection → answer (None: close)


class Raw:
    """A server answering each request head with what ``script`` gives; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                answer = self.script(n)
                n += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Script], Raw]]:
    made: list[Raw] = []

    def make(script: Script) -> Raw:
        r = Raw(script)
        made.append(r)
        return r

    yield make
    for r in made:
        if r.server is not None:
            r.server.close()
            await r.server.wait_closed()


async def started(r: Raw) -> Raw:
    r.server = await asyncio.start_server(r._serve, "127.0.0.1", 0)
    return r


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Encoding: zstd\r\n\r\nhello"


async def test_connections_are_kept_alive_and_reused(raw: Callable[[Script], Raw]) -> None:
    server = await started(raw(lambda n: OK))
    pool = Pool(server.url)
    try:
        for _ in range(5):
            r = await pool.get("/x", {}, 100, 5)
            assert (r.status, r.body, r.headers["content-encoding"]) == (200, b"hello", "zstd")
        assert server.connections == 1
    finally:
        pool.close()


async def test_a_kept_connection_that_goes_silent_times_out_and_is_not_reused(
    raw: Callable[[Script], Raw],
) -> None:
    server = await started(raw(lambda n: OK if n != 1 else b""))  # the second answer never comes
    pool = Pool(server.url)
    try:
        assert (await pool.get("/x", {}, 100, 5)).body == b"hello"
        with pytest.raises(TimeoutError):
            await pool.get("/x", {}, 100, 0.2)  # on the kept-alive connection
        assert (await pool.get("/x", {}, 100, 5)).body == b"hello"  # a new one
        assert server.connections == 2 and pool.open == 1
    finally:
        pool.close()


async def test_a_chunked_body_is_read_whole(raw: Callable[[Script], Raw]) -> None:
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    server = await started(raw(lambda n: body))
    pool = Pool(server.url)
    try:
        assert (await pool.get("/x", {}, 100, 5)).body == b"abcde"
        with pytest.raises(TooLarge):
            await pool.get("/x", {}, 4, 5)
    finally:
        pool.close()


async def test_an_answer_that_does_not_say_where_it_ends_is_refused(raw: Callable[[Script], Raw]) -> None:
    server = await started(raw(lambda n: b"HTTP/1.1 200 OK\r\n\r\nuntil close"))
    pool = Pool(server.url)
    try:
        with pytest.raises(ProtocolError):
            await pool.get("/x", {}, 100, 5)
        assert pool.open == 0  # not kept
    finally:
        pool.close()


async def test_a_kept_connection_the_server_closed_is_replaced_once(raw: Callable[[Script], Raw]) -> None:
    server = await started(raw(lambda n: OK if n == 0 else None))  # one answer per connection
    pool = Pool(server.url)
    try:
        for _ in range(3):
            assert (await pool.get("/x", {}, 100, 5)).body == b"hello"
        assert server.connections == 3
    finally:
        pool.close()


async def test_a_silent_server_times_out_and_a_large_body_is_too_large(raw: Callable[[Script], Raw]) -> None:
    silent = await started(raw(lambda n: b""))
    big = await started(raw(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + b"x" * 50))
    pools = Pools()
    try:
        with pytest.raises(SourceError) as caught:
            await HttpSource(silent.url, _no_session, 0.2, 100, pools=pools).get("/x", {})
        assert caught.value.reason == "timeout"
        with pytest.raises(SourceError) as caught:
            await HttpSource(big.url, _no_session, 5, 10, pools=pools).get("/x", {})
        assert caught.value.reason == "status"
    finally:
        await pools.close()


async def test_an_interim_answer_is_skipped_and_extra_bytes_drop_the_connection(
    raw: Callable[[Script], Raw],
) -> None:
    server = await started(raw(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"HTTP/1.1 200 OK\r\n"))
    pool = Pool(server.url)
    try:
        assert (await pool.get("/x", {}, 100, 5)).body == b"hello"
        await asyncio.sleep(0)
        assert (await pool.get("/x", {}, 100, 5)).body == b"hello"
        assert server.connections == 2  # the first one sent what nobody asked for
    finally:
        pool.close()


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("a GET through the pools needs no aiohttp session")


def test_a_request_with_a_line_break_is_refused_and_its_fields_are_made_once() -> None:
    """No CR or LF may reach the wire from a path or a header (request smuggling); the
    fields after the request line are reused for the same headers, and the reuse is bounded."""
    pool = Pool("http://127.0.0.1:1")
    for path, headers in [("/a\r\nX: y", {}), ("/a\n", {}), ("/a", {"X": "1\r\nY: 2"}), ("/a", {"X\n": "1"})]:
        with pytest.raises(ValueError):
            pool.request(path, headers)
    one = pool.request("/v1/chunks/ab", {"Accept-Encoding": "zstd"})
    assert one == (
        b"GET /v1/chunks/ab HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: minicdn-edge\r\n"
        b"Accept-Encoding: zstd\r\n\r\n"
    )
    assert pool.request("/v1/chunks/cd", {"Accept-Encoding": "zstd"}) == one.replace(b"/ab", b"/cd")
    for i in range(200):
        pool.request("/", {"Via": f"1.1 n{i}"})
    assert len(pool._fields) <= 64


async def test_a_request_waiting_for_a_connection_has_it_before_a_callback_miss(
    raw: Callable[[Script], Raw],
) -> None:
    """At its limit, a pool hands a connection that comes back to the request waiting for
    one (``get``): a ``begin`` in the same loop turn, before the woken waiter has run, must
    not take it (under a steady miss load the waiter would starve until its timeout)."""
    server = await started(raw(lambda n: OK))
    pool = Pool(server.url, limit=1)
    assert (await pool.get("/0", {}, 100, 5)).body == b"hello"  # one kept-alive connection
    held = pool.begin(pool.request("/1", {}), 100, 5)
    assert held is not None
    waiting = asyncio.ensure_future(pool.get("/2", {}, 100, 5))
    await asyncio.sleep(0)
    assert len(pool._waiting) == 1
    tried: list[object] = []
    # Runs right after the pool got the connection back and woke the waiter, in that turn.
    held.add_done_callback(lambda _: tried.append(pool.begin(pool.request("/3", {}), 100, 5)))
    assert (await held).body == b"hello"
    assert (await waiting).body == b"hello"
    assert tried == [None]
    answer = pool.begin(pool.request("/3", {}), 100, 5)  # no one waits now: it is taken
    assert answer is not None and (await answer).body == b"hello"
    assert pool.open == 1 and server.connections == 1
    pool.close()


async def test_a_woken_waiter_that_is_cancelled_passes_its_turn_on(raw: Callable[[Script], Raw]) -> None:
    server = await started(raw(lambda n: OK))
    pool = Pool(server.url, limit=1)
    first = asyncio.ensure_future(pool.get("/1", {}, 100, 5))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pool.get("/2", {}, 100, 5))
    third = asyncio.ensure_future(pool.get("/3", {}, 100, 5))
    await asyncio.sleep(0)
    await first
    second.cancel()  # woken, and cancelled before it took the connection
    assert (await asyncio.wait_for(third, 5)).body == b"hello"
    assert second.cancelled() and pool._woken == 0
    pool.close()
