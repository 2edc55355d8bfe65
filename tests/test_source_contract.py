"""One contract suite for the ``Source`` seam (edge.upstream), run against the fake the
fill-path tests use (tests.fakes.FakeSource) and against ``HttpSource`` talking to a real
HTTP server on a loopback port, with aiohttp's client and with the lean one
(edge.h1client) for its GETs.

The contract: ``get`` returns every answer the source gives, whatever its status (a 404,
a 5xx, a 3xx — which is never followed), and raises SourceError, with its reason, for
what is not an answer: a refused connection ("connect"), a body larger than the largest
object ("status").  ``batch`` streams ``(hex id, frame or None)`` in the order asked."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

import aiohttp
import msgpack
import pytest
from aiohttp import web

from common import codec
from common.ids import sha256
from edge.h1client import Pools
from edge.upstream import Answer, BatchItem, HttpSource, Source, SourceError
from tests.fakes import FakeSource
from tests.procs import free_port

MAX_BODY = 64 << 10


class World(Protocol):
    """Where a source's answers come from: what it serves, and what was asked of it."""

    def serve(self, path: str, answer: Answer) -> None: ...

    def source(self) -> Source: ...

    def refused(self) -> Source: ...

    def requested(self) -> list[str]: ...


class FakeWorld:
    def __init__(self) -> None:
        self.fake = FakeSource("fake")
        self.fake.max_body = MAX_BODY

    def serve(self, path: str, answer: Answer) -> None:
        self.fake.answers[path] = answer

    def source(self) -> Source:
        return self.fake

    def refused(self) -> Source:
        down = FakeSource("down")
        down.down = True
        return down

    def requested(self) -> list[str]:
        return [path for path, _ in self.fake.calls]


class HttpWorld:
    """An aiohttp server on 127.0.0.1 answering from a table, as an origin would."""

    def __init__(self, session: aiohttp.ClientSession, pools: Pools | None = None) -> None:
        self.session = session
        self.pools = pools
        self.answers: dict[str, Answer] = {}
        self.seen: list[str] = []
        self.url = ""

    async def start(self, runner: web.AppRunner) -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chunks:batch", self._batch)
        app.router.add_get("/{tail:.*}", self._get)
        return app

    async def _get(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        answer = self.answers.get(request.path, Answer(404, b"", {}))
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        ids = msgpack.unpackb(await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
        await resp.prepare(request)
        for hexid in ids:
            answer = self.answers.get(f"/v1/chunks/{hexid}")
            await resp.write(msgpack.packb([hexid, answer.body if answer and answer.status == 200 else None]))
        await resp.write_eof()
        return resp

    def serve(self, path: str, answer: Answer) -> None:
        self.answers[path] = answer

    def source(self) -> Source:
        return HttpSource(self.url, self.session, 10.0, MAX_BODY, pools=self.pools)

    def refused(self) -> Source:
        return HttpSource(f"http://127.0.0.1:{free_port()}", self.session, 10.0, MAX_BODY, pools=self.pools)

    def requested(self) -> list[str]:
        return list(self.seen)


@pytest.fixture(params=["fake", "http", "lean"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "fake":
        yield FakeWorld()
        return
    pools = Pools() if request.param == "lean" else None
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        http = HttpWorld(session, pools)
        runner = web.AppRunner(http.app())
        await http.start(runner)
        try:
            yield http
        finally:
            if pools is not None:
                await pools.close()
            await runner.cleanup()


def a_chunk(seed: int) -> tuple[str, bytes]:
    raw = random.Random(seed).randbytes(3000)
    return sha256(raw).hex(), codec.compress(raw, 3)


async def test_get_returns_a_present_object(world: World) -> None:
    hexid, frame = a_chunk(1)
    world.serve(f"/v1/chunks/{hexid}", Answer(200, frame, {"Content-Encoding": "zstd"}))
    answer = await world.source().get(f"/v1/chunks/{hexid}", {"Accept-Encoding": "zstd"})
    assert answer.status == 200 and answer.body == frame
    assert answer.headers.get("Content-Encoding") == "zstd"


async def test_get_returns_a_404_as_an_answer(world: World) -> None:
    answer = await world.source().get("/v1/chunks/" + "0" * 64, {})
    assert answer.status == 404


async def test_get_returns_a_5xx_as_an_answer(world: World) -> None:
    world.serve("/v1/apps", Answer(503, b"busy", {}))
    assert (await world.source().get("/v1/apps", {})).status == 503


async def test_a_redirect_is_an_answer_and_is_never_followed(world: World) -> None:
    hexid, frame = a_chunk(2)
    world.serve("/v1/moved", Answer(301, b"", {"Location": f"/v1/chunks/{hexid}"}))
    world.serve(f"/v1/chunks/{hexid}", Answer(200, frame, {}))
    assert (await world.source().get("/v1/moved", {})).status == 301
    assert world.requested() == ["/v1/moved"]


async def test_a_body_larger_than_the_largest_object_is_refused(world: World) -> None:
    world.serve("/v1/bundles/big", Answer(200, b"x" * (MAX_BODY + 1), {}))
    world.serve("/v1/bundles/fits", Answer(200, b"x" * MAX_BODY, {}))
    assert len((await world.source().get("/v1/bundles/fits", {})).body) == MAX_BODY
    with pytest.raises(SourceError) as caught:
        await world.source().get("/v1/bundles/big", {})
    assert caught.value.reason == "status"


async def test_a_refused_connection_is_a_connect_failure(world: World) -> None:
    with pytest.raises(SourceError) as caught:
        await world.refused().get("/v1/apps", {})
    assert caught.value.reason == "connect"
    with pytest.raises(SourceError) as caught:
        async with aclosing(world.refused().batch(["0" * 64], {})) as items:
            async for _ in items:
                pass
    assert caught.value.reason == "connect"


async def test_a_batch_streams_present_and_absent_ids_in_the_order_asked(world: World) -> None:
    (one, f1), (two, f2) = a_chunk(3), a_chunk(4)
    absent = "f" * 64
    for hexid, frame in ((one, f1), (two, f2)):
        world.serve(f"/v1/chunks/{hexid}", Answer(200, frame, {"Content-Encoding": "zstd"}))
    got: list[BatchItem] = []
    async with aclosing(world.source().batch([two, absent, one], {})) as items:
        async for item in items:
            got.append(item)
    assert got == [(two, f2), (absent, None), (one, f1)]
