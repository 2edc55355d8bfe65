"""Every process minicdn starts dies with the process that started it, however that one
died: a SIGKILLed origin takes its compression workers and their resource tracker with it,
a SIGKILLed edge supervisor its workers (origin/service.py, edge/workers.py).

Before: each crash of an origin mid-publish left two spawn workers and a resource tracker
running forever under init; each crash of an edge supervisor left its workers serving the
port."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from loadtests.proctree import alive, cmdline, descendants, kill, wait_gone
from tests.conftest import TOKEN, publish, tar_gz_of
from tests.edge_support import random_app
from tests.procs import edge_service, origin_service
from tests.waiting import eventually

# A worker blocked in the middle of a compression exits once that call returns; an edge
# worker drains first (--drain-timeout below).  Both are well within this.
GONE_WITHIN = 30.0


def describe(pids: list[int]) -> str:
    return "; ".join(f"{p}: {cmdline(p)[:160]}" for p in pids)


def test_a_sigkilled_origin_takes_its_compression_workers_and_their_resource_tracker_with_it(
    tmp_path: Path,
) -> None:
    archive = tar_gz_of(random_app(tmp_path / "app", 24))  # incompressible: seconds of zstd -19
    svc = origin_service(tmp_path, TOKEN).start()  # --workers 2
    assert svc.proc is not None
    pid = svc.proc.pid
    answered: list[object] = []
    poster = threading.Thread(
        target=lambda: answered.append(_publish_or_error(svc.url, archive)), daemon=True
    )
    poster.start()
    kids: list[int] = []
    try:

        def pool_started() -> bool:
            kids[:] = descendants(pid)
            lines = [cmdline(k) for k in kids]
            workers = sum("multiprocessing.spawn" in c for c in lines)
            return workers == 2 and any("resource_tracker" in c for c in lines)

        eventually(pool_started, 60, lambda: f"the pool never started: {describe(kids)}")
        assert poster.is_alive(), f"the publish ended before the kill ({answered}): the test needs a bigger app"
        svc.kill()  # SIGKILL, mid-publish
        left = wait_gone(kids, GONE_WITHIN)
        assert not left, f"still running {GONE_WITHIN:.0f}s after the origin was SIGKILLed: {describe(left)}"
    finally:
        svc.kill()
        kill(k for k in kids if alive(k))
        poster.join(30)


def _publish_or_error(url: str, archive: bytes) -> object:
    try:
        return publish(url, "big", "1.0.0", archive).status
    except OSError as exc:  # the origin died under the request: what this test does
        return exc


def test_a_sigkilled_edge_supervisor_takes_its_workers_and_their_private_directory_with_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Where the supervisor makes its private directory: short, as its Unix sockets' paths
    # must fit in 107 bytes (pytest's tmp_path need not; the edge refuses such a $TMPDIR).
    tmpdir = Path(tempfile.mkdtemp(prefix="orphans-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    svc = edge_service(tmp_path, "http://127.0.0.1:9", extra=("--workers", "2", "--drain-timeout", "2s"))
    svc.env["TMPDIR"] = str(tmpdir)
    svc.start()
    assert svc.proc is not None
    pid = svc.proc.pid
    workers: list[int] = []
    try:

        def forked() -> bool:
            workers[:] = descendants(pid)
            return len(workers) == 2

        eventually(forked, 20, lambda: f"two workers, not {describe(workers)}")
        assert [p.name.startswith("minicdn-edge-metrics-") for p in tmpdir.iterdir()] == [True]
        svc.kill()  # SIGKILL the supervisor only
        left = wait_gone(workers, GONE_WITHIN)
        assert not left, f"still running {GONE_WITHIN:.0f}s after the supervisor was SIGKILLed: {describe(left)}"
        assert not list(tmpdir.iterdir()), "the workers' private directory was left behind"
    finally:
        svc.kill()
        kill(w for w in workers if alive(w))
