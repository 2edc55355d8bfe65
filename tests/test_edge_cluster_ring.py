"""The cluster's pure cores, tested synchronously (the ring, the hot-key rule, the hop
rules), and its membership and health logic against in-process servers on loopback."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from common.errors import LoopDetected
from edge import hops
from edge.cluster import NODE_HEADER, Cluster, ClusterSettings
from edge.hot import HotKeys
from edge.metrics import EdgeMetrics
from edge.ring import Ring, weight
from edge.upstream import SourceError
from tests.procs import free_port

KEYS = [f"chunks/{random.Random(i).randbytes(32).hex()}" for i in range(4000)]
MEMBERS = [f"http://edge-{i}.edges:8081" for i in range(1, 6)]  # names only: never contacted


# -- the ring ----------------------------------------------------------------------------------


def test_every_member_owns_a_fair_share_and_the_order_of_members_does_not_matter() -> None:
    ring = Ring(MEMBERS)
    shares = Counter(ring.owner(k) for k in KEYS)
    assert set(shares) == set(MEMBERS)
    assert all(0.15 < n / len(KEYS) < 0.25 for n in shares.values()), shares
    shuffled = Ring(random.Random(1).sample(MEMBERS, len(MEMBERS)))
    assert all(shuffled.owner(k) == ring.owner(k) for k in KEYS)
    assert Ring([]).owner(KEYS[0]) is None and len(Ring(MEMBERS * 2)) == len(MEMBERS)


def test_a_member_leaving_moves_only_its_own_keys_and_rejoining_moves_them_back() -> None:
    full, gone = Ring(MEMBERS), MEMBERS[2]
    less = Ring([m for m in MEMBERS if m != gone])
    for k in KEYS:
        if full.owner(k) == gone:
            assert less.owner(k) != gone
        else:
            assert less.owner(k) == full.owner(k)
    joined = Ring([*MEMBERS, "http://edge-9.edges:8081"])
    moved = [k for k in KEYS if joined.owner(k) != full.owner(k)]
    assert all(joined.owner(k) == "http://edge-9.edges:8081" for k in moved)
    assert 0.1 < len(moved) / len(KEYS) < 0.24  # about 1/6 of the keys


def test_forwards_climb_in_weight_so_differing_views_cannot_make_a_cycle() -> None:
    # Each node, with any view that includes itself, forwards only to a member that
    # outscores it: a chain of forwards can never come back to a node it left.
    rnd = random.Random(3)
    for k in KEYS[:300]:
        for me in MEMBERS:
            view = Ring([me, *rnd.sample(MEMBERS, rnd.randrange(len(MEMBERS)))])
            owner = view.owner(k)
            assert owner == me or weight(owner or "", k) > weight(me, k)


# -- the hot-key rule ---------------------------------------------------------------------------


def test_a_key_is_hot_the_second_time_within_the_window() -> None:
    hot = HotKeys(window=3)
    assert not hot.admit("a") and hot.admit("a")
    assert not hot.admit("a")  # admitted once: it is the memory tier's now
    for k in "bcde":
        assert not hot.admit(k)
    assert not hot.admit("b")  # pushed out of the window by c, d, e
    assert len(hot) == 3
    with pytest.raises(ValueError):
        HotKeys(0)


# -- hops ---------------------------------------------------------------------------------------


def test_via_is_parsed_and_a_node_finds_itself_or_the_limit() -> None:
    hop = hops.Hop(hops.parse_via(["1.1 edge-a, 1.1 edge-b (minicdn, a comment)", "HTTP/1.1 proxy"]))
    assert hop.via == ("1.1 edge-a", "1.1 edge-b", "HTTP/1.1 proxy")
    assert hop.through("edge-b") and not hop.through("edge-c")
    with pytest.raises(LoopDetected):
        hops.check(hop, "edge-a")
    hops.check(hop, "edge-c")
    long = hops.Hop(tuple(f"1.1 e{i}" for i in range(hops.MAX_HOPS)))
    with pytest.raises(LoopDetected):
        hops.check(long, "edge-c")


async def test_the_hop_follows_the_request_into_the_tasks_it_starts() -> None:
    assert hops.outgoing("me") == {"Via": "1.1 me"}
    token = hops._current.set(hops.Hop(("1.1 up",), peer=True))
    try:
        seen = await asyncio.ensure_future(asyncio.sleep(0, hops.current()))
        assert seen.peer and hops.outgoing("me", peer=True) == {"Via": "1.1 up, 1.1 me", hops.PEER: "me"}
        with hops.own_request():
            assert hops.current() == hops.Hop() and hops.outgoing("me") == {"Via": "1.1 me"}
        assert hops.current().peer
    finally:
        hops._current.reset(token)
    assert hops.current() == hops.Hop()


# -- membership and health, against in-process peers -----------------------------------------------


class Peer:
    """A loopback server answering /healthz with a node name and a status we choose."""

    def __init__(self, node: str) -> None:
        self.node, self.status, self.port = node, 200, free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Peer:
        async def healthz(_r: web.Request) -> web.Response:
            return web.json_response({"ok": True}, status=self.status, headers={NODE_HEADER: self.node})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def gauge(m: EdgeMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


async def test_health_checks_take_peers_out_and_back_and_find_this_node(session: aiohttp.ClientSession) -> None:
    me, other = await Peer("edge-me").start(), await Peer("edge-other").start()
    dead = f"http://127.0.0.1:{free_port()}"
    m = EdgeMetrics.create()
    cluster = Cluster(ClusterSettings(peers=(me.url, other.url, dead), check_interval=3600), "edge-me", m)
    try:
        assert gauge(m, "minicdn_edge_ring_size") == 3  # new members start in the ring
        await cluster.start(session, 1 << 20)  # the first round of checks runs at once
        await cluster.check_all()
        await cluster.check_all()  # the dead one failed twice in a row
        assert cluster.self_url == me.url  # its /healthz answered with our name
        assert cluster.ring.members == tuple(sorted((me.url, other.url)))
        assert gauge(m, "minicdn_edge_peers", state="down") == 1 and gauge(m, "minicdn_edge_ring_size") == 2
        owned_by_other = next(k for k in KEYS if cluster.ring.owner(k) == other.url)
        owned_by_me = next(k for k in KEYS if cluster.ring.owner(k) == me.url)
        src = cluster.pick(owned_by_other)
        assert src is not None and src.kind == "peer" and src.name == other.url
        assert cluster.pick(owned_by_me) is None and cluster.owns(owned_by_me)
        token = hops._current.set(hops.Hop(peer=True))
        try:
            assert cluster.pick(owned_by_other) is None  # a peer's request goes no further
        finally:
            hops._current.reset(token)
        other.status = 503
        await cluster.check_all()
        assert other.url in cluster.ring  # one failed check is not enough
        await cluster.check_all()
        assert cluster.ring.members == (me.url,) and cluster.pick(owned_by_other) is None
        other.status = 200
        await cluster.check_all()
        assert other.url in cluster.ring
        cluster.mark(other.url, False, "refused")  # passive: what a failed connection does
        assert other.url not in cluster.ring and cluster.peer_urls() == sorted((other.url, dead))
    finally:
        await cluster.close()
        await me.stop()
        await other.stop()


async def test_dns_membership_follows_the_name_and_survives_a_failed_lookup(
    session: aiohttp.ClientSession,
) -> None:
    # Loopback addresses where nobody listens: health checks are refused at once.
    one, two = f"http://127.0.0.2:{free_port()}", f"http://127.0.0.3:{free_port()}"
    answers: list[list[str] | OSError] = [[one, two], OSError("no such name"), [two]]

    async def resolve(name: str, port: int) -> list[str]:
        assert (name, port) == ("edges.minicdn.svc", 8081)
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    m = EdgeMetrics.create()
    settings = ClusterSettings(dns=("edges.minicdn.svc", 8081), self_url=two, check_interval=3600, dns_interval=3600)
    cluster = Cluster(settings, "edge-me", m, resolve=resolve)
    try:
        await cluster.start(session, 1 << 20)
        assert cluster.peer_urls() == [one]
        await cluster.refresh_dns()  # fails: the members stay
        assert cluster.peer_urls() == [one]
        await cluster.refresh_dns()  # the other pod is gone
        assert cluster.peer_urls() == [] and cluster.ring.members == (two,)
        assert gauge(m, "minicdn_edge_ring_size") == 1
    finally:
        await cluster.close()


async def test_a_peer_that_refuses_a_connection_leaves_the_ring_at_once(session: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    m = EdgeMetrics.create()
    cluster = Cluster(ClusterSettings(peers=(dead,), self_url="http://127.0.0.1:1", check_interval=3600), "me", m)
    try:
        await cluster.start(session, 1 << 20)  # one active check may fail: not enough to leave
        key = next(k for k in KEYS if cluster.ring.owner(k) == dead)
        src = cluster.pick(key)
        assert src is not None
        with pytest.raises(SourceError):
            await src.get("/v1/chunks/" + "ab" * 32, {})
        assert dead not in cluster.ring and cluster.pick(key) is None
        assert gauge(m, "minicdn_edge_peers", state="down") == 1
    finally:
        await cluster.close()
