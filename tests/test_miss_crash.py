"""The cheap miss path keeps crash safety (issue 15): object files are no longer fsynced one
by one (edge.disk, "Durability"), so what a power loss can leave — a name that points at
an empty or zeroed file — must be dropped and refetched, never served; and a SIGKILL in a
burst of GET fills leaves only complete files."""

from __future__ import annotations

import contextlib
import http.client as http_client
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common import fsutil
from edge import paths
from edge.disk import DiskTier
from edge.policy import LRU
from tests.conftest import TOKEN
from tests.edge_support import (
    cache_dir,
    chunk_files,
    edge,
    eventually,
    get_chunk,
    publish_app,
    random_app,
    verify_chunk,
)
from tests.procs import metric, origin_service
from tests.test_edge_tiers import chunk


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fsync this process makes, by descriptor."""
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls


async def test_an_object_file_is_written_without_fsync_and_a_ref_with_both(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    disk = DiskTier(tmp_path, LRU(1 << 20))
    await disk.open()
    obj, frame = chunk(1)
    assert await disk.put(obj.key, frame)
    assert fsyncs == []  # the read path verifies: a torn file costs a refetch, not a wrong byte
    assert await disk.put("refs/app/release", b"envelope", replace=True)
    assert len(fsyncs) == 2  # the file, then its directory: a ref read back is not verified


async def test_a_zeroed_or_emptied_object_file_is_dropped_not_served(tmp_path: Path) -> None:
    """What ext4 may leave after a power loss for a file renamed but not written back."""
    corrupt: list[int] = []
    disk = DiskTier(tmp_path, LRU(1 << 20), on_corrupt=lambda: corrupt.append(1))
    await disk.open()
    zeroed, frame = chunk(2)
    emptied, frame2 = chunk(3)
    assert await disk.put(zeroed.key, frame) and await disk.put(emptied.key, frame2)
    files = {o.key: paths.path_of(tmp_path, o.key) for o in (zeroed, emptied)}
    files[zeroed.key].write_bytes(bytes(len(frame)))
    files[emptied.key].write_bytes(b"")

    again = DiskTier(tmp_path, LRU(1 << 20), on_corrupt=lambda: corrupt.append(1))  # a restart
    await again.open()
    for obj in (zeroed, emptied):
        assert await again.get(obj.key, obj.verify) is None
        assert not files[obj.key].exists()
    assert len(corrupt) == 2


def test_syncfs_writes_back_a_filesystem(tmp_path: Path) -> None:
    fsutil.syncfs(tmp_path)  # no error: the call exists and takes a directory
    with pytest.raises(FileNotFoundError):
        fsutil.syncfs(tmp_path / "absent")


def test_sigkill_in_a_burst_of_get_fills_then_power_loss_damage_is_refetched_not_served(
    tmp_path: Path,
) -> None:
    origin = origin_service(tmp_path, TOKEN).start()
    svc = edge(tmp_path, origin.url, extra=("--memory-size", "0")).start()
    try:
        app = publish_app(origin.url, "burst", random_app(tmp_path / "app", 2.0, seed=5))

        def fill(hexid: str) -> None:
            with contextlib.suppress(OSError, http_client.HTTPException):  # the edge dies under it
                get_chunk(svc.url, hexid, zstd=True)

        with ThreadPoolExecutor(16) as pool:
            for hexid in app.chunks:
                pool.submit(fill, hexid)
            eventually(lambda: len(chunk_files(svc)) >= 8, what="some fills committed")
            svc.kill()  # SIGKILL, with GET fills and background writes in flight

        committed = chunk_files(svc)
        assert len(committed) >= 8
        for path in committed.values():  # SIGKILL tears nothing: each named file is whole
            verify_chunk(path.name, _Frame(path.read_bytes()))
        # What a power loss could have left instead (renamed, never written back):
        damaged = sorted(committed)[:2]
        committed[damaged[0]].write_bytes(bytes(committed[damaged[0]].stat().st_size))
        committed[damaged[1]].write_bytes(b"")

        svc.start()
        assert not list(cache_dir(svc).rglob(".tmp-*"))  # crash leftovers swept
        asked = metric(origin.url, "minicdn_origin_chunk_requests_total")
        for hexid in app.chunks:  # every chunk byte-exact, committed or not
            verify_chunk(hexid, get_chunk(svc.url, hexid, zstd=True))
        # The damaged two were refetched, the other committed files served from disk.
        refetched = metric(origin.url, "minicdn_origin_chunk_requests_total") - asked
        assert refetched == len(app.chunks) - len(committed) + 2
        assert metric(svc.url, "minicdn_edge_corrupt_total") == 2
        for hexid in app.chunks:
            verify_chunk(hexid, get_chunk(svc.url, hexid))
    finally:
        svc.stop()
        origin.stop()


class _Frame:
    """A cache file as an answer, for ``verify_chunk``."""

    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers = {"content-encoding": "zstd"}
        self.body = body
