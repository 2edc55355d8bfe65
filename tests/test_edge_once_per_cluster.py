"""Once per cluster, under pressure: a ring's cold burst reaches the origin once per chunk,
and every fill that may repeat another is counted (``minicdn_edge_fallbacks_total``) — so
origin fetches lie between the distinct chunks and the distinct chunks plus the counted
fallbacks, and with no fallback they are exactly the distinct chunks.

What let second fetches through under heavy load, found with a ring whose processes were
starved and stalled (docs/edge.md, "Once per cluster"): every waiter past the coalescing
bound fetched for itself; active health checks that timed out twice took live-but-slow
owners out of the ring, so their keys moved to nodes that did not hold them; and a
non-owner whose owner took longer than --peer-timeout fetched from the upstream while the
owner was still filling.  The first is closed (one shared second fill per key), the second
too (a timed-out check takes a peer out only after --peer-timeout of silence), the third
is bounded by --peer-timeout and counted, as are the rest."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import msgpack
import pytest
from aiohttp import web

from common import codec
from edge import cluster as cluster_module
from edge.cluster import NODE_HEADER, Cluster, ClusterSettings
from edge.metrics import FALLBACKS, EdgeMetrics
from tests.conftest import http
from tests.edge_support import (
    App,
    batch_items,
    contention,
    get_chunk,
    publish_app,
    ring,
    verify_chunk,
)
from tests.procs import Service, free_port, metric, origin_chunks
from tests.test_edge_cluster import blobs_app

# -- a slow peer is not a dead one (in-process) --------------------------------------------------


class SlowPeer:
    """A peer whose /healthz never answers (its loop is busy), while a chunk request gets
    an answer (a 404 will do: an answer is an answer)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SlowPeer:
        async def healthz(_r: web.Request) -> web.Response:
            await asyncio.Event().wait()
            return web.json_response({"ok": True}, headers={NODE_HEADER: "edge-slow"})

        async def chunk(_r: web.Request) -> web.Response:
            return web.json_response({"error": "not_found"}, status=404)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/v1/chunks/{id}", chunk)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_peer_whose_checks_time_out_leaves_the_ring_only_after_peer_timeout_of_silence(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "CHECK_TIMEOUT", 0.05)  # every check of it times out
    now = [0.0]
    me = "http://127.0.0.1:1"
    async with SlowPeer() as slow:
        settings = ClusterSettings(peers=(slow.url, me), self_url=me, peer_timeout=10.0, check_interval=3600)
        m = EdgeMetrics.create()
        cluster = Cluster(settings, "edge-me", m, clock=lambda: now[0])
        await cluster.start(session, 1 << 20)  # first round of checks: timed out
        try:
            for _ in range(3):  # two timed-out checks in a row used to be enough
                now[0] += 1.0
                await cluster.check_all()
            assert slow.url in cluster.ring
            # It answers a request: not silent.  Silence counts from the next timeout.
            key = next(f"chunks/{i:064x}" for i in range(100) if cluster.ring.owner(f"chunks/{i:064x}") == slow.url)
            src = cluster.pick(key)
            assert src is not None and (await src.get(f"/v1/{key}", {})).status == 404
            await cluster.check_all()
            now[0] += 9.0
            await cluster.check_all()
            assert slow.url in cluster.ring and not cluster.displaced(key)
            now[0] += 2.0  # silent for longer than --peer-timeout: dead, or as good as
            await cluster.check_all()
            assert slow.url not in cluster.ring and cluster.displaced(key) and cluster.pick(key) is None
        finally:
            await cluster.close()


# -- a ring's cold burst under contention (real processes) -----------------------------------------


def fallbacks(nodes: list[Service]) -> dict[str, float]:
    return {r: sum(metric(n.url, "minicdn_edge_fallbacks_total", f'reason="{r}"') for n in nodes) for r in FALLBACKS}


def cold_burst(nodes: list[Service], app: App, seed: int) -> None:
    """Every chunk of ``app`` from every node at once, as GETs in random order and as one
    batch per node; every answer verified."""
    jobs: list[tuple[Service, str | None]] = [(n, c) for n in nodes for c in app.chunks] + [(n, None) for n in nodes]
    random.Random(seed).shuffle(jobs)

    def one(job: tuple[Service, str | None]) -> None:
        node, cid = job
        if cid is not None:
            verify_chunk(cid, get_chunk(node.url, cid, zstd=True))
            return
        r = http("POST", f"{node.url}/v1/chunks:batch", msgpack.packb(app.chunks), timeout=120)
        assert r.status == 200, r.body[:200]
        items = batch_items(r.body)
        assert [i[0] for i in items] == app.chunks
        for hexid, frame in items:
            codec.decode_chunk(bytes.fromhex(hexid), frame)  # type: ignore[arg-type]

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, jobs))


def run_bursts(origin: Service, tmp: Path, rounds: int) -> None:
    nodes = ring(tmp, origin.url, n=3, name="pressed",
                 extra=("--coalesce-timeout", "1s", "--peer-timeout", "2s"))
    try:
        for r in range(rounds):
            app = publish_app(origin.url, f"pressed{r}", blobs_app(tmp / f"app{r}", 1.0, seed=700 + r))
            before, counted = origin_chunks(origin), fallbacks(nodes)
            with contention([origin, *nodes], seed=r):
                cold_burst(nodes, app, seed=r)
            fetched = origin_chunks(origin) - before
            now = fallbacks(nodes)
            extra = sum(now.values()) - sum(counted.values())
            why = {k: now[k] - counted[k] for k in now}
            assert len(app.chunks) <= fetched <= len(app.chunks) + extra, (fetched, len(app.chunks), why)
            if extra == 0:
                assert fetched == len(app.chunks), why
    finally:
        for n in nodes:
            n.stop()


def test_a_rings_cold_burst_under_contention_reaches_the_origin_once_per_chunk_or_counts_why(
    origin: Service, tmp_path: Path
) -> None:
    run_bursts(origin, tmp_path, rounds=1)


@pytest.mark.slow
def test_many_cold_bursts_under_contention(origin: Service, tmp_path: Path) -> None:
    run_bursts(origin, tmp_path, rounds=8)
