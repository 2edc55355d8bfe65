"""A disk tier whose limit is larger than its filesystem (``--disk-size`` above the free
space): on ENOSPC the limit is fitted to what the filesystem holds and the tier evicts
down to it, so it keeps storing new objects instead of stopping; the limit grows back
when space returns.  On real, small filesystems (tmpfs; root only)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from common import codec
from common.ids import sha256
from edge.disk import DiskTier
from edge.objects import Obj
from edge.policy import S3FIFO
from tests.conftest import http
from tests.edge_support import (
    App,
    batch_items,
    cache_dir,
    chunk_files,
    edge,
    eventually,
    publish_app,
    random_app,
    remount,
    tmpfs,
)
from tests.procs import Service, metric

GIB = 1 << 30


def chunk(i: int, size: int = 20_000) -> tuple[Obj, bytes]:
    raw = random.Random(i).randbytes(size)
    return Obj("chunk", sha256(raw)), codec.compress(raw, 3)


def stored(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.rglob("*") if p.is_file()}


def check_files(root: Path, disk: DiskTier | None = None) -> None:
    """Nothing half-written: no temp file, and every file is whole (its frame decodes to
    its id); with ``disk``, exactly the files its index holds."""
    files = stored(root)
    assert not [n for n in files if n.startswith(".tmp-")]
    for name, path in files.items():
        with contextlib.suppress(FileNotFoundError):  # an edge may evict it meanwhile
            codec.decode_chunk(bytes.fromhex(name), path.read_bytes())
    if disk is not None:
        assert {f"chunks/{n}" for n in files} == set(disk.policy)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "1m") as mnt:
        yield mnt


async def test_a_limit_above_the_filesystem_is_fitted_to_it_and_the_tier_keeps_storing(small: Path) -> None:
    now = [0.0]
    full: list[int] = []
    disk = DiskTier(small / "cache", S3FIFO(10 * GIB), on_full=lambda: full.append(1),
                    full_backoff=5.0, clock=lambda: now[0])
    await disk.open()
    results = []
    for i in range(150):  # 150 x 20 KB: three times what 1 MiB holds
        obj, frame = chunk(i)
        results.append(await disk.put(obj.key, frame))
    assert full, "the filesystem never filled up"
    first_full = results.index(False)
    # Past the first ENOSPC the tier stores again: the limit is the filesystem's now.
    assert all(results[first_full + 1:]), [i for i, ok in enumerate(results) if not ok]
    assert disk.fitted and disk.limit < 1 << 20 and disk.used <= disk.limit
    assert chunk(149)[0].key in disk.policy and chunk(0)[0].key not in disk.policy  # newest in, oldest out
    check_files(small / "cache", disk)

    # Space returns: at most one backoff later, the limit grows back (never past 10 GiB).
    remount(small, "8m")
    obj, frame = chunk(1000)
    assert await disk.put(obj.key, frame) and disk.limit < 1 << 20  # not yet: within the backoff
    now[0] = 6.0
    obj, frame = chunk(1001)
    assert await disk.put(obj.key, frame)
    assert 7 << 20 < disk.limit < 8 << 20 and disk.fitted
    check_files(small / "cache", disk)


async def test_when_the_filesystem_is_full_of_others_the_tier_holds_nothing_until_space_returns(
    small: Path,
) -> None:
    now = [0.0]
    full: list[int] = []
    (small / "someone-else").write_bytes(b"x" * ((1 << 20) - (8 << 10)))  # all but two pages
    disk = DiskTier(small / "cache", S3FIFO(10 * GIB), on_full=lambda: full.append(1),
                    full_backoff=5.0, clock=lambda: now[0])
    await disk.open()
    obj, frame = chunk(1)
    assert not await disk.put(obj.key, frame)
    assert disk.limit == 0 and disk.used == 0 and full == [1]
    other, other_frame = chunk(2)
    assert not await disk.put(other.key, other_frame)
    assert full == [1]  # refused by the limit: not even tried
    (small / "someone-else").unlink()
    now[0] = 6.0
    assert await disk.put(obj.key, frame) and disk.limit > 0
    check_files(small / "cache", disk)


# -- the edge process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> App:
    return publish_app(origin.url, "fullfs", random_app(tmp_path_factory.mktemp("fullfs") / "app", 3.0, seed=81))


def test_an_edge_with_disk_size_far_above_its_filesystem_keeps_storing_new_chunks(
    origin: Service, big: App, small: Path
) -> None:
    svc = edge(small, origin.url, extra=("--disk-size", "10GiB", "--disk-full-backoff", "300ms"))
    svc.log = small.parent / "edge.log"  # not on the small filesystem
    first, later = big.chunks[: len(big.chunks) // 2], big.chunks[len(big.chunks) // 2 :]
    assert sum(big.raw[c] for c in first) > 1 << 20  # the first half alone overfills it
    try:
        svc.start()
        for ids in (first, later):
            for start in range(0, len(ids), 32):
                r = http("POST", f"{svc.url}/v1/chunks:batch", msgpack.packb(ids[start:start + 32]))
                assert r.status == 200 and [i[0] for i in batch_items(r.body)] == ids[start:start + 32]
            if ids is first:
                eventually(lambda: metric(svc.url, "minicdn_edge_disk_full_total") > 0, what="ENOSPC met")
        # Disk writes run in the background: wait until every one has landed or been refused.
        eventually(lambda: set(later[-8:]) <= chunk_files(svc).keys(), what="the newest chunks on disk")
        limit = metric(svc.url, "minicdn_edge_cache_limit_bytes", 'tier="disk"')
        assert 0 < limit < 1 << 20
        assert metric(svc.url, "minicdn_edge_cache_bytes", 'tier="disk"') <= limit
        assert metric(svc.url, "minicdn_edge_evicted_bytes_total", 'tier="disk"') > 0
        assert not set(first[:8]) & chunk_files(svc).keys()  # the oldest made room
        check_files(cache_dir(svc) / "chunks")
        assert "the filesystem is full" in svc.output()
    finally:
        svc.stop()
    assert not list(cache_dir(svc).rglob(".tmp-*"))
