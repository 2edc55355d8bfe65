"""The edge's HTTP handlers: each parses, calls one thing of ``Edge``, maps the result.

Objects are answered as edge.representation and common.representation say (RFC 9110
§13, §14), the data plane's answers' one source.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common import codec, dcz, jsonutil, opening
from common.changes import Busy, parse_after, parse_wait
from common.errors import BadRequest, Unauthorized
from common.http import (
    MAX_BATCH,
    accepts_zstd,
    error_response,
    read_batch_ids,
    read_limited,
    respond,
    serve_immutable,
    stream_batch,
)
from common.ids import check_app, check_channel, check_version, parse_hex_id, sha256
from common.listing import parse_page, query_of
from common.manifest import app_of
from edge import hops
from edge.changes import OutOfSync
from edge.cluster import NODE_HEADER
from edge.encodings import MAX_DICTIONARIES, Encodings
from edge.objects import Entry, Obj
from edge.representation import (
    BUNDLE,
    CHUNK_RAW,
    CHUNK_ZSTD,
    MANIFEST_DCZ,
    MANIFEST_RAW,
    MANIFEST_ZSTD,
    Form,
    not_modified,
)
from edge.service import Edge
from edge.upstream import Answer, batch_body

__all__ = ["EDGE", "ENCODINGS", "HEADS", "MAX_BATCH", "SENT"]

T = TypeVar("T")

EDGE = web.AppKey("edge", Edge)
ENCODINGS = web.AppKey("encodings", Encodings)  # the memory tier's manifests, encoded
HEADS = web.AppKey("heads", dict[bytes, opening.HeadsIndex])  # heads id → heads indexed, a few
MAX_HEADS_HELD = 8  # heads objects kept indexed: one of 10,000 packages is ~3 MiB
SENT = "minicdn.sent"  # request key: body bytes a streaming handler wrote
BATCH_WINDOW = 32  # fills in flight per batch request


def _obj(request: web.Request, kind: str) -> Obj:
    return Obj(kind, parse_hex_id(request.match_info["id"]))


def _not_modified(request: web.Request, obj: Obj) -> web.Response | None:
    early = not_modified(obj.kind, obj.etag, request.headers.get("If-None-Match"))
    return None if early is None else respond(early)


def _serve(request: web.Request, obj: Obj, body: bytes, form: Form) -> web.Response:
    return serve_immutable(
        request,
        body,
        etag=obj.etag,
        content_type=form.content_type,
        content_encoding=form.content_encoding,
        vary=form.vary,
    )


async def get_chunk(request: web.Request) -> web.StreamResponse:
    obj = _obj(request, "chunk")
    if (early := _not_modified(request, obj)) is not None:
        return early
    entry = await request.app[EDGE].objects.load(obj)
    if accepts_zstd(request):
        return _serve(request, obj, entry.body, CHUNK_ZSTD)
    raw = await _off_loop(codec.decode_chunk, obj.id, entry.body)
    return _serve(request, obj, raw, CHUNK_RAW)


async def get_bundle(request: web.Request) -> web.StreamResponse:
    obj = _obj(request, "bundle")
    entry = await request.app[EDGE].objects.load(obj)
    return _serve(request, obj, entry.body, BUNDLE)


async def get_manifest(request: web.Request) -> web.StreamResponse:
    """zstd when accepted; dcz (RFC 9842) against the earlier manifest of the same app the
    client names in Available-Dictionary, when that is smaller.  Either way the answer
    varies on both headers (§6.2)."""
    obj = _obj(request, "manifest")
    if (early := _not_modified(request, obj)) is not None:
        return early
    edge, encodings = request.app[EDGE], request.app[ENCODINGS]
    entry = await edge.objects.load(obj)
    body, form = entry.body, MANIFEST_RAW
    if accepts_zstd(request):
        body, form = await encodings.zstd_of(obj.key, entry), MANIFEST_ZSTD
    dictionary = dcz.parse_available_dictionary(request.headers.get(dcz.AVAILABLE_DICTIONARY))
    if dictionary is not None and dcz.accepts_dcz(request.headers.get("Accept-Encoding")):
        encoded = await _dcz_of(edge, encodings, obj, entry, dictionary)
        if encoded is not None and len(encoded) < len(body):
            body, form = encoded, MANIFEST_DCZ
    return _serve(request, obj, body, form)


async def _dcz_of(
    edge: Edge, encodings: Encodings, obj: Obj, entry: Entry, dictionary: bytes
) -> bytes | None:
    """The manifest dcz-encoded against the manifest ``dictionary`` (filled like any
    manifest, so verified), or None when that is no manifest of the same app; the
    encodings made so far keep it."""
    known = encodings.dcz_known(obj.key, entry)
    if dictionary in known:
        return known[dictionary]
    encoded = None
    if dictionary != obj.id:
        base = await edge.objects.load_or_none(Obj("manifest", dictionary))
        if base is not None and app_of(base.body) == app_of(entry.body) is not None:
            encoded = await encodings.dcz_of(entry.body, base.body)
    if len(known) >= MAX_DICTIONARIES:
        known.pop(next(iter(known)))
    known[dictionary] = encoded
    return encoded


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def get_ref(request: web.Request) -> web.StreamResponse:
    app = check_app(request.match_info["app"])
    channel = check_channel(request.match_info["channel"])
    served = await request.app[EDGE].refs.get(app, channel)
    entry = served.entry
    remaining = 0 if served.state == "stale" else max(0, int(entry.max_age - served.age))
    resp = serve_immutable(
        request,
        entry.body,
        etag=entry.etag,
        content_type=MANIFEST_RAW.content_type,
        cache_control=f"public, max-age={remaining}",
    )
    resp.headers["Age"] = str(int(served.age))
    resp.headers["X-Cache"] = served.state
    return resp


async def get_changes(request: web.Request) -> web.Response:
    """The change feed for the edges behind this one (edge.changes, common.changes)."""
    after, wait = parse_after(request.query.get("after")), parse_wait(request.query.get("wait"))
    edge = request.app[EDGE]
    try:
        answer = await edge.feed.poll(after, wait, lambda: edge.draining)
    except (Busy, OutOfSync) as exc:
        return error_response(503, exc.code, exc.message, {"Retry-After": "1", "Cache-Control": "no-store"})
    return web.json_response(answer.to_json(), headers={"Cache-Control": "no-store"})


async def post_batch(request: web.Request) -> web.StreamResponse:
    """The batch's misses are filled together (edge.fill ``batch``); the answer streams in
    request order as each id and those before it are ready."""
    ids = await read_batch_ids(request, MAX_BATCH)
    if hops.current().peer and not _bound_to(request, ids):
        with hops.own_request():  # a peer's proof made for other ids: a client's batch
            return await _stream_batch(request, ids)
    return await _stream_batch(request, ids)


def _bound_to(request: web.Request, ids: list[str]) -> bool:
    """Whether a peer-marked batch's proof covers these ids: its query names their digest
    (edge.upstream ``HttpSource.batch``).  Without a token marks are taken on trust."""
    if request.app[EDGE].settings.token is None:
        return True
    named = request.query.get("digest", "")
    digest = sha256(batch_body(ids)).hex()
    return named.isascii() and hmac.compare_digest(named.encode(), digest.encode())


async def _stream_batch(request: web.Request, ids: list[str]) -> web.StreamResponse:
    load = request.app[EDGE].objects.batch([Obj("chunk", bytes.fromhex(i)) for i in ids])

    async def frame(cid: bytes) -> bytes | None:
        entry = await load(Obj("chunk", cid))
        return None if entry is None else entry.body

    def wrote(n: int) -> None:
        request[SENT] += n

    request[SENT] = 0
    return await stream_batch(request, ids, frame, BATCH_WINDOW, wrote)


async def post_open(request: web.Request) -> web.Response:
    """An app opened in one round trip (common/opening.py), composed from the ref, the heads
    object and package manifests as this edge holds them (each filled and checked as any
    ref or manifest is); the phone verifies the signatures."""
    app = check_app(request.match_info["app"])
    channel = check_channel(request.match_info["channel"])
    req = opening.parse_request(await read_limited(request.content, opening.MAX_REQUEST, "open request"))
    edge, encodings, heads = request.app[EDGE], request.app[ENCODINGS], request.app[HEADS]
    served = await edge.refs.get(app, channel)

    async def load(oid: bytes) -> bytes | None:
        entry = await edge.objects.load_or_none(Obj("manifest", oid))
        return None if entry is None else entry.body

    async def heads_of(hid: bytes) -> opening.HeadsIndex:
        found = heads.pop(hid, None)
        if found is not None:
            heads[hid] = found  # the most recently used last: the first is dropped
            return found
        entry = await edge.objects.load(Obj("manifest", hid))
        made: opening.HeadsIndex = await _off_loop(opening.index_heads, entry.body)
        heads[hid] = made
        if len(heads) > MAX_HEADS_HELD:
            heads.pop(next(iter(heads)))
        return made

    async def encode(mid: bytes, body: bytes, base_id: bytes | None, base: bytes | None) -> tuple[str, bytes]:
        obj = Obj("manifest", mid)
        entry = await edge.objects.load(obj)
        best = ("zstd", await encodings.zstd_of(obj.key, entry))
        if base_id is not None and base is not None:
            known = encodings.dcz_known(obj.key, entry)
            if base_id not in known:
                if len(known) >= MAX_DICTIONARIES:
                    known.pop(next(iter(known)))
                known[base_id] = await encodings.dcz_of(entry.body, base)
            encoded = known[base_id]
            if encoded is not None and len(encoded) < len(best[1]):
                best = ("dcz", encoded)
        return best if len(best[1]) < len(body) else ("identity", body)

    answer = await opening.compose(req, served.entry.body, heads_of, load, encode)
    return web.Response(
        body=answer, content_type="application/x-msgpack", headers={"Cache-Control": "no-store"}
    )


async def list_apps(request: web.Request) -> web.Response:
    """The upstream's app list; a page of it (``prefix``, ``limit``, ``cursor``: checked
    here as the origin checks them, and only they are forwarded)."""
    counts = {k: len(request.query.getall(k)) for k in request.query}
    want = parse_page(request.query, counts)
    path = "/v1/apps" if want is None else f"/v1/apps?{query_of(want)}"
    return _json_passthrough(await request.app[EDGE].passthrough(path))


async def get_app(request: web.Request) -> web.Response:
    app = check_app(request.match_info["app"])
    return _json_passthrough(await request.app[EDGE].passthrough(f"/v1/apps/{app}"))


def _json_passthrough(answer: Answer) -> web.Response:
    return web.Response(
        body=answer.body, content_type="application/json", headers={"Cache-Control": "no-cache"}
    )


def require_token(request: web.Request) -> None:
    expected = request.app[EDGE].settings.token
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not expected:
        raise Unauthorized("this edge has no MINICDN_TOKEN configured; admin calls are disabled")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token")


async def _json_body(request: web.Request) -> dict[str, object]:
    body = jsonutil.loads(await read_limited(request.content, 64 * 1024, "admin body"), what="admin body")
    if not isinstance(body, dict) or not isinstance(body.get("app"), str):
        raise BadRequest('body must be JSON {"app": str, ...}')
    check_app(body["app"])
    return body


def from_sibling(request: web.Request) -> bool:
    """Whether ``request`` came in on this worker's control socket (a Unix socket in the
    node's private directory: another worker of this node passing on an admin call)."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


async def admin_prefetch(request: web.Request) -> web.Response:
    require_token(request)
    body = await _json_body(request)
    if from_sibling(request):  # this worker's share of the manifests a sibling resolved
        ids, everything = body.get("manifests"), body.get("everything")
        if not isinstance(ids, list) or len(ids) > 16 or not isinstance(everything, bool):
            raise BadRequest('a worker\'s share is {"app", "manifests": [id, ...], "everything": bool}')
        manifests = [parse_hex_id(i) for i in ids]
        return web.json_response(await request.app[EDGE].warm_share(manifests, everything, split=True))
    channel, version = body.get("channel"), body.get("version")
    if isinstance(channel, str) == isinstance(version, str):
        raise BadRequest('prefetch names exactly one of "channel" or "version"')
    if isinstance(channel, str):
        check_channel(channel)
    if isinstance(version, str):
        check_version(version)
    authorization = request.headers.get("Authorization", "")
    counts = await request.app[EDGE].prefetch(str(body["app"]), channel, version, authorization)  # type: ignore[arg-type]
    return web.json_response(counts)


async def admin_purge(request: web.Request) -> web.Response:
    require_token(request)
    body = await _json_body(request)
    cluster = body.get("cluster", False)
    if not isinstance(cluster, bool):
        raise BadRequest('"cluster" must be true or false')
    authorization = request.headers.get("Authorization", "")
    answer = await request.app[EDGE].purge(str(body["app"]), cluster, authorization, from_sibling(request))
    return web.json_response(answer)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[EDGE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    # The node name lets a cluster member recognise its own address among its peers'.
    return web.json_response({"ok": True}, headers={NODE_HEADER: request.app[EDGE].node})


async def readyz(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    body = {"ready": edge.ready, "draining": edge.draining, "index_loaded": edge.disk.loaded}
    return web.json_response(body, status=200 if edge.ready else 503)
