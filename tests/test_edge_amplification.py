"""Amplification: what a batch costs the origin.  A batch's misses go upstream as one batch
(one per owner in a ring), ids no upstream has are remembered for a short while, and a
GET for an id a batch is filling joins that fill.  So the same batch of 1,024 random ids
twice costs the origin one request, not 2,048.  Real processes on loopback."""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from common import codec
from loadtests.net import scrape, total, wait_http
from tests.conftest import TOKEN, Reply, batch, http
from tests.edge_support import (
    App,
    batch_items,
    chunk_files,
    edge,
    eventually,
    get_chunk,
    owner_of,
    publish_app,
    random_app,
    ring,
    scripted,
    verify_chunk,
)
from tests.procs import Service, metric
from tests.test_edge_cluster import cluster_state


def random_ids(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [rnd.randbytes(32).hex() for _ in range(n)]


def origin_costs(origin: Service) -> tuple[float, float, float]:
    """(object requests, batch requests, chunks asked for) the origin has answered; object
    requests are those for chunks, batches, manifests and bundles (not /metrics)."""
    samples = scrape(origin.url)
    objects = sum(total(samples, "minicdn_origin_requests_total", f'route="{r}"')
                  for r in ("chunk", "batch", "manifest", "bundle"))
    return (objects, total(samples, "minicdn_origin_requests_total", 'route="batch"'),
            total(samples, "minicdn_origin_chunk_requests_total"))


def since(origin: Service, before: tuple[float, float, float]) -> tuple[float, float, float]:
    now = origin_costs(origin)
    return now[0] - before[0], now[1] - before[1], now[2] - before[2]


def all_nil(base: str, ids: list[str]) -> None:
    items = batch(base, ids)
    assert [i[0] for i in items] == ids
    assert all(i[1] is None for i in items)


@pytest.fixture(scope="module")
def app(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> App:
    return publish_app(origin.url, "amp", random_app(tmp_path_factory.mktemp("amp") / "app", 1.0, seed=91))


@pytest.fixture(scope="module")
def trio(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Service]]:
    nodes = ring(tmp_path_factory.mktemp("amptrio"), origin.url, n=3)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def indexed(svc: Service) -> Service:
    """``svc`` once its disk index is loaded (``/readyz``): before that an id is not known
    to be absent from the disk, so a batch fills each id of it one by one (as GETs)."""
    wait_http(svc.url + "/readyz", 20, svc.proc)
    return svc


def test_the_same_batch_of_1024_random_ids_twice_costs_the_origin_one_request(
    origin: Service, tmp_path: Path
) -> None:
    ids = random_ids(1024, seed=1)
    svc = indexed(edge(tmp_path, origin.url).start())
    try:
        before = origin_costs(origin)
        all_nil(svc.url, ids)
        all_nil(svc.url, ids)
        assert since(origin, before) == (1, 1, 1024)  # one request, naming each id once
        # GETs of those ids are answered from the same memory, and the other way round.
        assert get_chunk(svc.url, ids[0]).status == 404
        other = random_ids(1, seed=2)[0]
        assert get_chunk(svc.url, other).status == 404
        all_nil(svc.url, [other])
        assert since(origin, before) == (2, 1, 1025)
        assert metric(svc.url, "minicdn_edge_negative_hits_total") == 1024 + 1 + 1
    finally:
        svc.stop()


def test_through_a_ring_each_owner_asks_once_and_a_second_pass_stays_in_the_ring(
    origin: Service, trio: list[Service]
) -> None:
    ids = random_ids(1024, seed=3)
    before = origin_costs(origin)
    all_nil(trio[0].url, ids)
    requests, batches, chunks = since(origin, before)
    assert (requests, batches, chunks) == (3, 3, 1024)  # each owner its share, as one batch
    for node in trio:  # again, through every member: peers' "nil" answers count too
        all_nil(node.url, ids)
    assert since(origin, before) == (3, 3, 1024)
    assert sum(metric(n.url, "minicdn_edge_upstream_requests_total", 'kind="peer"') for n in trio) >= 2


def test_a_published_apps_chunks_by_batch_are_byte_exact_and_fetched_once(
    origin: Service, trio: list[Service], app: App
) -> None:
    missing = random_ids(1, seed=4)[0]
    ids = [*app.chunks[:40], missing, *app.chunks[:5]]  # an absent id and repeats among them
    before = origin_costs(origin)
    items = batch(trio[0].url, ids)
    assert [i[0] for i in items] == ids
    for hexid, frame in items:
        if hexid == missing:
            assert frame is None
        else:
            assert isinstance(frame, bytes)
            codec.decode_chunk(bytes.fromhex(str(hexid)), frame)  # its bytes hash to its id
    assert since(origin, before)[2] == 41  # each distinct id once
    for node in trio[1:]:
        again = batch(node.url, ids)
        assert again == items
    assert since(origin, before)[2] == 41
    eventually(lambda: all(c in chunk_files(owner_of(trio, c)) for c in app.chunks[:40]),
               what="each chunk on its owner's disk")


def test_a_get_for_an_id_a_batch_is_filling_joins_that_fill(origin: Service, app: App, tmp_path: Path) -> None:
    ids, held = app.chunks[40:46], app.chunks[43]
    with scripted(origin.url) as up:
        up.hold.add(held)
        svc = indexed(edge(tmp_path, up.url, extra=("--coalesce-timeout", "120s")).start())
        try:
            answers: dict[str, Reply] = {}
            post = threading.Thread(target=lambda: answers.update(
                batch=http("POST", f"{svc.url}/v1/chunks:batch", msgpack.packb(ids))))
            post.start()
            eventually(lambda: up.held() == 1, what="the batch upstream reached the held id")
            get = threading.Thread(target=lambda: answers.update(get=get_chunk(svc.url, held, zstd=True)))
            get.start()
            eventually(lambda: metric(svc.url, "minicdn_edge_coalesced_total") == 1, what="the GET joined")
            up.release()
            post.join(30)
            get.join(30)
            verify_chunk(held, answers["get"])
            items = batch_items(answers["batch"].body)
            assert [i[0] for i in items] == ids
            for hexid, frame in items:
                codec.decode_chunk(bytes.fromhex(hexid), frame)  # type: ignore[arg-type]
            assert up.requests == ["/v1/chunks:batch"] and up.batches == [ids]
        finally:
            up.release()
            svc.stop()


@pytest.mark.parametrize("lie", ["corrupt", "short", "reorder"])
def test_a_lying_batch_upstream_is_failed_over_for_what_it_had_not_answered(
    origin: Service, app: App, tmp_path: Path, lie: str
) -> None:
    ids = app.chunks[46:56]
    with scripted(origin.url) as liar:
        if lie == "corrupt":
            liar.corrupt.add(ids[3])
        elif lie == "short":
            liar.batch_short = 3
        else:
            liar.batch_reorder = True
        svc = indexed(edge(tmp_path, liar.url, origin.url).start())
        try:
            before = origin_costs(origin)
            items = batch(svc.url, ids)
            assert [i[0] for i in items] == ids
            for hexid, frame in items:
                codec.decode_chunk(bytes.fromhex(hexid), frame)  # type: ignore[arg-type]
            answered = {"corrupt": 3, "short": 3, "reorder": 0}[lie]
            # The liar's good answers were kept; the origin was asked, once, for the rest.
            assert liar.batches == [ids]
            assert since(origin, before) == (2, 2, len(ids) + len(ids) - answered)
            assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="integrity"') == 1
        finally:
            svc.stop()


def test_a_peer_proof_marks_only_the_batch_it_was_made_for(
    origin: Service, trio: list[Service], tmp_path: Path
) -> None:
    """A peer's batch carries the digest of its ids in the query its proof covers: a proof
    seen on the wire cannot make an edge skip the ring for a batch of other ids."""
    a = trio[0]
    fresh = publish_app(origin.url, "proofs", random_app(tmp_path / "app", 0.5, seed=93))
    theirs = [c for c in fresh.chunks if owner_of(trio, c) is not a]
    seen, replayed_ids, bare_ids, proven_ids = theirs[0:2], theirs[2:4], theirs[4:6], theirs[6:8]
    assert proven_ids

    def target(ids: list[str] | None) -> str:
        if ids is None:
            return "/v1/chunks:batch"
        return f"/v1/chunks:batch?digest={hashlib.sha256(msgpack.packb(ids)).hexdigest()}"

    def ask(ids: list[str], path: str) -> tuple[float, float]:
        """(requests a made to peers, to upstreams) for a peer-marked batch of ``ids``."""
        before = cluster_state([a])[0]
        proof = hmac.new(TOKEN.encode(), f"edge-x {path}".encode(), hashlib.sha256).hexdigest()
        r = http("POST", a.url + path, msgpack.packb(ids), {"X-Minicdn-Peer": "edge-x", "X-Minicdn-Peer-Proof": proof})
        assert r.status == 200 and [i[0] for i in batch_items(r.body)] == ids
        after = cluster_state([a])[0]
        return after["peer"] - before["peer"], after["upstream"] - before["upstream"]

    assert ask(replayed_ids, target(seen))[1] == 0  # a client's batch: asked of the owners
    assert ask(bare_ids, target(None))[1] == 0
    assert ask(proven_ids, target(proven_ids)) == (0, 1)  # a peer's: filled from the upstream
