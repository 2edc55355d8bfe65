"""The edge's aiohttp application: routes (DESIGN.md's table, the rows an edge serves),
one observing middleware (metrics, timing, access log) around the shared error
middleware, around the head limits (with --no-fast-path: common.http), around the shared
request rules (version, Host: common.http), around the hop
middleware (loops refused, the peer mark read: edge.hops), and the ``Edge``'s lifecycle in
``cleanup_ctx``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from common.http import HeadLimits, error_middleware, head_limits_middleware, strict_middleware
from edge import handlers as h
from edge import hops
from edge.encodings import Encodings
from edge.handlers import EDGE, ENCODINGS, SENT
from edge.service import Edge

__all__ = ["make_app"]

# Scrapes and probes are not deliveries: their bodies stay out of sent_bytes.
OPERATIONS = frozenset({"metrics", "healthz", "readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    edge = request.app[EDGE]
    start = time.perf_counter()
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
        if not resp.prepared and (resp.keep_alive is False or not request.keep_alive):
            # aiohttp says so itself only to HTTP/1.1; the data plane says it to 1.0 as
            # well (RFC 9112 §9.6, and an HTTP/1.0 client need not know 1.0's default).
            resp.headers.setdefault("Connection", "close")
        return resp
    finally:
        elapsed = time.perf_counter() - start
        status = resp.status if resp is not None else 500  # None: a bug, or the client left
        route = request.match_info.route.name or "other"
        sent = 0 if route in OPERATIONS else _body_bytes(request, resp)
        edge.metrics.stats.record(route, status, sent, elapsed)
        if edge.access_log is not None:
            ua = request.headers.get("User-Agent", "")
            edge.access_log.request(
                request.remote or "", request.method, request.path, status, sent, elapsed, ua
            )


def _body_bytes(request: web.Request, resp: web.StreamResponse | None) -> int:
    if SENT in request:
        return int(request[SENT])
    if resp is None or request.method == "HEAD" or resp.status in (204, 304):
        return 0
    body = getattr(resp, "body", None)
    return len(body) if isinstance(body, bytes | bytearray) else 0


def make_app(edge: Edge, head_limits: HeadLimits | None = None) -> web.Application:
    """``head_limits``: refuse heads over them (with --no-fast-path, where no data plane
    has refused them before aiohttp's parser took them)."""
    limits = [] if head_limits is None else [head_limits_middleware(head_limits)]
    app = web.Application(
        middlewares=[
            observe,
            error_middleware,
            *limits,
            strict_middleware,
            hops.middleware(edge.node, edge.settings.token),
        ],
        client_max_size=1 << 20,
    )
    app[EDGE] = edge
    app[ENCODINGS] = Encodings(edge.memory)
    app[h.HEADS] = {}
    r = app.router
    r.add_get("/v1/chunks/{id}", h.get_chunk, name="chunk")  # GET also answers HEAD
    r.add_post("/v1/chunks:batch", h.post_batch, name="batch")
    r.add_get("/v1/bundles/{id}", h.get_bundle, name="bundle")
    r.add_get("/v1/manifests/{id}", h.get_manifest, name="manifest")
    r.add_get("/v1/apps", h.list_apps, name="apps")
    r.add_get("/v1/apps/{app}", h.get_app, name="app")
    r.add_get("/v1/apps/{app}/channels/{channel}", h.get_ref, name="ref")
    r.add_post("/v1/apps/{app}/channels/{channel}/open", h.post_open, name="open")
    r.add_get("/v1/changes", h.get_changes, name="changes")
    r.add_post("/v1/admin/prefetch", h.admin_prefetch, name="prefetch")
    r.add_post("/v1/admin/purge", h.admin_purge, name="purge")
    r.add_get("/metrics", h.metrics, name="metrics")
    r.add_get("/healthz", h.healthz, name="healthz")
    r.add_get("/readyz", h.readyz, name="readyz")
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    await app[EDGE].start()
    yield
    await app[EDGE].close()
    app[ENCODINGS].close()
