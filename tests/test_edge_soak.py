"""The edge's resident memory under load stays within its memory tier plus 150 MiB.

A cache directory three times the memory tier (64 KiB incompressible chunks, written in the
edge's layout) and a dead upstream: keep-alive clients ask for random chunks (memory hits,
disk hits that evict, misses that fail), and the RSS of every process of the edge, plus
the sealed memfds its memory tier holds bodies in, is sampled from /proc.  ``make test`` runs a bounded few seconds; ``make bench-slow``
(``pytest --run-slow -m slow``) the full 60 seconds, with one worker and with two."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import codec
from common.fsutil import atomic_write
from common.ids import sha256
from loadtests.procmem import memfd_bytes
from tests.procs import Service, edge_service, free_port

MEMORY_TIER = 32 << 20
ALLOWANCE = 150 << 20


def memory_of_tree(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of ``pid`` and its children (the workers), from /proc, each
    plus the bytes of the memfds they hold bodies in.  Forked workers share the
    supervisor's pages: summed RSS counts them once per process, PSS (proportional set
    size) once in all — the tree's real footprint."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return 0, 0
    rss = pss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
    sealed = memfd_bytes(pids)  # large bodies in sealed memfds: memory no mapping shows
    return rss + sealed, pss + sealed


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    cache = tmp_path_factory.mktemp("soak-cache")
    rnd = random.Random(5)
    ids = []
    for _ in range(3 * MEMORY_TIER // (64 << 10)):
        raw = rnd.randbytes(64 << 10)
        h = sha256(raw).hex()
        atomic_write(cache / "chunks" / h[:2] / h, codec.compress(raw, level=1))
        ids.append(h)
    return cache, ids


def soak(cache: Path, ids: list[str], seconds: float, workers: int, tmp: Path) -> tuple[int, int, int]:
    """Peak RSS and peak PSS of the edge's processes, and the requests answered, under
    ``seconds`` of load."""
    dead = f"http://127.0.0.1:{free_port()}"
    svc: Service = edge_service(tmp, dead, extra=("--memory-size", str(MEMORY_TIER), "--workers", str(workers)))
    svc.args[svc.args.index("--cache-dir") + 1] = str(cache)
    svc.start()
    stop = time.monotonic() + seconds
    answered = [0]
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
        try:
            while time.monotonic() < stop:
                missing = rnd.random() < 0.02
                hexid = f"{rnd.getrandbits(256):064x}" if missing else rnd.choice(ids)
                conn.request("GET", f"/v1/chunks/{hexid}", headers={"Accept-Encoding": "zstd"})
                r = conn.getresponse()
                r.read()
                assert r.status == (502 if missing else 200), r.status
                answered[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    peak_rss = peak_pss = 0
    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        assert svc.proc is not None
        while any(t.is_alive() for t in threads):
            rss, pss = memory_of_tree(svc.proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.2)  # the sampling period, not a synchronisation
        for t in threads:
            t.join()
    finally:
        svc.stop()
    assert not errors, errors[0]
    return peak_rss, peak_pss, answered[0]


@pytest.fixture
def results() -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines
    print("\n".join(lines))


def test_rss_stays_within_the_memory_tier_plus_150_mib_bounded(
    filled: tuple[Path, list[str]], tmp_path: Path, results: list[str]
) -> None:
    rss, pss, answered = soak(*filled, seconds=5, workers=1, tmp=tmp_path)
    results.append(f"5 s, 1 worker: {answered} requests, peak RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB")
    assert answered > 0
    assert rss <= MEMORY_TIER + ALLOWANCE, f"peak RSS {rss / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_rss_stays_within_the_memory_tier_plus_150_mib_for_60_seconds(
    filled: tuple[Path, list[str]], tmp_path: Path, workers: int, results: list[str]
) -> None:
    rss, pss, answered = soak(*filled, seconds=60, workers=workers, tmp=tmp_path)
    results.append(
        f"60 s, {workers} worker(s): {answered} requests, peak RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB"
    )
    # One process: RSS.  Several (forked, sharing pages): their summed PSS is the footprint.
    footprint = rss if workers == 1 else pss
    assert footprint <= MEMORY_TIER + ALLOWANCE, results[-1]
