"""Edge clusters with real processes on loopback: a ring of three in front of one origin,
a SIGKILLed member, a shield tier, prefetch and purge through the ring, a loop of
upstreams, and membership from DNS."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import TOKEN, Reply, auth, http, packages_of
from tests.edge_support import (
    App,
    chunk_files,
    edge,
    eventually,
    get_chunk,
    owner_of,
    publish_app,
    random_app,
    ring,
    ring_size,
    verify_chunk,
)
from tests.procs import Service, free_port, metric, origin_chunks, start_all


def error_of(r: Reply) -> object:
    """The ``error`` of a JSON error body."""
    body = r.json()
    assert isinstance(body, dict), r.body
    return body.get("error")


def fetch_everywhere(nodes: list[Service], app: App, workers: int = 24) -> None:
    """Every chunk of ``app`` from every node, all at once, in random order; each verified."""
    jobs = [(n, c) for n in nodes for c in app.chunks]
    random.Random(5).shuffle(jobs)
    with ThreadPoolExecutor(workers) as pool:
        replies = list(pool.map(lambda job: (job[1], get_chunk(job[0].url, job[1], zstd=True)), jobs))
    for cid, reply in replies:
        verify_chunk(cid, reply)


def blobs_app(dest: Path, mib: float, seed: int) -> Path:
    """An app of random files only: no chunk in common with any other test's app."""
    rnd = random.Random(seed)
    dest.mkdir(parents=True)
    for i in range(int(mib * 4)):
        (dest / f"blob{i}.bin").write_bytes(rnd.randbytes(256 << 10))
    return dest


def cluster_state(nodes: list[Service]) -> list[dict[str, float]]:
    """What each node's metrics say, for failure messages."""
    names = {"hits": ("minicdn_edge_hits_total", ""), "misses": ("minicdn_edge_misses_total", ""),
             "peer": ("minicdn_edge_upstream_requests_total", 'kind="peer"'),
             "upstream": ("minicdn_edge_upstream_requests_total", 'kind="upstream"'),
             "peer_errors": ("minicdn_edge_peer_errors_total", ""), "ring": ("minicdn_edge_ring_size", "")}
    return [{k: metric(n.url, name, labels) for k, (name, labels) in names.items()} for n in nodes]


def stop_all(nodes: list[Service]) -> None:
    for n in nodes:
        n.stop()


@pytest.fixture(scope="module")
def trio(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Service]]:
    nodes = ring(tmp_path_factory.mktemp("trio"), origin.url, n=3)
    try:
        yield nodes
    finally:
        stop_all(nodes)


# -- must show 1: three edges, every chunk asked of every edge at once ---------------------------


def test_three_edges_asked_for_every_chunk_at_once_make_the_origin_serve_each_once(
    origin: Service, trio: list[Service], tmp_path: Path
) -> None:
    app = publish_app(origin.url, "trio", random_app(tmp_path / "app", 1.0, seed=31))
    before = origin_chunks(origin)
    fetch_everywhere(trio, app)
    assert origin_chunks(origin) - before == len(app.chunks)
    # One big cache: each chunk is stored on its owner's disk, and on no other.
    eventually(lambda: sum(len(set(app.chunks) & chunk_files(n).keys()) for n in trio) == len(app.chunks),
               what="every chunk on disk once")
    for cid in app.chunks:
        assert cid in chunk_files(owner_of(trio, cid))
    assert sum(metric(n.url, "minicdn_edge_upstream_requests_total", 'kind="peer"') for n in trio) > 0
    assert sum(metric(n.url, "minicdn_edge_peer_errors_total") for n in trio) == 0


# -- must show 4: prefetch through the ring, then every request is a hit somewhere --------------


def test_prefetch_warms_each_chunk_on_its_owner_so_next_installs_are_all_hits(
    origin: Service, trio: list[Service], tmp_path: Path
) -> None:
    app = publish_app(origin.url, "warm", random_app(tmp_path / "app", 0.5, seed=41))
    a = owner_of(trio, app.manifest, "manifests")  # the others' shares need the manifest from a
    body = json.dumps({"app": "warm", "channel": "release"}).encode()
    assert http("POST", f"{a.url}/v1/admin/prefetch", body).status == 401
    assert http("POST", f"{a.url}/v1/admin/prefetch", body, auth("wrong")).status == 401
    held = sum(1 for cid in app.chunks if cid in chunk_files(owner_of(trio, cid)))  # shared with earlier apps
    before = origin_chunks(origin)
    manifests = metric(origin.url, "minicdn_origin_requests_total", 'route="manifest"')
    r = http("POST", f"{a.url}/v1/admin/prefetch", body, auth(TOKEN))
    assert r.status == 200, r.body
    packages = packages_of(origin.url, "warm")
    warmed = {"manifests": 1, "chunks": len(app.chunks), "cached": held, "nodes": 3, "failed": [], "packages": packages}
    assert r.json() == warmed
    assert origin_chunks(origin) - before == len(app.chunks) - held
    # Every member loaded the manifest through the ring: its owner asked the origin once;
    # so were the heads object and each package manifest, by the node asked (and read by
    # packages_of above).
    assert metric(origin.url, "minicdn_origin_requests_total", 'route="manifest"') == manifests + 1 + 1 + packages + 1
    assert sum(metric(n.url, "minicdn_edge_peer_errors_total") for n in trio) == 0
    eventually(lambda: all(cid in chunk_files(owner_of(trio, cid)) for cid in app.chunks),
               what="each chunk on its owner's disk")

    # The next phones, one on each edge: ref, manifest, every chunk.  Nothing leaves the
    # ring, and each object is a hit exactly once: on the edge asked, or on its owner.
    # (Content only: an edge that starts following the change feed revalidates the refs it
    # holds, in the background, whenever its first poll is answered; that ref request may
    # fall in this window, and is not a phone's.)
    def counts() -> tuple[float, float]:
        content = sum(metric(origin.url, "minicdn_origin_requests_total", f'route="{route}"')
                      for route in ("chunk", "batch", "bundle", "manifest"))
        return sum(metric(n.url, "minicdn_edge_hits_total") for n in trio), content

    hits, upstream = counts()
    asked = 0
    for n in trio:
        assert http("GET", f"{n.url}/v1/apps/warm/channels/release").status == 200
        assert http("GET", f"{n.url}/v1/manifests/{app.manifest}").status == 200
        for cid in app.chunks:
            verify_chunk(cid, get_chunk(n.url, cid, zstd=True))
        asked += 2 + len(app.chunks)
    now_hits, now_upstream = counts()
    assert now_upstream == upstream, f"requests left the ring: {cluster_state(trio)}"
    assert now_hits == hits + asked, f"{now_hits - hits} hits for {asked} objects: {cluster_state(trio)}"
    assert origin_chunks(origin) - before == len(app.chunks) - held

    # Purge: this node's refs, or every member's.
    purge = json.dumps({"app": "warm"}).encode()
    assert http("POST", f"{a.url}/v1/admin/purge", purge).status == 401
    r = http("POST", f"{a.url}/v1/admin/purge", purge, auth(TOKEN))
    assert r.status == 200 and r.json() == {"purged": 1}
    r = http("POST", f"{a.url}/v1/admin/purge", json.dumps({"app": "warm", "cluster": True}).encode(), auth(TOKEN))
    assert r.status == 200 and r.json() == {"purged": 2, "nodes": 3, "failed": []}
    ups = [metric(n.url, "minicdn_edge_upstream_requests_total", 'kind="upstream"') for n in trio]
    for n in trio:
        assert http("GET", f"{n.url}/v1/apps/warm/channels/release").status == 200
    assert [metric(n.url, "minicdn_edge_upstream_requests_total", 'kind="upstream"') for n in trio] == \
        [u + 1 for u in ups]


def test_a_peer_mark_counts_only_with_its_proof(origin: Service, trio: list[Service], tmp_path: Path) -> None:
    """X-Minicdn-Peer makes an edge fill from its upstreams instead of asking the owner;
    from a client that would let anyone have every edge bypass the ring.  With the ring's
    token, the mark counts only with its HMAC over "<node> <target>"."""
    app = publish_app(origin.url, "marks", random_app(tmp_path / "app", 0.3, seed=41))
    a = trio[0]
    forged, wrong_path, proven = [c for c in app.chunks if owner_of(trio, c) is not a][:3]

    def proof(node: str, target: str) -> str:
        return hmac.new(TOKEN.encode(), f"{node} {target}".encode(), hashlib.sha256).hexdigest()

    def ask(cid: str, headers: dict[str, str]) -> tuple[float, float]:
        """(requests a sent to peers, to upstreams) for one GET of ``cid`` on a."""
        before = cluster_state(trio)[0]
        verify_chunk(cid, http("GET", f"{a.url}/v1/chunks/{cid}", headers=headers))
        after = cluster_state(trio)[0]
        return after["peer"] - before["peer"], after["upstream"] - before["upstream"]

    assert ask(forged, {"X-Minicdn-Peer": "edge-x", "X-Minicdn-Peer-Proof": "0" * 64}) == (1, 0)
    assert ask(wrong_path, {"X-Minicdn-Peer": "edge-x", "X-Minicdn-Peer-Proof": proof("edge-x", f"/v1/chunks/{forged}")}) == (1, 0)
    assert ask(proven, {"X-Minicdn-Peer": "edge-x", "X-Minicdn-Peer-Proof": proof("edge-x", f"/v1/chunks/{proven}")}) == (0, 1)


# -- must show 2: SIGKILL one member; nobody notices; it rejoins ----------------------------------


def test_sigkill_one_edge_requests_through_the_others_never_fail_and_it_rejoins(
    origin: Service, tmp_path: Path
) -> None:
    app = publish_app(origin.url, "kill", random_app(tmp_path / "app", 2.0, seed=51))
    a, b, c = nodes = ring(tmp_path, origin.url, n=3, name="kill")
    try:
        errors: list[str] = []
        done = [0]
        stop = threading.Event()

        def phone(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                node, cid = rnd.choice((a, b)), rnd.choice(app.chunks)
                try:
                    verify_chunk(cid, get_chunk(node.url, cid, zstd=True))
                except Exception as exc:  # anything at all is a client-visible failure
                    errors.append(f"{node.url} {cid}: {exc!r}")
                done[0] += 1

        phones = [threading.Thread(target=phone, args=(i,)) for i in range(6)]
        for t in phones:
            t.start()
        try:
            eventually(lambda: metric(c.url, "minicdn_edge_hits_total") + metric(c.url, "minicdn_edge_misses_total")
                       >= 20, what="c serving its share")
            c.kill()  # SIGKILL, with requests to it in flight
            eventually(lambda: ring_size(a) == 2 and ring_size(b) == 2, what="c out of the ring")
            after = done[0]
            eventually(lambda: done[0] >= after + 300, what="300 more requests")
        finally:
            stop.set()
            for t in phones:
                t.join(30)
        assert not errors, errors[:5]
        # Requests were on their way to c when it died: they fell back, unseen by the phones.
        assert metric(a.url, "minicdn_edge_peer_errors_total") + metric(b.url, "minicdn_edge_peer_errors_total") >= 1

        c.start()  # same port, same cache directory
        eventually(lambda: all(ring_size(n) == 3 for n in nodes), what="c back in the ring")
        fresh = publish_app(origin.url, "kill2", blobs_app(tmp_path / "app2", 0.5, seed=52))
        before = origin_chunks(origin)
        fetch_everywhere([a, b], fresh)
        assert origin_chunks(origin) - before == len(fresh.chunks)  # one ring of three again
        mine = [cid for cid in fresh.chunks if owner_of(nodes, cid) is c]
        assert mine
        eventually(lambda: set(mine) <= chunk_files(c).keys(), what="c filled its share")
    finally:
        stop_all(nodes)


# -- must show 3: a shield tier -------------------------------------------------------------


def test_two_edges_behind_one_shield_make_the_origin_serve_each_chunk_once_and_chains_work(
    origin: Service, tmp_path: Path
) -> None:
    app = publish_app(origin.url, "shielded", random_app(tmp_path / "app", 1.0, seed=61))
    shield = edge(tmp_path, origin.url, name="shield").start()
    pops = [edge(tmp_path, shield.url, name=f"pop{i}") for i in range(2)]
    start_all(*pops)
    deep = edge(tmp_path, pops[0].url, name="deep").start()  # deep → pop0 → shield → origin
    try:
        before = origin_chunks(origin)
        fetch_everywhere(pops, app)
        assert origin_chunks(origin) - before == len(app.chunks)
        assert metric(shield.url, "minicdn_edge_coalesced_total") + metric(shield.url, "minicdn_edge_hits_total") \
            >= len(app.chunks)
        assert http("GET", f"{deep.url}/v1/apps/shielded/channels/release").status == 200
        assert http("GET", f"{deep.url}/v1/manifests/{app.manifest}").status == 200
        fetch_everywhere([deep], app)
        assert origin_chunks(origin) - before == len(app.chunks)
    finally:
        stop_all([deep, *pops, shield])


# -- must show 5: a loop is refused at once -------------------------------------------------


def test_a_loop_of_upstreams_is_refused_with_508_not_spun(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    a = edge(tmp_path, f"http://127.0.0.1:{pb}", name="loopa", port=pa)
    b = edge(tmp_path, f"http://127.0.0.1:{pa}", name="loopb", port=pb)
    start_all(a, b)
    try:
        cid = "ab" * 32
        for path in (f"/v1/chunks/{cid}", "/v1/apps/demo/channels/release", "/v1/apps"):
            r = http("GET", a.url + path, timeout=30)
            assert r.status == 508 and error_of(r) == "loop_detected", (path, r.status, r.body)
        # Each request went a → b → a and stopped there: a saw it twice, b once.
        assert metric(a.url, "minicdn_edge_requests_total", 'route="chunk"') == 2
        assert metric(b.url, "minicdn_edge_requests_total", 'route="chunk"') == 1
        assert metric(b.url, "minicdn_edge_upstream_errors_total", 'reason="loop"') == 3
        # A chain longer than the hop limit is refused too, whoever is in it.
        via = ", ".join(f"1.1 edge-{i:012x}" for i in range(8))
        r = http("GET", f"{b.url}/v1/chunks/{cid}", headers={"Via": via})
        assert r.status == 508 and error_of(r) == "loop_detected"
    finally:
        stop_all([a, b])


# -- membership from DNS --------------------------------------------------------------------


def test_peers_from_dns_find_this_node_among_the_addresses(origin: Service, tmp_path: Path) -> None:
    port = free_port()
    node = edge(tmp_path, origin.url, name="dns", port=port,
                extra=("--peers-dns", f"localhost:{port}", "--peer-check-interval", "200ms")).start()
    try:
        # localhost is 127.0.0.1 (this node, found by its /healthz) and maybe ::1 (nobody
        # listens there: out of the ring).  Either way the ring is this node alone.
        eventually(lambda: "this node is http://127.0.0.1" in node.output(), what="self found")
        eventually(lambda: ring_size(node) == 1 and metric(node.url, "minicdn_edge_peers", 'state="up"') == 0,
                   what="a ring of one")
        r = http("GET", f"{node.url}/v1/apps")
        assert r.status == 200
    finally:
        node.stop()
