"""``make bench-publish``: publish throughput against Debian's ``zstd -19`` (one thread) on
the same bytes, in the same run.

For every version of every real package chain (``make data``), an app is built (a few
pages plus the library under miniprogram_npm/), and:

- zstd: ``zstd -19 -T1`` over the version's files concatenated (exactly the bytes the
  origin chunks), timed as a subprocess;
- minicdn: the origin's publish pipeline (layout, FastCDC, SHA-256, zstd-19 per chunk in
  the process pool, crash-safe stores, signed manifest) into a fresh storage, so nothing is
  deduplicated away, with 1 and with 2 compression workers.

Runs alternate (zstd, 1 worker, 2 workers) for ``--rounds`` rounds and the table shows
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common.signing import generate_keypair
from loadtests.data import build_app, chains, ensure_data
from origin.publish import Publisher, compress_many, tree_files
from origin.storage import FileStorage


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


def _time_publish(
    files: dict[str, Path], pool: ProcessPoolExecutor, workers: int, work: Path, key: object
) -> float:
    store = Path(tempfile.mkdtemp(dir=work, prefix="store-"))
    try:
        pub = Publisher(FileStorage(store), key, pool, workers=workers, level=19, tmp_dir=store)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        pub.publish("bench", "1.0.0", files)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        print("installing Debian's zstd ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "zstd"], check=True, stdout=subprocess.DEVNULL)
    data_dir = ensure_data()
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-") as tmp:
        work = Path(tmp)
        key = generate_keypair(work / "keys")
        versions = _versions(work, data_dir)
        raw = sum(s.stat().st_size for _, _, s in versions)
        ctx = multiprocessing.get_context("spawn")
        pools = {w: ProcessPoolExecutor(w, mp_context=ctx) for w in (1, 2)}
        for w, pool in pools.items():  # start the workers before timing anything
            list(pool.map(compress_many, [[b"warm"]] * w, [19] * w))
        times: dict[str, list[float]] = {"zstd -19 -T1": [], "minicdn 1 worker": [], "minicdn 2 workers": []}
        try:
            for _ in range(args.rounds):
                times["zstd -19 -T1"].append(sum(_time_zstd(s) for _, _, s in versions))
                for w in (1, 2):
                    times[f"minicdn {w} worker{'s' if w > 1 else ''}"].append(
                        sum(_time_publish(f, pools[w], w, work, key) for _, f, _ in versions)
                    )
        finally:
            for pool in pools.values():
                pool.shutdown()
    base = statistics.median(times["zstd -19 -T1"])
    print(
        f"\npublish throughput: {len(versions)} app versions, {raw / 1e6:.1f} MB raw input, "
        f"{os.cpu_count()} cores, median of {args.rounds} alternating rounds\n"
    )
    print(f"{'':20} {'seconds':>8} {'MB/s':>7} {'vs zstd':>8}")
    ratios = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        ratios[name] = base / t
        print(f"{name:20} {t:8.2f} {raw / t / 1e6:7.2f} {base / t:7.2f}x")
    ok1 = ratios["minicdn 1 worker"] >= 0.9
    ok2 = ratios["minicdn 2 workers"] > 1.0
    print(
        f"\ntarget 1 worker >= 0.9x zstd: {'met' if ok1 else 'NOT met'}; "
        f"2 workers > 1.0x zstd: {'met' if ok2 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
