"""The origin's HTTP API (aiohttp): DESIGN.md's table, the rows an origin serves.

Handlers parse, call one method of ``Origin``, and map the result; errors become JSON
through common.http's middleware and status table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common import codec, dcz, jsonutil, opening
from common.changes import Busy, parse_after, parse_wait
from common.errors import BadRequest, TooLarge, Unauthorized
from common.http import (
    MAX_BATCH,
    BodyPace,
    Paced,
    accepts_zstd,
    declared_length,
    error_middleware,
    error_response,
    read_batch_ids,
    read_limited,
    serve_immutable,
    stream_batch,
    strict_middleware,
)
from common.ids import check_app, check_channel, check_version, parse_hex_id
from common.listing import parse_page
from origin import console, qr
from origin.channels import Channels, RolloutSpec
from origin.gcloop import gc_forever
from origin.pool import new_upload_path
from origin.service import ChannelMove, Origin

__all__ = ["ORIGIN", "PACE", "make_app"]

ORIGIN = web.AppKey("origin", Origin)
PACE = web.AppKey("pace", BodyPace)  # how slowly a request body may arrive
BATCH_WINDOW = 32  # chunk reads in flight per batch request


# -- plumbing --------------------------------------------------------------------------------


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resp = await handler(request)
    route = request.match_info.route.name or "other"
    request.app[ORIGIN].metrics.requests.labels(route, str(resp.status)).inc()
    return resp


def require_token(request: web.Request) -> None:
    expected = request.app[ORIGIN].settings.token
    got = request.headers.get("Authorization", "")
    scheme, _, token = got.partition(" ")
    if not expected:
        raise Unauthorized("this origin has no MINICDN_TOKEN configured; writes are disabled")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token")


def _id(request: web.Request) -> bytes:
    return parse_hex_id(request.match_info["id"])


# -- read API --------------------------------------------------------------------------------


async def get_chunk(request: web.Request) -> web.StreamResponse:
    cid = _id(request)
    origin = request.app[ORIGIN]
    frame = await origin.chunk(cid)
    if accepts_zstd(request):
        return serve_immutable(
            request, frame, etag=f'"{cid.hex()}"', content_encoding="zstd", vary="Accept-Encoding"
        )
    raw = await asyncio.get_running_loop().run_in_executor(None, codec.decode_chunk, cid, frame)
    return serve_immutable(request, raw, etag=f'"{cid.hex()}"', vary="Accept-Encoding")


async def post_batch(request: web.Request) -> web.StreamResponse:
    ids = await read_batch_ids(request, MAX_BATCH, request.app[PACE])
    return await stream_batch(request, ids, request.app[ORIGIN].chunk_or_none, BATCH_WINDOW)


async def get_bundle(request: web.Request) -> web.StreamResponse:
    bid = _id(request)
    body = await request.app[ORIGIN].bundle(bid)
    return serve_immutable(request, body, etag=f'"{bid.hex()}"')


async def get_manifest(request: web.Request) -> web.StreamResponse:
    mid = _id(request)
    origin = request.app[ORIGIN]
    body, encoding = await _manifest_representation(request, origin, mid)
    # The answer depends on both headers whichever encoding is chosen (RFC 9842 §6.2).
    return serve_immutable(
        request,
        body,
        etag=f'"{mid.hex()}"',
        content_type="application/x-msgpack",
        content_encoding=encoding,
        vary=dcz.VARY,
    )


async def _manifest_representation(
    request: web.Request, origin: Origin, mid: bytes
) -> tuple[bytes, str | None]:
    """dcz against the manifest the client names, when it is ours and smaller; else zstd
    when accepted; else the envelope as stored."""
    zstd = await origin.manifest_zstd(mid) if accepts_zstd(request) else None
    dictionary = dcz.parse_available_dictionary(request.headers.get(dcz.AVAILABLE_DICTIONARY))
    if dictionary is not None and dcz.accepts_dcz(request.headers.get("Accept-Encoding")):
        encoded = await origin.manifest_dcz(mid, dictionary)
        if encoded is not None and (zstd is None or len(encoded) < len(zstd)):
            return encoded, dcz.CONTENT_ENCODING
    if zstd is not None:
        return zstd, "zstd"
    return await origin.manifest(mid), None


async def get_ref(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    envelope = await origin.ref(request.match_info["app"], request.match_info["channel"])
    cache = f"public, max-age={origin.settings.ref_max_age}"
    return serve_immutable(
        request,
        envelope,
        etag=Channels.etag(envelope),
        cache_control=cache,
        content_type="application/x-msgpack",
    )


async def post_open(request: web.Request) -> web.Response:
    """An app opened in one round trip (common/opening.py): the ref, the heads and the
    package manifests a phone lacks."""
    app = check_app(request.match_info["app"])
    channel = check_channel(request.match_info["channel"])
    raw = await read_limited(request.content, opening.MAX_REQUEST, "open request", request.app[PACE])
    body = await request.app[ORIGIN].open(app, channel, opening.parse_request(raw))
    return web.Response(
        body=body, content_type="application/x-msgpack", headers={"Cache-Control": "no-store"}
    )


async def list_apps(request: web.Request) -> web.Response:
    origin = request.app[ORIGIN]
    want = parse_page(request.query, _counts(request))
    if want is None:  # the bare listing: every app, as before paging (and as edges relay it)
        return web.json_response({"apps": await origin.apps(), "next": None})
    apps, after = await origin.apps_page(want)
    return web.json_response({"apps": apps, "next": after})


def _counts(request: web.Request) -> dict[str, int]:
    return {k: len(request.query.getall(k)) for k in request.query}


async def get_app(request: web.Request) -> web.Response:
    return web.json_response(await request.app[ORIGIN].app_info(request.match_info["app"]))


async def get_history(request: web.Request) -> web.Response:
    origin = request.app[ORIGIN]
    return web.json_response(await origin.history(request.match_info["app"], request.match_info["channel"]))


async def get_changes(request: web.Request) -> web.Response:
    """The change feed's long-poll (DESIGN.md "The change feed")."""
    after, wait = parse_after(request.query.get("after")), parse_wait(request.query.get("wait"))
    try:
        answer = await request.app[ORIGIN].feed.wait(after, wait)
    except Busy as exc:
        # Not in the error tree's table: the only 503 with a Retry-After the origin sends.
        return error_response(503, exc.code, exc.message, {"Retry-After": "5"})
    return web.json_response(answer.to_json(), headers={"Cache-Control": "no-store"})


# -- the operator's views (the console, docs/operations.md) ----------------------------------


async def get_token(request: web.Request) -> web.Response:
    """Whether the bearer token is right: how the console signs in before it shows anything."""
    require_token(request)
    return web.json_response({"ok": True}, headers={"Cache-Control": "no-store"})


async def get_version(request: web.Request) -> web.Response:
    require_token(request)
    views = request.app[ORIGIN].views
    info = await views.version_info(request.match_info["app"], request.match_info["version"])
    return web.json_response(info, headers={"Cache-Control": "no-store"})


async def get_compare(request: web.Request) -> web.Response:
    require_token(request)
    old, new = _one(request, "from"), _one(request, "to")
    if old is None or new is None:
        raise BadRequest("compare needs from=VERSION and to=VERSION")
    body = await request.app[ORIGIN].views.compare(request.match_info["app"], old, new)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def get_qr(request: web.Request) -> web.Response:
    fmt = request.match_info["fmt"]
    channel, version = _target(request)
    origin = request.app[ORIGIN]
    app = request.match_info["app"]
    picture = await origin.views.qr_code(app, fmt, channel=channel, version=version)
    name = f"{app}-{channel or version}.{fmt}"
    headers = {
        "Cache-Control": "public, max-age=60",
        "Content-Disposition": f'inline; filename="{name}"',
        "Content-Security-Policy": "default-src 'none'",  # an SVG opened on its own runs nothing
        "X-Content-Type-Options": "nosniff",
    }
    return web.Response(body=picture, content_type=qr.FORMATS[fmt], headers=headers)


async def get_link(request: web.Request) -> web.Response:
    channel, version = _target(request)
    app = request.match_info["app"]
    link = await request.app[ORIGIN].views.link(app, channel=channel, version=version)
    body = {"app": app, "channel": channel, "version": version, "link": link}
    return web.json_response(body, headers={"Cache-Control": "public, max-age=60"})


def _target(request: web.Request) -> tuple[str | None, str | None]:
    """``?channel=NAME`` or ``?version=V``: exactly one, each a valid name."""
    channel, version = _one(request, "channel"), _one(request, "version")
    if (channel is None) == (version is None):
        raise BadRequest("give exactly one of channel=NAME and version=V")
    return (
        None if channel is None else check_channel(channel),
        None if version is None else check_version(version),
    )


def _one(request: web.Request, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise BadRequest(f"{key} given more than once")
    return values[0] if values else None


# -- write API -------------------------------------------------------------------------------


async def post_version(request: web.Request) -> web.Response:
    require_token(request)
    app = check_app(request.match_info["app"])
    version = check_version(request.match_info["version"])
    origin = request.app[ORIGIN]
    limit = origin.settings.limits.max_upload
    if (declared := declared_length(request)) > limit:
        raise TooLarge(f"upload of {declared} bytes exceeds the {limit}-byte limit")
    move = _channel_move(request)  # refused before the body is read
    await origin.check_rollout(app, move)
    upload = new_upload_path(origin.tmp_dir)
    try:
        await _spool(request, upload, limit, request.app[PACE])
        result, serial = await origin.publish(app, version, upload, move)
    finally:
        upload.unlink(missing_ok=True)
    body = result.to_json()
    if move is not None:
        state = {"state": "pending"} if serial is None else {"state": "moved", "serial": serial}
        body["channel"] = {"name": move.channel, "percent": move.percent, **state}
    return web.json_response(body, status=201 if result.created else 200)


def _channel_move(request: web.Request) -> ChannelMove | None:
    """``?channel=NAME[&rollout=PERCENT]``: move the channel once the version is enriched."""
    channel, percent = request.query.get("channel"), request.query.get("rollout")
    if channel is None:
        if percent is not None:
            raise BadRequest("rollout needs channel")
        return None
    if percent is not None and not (percent.isdigit() and len(percent) <= 3):
        raise BadRequest("rollout must be a percent from 0 to 100")
    return ChannelMove(check_channel(channel), None if percent is None else int(percent))


async def _spool(request: web.Request, dest: Path, limit: int, pace: BodyPace) -> None:
    """Stream the request body to ``dest`` (never whole in memory), refusing past ``limit``
    and (RequestTimeout) when it arrives slower than ``pace``."""
    loop = asyncio.get_running_loop()
    received = 0
    reader = Paced(request.content, pace)
    with open(dest, "wb") as f:
        while piece := await reader.read(256 * 1024):
            received += len(piece)
            if received > limit:
                raise TooLarge(f"upload exceeds the {limit}-byte limit")
            await loop.run_in_executor(None, f.write, piece)


async def put_channel(request: web.Request) -> web.Response:
    require_token(request)
    app = check_app(request.match_info["app"])
    channel = check_channel(request.match_info["channel"])
    raw = await read_limited(request.content, 64 * 1024, "channel body", request.app[PACE])
    body = jsonutil.loads(raw, what="channel body")
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise BadRequest('body must be JSON {"version": str, "rollout"?: {"version", "percent"}}')
    rollout = None
    if body.get("rollout") is not None:
        r = body["rollout"]
        if not isinstance(r, dict) or not isinstance(r.get("version"), str):
            raise BadRequest('rollout must be {"version": str, "percent": int}')
        rollout = RolloutSpec(r["version"], r.get("percent"))  # type: ignore[arg-type]
    envelope = await request.app[ORIGIN].set_channel(app, channel, body["version"], rollout)
    return web.Response(
        body=envelope,
        content_type="application/x-msgpack",
        headers={"ETag": Channels.etag(envelope), "Cache-Control": "no-store"},
    )


async def post_rollback(request: web.Request) -> web.Response:
    require_token(request)
    origin = request.app[ORIGIN]
    moved = await origin.rollback(request.match_info["app"], request.match_info["channel"])
    return web.json_response(moved, headers={"Cache-Control": "no-store"})


# -- operations ------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[ORIGIN].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _background(app: web.Application) -> AsyncIterator[None]:
    origin = app[ORIGIN]
    tasks = [
        asyncio.create_task(origin.shared_feed.run()),
        asyncio.create_task(origin.resign_loop()),
        asyncio.create_task(origin.enrich_loop()),
        asyncio.create_task(origin.rescan_loop()),
    ]
    if origin.settings.gc_every:
        gc = gc_forever(origin.storage, origin.settings.gc, origin.settings.gc_every, origin.metrics)
        tasks.append(asyncio.create_task(gc))
    yield
    origin.stop_background()  # an enrichment in its thread stops at its next pause
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.get_running_loop().run_in_executor(None, origin.close)


async def _drain_feed(app: web.Application) -> None:
    """on_shutdown runs before aiohttp waits for handlers: long-polls answer now, not in 55 s."""
    app[ORIGIN].feed.close()


def metrics_app(origin: Origin) -> web.Application:
    """``--metrics-listen``: plain HTTP beside a TLS listener for Prometheus and probes,
    /metrics, /healthz and /readyz only (JSON 404 for anything else); no background work
    of its own (make_app's runs once)."""
    app = web.Application(middlewares=[error_middleware])
    app[ORIGIN] = origin
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


def make_app(origin: Origin, pace: BodyPace | None = None) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, strict_middleware], client_max_size=1 << 20
    )
    app[ORIGIN] = origin
    app[PACE] = pace or BodyPace()
    r = app.router
    r.add_get("/v1/chunks/{id}", get_chunk, name="chunk")  # GET also answers HEAD
    r.add_post("/v1/chunks:batch", post_batch, name="batch")
    r.add_get("/v1/bundles/{id}", get_bundle, name="bundle")
    r.add_get("/v1/manifests/{id}", get_manifest, name="manifest")
    r.add_get("/v1/apps", list_apps, name="apps")
    r.add_get("/v1/apps/{app}", get_app, name="app")
    r.add_get("/v1/apps/{app}/channels/{channel}", get_ref, name="ref")
    r.add_put("/v1/apps/{app}/channels/{channel}", put_channel, name="channel_set")
    r.add_post("/v1/apps/{app}/channels/{channel}/open", post_open, name="open")
    r.add_get("/v1/apps/{app}/channels/{channel}/history", get_history, name="channel_history")
    r.add_post("/v1/apps/{app}/channels/{channel}/rollback", post_rollback, name="channel_rollback")
    r.add_get("/v1/changes", get_changes, name="changes")
    r.add_post("/v1/apps/{app}/versions/{version}", post_version, name="publish")
    r.add_get("/v1/apps/{app}/versions/{version}", get_version, name="version")
    r.add_get("/v1/apps/{app}/compare", get_compare, name="compare")
    r.add_get("/v1/apps/{app}/qr.{fmt:svg|png}", get_qr, name="qr")
    r.add_get("/v1/apps/{app}/link", get_link, name="link")
    r.add_get("/v1/token", get_token, name="token")
    console.add_routes(r)
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/readyz", healthz, name="readyz")
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_drain_feed)
    return app
