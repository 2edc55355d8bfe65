"""A stand-in for the origin's change feed, until the origin serves ``/v1/changes`` itself.

``python -m tests.feed_standin ORIGIN_URL PORT`` serves on 127.0.0.1:PORT:

- ``GET /v1/changes``: the contract of common.changes, from its own ``ChangeLog`` (a new
  epoch each time the process starts, as the origin's will be);
- ``PUT /v1/apps/{app}/channels/{channel}``: passed to the origin; when it answers 200 (the
  move is live), the change is logged with the new ref's serial;
- ``POST /standin/notice`` ``{"app", "channel", "serial"}``: logs a change nothing made
  (a forged or replayed notice, for the tests that say what one costs);
- everything else: passed to the origin untouched.

So an edge whose ``--upstream`` is the stand-in gets its refs from the real origin (through
the stand-in) and its notices from the stand-in.  Tests that use it say so; once the
origin serves the feed they take the origin's URL instead.
"""

from __future__ import annotations

import sys

import aiohttp
import msgpack
from aiohttp import web

from common.changes import Busy, Change, ChangeLog, parse_after, parse_wait
from common.errors import BadRequest

KEEP = ("content-type", "content-encoding", "etag", "cache-control", "vary", "retry-after")


def make_app(target: str) -> web.Application:
    log = ChangeLog()
    app = web.Application()
    session: list[aiohttp.ClientSession] = []

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        async with session[0].request(
            request.method,
            target + request.rel_url.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            keep = {k: v for k, v in up.headers.items() if k.lower() in KEEP}
            return web.Response(status=up.status, body=await up.read(), headers=keep)

    async def changes(request: web.Request) -> web.Response:
        try:
            after, wait = parse_after(request.query.get("after")), parse_wait(request.query.get("wait"))
            answer = await log.wait(after, wait)
        except BadRequest as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=400)
        except Busy as exc:
            return web.json_response(
                {"error": exc.code, "message": exc.message},
                status=503,
                headers={"Retry-After": str(exc.retry_after)},
            )
        return web.json_response(answer.to_json(), headers={"Cache-Control": "no-store"})

    async def put_channel(request: web.Request) -> web.Response:
        resp = await forward(request)
        if resp.status == 200 and isinstance(resp.body, bytes):
            ref = msgpack.unpackb(msgpack.unpackb(resp.body, raw=False)["payload"], raw=False)
            log.append(Change(ref["app"], ref["channel"], ref["serial"]))
        return resp

    async def notice(request: web.Request) -> web.Response:
        log.append(Change.from_json(await request.json()))
        return web.json_response({"cursor": str(log.cursor)})

    async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
        session.append(aiohttp.ClientSession(auto_decompress=False))
        yield
        await session[0].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/changes", changes)
    app.router.add_put("/v1/apps/{app}/channels/{channel}", put_channel)
    app.router.add_post("/standin/notice", notice)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(sys.argv[1].rstrip("/")),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        access_log=None,
        print=None,
        shutdown_timeout=1.0,  # a long-poll still waiting is dropped, not waited for (60 s)
    )
