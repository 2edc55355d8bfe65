"""The edge node assembled: tiers, sources, single-flights, the ring of peers (when in a
cluster) and the two caches (immutable objects through ``Filler``, refs through
``RefCache``), with their lifecycle and the admin calls.

``start`` and ``close`` are the only places that create or end anything long-lived: the
HTTP client session, the disk index rebuild, the cluster's health checks, the background
disk writes, the flights.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common.errors import BadRequest, ConfigError, IntegrityError, MinicdnError, NotFound, UpstreamError
from common.manifest import decode_manifest
from common.opening import index_heads
from common.signing import payload_of
from common.tls import client_context
from edge import hops
from edge.accesslog import AccessLog
from edge.changes import ChangeFeed
from edge.cluster import Cluster, ClusterSettings
from edge.disk import DiskTier
from edge.fill import Filler
from edge.h1client import Pools
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.negative import NegativeCache
from edge.objects import Entry, Obj
from edge.policy import make_policy
from edge.refs import RefCache, RefSettings, Served
from edge.singleflight import Flights
from edge.tasks import TaskOwner
from edge.threads import start_pool
from edge.upstream import Answer, HttpSource, NoPeers, PeerPicker, Sources
from edge.valid import http_urls, non_negative, positive

__all__ = ["Edge", "EdgeSettings"]

log = logging.getLogger("minicdn.edge")

PREFETCH_WINDOW = 32
ADMIN_PEER_TIMEOUT = 600.0  # bound on a peer's (or sibling worker's) share of a prefetch
PURGE_TIMEOUT = 30.0  # and of a purge (a few file removals: one that takes longer is stuck)
SIBLING_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class EdgeSettings:
    upstreams: Sequence[str]
    cache_dir: Path
    memory_size: int = 256 << 20
    disk_size: int = 10 << 30
    policy: str = "s3fifo"
    upstream_timeout: float = 10.0
    coalesce_timeout: float = 5.0
    refs: RefSettings = field(default_factory=RefSettings)
    max_object: int = 64 << 20
    token: str | None = None
    access_log: str | None = None
    full_backoff: float = 5.0
    drain_timeout: float = 10.0
    drain_delay: float = 0.0
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # How long an id no upstream has is answered 404 (nil in a batch) without asking again
    # (edge.negative says why that is safe); 0 turns negative caching off.
    negative_ttl: float = 10.0
    # This edge's name in Via headers and health answers; made once per command, so that
    # every worker process of one edge shares it (edge.hops).
    node: str = field(default_factory=hops.new_node_name)
    # --tls-ca: PEM CA certificates https upstreams and peers may be signed by (common.tls)
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("--upstream: give at least one")
        http_urls("--upstream", list(self.upstreams))
        positive({"--upstream-timeout": self.upstream_timeout})
        non_negative({"--negative-ttl": self.negative_ttl}, zero="0: off")
        if self.tls_ca is not None:
            client_context(self.tls_ca)  # refused here, naming the flag, rather than at the first miss


class Edge:
    def __init__(
        self, settings: EdgeSettings, metrics: EdgeMetrics | None = None, peers: PeerPicker | None = None
    ) -> None:
        self.settings = settings
        self.metrics = m = metrics or EdgeMetrics.create()
        self.node = settings.node
        self.cluster = (
            Cluster(settings.cluster, self.node, m, secret=settings.token)
            if settings.cluster.enabled
            else None
        )
        self.peers: PeerPicker = peers or self.cluster or NoPeers()
        self.memory = MemoryTier(
            make_policy(settings.policy, settings.memory_size), m.evicted_bytes.labels("memory").inc
        )
        self.disk = DiskTier(
            settings.cache_dir,
            make_policy(settings.policy, settings.disk_size),
            on_evict=m.evicted_bytes.labels("disk").inc,
            on_full=m.disk_full.inc,
            on_corrupt=m.corrupt.inc,
            on_shed=m.disk_writes_shed.inc,
            full_backoff=settings.full_backoff,
        )
        for tier, obj in (("memory", self.memory), ("disk", self.disk)):
            m.cache_bytes.labels(tier).set_function(lambda o=obj: o.used)  # type: ignore[misc]
            # The disk's limit is lowered to what the filesystem holds when that is less.
            m.cache_limit.labels(tier).set_function(lambda o=obj: o.limit)  # type: ignore[misc]
        self.writes = TaskOwner("disk write", limit=4096)
        self.background = TaskOwner("background")
        self.object_flights: Flights[Entry] = Flights(settings.coalesce_timeout)
        self.ref_flights: Flights[Served] = Flights()
        self.session: aiohttp.ClientSession | None = None
        # With --workers N: the other workers' control sockets, by slot (edge.server).  An
        # admin call that did not come from a sibling is passed to each, so it acts on the
        # node: every worker's memory, every owner's share of the disk.
        self.siblings: dict[int, Path] = {}
        self.access_log: AccessLog | None = None
        self.draining = False
        # The upstreams' GETs (every miss) go through the lean client: aiohttp's cost more
        # CPU than the rest of a miss (issue 15); batches and admin calls stay on aiohttp.
        # Certificates and host names are verified on every https upstream and peer (None:
        # none is https, and loading the system's trust store would cost 30 ms a process).
        self.client_tls = _client_tls(settings)
        self.pools = Pools(limit=64, ssl_context=self.client_tls)
        self.upstreams = Sources(
            [
                HttpSource(
                    u,
                    self._session,
                    settings.upstream_timeout,
                    settings.max_object,
                    node=self.node,
                    pools=self.pools,
                )
                for u in settings.upstreams
            ],
            m,
        )
        self.objects = Filler(
            self.memory,
            self.disk,
            self.upstreams,
            self.peers,
            self.object_flights,
            self.writes,
            m,
            negative=NegativeCache(settings.negative_ttl),
        )
        self.refs = RefCache(
            self.memory, self.disk, self.upstreams, self.ref_flights, self.writes, m, settings.refs
        )
        self.feed = ChangeFeed(settings.upstreams, self._session, self.refs, m, self.node)

    def _session(self) -> aiohttp.ClientSession:
        """The session every source shares, once ``start`` made it."""
        if self.session is None:
            raise UpstreamError("the edge has not started: no client session yet")
        return self.session

    @property
    def ready(self) -> bool:
        return self.disk.loaded and not self.draining

    async def start(self) -> None:
        s = self.settings
        await start_pool()  # the loop's threads, all of them now: edge.threads
        self.session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, ssl=self.client_tls or True),
            headers={"User-Agent": "minicdn-edge"},
        )
        if s.access_log:
            self.access_log = AccessLog(s.access_log)
        self.background.spawn(self.disk.open())
        self.background.spawn(self.feed.run())  # idle until a ref is stored or polled for
        if self.cluster is not None:
            await self.cluster.start(self.session, s.max_object)
        _tune_gc()

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()
        await self.background.close()
        await self.object_flights.close()
        await self.ref_flights.close()
        await self.writes.close(grace=self.settings.drain_timeout)
        # The disk writer's queue drains (within the bound), then one write-back: object
        # files are not fsynced one by one (edge.disk).
        await self.disk.flush(grace=self.settings.drain_timeout)
        await self.pools.close()
        if self.session is not None:
            await self.session.close()
        if self.access_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.access_log.close)

    # -- pass-through and admin ------------------------------------------------------------

    async def passthrough(self, path: str) -> Answer:
        async def accept(answer: Answer) -> Answer:
            return answer

        return await self.upstreams.fetch(path, accept, {"Accept": "application/json"})

    async def purge(
        self, app: str, cluster: bool = False, authorization: str = "", sibling: bool = False
    ) -> dict[str, Any]:
        """Drop the app's cached refs here (every worker of this node), and with ``cluster``
        on every known peer too.  ``purged`` counts copies dropped: a ref held in two
        workers' memory and on disk counts three."""
        purged = await self.refs.purge(app)
        answer: dict[str, Any] = {"purged": purged}
        if sibling:
            return answer
        failed: list[str] = []
        if self.siblings:
            answers, failed = await self._each_sibling(
                "/v1/admin/purge", {"app": app}, authorization, PURGE_TIMEOUT
            )
            answer["purged"] += sum(int(a.get("purged", 0)) for a in answers)
            answer["workers"] = 1 + len(answers)
            answer["failed"] = failed
        if not cluster or self.cluster is None or hops.current().peer:
            return answer
        answers, peers_failed = await self._each_peer(
            "/v1/admin/purge", {"app": app}, authorization, PURGE_TIMEOUT
        )
        answer["purged"] += sum(int(a.get("purged", 0)) for a in answers)
        answer["nodes"] = 1 + len(answers)
        answer["failed"] = failed + peers_failed
        return answer

    async def prefetch(
        self, app: str, channel: str | None, version: str | None, authorization: str = ""
    ) -> dict[str, Any]:
        """Warm the ref, every manifest and every chunk of a channel's versions (or of one
        version).  In a cluster each node warms the ref and the chunks it owns, in parallel;
        the answer adds their counts up.  A peer that fails has its share warmed from here,
        through the ring."""
        if self.cluster is None:
            return {
                **await self._warm(app, channel, version, True, authorization),
                **await self._warm_heads(app, channel),
            }
        if hops.current().peer:  # our share of another node's prefetch
            with hops.own_request():
                return await self._warm(app, channel, version, False, authorization)
        body = {"app": app, **({"channel": channel} if channel else {"version": version})}
        mine, (answers, failed) = await asyncio.gather(
            self._warm(app, channel, version, False, authorization),
            self._each_peer("/v1/admin/prefetch", body, authorization),
        )
        if failed:
            await self._warm(app, channel, version, True, authorization)
        shares = [mine, *answers]
        answer: dict[str, Any] = {
            "manifests": mine["manifests"],
            "chunks": sum(int(a.get("chunks", 0)) for a in shares),
            "cached": sum(int(a.get("cached", 0)) for a in shares),
            "nodes": len(shares),
        }
        if "workers" in mine:
            answer["workers"] = mine["workers"]
        answer["failed"] = mine.get("failed", []) + failed
        return {**answer, **await self._warm_heads(app, channel)}

    async def _warm_heads(self, app: str, channel: str | None) -> dict[str, int]:
        """Load the heads objects a channel's ref names and every package manifest their
        heads name (through the ring), so that the first open of a release is answered
        from cache: ``{"packages": how many}`` (0 for a version prefetch: no ref)."""
        if not channel:
            return {"packages": 0}
        ref = _payload((await self.refs.get(app, channel)).entry.body, "ref")
        ids = [
            ref.get("heads"),
            *([ref["rollout"].get("heads")] if isinstance(ref.get("rollout"), dict) else []),
        ]
        package_ids: list[bytes] = []
        for hid in (i for i in ids if isinstance(i, bytes) and len(i) == 32):
            body = (await self.objects.load(Obj("manifest", hid))).body
            heads = await asyncio.get_running_loop().run_in_executor(None, index_heads, body)
            package_ids += [head.manifest for _, head in heads.values()]
        sem = asyncio.Semaphore(PREFETCH_WINDOW)

        async def one(pid: bytes) -> None:
            async with sem:
                await self.objects.load(Obj("manifest", pid))

        unique = list(dict.fromkeys(package_ids))
        await asyncio.gather(*(one(p) for p in unique))
        return {"packages": len(unique)}

    async def _warm(
        self, app: str, channel: str | None, version: str | None, everything: bool, authorization: str
    ) -> dict[str, Any]:
        """Load the manifests (through the ring) and every chunk this node owns, or every
        chunk when ``everything`` (each through its owner).  With sibling workers each
        loads its own share of those chunks (the keys it owns on disk), in parallel; the
        share of a sibling that fails is loaded here."""
        manifests = await self._manifest_ids(app, channel, version)
        if not self.siblings:
            return await self.warm_share(manifests, everything, split=False)
        body = {"app": app, "manifests": [m.hex() for m in manifests], "everything": everything}
        mine, (answers, failed) = await asyncio.gather(
            self.warm_share(manifests, everything, split=True),
            self._each_sibling("/v1/admin/prefetch", body, authorization),
        )
        shares = [mine, *answers]
        chunks = sum(int(a.get("chunks", 0)) for a in shares)
        if failed:  # their shares too, from here (the whole scope: the count is all of it)
            chunks = (await self.warm_share(manifests, everything, split=False))["chunks"]
        return {
            "manifests": len(manifests),
            "chunks": chunks,
            "cached": sum(int(a.get("cached", 0)) for a in shares),
            "workers": len(shares),
            "failed": failed,
        }

    async def warm_share(self, manifests: list[bytes], everything: bool, split: bool) -> dict[str, int]:
        """Load ``manifests`` and their chunks: those this node owns in its ring (all of
        them when ``everything``), and of those only the ones this worker owns on disk when
        ``split``."""
        chunk_ids: list[bytes] = []
        for mid in manifests:
            entry = await self.objects.load(Obj("manifest", mid))
            body = _payload(entry.body, "manifest")
            try:
                manifest = decode_manifest(body)
            except BadRequest as exc:
                raise IntegrityError(f"manifest {mid.hex()}: {exc.message}") from exc
            chunk_ids += [c.id for p in manifest.packages for c in p.chunks]
        unique = list(dict.fromkeys(chunk_ids))
        if not everything and self.cluster is not None:
            unique = [c for c in unique if self.cluster.owns(Obj("chunk", c).key)]
        if split:
            unique = [c for c in unique if self.disk.owns(Obj("chunk", c).key)]
        cached = sum(1 for c in unique if self._holds(Obj("chunk", c).key))
        sem = asyncio.Semaphore(PREFETCH_WINDOW)

        async def one(cid: bytes) -> None:
            async with sem:
                await self.objects.load(Obj("chunk", cid))

        await asyncio.gather(*(one(c) for c in unique))
        return {"manifests": len(manifests), "chunks": len(unique), "cached": cached}

    async def _each_peer(
        self, path: str, body: dict[str, Any], authorization: str, within: float = ADMIN_PEER_TIMEOUT
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """POST ``body`` to ``path`` on every known peer, marked as from a peer (so it goes
        no further): the JSON answers of those that gave one, and the URLs of the others.
        No Via: the call is this edge's own, not a request passed on (the peer's share may
        well need objects this edge owns)."""
        assert self.cluster is not None and self.session is not None
        session = self.session
        timeout = aiohttp.ClientTimeout(total=within, sock_connect=self.settings.cluster.peer_timeout)

        def call(url: str) -> Awaitable[dict[str, Any]]:
            mark = hops.peer_mark(self.node, self.settings.token, url + path)
            return _post_json(session, url + path, body, {"Authorization": authorization, **mark}, timeout)

        return await _fan_out({url: call(url) for url in self.cluster.peer_urls()}, path)

    async def _each_sibling(
        self, path: str, body: dict[str, Any], authorization: str, within: float = ADMIN_PEER_TIMEOUT
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """POST ``body`` to ``path`` on every sibling worker, over its control socket (a
        call there comes from a sibling, so it goes no further): the JSON answers of those
        that gave one, and the names of the others ("worker <slot>")."""
        headers = {"Authorization": authorization}
        timeout = aiohttp.ClientTimeout(total=within, sock_connect=SIBLING_CONNECT_TIMEOUT)

        async def call(socket_path: Path) -> dict[str, Any]:
            connector = aiohttp.UnixConnector(path=str(socket_path))
            async with aiohttp.ClientSession(connector=connector) as session:
                return await _post_json(session, f"http://localhost{path}", body, headers, timeout)

        return await _fan_out({f"worker {i}": call(p) for i, p in sorted(self.siblings.items())}, path)

    def _holds(self, key: str) -> bool:
        return key in self.memory.policy or key in self.disk.policy

    async def _manifest_ids(self, app: str, channel: str | None, version: str | None) -> list[bytes]:
        if channel:
            ref = _payload((await self.refs.get(app, channel)).entry.body, "ref")
            ids = [ref.get("manifest")]
            if isinstance(ref.get("rollout"), dict):
                ids.append(ref["rollout"].get("manifest"))
            return [i for i in ids if isinstance(i, bytes) and len(i) == 32]
        info = json.loads((await self.passthrough(f"/v1/apps/{app}")).body)
        for v in info.get("versions", []):
            if v.get("version") == version:
                return [bytes.fromhex(v["manifest"])]
        raise NotFound(f"no version {version} of app {app}")


GC_GEN0 = 20_000


def _client_tls(settings: EdgeSettings) -> ssl.SSLContext | None:
    urls = [*settings.upstreams, *settings.cluster.peers]
    if settings.tls_ca is None and not any(u.startswith("https://") for u in urls):
        return None
    return client_context(settings.tls_ca)


def _tune_gc() -> None:
    """Everything made at start-up (modules, the app, the tiers) goes to the permanent
    generation, so no collection walks it again; and the young generation is collected
    after 20,000 allocations instead of 700: a miss allocates a few hundred short-lived
    objects (futures, a task, headers), nearly all freed by reference counting, and
    collecting them every few misses cost ~9% of the loop's time (issue 15)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0, gc.get_threshold()[0]), gen1, gen2)


async def _post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
) -> dict[str, Any]:
    # Not redirected: the call carries the caller's token (edge.upstream on redirects).
    async with session.post(url, json=body, headers=headers, timeout=timeout, allow_redirects=False) as resp:
        if resp.status != 200:
            raise MinicdnError(f"{url} answered {resp.status}: {(await resp.text())[:200]}")
        answer = await resp.json()
    if not isinstance(answer, dict):
        raise MinicdnError(f"{url} answered {answer!r}")
    return answer


async def _fan_out(
    calls: dict[str, Awaitable[dict[str, Any]]], path: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the admin ``calls`` (by target) together: the answers of those that gave one,
    and the targets of the others."""
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    answers, failed = [], []
    for target, result in zip(calls, results, strict=True):
        if isinstance(result, dict):
            answers.append(result)
        elif isinstance(result, MinicdnError | aiohttp.ClientError | OSError | TimeoutError | ValueError):
            log.warning("admin %s on %s failed: %s", path, target, result)
            failed.append(target)
        else:
            raise result
    return answers, failed


def _payload(envelope: bytes, what: str) -> Any:
    """The body inside a signed envelope, unverified (the edge has no key; clients verify)."""
    try:
        return payload_of(envelope, what=what)
    except BadRequest as exc:
        raise IntegrityError(f"{what} is not a readable envelope") from exc
