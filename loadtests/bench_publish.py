"""``make bench-publish``: publish throughput against Debian's ``zstd -19`` (one thread) on
the same bytes, in the same run.

For every version of every real package chain (``make data``), an app is built (a few
pages plus the library under miniprogram_npm/), and:

- zstd: ``zstd -19 -T1`` over the version's files concatenated (exactly the bytes the
  origin chunks), timed as a subprocess;
- minicdn: the origin's publish pipeline (layout, FastCDC, SHA-256, zstd-19 per chunk in
  the process pool, crash-safe stores, signed manifest) into a fresh storage, so nothing is
  deduplicated away, with 1 and with 2 compression workers.

- minicdn on S3 (issue 18): the same pipeline with 2 workers into a fresh prefix of a
  bucket on a one-node Ceph RGW (deploy/rgw.py, started and stopped by this run; its OSD
  keeps objects in memory, where the file driver fsyncs to disk), reported as a ratio to
  the file driver's time with 2 workers in the same run, with the S3 requests a publish
  makes (counted as botocore sends them, by operation, retries included).  ``--no-s3``
  leaves it out (no Ceph packages here); the row needs Debian's ``ceph-mon ceph-osd
  radosgw ceph-common``.

Runs alternate (zstd, 1 worker, 2 workers, S3) for ``--rounds`` rounds and the table shows
medians. Targets (issue 2): 1 worker >= 0.9x zstd; 2 workers > 1.0x zstd.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.signing import SigningKey, generate_keypair
from loadtests.data import build_app, chains, ensure_data
from origin.publish import Publisher, compress_many, tree_files
from origin.storage import FileStorage, Store

S3_ROW = "minicdn 2 workers, S3"


def _versions(work: Path, data_dir: Path) -> list[tuple[str, dict[str, Path], Path]]:
    out = []
    for name, versions in chains().items():
        for v in versions:
            app_dir = build_app(work / "apps" / f"{name.replace('/', '_')}-{v}", {name: v}, data_dir=data_dir)
            files = tree_files(app_dir)
            stream = work / "streams" / f"{name.replace('/', '_')}-{v}.bin"
            stream.parent.mkdir(parents=True, exist_ok=True)
            with open(stream, "wb") as f:
                for p in sorted(files, key=lambda p: p.encode()):
                    f.write(files[p].read_bytes())
            out.append((f"{name}@{v}", files, stream))
    return out


def _time_zstd(stream: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["zstd", "-19", "-T1", "-q", "-c", str(stream)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


@dataclass
class S3Target:
    """A bucket on an S3 server; every publish goes to a fresh prefix of it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str = "minicdn-bench"

    def __post_init__(self) -> None:
        import boto3

        from origin.storage.s3 import ensure_bucket

        self.session = boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        )
        ensure_bucket(f"s3://{self.bucket}/", session=self.session, endpoint_url=self.endpoint)

    def store(self, requests: Counter[str]) -> Store:
        """A store on a new prefix; every request its client sends is counted in ``requests``
        by S3 operation (``PutObject``, ``HeadObject``...)."""
        from origin.storage.s3 import S3Driver

        driver = S3Driver.from_url(
            f"s3://{self.bucket}/{uuid.uuid4().hex}", session=self.session, endpoint_url=self.endpoint
        )

        def count(event_name: str, **_: Any) -> None:
            requests[event_name.rpartition(".")[2]] += 1

        driver.client.meta.events.register("before-send.s3", count)
        return Store(driver)


@contextmanager
def rgw_target(work: Path) -> Iterator[S3Target]:
    """A one-node Ceph RGW under ``work`` for the run, stopped by PID at the end."""
    from deploy import rgw

    cluster = rgw.start(work / "rgw")
    try:
        yield S3Target(cluster.endpoint, cluster.access_key, cluster.secret_key, rgw.REGION)
    finally:
        cluster.stop()


def _time_publish(
    files: dict[str, Path],
    pool: ProcessPoolExecutor,
    workers: int,
    work: Path,
    key: SigningKey,
    s3: S3Target | None = None,
    requests: Counter[str] | None = None,
) -> float:
    """Seconds to publish ``files`` into a fresh store: a file store under ``work``, or a
    fresh prefix on ``s3`` (its requests added to ``requests``).  Opening the store is not
    timed, closing it is not either."""
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="store-"))
    store = FileStorage(tmp) if s3 is None else s3.store(requests if requests is not None else Counter())
    try:
        pub = Publisher(store, key, pool, workers=workers, level=19, tmp_dir=tmp)
        t0 = time.perf_counter()
        pub.publish("bench", "1.0.0", files)
        return time.perf_counter() - t0
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Result:
    times: dict[str, list[float]]  # row → seconds of each round (every version published)
    s3_requests: Counter[str]  # S3 operation → requests, every round, every version
    publishes: int  # S3 publishes counted in s3_requests

    def median(self, row: str) -> float:
        return statistics.median(self.times[row])

    def s3_vs_file(self) -> float:
        """The S3 publish time over the file driver's, 2 workers both, medians of one run."""
        return self.median(S3_ROW) / self.median("minicdn 2 workers")

    def requests_per_publish(self) -> dict[str, float]:
        return {op: n / self.publishes for op, n in sorted(self.s3_requests.items())}


def measure(
    versions: list[dict[str, Path]],
    rounds: int,
    work: Path,
    s3: S3Target | None,
    zstd: Callable[[], float] | None = None,
) -> Result:
    """Alternating rounds: zstd (when given: it times every version's stream), the file
    driver with 1 and 2 workers, and (with ``s3``) the S3 driver with 2 workers."""
    key = generate_keypair(work / "keys")
    ctx = multiprocessing.get_context("spawn")
    pools = {w: ProcessPoolExecutor(w, mp_context=ctx) for w in (1, 2)}
    rows = ["zstd -19 -T1"] if zstd else []
    rows += ["minicdn 1 worker", "minicdn 2 workers"] + ([S3_ROW] if s3 else [])
    result = Result({r: [] for r in rows}, Counter(), 0)
    try:
        for w, pool in pools.items():  # start the workers before timing anything
            list(pool.map(compress_many, [[b"warm"]] * w, [19] * w))
        for _ in range(rounds):
            if zstd:
                result.times["zstd -19 -T1"].append(zstd())
            for w in (1, 2):
                result.times[f"minicdn {w} worker{'s' if w > 1 else ''}"].append(
                    sum(_time_publish(f, pools[w], w, work, key) for f in versions)
                )
            if s3:
                result.times[S3_ROW].append(
                    sum(_time_publish(f, pools[2], 2, work, key, s3, result.s3_requests) for f in versions)
                )
                result.publishes += len(versions)
    finally:
        for pool in pools.values():
            pool.shutdown()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="leave out the S3 row (no Ceph RGW)")
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        print("installing Debian's zstd ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "zstd"], check=True, stdout=subprocess.DEVNULL)
    data_dir = ensure_data()
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-") as tmp:
        work = Path(tmp)
        versions = _versions(work, data_dir)
        raw = sum(s.stat().st_size for _, _, s in versions)

        def zstd() -> float:
            return sum(_time_zstd(s) for _, _, s in versions)

        files = [f for _, f, _ in versions]
        if args.no_s3:
            result = measure(files, args.rounds, work, None, zstd)
        else:
            with rgw_target(work) as s3:
                result = measure(files, args.rounds, work, s3, zstd)
    base = result.median("zstd -19 -T1")
    print(
        f"\npublish throughput: {len(versions)} app versions, {raw / 1e6:.1f} MB raw input, "
        f"{os.cpu_count()} cores, median of {args.rounds} alternating rounds\n"
    )
    print(f"{'':24} {'seconds':>8} {'MB/s':>7} {'vs zstd':>8}")
    ratios = {}
    for name in result.times:
        t = result.median(name)
        ratios[name] = base / t
        print(f"{name:24} {t:8.2f} {raw / t / 1e6:7.2f} {base / t:7.2f}x")
    ok1 = ratios["minicdn 1 worker"] >= 0.9
    ok2 = ratios["minicdn 2 workers"] > 1.0
    print(
        f"\ntarget 1 worker >= 0.9x zstd: {'met' if ok1 else 'NOT met'}; "
        f"2 workers > 1.0x zstd: {'met' if ok2 else 'NOT met'}"
    )
    if S3_ROW in result.times:
        per = result.requests_per_publish()
        print(
            f"\nS3 (one-node Ceph RGW, memstore) vs file driver, 2 workers each, same run: "
            f"{result.s3_vs_file():.2f}x the file driver's time"
        )
        print(
            f"S3 requests per publish (mean of {result.publishes}): {sum(per.values()):.1f} = "
            + ", ".join(f"{op} {n:.1f}" for op, n in per.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
