"""A ring of peer edges: who is in it, who owns what, who is alive.

Membership comes from configuration, never from gossip: a fixed list of URLs (``--peer``,
with ``--self``), or a DNS name resolved to all its addresses every ``dns_interval``
(``--peers-dns NAME:PORT``, the Kubernetes headless-Service convention).  Every node
computes the same owner for a key from the same member set (edge.ring), so members must
spell one another's URLs alike.

Health:

- passive: a peer that cannot be connected to (refused, unreachable) leaves the ring at
  once; the fill that saw it falls back to the upstreams (edge.fill);
- active: every ``check_interval`` each known peer's ``/healthz`` is asked (bounded by
  ``CHECK_TIMEOUT``); a peer that answers 200 is (back) in the ring at once, one that fails
  ``DOWN_AFTER`` checks in a row is out (one slow answer on a busy machine must not
  reshuffle the ring).

A slow peer is not a dead one.  Checks that *time out* take a peer out only once it has
also been silent — no answer to a check nor to a request — for ``peer_timeout``: on a
machine under heavy CPU or memory pressure a live edge can miss a 2 s bound twice in a
row, and taking it out moves its keys to nodes that do not hold them, each a second
origin fetch (docs/edge.md, "Once per cluster").  A check that is refused, reset or
answered with an error status counts at once, as before.  And a request timeout does not
take a peer out by itself either (its upstream may be what is slow).

New members start in the ring, so nodes that start together agree from their first request.

Which member is this node: ``--self``, else the member whose ``/healthz`` answers with this
process's node name (``X-Minicdn-Node``); until then this node's own address is treated as a
peer, which costs one loopback hop and is otherwise correct (a peer-marked request is filled
from the upstreams, never forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from common.errors import ConfigError
from edge import hops
from edge.metrics import EdgeMetrics
from edge.ring import Ring
from edge.tasks import TaskOwner
from edge.upstream import Answer, BatchItem, HttpSource, Source, SourceError
from edge.valid import http_urls, positive

__all__ = ["NODE_HEADER", "Cluster", "ClusterSettings", "PeerSource", "resolve_dns"]

log = logging.getLogger("minicdn.edge.cluster")

NODE_HEADER = "X-Minicdn-Node"  # on /healthz: the answering process's node name
CHECK_TIMEOUT = 2.0  # bound on one active health check
DOWN_AFTER = 2  # failed active checks in a row that take a peer out of the ring

Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class ClusterSettings:
    peers: tuple[str, ...] = ()  # base URLs of every member (this node's may be among them)
    self_url: str | None = None  # this node's URL as the others name it
    dns: tuple[str, int] | None = None  # NAME, PORT: members are SCHEME://ADDRESS:PORT
    dns_scheme: str = "http"  # https when this edge serves TLS: a ring's members are alike
    peer_timeout: float = 10.0  # bound on one request to an owner peer
    check_interval: float = 2.0  # active health checks (and how soon a peer rejoins)
    dns_interval: float = 10.0  # re-resolution of ``dns``

    def __post_init__(self) -> None:
        if self.peers and self.dns:
            raise ConfigError("--peer, --peers-dns: give one way to find the ring's members, not both")
        if self.dns_scheme not in ("http", "https"):
            raise ConfigError(f"--peers-dns: members are http or https, not {self.dns_scheme!r}")
        http_urls("--peer", self.peers)
        http_urls("--self", [self.self_url] if self.self_url else [])
        if self.self_url and not self.enabled:
            raise ConfigError("--self names this edge among --peer or --peers-dns members; give those too")
        positive(
            {
                "--peer-timeout": self.peer_timeout,
                "--peer-check-interval": self.check_interval,
                "--peers-dns-interval": self.dns_interval,
            }
        )

    @property
    def enabled(self) -> bool:
        return bool(self.peers or self.dns)


async def resolve_dns(name: str, port: int) -> list[str]:
    """Every address ``name`` resolves to, as base URLs on ``port``."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    urls = set()
    for family, *_, sockaddr in infos:
        host = str(sockaddr[0])
        urls.add(f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}")
    return sorted(urls)


class PeerSource:
    """An owner peer: its requests are marked (edge.hops), and a connection it refuses
    (or that cannot be made) takes it out of the ring.  A connection that breaks mid-answer
    does not: it may be a pooled keep-alive the peer closed; the active check decides.
    Every answer it gives is news that it is alive (``on_heard``)."""

    kind = "peer"

    def __init__(
        self, http: HttpSource, on_down: Callable[[str, str], None], on_heard: Callable[[str], None]
    ) -> None:
        self.name = http.name
        self.http = http
        self.on_down = on_down
        self.on_heard = on_heard

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        with self._watched():
            answer = await self.http.get(path, headers)
        self.on_heard(self.name)
        return answer

    async def batch(self, ids: Sequence[str], headers: Mapping[str, str]) -> AsyncGenerator[BatchItem, None]:
        with self._watched():
            async with contextlib.aclosing(self.http.batch(ids, headers)) as items:
                async for item in items:
                    self.on_heard(self.name)
                    yield item

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        try:
            yield
        except SourceError as exc:
            if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
                self.on_down(self.name, exc.message)
            raise


class Cluster:
    """The ``PeerPicker`` of a node in a ring."""

    def __init__(
        self,
        settings: ClusterSettings,
        node: str,
        metrics: EdgeMetrics,
        resolve: Resolver = resolve_dns,
        secret: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.node = node
        self.secret = secret  # the ring's shared token: proves this node's peer marks
        self.metrics = metrics
        self.resolve = resolve
        self.self_url = _base(settings.self_url) if settings.self_url else None
        self.clock = clock
        self.ring = Ring([])
        self.members = Ring([])  # every known member, in the ring or not
        self._up: dict[str, bool] = {}  # known peers, this node excluded → in the ring
        self._failed: dict[str, int] = {}  # active checks failed in a row
        self._silent_since: dict[str, float] = {}  # first timed-out check since last heard from
        self._sources: dict[str, PeerSource] = {}
        self._session: aiohttp.ClientSession | None = None
        self._max_body = 0
        self._tasks = TaskOwner("cluster")
        self._set_members(settings.peers)

    # -- the PeerPicker seam ----------------------------------------------------------------

    def pick(self, key: str) -> Source | None:
        """The owner of ``key`` when it is another node; None when this node owns it, or
        when the request being served came from a peer (it is never forwarded twice)."""
        if hops.current().peer:
            return None
        owner = self.ring.owner(key)
        if owner is None or owner == self.self_url:
            return None
        return self._sources.get(owner)

    def displaced(self, key: str) -> bool:
        """Whether the key's owner among all known members is a peer out of the ring now:
        whoever fills the key meanwhile does so in its stead, perhaps a second time."""
        owner = self.members.owner(key)
        return owner is not None and self._up.get(owner) is False

    def owns(self, key: str) -> bool:
        owner = self.ring.owner(key)
        return owner is None or owner == self.self_url

    def peer_urls(self) -> list[str]:
        """Every known peer, in the ring or not (for cluster-wide admin calls)."""
        return sorted(self._up)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession, max_body: int) -> None:
        s = self.settings
        self._session, self._max_body = session, max_body
        for url in self._up:
            self._sources[url] = self._source(url)
        if s.dns is not None:
            await self.refresh_dns()
            self._tasks.spawn(self._every(s.dns_interval, self.refresh_dns, first=s.dns_interval))
        self._tasks.spawn(self._every(self.settings.check_interval, self.check_all, first=0.0))

    async def close(self) -> None:
        await self._tasks.close()

    # -- membership and health ----------------------------------------------------------------

    def _source(self, url: str) -> PeerSource:
        assert self._session is not None
        http = HttpSource(
            url, self._session, self.settings.peer_timeout, self._max_body, "peer", self.node, self.secret
        )
        return PeerSource(http, lambda u, why: self.mark(u, False, why), self.heard)

    def _set_members(self, urls: tuple[str, ...] | list[str]) -> None:
        wanted = {_base(u) for u in urls} - {self.self_url}
        for url in set(self._up) - wanted:
            del self._up[url]
            self._failed.pop(url, None)
            self._silent_since.pop(url, None)
            self._sources.pop(url, None)
            log.info("peer %s left the membership", url)
        for url in wanted - set(self._up):
            self._up[url] = True
            if self._session is not None:
                self._sources[url] = self._source(url)
            log.info("peer %s joined the membership", url)
        self._rebuild()

    def mark(self, url: str, up: bool, why: str = "") -> None:
        """Health news about ``url``: in the ring when up, out of it when down."""
        if url not in self._up or self._up[url] == up:
            return
        self._up[url] = up
        if up:
            log.info("peer %s is back in the ring", url)
        else:
            log.warning("peer %s leaves the ring: %s", url, why)
        self._rebuild()

    def _rebuild(self) -> None:
        live = [u for u, up in self._up.items() if up]
        me = [self.self_url] if self.self_url else []
        self.ring = Ring([*live, *me])
        self.members = Ring([*self._up, *me])
        self.metrics.ring_size.set(max(1, len(self.ring)))
        self.metrics.peers.labels("up").set(len(live))
        self.metrics.peers.labels("down").set(len(self._up) - len(live))

    def _found_self(self, url: str) -> None:
        if self.self_url is not None and self.self_url != url:
            log.warning("this node answers as %s, not --self %s: using %s", url, self.self_url, url)
        log.info("this node is %s in the ring", url)
        self.self_url = url
        self._up.pop(url, None)
        self._sources.pop(url, None)
        self._rebuild()

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(u) for u in list(self._up)))

    def heard(self, url: str) -> None:
        """``url`` answered something: whatever its checks say, it is not silent."""
        self._silent_since.pop(url, None)

    async def _check(self, url: str) -> None:
        assert self._session is not None
        node, ok, why, slow = None, False, "", False
        try:
            timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
            # Not redirected: a 3xx to another host could answer with this node's own name.
            async with self._session.get(url + "/healthz", timeout=timeout, allow_redirects=False) as resp:
                await resp.read()
                node, ok, why = resp.headers.get(NODE_HEADER), resp.status == 200, f"/healthz {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why, slow = f"/healthz: {type(exc).__name__} {exc}", isinstance(exc, TimeoutError)
        if node == self.node:
            self._found_self(url)
            return
        self._failed[url] = 0 if ok else self._failed.get(url, 0) + 1
        if not slow:
            self._silent_since.pop(url, None)  # an answer, or a refusal: not a silence
        elif self._silent(url) < self.settings.peer_timeout:
            return  # slow, not (yet) dead
        if ok or self._failed[url] >= DOWN_AFTER:
            self.mark(url, ok, why)

    def _silent(self, url: str) -> float:
        """Seconds since ``url``'s first check that timed out with nothing heard from it since."""
        return self.clock() - self._silent_since.setdefault(url, self.clock())

    async def refresh_dns(self) -> None:
        assert self.settings.dns is not None
        name, port = self.settings.dns
        try:
            urls = await self.resolve(name, port)
        except OSError as exc:  # socket.gaierror included: keep the members we have
            log.warning("resolving %s failed (%s): keeping %d known peers", name, exc, len(self._up))
            return
        scheme = self.settings.dns_scheme
        self._set_members([f"{scheme}://{u.partition('://')[2]}" for u in urls])

    @staticmethod
    async def _every(interval: float, job: Callable[[], Awaitable[None]], first: float) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await job()
            except Exception:  # a bug here must not end the loop that keeps the ring true
                log.exception("cluster job %s failed", getattr(job, "__name__", "?"))
            await asyncio.sleep(interval)


def _base(url: str) -> str:
    return url.rstrip("/")
