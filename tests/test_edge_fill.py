"""The fill path and the ref cache against in-process sources (the one-method transport
seam), with real tiers in a temp dir and a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from pathlib import Path

import msgpack
import pytest

from common import codec
from common.errors import IntegrityError, NotFound, UpstreamError
from common.ids import sha256
from edge.disk import DiskTier
from edge.fill import Filler
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.objects import Entry, Obj
from edge.policy import S3FIFO
from edge.refs import RefCache, RefSettings, Served, etag_of
from edge.singleflight import Flights
from edge.tasks import TaskOwner
from edge.upstream import Answer, NoPeers, Source, SourceError, Sources


class FakeSource:
    def __init__(self, name: str, kind: str = "upstream") -> None:
        self.name = name
        self.kind = kind
        self.answers: dict[str, Answer] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.gate: asyncio.Event | None = None
        self.down = False

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        self.calls.append((path, dict(headers)))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise SourceError(f"{self.name}: refused", "connect")
        return self.answers.get(path, Answer(404, b"", {}))


def a_chunk(seed: int = 1) -> tuple[Obj, bytes]:
    raw = random.Random(seed).randbytes(5000)
    return Obj("chunk", sha256(raw)), codec.compress(raw, 3)


def zstd_answer(frame: bytes) -> Answer:
    return Answer(200, frame, {"Content-Encoding": "zstd"})


class Node:
    def __init__(self, tmp: Path, sources: list[Source], peers: object = None) -> None:
        self.metrics = EdgeMetrics.create()
        self.memory = MemoryTier(S3FIFO(1 << 20))
        self.disk = DiskTier(tmp, S3FIFO(1 << 20))
        self.writes = TaskOwner("writes")
        self.sources = Sources(sources, self.metrics)
        self.filler = Filler(self.memory, self.disk, self.sources, peers or NoPeers(),  # type: ignore[arg-type]
                             Flights(0.5), self.writes, self.metrics)
        self.now = 1000.0
        self.refs = RefCache(self.memory, self.disk, self.sources, Flights(), self.writes, self.metrics,
                             RefSettings(max_age=30, stale_if_error=3600), clock=lambda: self.now)

    def count(self, name: str, *labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, dict(zip(_LABELS.get(name, ()), labels, strict=False)))
        return value or 0.0


_LABELS = {"minicdn_edge_hits_total": ("tier",), "minicdn_edge_upstream_errors_total": ("reason",),
           "minicdn_edge_upstream_requests_total": ("kind",)}


async def test_a_miss_is_filled_once_verified_stored_and_then_a_hit(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    obj, frame = a_chunk()
    up.answers[obj.path] = zstd_answer(frame)
    up.gate = asyncio.Event()
    loads = [asyncio.ensure_future(node.filler.load(obj)) for _ in range(20)]
    await asyncio.sleep(0.01)
    up.gate.set()
    entries = await asyncio.gather(*loads)
    assert all(e.body == frame for e in entries) and len(up.calls) == 1
    assert up.calls[0][1]["Accept-Encoding"] == "zstd"
    assert node.count("minicdn_edge_coalesced_total") == 19
    assert node.count("minicdn_edge_misses_total") == 20
    await node.writes.close(grace=5)
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

    class Picker:
        def pick(self, key: str) -> Source | None:
            return peer

    node = Node(tmp_path, [up], Picker())
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
    return msgpack.packb({"payload": msgpack.packb({"serial": n}), "key_id": "k", "signature": b"s"})


async def test_refs_fresh_revalidated_stale_if_error_and_gone(tmp_path: Path) -> None:
    up = FakeSource("up")
    node = Node(tmp_path, [up])
    await node.disk.open()
    path = "/v1/apps/demo/channels/release"
    up.answers[path] = Answer(200, envelope(1), {"Cache-Control": "public, max-age=10", "ETag": etag_of(envelope(1))})
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
    await node.writes.close(grace=5)
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
