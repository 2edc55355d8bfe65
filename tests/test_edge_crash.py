"""The disk tier through crashes and damage, with real processes: SIGKILL mid-burst and a
restart without the origin, corrupted files, and bounds under a workload larger than both
tiers."""

from __future__ import annotations

import contextlib
import http.client as http_client
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from common import codec
from tests.conftest import TOKEN, http, wait_enriched
from tests.edge_support import (
    App,
    batch_items,
    cache_dir,
    chunk_files,
    edge,
    eventually,
    get_chunk,
    publish_app,
    random_app,
    tmpfs,
    verify_chunk,
)
from tests.procs import Service, free_port, metric, origin_service


@pytest.fixture
def private_origin(tmp_path: Path) -> Iterator[Service]:
    """An origin this test may stop."""
    svc = origin_service(tmp_path, TOKEN).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def big(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> App:
    return publish_app(origin.url, "big", random_app(tmp_path_factory.mktemp("big") / "app", 2.0, seed=11))


# -- must show 3: SIGKILL during a burst of fills, restart without the origin ----------------


def test_sigkill_mid_burst_then_restart_without_origin_serves_every_committed_chunk_and_stale_refs(
    private_origin: Service, tmp_path: Path
) -> None:
    app = publish_app(private_origin.url, "crashy", random_app(tmp_path / "app", 2.0, seed=3))
    # Enrichment repoints the channel when it ends, and the edge (following the change feed)
    # would take that newer ref: the stale ref compared below must be the last there is.
    wait_enriched(private_origin.url, "crashy", "1.0.0")
    svc = edge(tmp_path, private_origin.url, extra=("--ref-max-age", "0s")).start()
    try:
        ref = http("GET", f"{svc.url}/v1/apps/crashy/channels/release")
        assert ref.status == 200
        eventually(lambda: (cache_dir(svc) / "refs" / "crashy" / "release").exists(), what="ref on disk")
        def fill_all() -> None:
            with contextlib.suppress(OSError, http_client.HTTPException):  # the edge dies under it
                http("POST", f"{svc.url}/v1/chunks:batch", msgpack.packb(app.chunks), timeout=30)

        burst = threading.Thread(target=fill_all)
        burst.start()
        eventually(lambda: len(chunk_files(svc)) >= 5, what="some fills committed")
        svc.kill()  # SIGKILL, with fills and writes in flight
        burst.join(30)
        private_origin.stop()

        committed = chunk_files(svc)
        assert committed
        svc.start()
        for hexid in committed:
            verify_chunk(hexid, get_chunk(svc.url, hexid, zstd=True))
            verify_chunk(hexid, get_chunk(svc.url, hexid))
        assert metric(svc.url, "minicdn_edge_corrupt_total") == 0
        assert not [p for p in cache_dir(svc).rglob(".tmp-*")]  # crash leftovers swept
        stale = http("GET", f"{svc.url}/v1/apps/crashy/channels/release")
        assert stale.status == 200 and stale.body == ref.body and stale.headers["x-cache"] == "stale"
        assert metric(svc.url, "minicdn_edge_stale_total") == 1
        missing = next((c for c in app.chunks if c not in committed), None)
        if missing is not None:  # what was not committed is not invented
            assert get_chunk(svc.url, missing).status == 502
    finally:
        svc.stop()


# -- must show 4: a corrupted cache file is never served --------------------------------------


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x20
    path.write_bytes(bytes(b))


def test_a_corrupted_cache_file_is_never_served(origin: Service, big: App, tmp_path: Path) -> None:
    ids = big.chunks[:3]
    # Memory tier off: every hit reads the disk, so damage done while running is met too.
    svc = edge(tmp_path, origin.url, extra=("--memory-size", "0")).start()
    try:
        for hexid in ids:
            verify_chunk(hexid, get_chunk(svc.url, hexid, zstd=True))
        eventually(lambda: set(ids) <= set(chunk_files(svc)), what="fills committed")
        _flip(chunk_files(svc)[ids[0]])
        before = metric(origin.url, "minicdn_origin_chunk_requests_total")
        verify_chunk(ids[0], get_chunk(svc.url, ids[0], zstd=True))  # dropped and refetched
        assert metric(origin.url, "minicdn_origin_chunk_requests_total") - before == 1
        assert metric(svc.url, "minicdn_edge_corrupt_total") == 1

        svc.stop()
        _flip(chunk_files(svc)[ids[1]])
        chunk_files(svc)[ids[2]].write_bytes(b"")  # truncated
        svc.start()
        for hexid in ids[1:]:
            verify_chunk(hexid, get_chunk(svc.url, hexid))
            verify_chunk(hexid, get_chunk(svc.url, hexid, zstd=True))
        assert metric(svc.url, "minicdn_edge_corrupt_total") == 2
    finally:
        svc.stop()


# -- must show 5: both tiers stay within their limits -----------------------------------------


def test_tiers_stay_within_limits_under_a_larger_workload_and_count_evictions(
    origin: Service, big: App, tmp_path: Path
) -> None:
    mem_limit, disk_limit = 256 << 10, 768 << 10
    svc = edge(tmp_path, origin.url, extra=("--memory-size", str(mem_limit), "--disk-size", str(disk_limit))).start()

    def disk_usage() -> int:
        total = 0
        for p in chunk_files(svc).values():
            with contextlib.suppress(FileNotFoundError):  # evicted since the listing
                total += p.stat().st_size
        return total

    try:
        assert sum(big.raw.values()) > 2 * disk_limit
        for start in range(0, len(big.chunks), 32):
            r = http("POST", f"{svc.url}/v1/chunks:batch", msgpack.packb(big.chunks[start:start + 32]))
            assert r.status == 200
            assert disk_usage() <= disk_limit
            assert metric(svc.url, "minicdn_edge_cache_bytes", 'tier="memory"') <= mem_limit
        eventually(lambda: metric(svc.url, "minicdn_edge_evicted_bytes_total", 'tier="disk"') > 0,
                   what="disk evictions")
        assert metric(svc.url, "minicdn_edge_evicted_bytes_total", 'tier="memory"') > 0
        assert metric(svc.url, "minicdn_edge_cache_bytes", 'tier="disk"') <= disk_limit
        assert disk_usage() <= disk_limit
        assert metric(svc.url, "minicdn_edge_cache_limit_bytes", 'tier="disk"') == disk_limit
    finally:
        svc.stop()


# -- a full disk (a real one: a small tmpfs) ---------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 384 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "small", "384k") as mnt:
        yield mnt


def test_a_full_disk_stops_admissions_without_failing_requests_and_they_resume(
    origin: Service, big: App, small_fs: Path
) -> None:
    svc = Service(
        ["edge", "--cache-dir", str(small_fs / "cache"), "--listen", f"127.0.0.1:{free_port()}",
         "--upstream", origin.url, "--disk-full-backoff", "300ms"],
        0, small_fs.parent / "edge-small.log",
    )
    svc.port = int(svc.args[svc.args.index("--listen") + 1].rsplit(":", 1)[1])
    first, later = big.chunks[:64], big.chunks[64:]
    try:
        svc.start()
        r = http("POST", f"{svc.url}/v1/chunks:batch", msgpack.packb(first))
        assert r.status == 200 and len(batch_items(r.body)) == len(first)
        for hexid, frame in batch_items(r.body):
            codec.decode_chunk(bytes.fromhex(hexid), frame)  # type: ignore[arg-type]
        eventually(lambda: metric(svc.url, "minicdn_edge_disk_full_total") > 0, what="ENOSPC counted")
        eventually(lambda: not list(small_fs.rglob(".tmp-*")), what="no partial files")
        for hexid in first:  # every request still answered (from memory)
            verify_chunk(hexid, get_chunk(svc.url, hexid))

        subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)  # space returns
        fetched: list[str] = []

        def admitted_again() -> bool:
            if later:
                fetched.append(later.pop(0))
                verify_chunk(fetched[-1], get_chunk(svc.url, fetched[-1], zstd=True))
            return bool(set(fetched) & set(chunk_files(svc)))

        eventually(admitted_again, what="disk admissions resumed")
    finally:
        svc.stop()
