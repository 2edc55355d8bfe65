"""The fill path and the ref cache against in-process sources (the one-method transport
seam), with real tiers in a temp dir and a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from common import codec
from common.errors import IntegrityError, NotFound, UpstreamError
from common.ids import sha256
from edge.disk import Blob, DiskTier
from edge.fill import INLINE_VERIFY, Filler
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.negative import NegativeCache
from edge.objects import Entry, Obj
from edge.policy import S3FIFO
from edge.refs import RefCache, RefSettings, Served, etag_of
from edge.singleflight import Flights
from edge.tasks import TaskOwner
from edge.upstream import Answer, BatchItem, NoPeers, PeerPicker, Source, Sources
from tests.fakes import FakeSource, Owners


def a_chunk(seed: int = 1) -> tuple[Obj, bytes]:
    raw = random.Random(seed).randbytes(5000)
    return Obj("chunk", sha256(raw)), codec.compress(raw, 3)


def zstd_answer(frame: bytes) -> Answer:
    return Answer(200, frame, {"Content-Encoding": "zstd"})


class CountedReads(DiskTier):
    """The real disk tier, counting the files it reads (and verifies)."""

    reads = 0

    def _read(self, key: str, check: Callable[[bytes], None] | None) -> Blob:
        self.reads += 1
        return super()._read(key, check)


class Node:
    def __init__(
        self, tmp: Path, sources: list[Source], peers: PeerPicker | None = None, wait_bound: float = 0.5
    ) -> None:
        self.metrics = EdgeMetrics.create()
        self.memory = MemoryTier(S3FIFO(1 << 20))
        self.disk = CountedReads(tmp, S3FIFO(1 << 20), on_corrupt=self.metrics.corrupt.inc)
        self.writes = TaskOwner("writes")
        self.sources = Sources(sources, self.metrics)
        self.now = 1000.0
        self.negative = NegativeCache(10.0, clock=lambda: self.now)
        self.filler = Filler(
            self.memory,
            self.disk,
            self.sources,
            peers or NoPeers(),
            Flights(wait_bound),
            self.writes,
            self.metrics,
            negative=self.negative,
        )
        self.refs = RefCache(
            self.memory,
            self.disk,
            self.sources,
            Flights(),
            self.writes,
            self.metrics,
            RefSettings(max_age=30, stale_if_error=3600),
            clock=lambda: self.now,
        )

    async def settled(self) -> None:
        """Every background write has landed (or failed)."""
        await self.writes.close(grace=5)
        await self.disk.writes.idle()

    def count(self, name: str, *labels: str) -> float:
        value = self.metrics.registry.get_sample_value(
            name, dict(zip(_LABELS.get(name, ()), labels, strict=False))
        )
        return value or 0.0


_LABELS = {
    "minicdn_edge_hits_total": ("tier",),
    "minicdn_edge_upstream_errors_total": ("reason",),
    "minicdn_edge_upstream_requests_total": ("kind",),
    "minicdn_edge_fallbacks_total": ("reason",),
    "minicdn_edge_peer_errors_total": ("reason",),
}


async def test_a_miss_is_filled_once_verified_stored_and_then_a_hit(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    obj, frame = a_chunk()
    up.answers[obj.path] = zstd_answer(frame)
    up.gate = asyncio.Event()
    loads = [asyncio.ensure_future(node.filler.load(obj)) for _ in range(20)]
    while not up.calls:  # the fill is under way, every load has joined it
        await asyncio.sleep(0)
    up.gate.set()
    entries = await asyncio.gather(*loads)
    assert all(e.body == frame for e in entries) and len(up.calls) == 1
    assert up.calls[0][1]["Accept-Encoding"] == "zstd"
    assert node.count("minicdn_edge_coalesced_total") == 19
    assert node.count("minicdn_edge_misses_total") == 20
    assert len(node.writes) == 0  # the write went to the writer thread, not a task of its own
    await node.settled()
    # one batch handed over (it may have landed before gather returned: the thread does not
    # wait for the loop, so how many jobs are still queued at that point is a race)
    assert node.disk.writes.batches == 1 and node.disk.writes.jobs == 0
    assert (await node.disk.get(obj.key, obj.verify)) is not None
    await node.filler.load(obj)
    assert node.count("minicdn_edge_hits_total", "memory") == 1 and len(up.calls) == 1


async def test_wrong_bytes_are_counted_never_cached_and_the_next_source_answers(tmp_path: Path) -> None:
    liar, honest = FakeSource("liar"), FakeSource("honest")
    node = Node(tmp_path, [liar, honest])
    await node.disk.open()
    obj, frame = a_chunk()
    bad = bytearray(frame)
    bad[len(bad) // 2] ^= 1
    liar.answers[obj.path] = zstd_answer(bytes(bad))
    honest.answers[obj.path] = zstd_answer(frame)
    assert (await node.filler.load(obj)).body == frame
    assert node.count("minicdn_edge_upstream_errors_total", "integrity") == 1

    only_liar = Node(tmp_path / "b", [liar])
    await only_liar.disk.open()
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await only_liar.filler.load(obj)
    assert len(only_liar.memory) == 0 and only_liar.disk.used == 0
    assert only_liar.count("minicdn_edge_upstream_errors_total", "integrity") == 2


async def test_failover_past_a_dead_upstream_and_404_is_final(tmp_path: Path) -> None:
    dead, alive = FakeSource("dead"), FakeSource("alive")
    dead.down = True
    node = Node(tmp_path, [dead, alive])
    await node.disk.open()
    obj, frame = a_chunk()
    alive.answers[obj.path] = zstd_answer(frame)
    assert (await node.filler.load(obj)).body == frame
    assert node.count("minicdn_edge_upstream_errors_total", "connect") == 1
    with pytest.raises(NotFound):
        await node.filler.load(Obj("chunk", b"\x01" * 32))
    assert await node.filler.load_or_none(Obj("chunk", b"\x01" * 32)) is None


async def test_a_decoded_chunk_from_upstream_is_checked_and_stored_as_a_frame(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    raw = random.Random(5).randbytes(3000)
    obj = Obj("chunk", sha256(raw))
    up.answers[obj.path] = Answer(200, raw, {})
    entry = await node.filler.load(obj)
    assert codec.decode_chunk(obj.id, entry.body) == raw


async def test_the_owner_peer_is_asked_first_and_its_failure_falls_back(tmp_path: Path) -> None:
    peer, up = FakeSource("peer", kind="peer"), FakeSource("up")

    node = Node(tmp_path, [up], Owners(default=peer))
    await node.disk.open()
    obj, frame = a_chunk()
    peer.answers[obj.path] = zstd_answer(frame)
    assert (await node.filler.load(obj)).body == frame and not up.calls
    peer.down = True
    other, other_frame = a_chunk(2)
    up.answers[other.path] = zstd_answer(other_frame)
    assert (await node.filler.load(other)).body == other_frame
    assert node.count("minicdn_edge_upstream_requests_total", "peer") == 2


def envelope(n: int) -> bytes:
    body: bytes = msgpack.packb({"payload": msgpack.packb({"serial": n}), "key_id": "k", "signature": b"s"})
    return body


async def test_refs_fresh_revalidated_stale_if_error_and_gone(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    path = "/v1/apps/demo/channels/release"
    up.answers[path] = Answer(
        200, envelope(1), {"Cache-Control": "public, max-age=10", "ETag": etag_of(envelope(1))}
    )
    served: Served = await node.refs.get("demo", "release")
    assert served.state == "fetched" and served.entry.max_age == 10  # the upstream's max-age caps ours
    node.now += 5
    assert (await node.refs.get("demo", "release")).state == "memory" and len(up.calls) == 1
    node.now += 10
    up.answers[path] = Answer(304, b"", {"Cache-Control": "max-age=10"})
    served = await node.refs.get("demo", "release")
    assert served.state == "revalidated" and up.calls[-1][1]["If-None-Match"] == etag_of(envelope(1))
    node.now += 20
    up.down = True
    served = await node.refs.get("demo", "release")
    assert served.state == "stale" and served.entry.body == envelope(1)
    node.now += 3600
    with pytest.raises(UpstreamError):
        await node.refs.get("demo", "release")
    up.down = False
    up.answers.pop(path)
    with pytest.raises(NotFound):
        await node.refs.get("demo", "release")
    await node.settled()
    assert await node.disk.get("refs/demo/release", None) is None


async def test_a_ref_that_does_not_match_its_etag_or_is_not_an_envelope_is_refused(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    path = "/v1/apps/demo/channels/release"
    up.answers[path] = Answer(200, envelope(1), {"ETag": etag_of(envelope(2))})
    with pytest.raises(UpstreamError):
        await node.refs.get("demo", "release")
    up.answers[path] = Answer(200, b"\xc1 not msgpack", {})
    with pytest.raises(UpstreamError):
        await node.refs.get("demo", "release")
    assert node.count("minicdn_edge_upstream_errors_total", "integrity") == 2


async def test_a_ref_read_back_from_disk_is_revalidated_once(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    await node.disk.put("refs/demo/release", envelope(3), replace=True, mtime=node.now)
    up.answers["/v1/apps/demo/channels/release"] = Answer(304, b"", {})
    served = await node.refs.get("demo", "release")
    assert served.state == "revalidated" and served.entry.body == envelope(3)
    assert isinstance(served.entry, Entry)


def test_integrity_error_is_not_a_source_error() -> None:
    assert not issubclass(IntegrityError, UpstreamError)


# -- the coalescing bound: one second fill, not one per waiter ---------------------------------


class StuckOnce(FakeSource):
    """Its first request hangs until ``unstick``; later ones answer at once."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.unstick = asyncio.Event()

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        if not self.calls:
            self.calls.append((path, dict(headers)))
            await self.unstick.wait()
            return self.answers[path]
        return await super().get(path, headers)


async def test_waiters_past_the_bound_share_one_second_fill(tmp_path: Path) -> None:
    """Under load every waiter of a slow fill times out at once: each used to fetch for
    itself (one upstream request per waiter); now they share one second fill, counted."""
    up = StuckOnce("up")
    node = Node(tmp_path, [up], wait_bound=0.01)
    await node.disk.open()
    obj, frame = a_chunk()
    up.answers[obj.path] = zstd_answer(frame)
    first = asyncio.ensure_future(node.filler.load(obj))
    while not up.calls:  # the first fill is under way (and stuck)
        await asyncio.sleep(0)
    waiters = await asyncio.gather(*(node.filler.load(obj) for _ in range(20)))
    assert all(e.body == frame for e in waiters)
    # One stuck request, one second fill; a waiter that timed out after the second fill
    # landed finds the entry in memory.
    assert len(up.calls) == 2, up.calls
    assert node.count("minicdn_edge_fallbacks_total", "coalesce_timeout") >= 1
    up.unstick.set()
    assert (await first).body == frame and len(up.calls) == 2


# -- disk reads are coalesced like fills -------------------------------------------------------


async def stored(node: Node, obj: Obj, frame: bytes) -> None:
    """``frame`` as ``obj``'s file on ``node``'s disk, and not in its memory."""
    assert await node.disk.put(obj.key, frame)
    node.memory.remove(obj.key)
    node.disk.reads = 0


async def test_concurrent_loads_of_a_disk_resident_key_read_and_verify_its_file_once(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    obj, frame = a_chunk()
    await stored(node, obj, frame)
    entries = await asyncio.gather(*(node.filler.load(obj) for _ in range(16)))
    assert all(e.body == frame for e in entries)
    assert node.disk.reads == 1 and not up.calls
    # Each request is still a disk hit, none a miss: the hit rate reads as before.
    assert node.count("minicdn_edge_hits_total", "disk") == 16
    assert node.count("minicdn_edge_misses_total") == 0 and node.count("minicdn_edge_coalesced_total") == 0
    await node.filler.load(obj)
    assert node.disk.reads == 1 and node.count("minicdn_edge_hits_total", "memory") == 1


async def test_concurrent_loads_of_a_corrupt_file_drop_it_once_and_fill_once(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    obj, frame = a_chunk()
    bad = bytearray(frame)
    bad[len(bad) // 2] ^= 1
    await stored(node, obj, bytes(bad))
    up.answers[obj.path] = zstd_answer(frame)
    entries = await asyncio.gather(*(node.filler.load(obj) for _ in range(8)))
    assert all(e.body == frame for e in entries)
    assert node.disk.reads == 1 and len(up.calls) == 1
    assert node.count("minicdn_edge_corrupt_total") == 1
    assert node.count("minicdn_edge_misses_total") == 8 and node.count("minicdn_edge_coalesced_total") == 7


async def test_concurrent_loads_of_an_id_known_absent_are_each_a_negative_hit(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    missing = Obj("chunk", b"\x04" * 32)
    assert await node.filler.load_or_none(missing) is None
    answers = await asyncio.gather(*(node.filler.load_or_none(missing) for _ in range(5)))
    assert answers == [None] * 5 and len(up.calls) == 1
    assert (
        node.count("minicdn_edge_negative_hits_total") == 5 and node.count("minicdn_edge_misses_total") == 1
    )


# -- negative caching ---------------------------------------------------------------------------


async def test_an_id_no_upstream_has_is_not_asked_again_within_the_ttl(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    missing = Obj("chunk", b"\x02" * 32)
    for _ in range(3):
        with pytest.raises(NotFound):
            await node.filler.load(missing)
    assert len(up.calls) == 1 and node.count("minicdn_edge_negative_hits_total") == 2
    node.now += 10.0  # the ttl has passed: it may have been published since
    _, frame = a_chunk(9)
    up.answers[f"/v1/chunks/{missing.hex}"] = zstd_answer(frame)  # (any bytes: only asked)
    with pytest.raises(UpstreamError):  # asked again, and those bytes are not its id's
        await node.filler.load(missing)
    assert len(up.calls) == 2


def test_the_negative_cache_is_bounded_and_forgets() -> None:
    now = [0.0]
    neg = NegativeCache(5.0, max_keys=3, clock=lambda: now[0])
    for k in "abcd":
        neg.add(k)
    assert len(neg) == 3 and "a" not in neg and "d" in neg  # the oldest made room
    neg.discard("d")
    assert "d" not in neg
    now[0] = 5.0
    assert "b" not in neg and len(neg) == 1
    off = NegativeCache(0.0)
    off.add("x")
    assert "x" not in off and len(off) == 0


# -- batches -------------------------------------------------------------------------------------


async def test_a_batchs_misses_go_upstream_as_one_batch_and_a_get_joins_it(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    chunks = [a_chunk(i) for i in range(4)]
    for obj, frame in chunks:
        up.answers[obj.path] = zstd_answer(frame)
    held, held_frame = chunks[0]
    node.memory.put(chunks[1][0].key, Entry(chunks[1][1], chunks[1][0].etag))  # a hit
    absent = Obj("chunk", b"\x03" * 32)
    objs = [o for o, _ in chunks] + [absent, chunks[2][0]]  # a duplicate too
    up.gate = asyncio.Event()
    wait = node.filler.batch(objs)
    get = asyncio.ensure_future(node.filler.load(held))  # joins the batch's flight
    while not up.batches:
        await asyncio.sleep(0)
    up.gate.set()
    got = [await wait(o) for o in objs]
    assert [None if e is None else e.body for e in got] == [f for _, f in chunks] + [None, chunks[2][1]]
    assert (await get).body == held_frame
    assert up.batches == [[chunks[0][0].hex, chunks[2][0].hex, chunks[3][0].hex, absent.hex]] and not up.calls
    assert node.count("minicdn_edge_misses_total") == 5  # 4 in the batch, and the GET
    assert node.count("minicdn_edge_coalesced_total") == 2  # the GET, and the duplicate
    assert node.count("minicdn_edge_hits_total", "memory") == 1
    # The absent one is remembered: neither a batch nor a GET asks again.
    assert await node.filler.batch([absent])(absent) is None
    with pytest.raises(NotFound):
        await node.filler.load(absent)
    assert len(up.batches) == 1 and not up.calls
    await node.settled()
    assert all(
        [(await node.disk.get(o.key, o.verify)) is not None for o, _ in (chunks[0], chunks[2], chunks[3])]
    )


@pytest.mark.parametrize("lie", ["reorder", "short", "corrupt", "wrong-id"])
async def test_a_lying_batch_source_fails_for_what_it_had_not_answered(tmp_path: Path, lie: str) -> None:
    liar, honest = FakeSource("liar"), FakeSource("honest")
    node = Node(tmp_path, [liar, honest])
    await node.disk.open()
    chunks = [a_chunk(i) for i in range(5)]
    for obj, frame in chunks:
        liar.answers[obj.path] = honest.answers[obj.path] = zstd_answer(frame)

    def bend(items: list[BatchItem]) -> list[BatchItem]:
        if lie == "reorder":
            return [items[0], items[2], items[1], *items[3:]]
        if lie == "short":
            return items[:1]
        if lie == "corrupt":
            bad = bytearray(items[1][1] or b"")
            bad[len(bad) // 2] ^= 1
            return [items[0], (items[1][0], bytes(bad)), *items[2:]]
        return [items[0], (chunks[1][0].hex[::-1], items[1][1]), *items[2:]]

    liar.lie = bend
    objs = [o for o, _ in chunks]
    wait = node.filler.batch(objs)
    assert [(await wait(o)).body for o in objs] == [f for _, f in chunks]  # type: ignore[union-attr]
    # The first answer was good; the rest came from the next source, asked for only them.
    assert honest.batches == [[o.hex for o in objs[1:]]]
    assert node.count("minicdn_edge_upstream_errors_total", "integrity") == 1
    assert chunks[1][0].key in node.memory.entries and len(node.memory) == 5


async def test_a_batch_asks_each_owner_for_its_share_and_the_upstream_for_a_failed_owners(
    tmp_path: Path,
) -> None:
    up, good, bad = FakeSource("up"), FakeSource("good", kind="peer"), FakeSource("bad", kind="peer")
    bad.down = True
    chunks = [a_chunk(i) for i in range(9)]
    owners = {o.key: (None, good, bad)[i % 3] for i, (o, _) in enumerate(chunks)}
    for obj, frame in chunks:
        up.answers[obj.path] = good.answers[obj.path] = zstd_answer(frame)

    node = Node(tmp_path, [up], Owners(owners))
    await node.disk.open()
    objs = [o for o, _ in chunks]
    wait = node.filler.batch(objs)
    assert [(await wait(o)).body for o in objs] == [f for _, f in chunks]  # type: ignore[union-attr]
    assert good.batches == [[o.hex for o in objs[1::3]]] and bad.batches == [[o.hex for o in objs[2::3]]]
    assert sorted(map(sorted, up.batches)) == sorted(
        [sorted(o.hex for o in objs[0::3]), sorted(o.hex for o in objs[2::3])]
    )
    assert node.count("minicdn_edge_fallbacks_total", "peer_error") == 3
    assert node.count("minicdn_edge_upstream_requests_total", "peer") == 2
    assert not up.calls and not good.calls and not bad.calls
    await node.settled()
    # What the owner gave is its to keep: only this node's own share and the failed
    # owner's reach this disk.
    on_disk = {o.key for o in objs if (await node.disk.get(o.key, o.verify)) is not None}
    assert on_disk == {o.key for o in objs[0::3] + objs[2::3]}


async def test_when_every_source_fails_a_batch_reports_it_per_id(tmp_path: Path) -> None:
    dead = FakeSource("dead")
    dead.down = True
    node = Node(tmp_path, [dead])
    await node.disk.open()
    obj, _ = a_chunk()
    wait = node.filler.batch([obj])
    with pytest.raises(UpstreamError):
        await wait(obj)
    assert node.count("minicdn_edge_upstream_errors_total", "connect") == 1
    assert obj.key not in node.negative  # a failure is not an absence


async def test_a_batch_joins_a_fill_already_in_flight_instead_of_asking_again(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    (busy, busy_frame), (other, other_frame) = a_chunk(1), a_chunk(2)
    for obj, frame in ((busy, busy_frame), (other, other_frame)):
        up.answers[obj.path] = zstd_answer(frame)
    up.gate = asyncio.Event()
    get = asyncio.ensure_future(node.filler.load(busy))
    while not up.calls:
        await asyncio.sleep(0)
    wait = node.filler.batch([busy, other])
    up.gate.set()
    assert [(await wait(o)).body for o in (busy, other)] == [busy_frame, other_frame]  # type: ignore[union-attr]
    assert (await get).body == busy_frame
    assert [path for path, _ in up.calls] == [busy.path] and up.batches == [[other.hex]]
    assert node.count("minicdn_edge_coalesced_total") == 1


class _Recording(ThreadPoolExecutor):
    """The loop's default executor, noting the name of each function handed to it."""

    def __init__(self) -> None:
        super().__init__(2)
        self.names: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.names.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


async def test_a_small_object_is_verified_on_the_loop_and_a_large_one_in_a_thread(tmp_path: Path) -> None:
    """A thread round trip cost more than checking a small chunk (issue 15)."""
    pool = _Recording()
    asyncio.get_running_loop().set_default_executor(pool)
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    node.memory = MemoryTier(S3FIFO(4 << 20))
    node.filler.memory = node.memory
    small, frame = a_chunk()
    raw = random.Random(2).randbytes(INLINE_VERIFY + 1)
    large = Obj("bundle", sha256(raw))
    up.answers[small.path] = zstd_answer(frame)
    up.answers[large.path] = Answer(200, raw, {})
    assert (await node.filler.load(small)).body == frame
    assert "verify" not in pool.names
    assert (await node.filler.load(large)).body == raw
    assert pool.names.count("verify") == 1
    up.answers[small.path] = zstd_answer(a_chunk(3)[1])  # wrong bytes are refused inline too
    node.memory = node.filler.memory = MemoryTier(S3FIFO(1 << 20))
    node.filler.flights = Flights(0.5)
    await node.settled()
    await node.disk.remove(small.key)
    with pytest.raises(UpstreamError):
        await node.filler.load(small)
    assert node.count("minicdn_edge_upstream_errors_total", "integrity") == 1
