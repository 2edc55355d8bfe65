"""How long an edge takes to start with a full disk tier: from its launch to its first
``/readyz`` 200 (the disk tier's index rebuilt from the files), for edges from several
source trees over the same cache directory, rounds alternating (issue 15: "the edge starts
as fast as today with a full disk tier").

- The cache: ``--files`` chunk files (random bodies of 2-18 KiB, named by made-up ids: the
  index is rebuilt from names, sizes and mtimes, nothing is read) in the edge's layout
  (edge/paths.py), made once under ``--work`` and reused; the page cache is warm for every
  edge alike after the first round, which is not counted.
- Each edge: ``edge.cli.edge`` run from its source tree (``--edge NAME=SRC``, SRC a
  checkout or a ``git archive`` of another commit) with this venv, on a free loopback port,
  ``--disk-size`` large enough to hold every file (nothing evicted), stopped by its PID.

Reported: each edge's median seconds to ready, and each one's ratio to the first::

    python -m loadtests.bench_startup [--files 100000] [--rounds 5] --edge base=/tmp/base --edge new=.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from loadtests.bench_edge import process
from loadtests.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


def make_cache(root: Path, files: int) -> int:
    """``files`` chunk files under ``root`` (made once; the count is kept in a marker)."""
    marker = root / ".made"
    if marker.exists() and marker.read_text() == str(files):
        return files
    rnd = random.Random(15)
    made = 0
    for _ in range(files):
        hexid = rnd.randbytes(32).hex()
        folder = root / "chunks" / hexid[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / hexid).write_bytes(os.urandom(rnd.randint(2 << 10, 18 << 10)))
        made += 1
    marker.write_text(str(files))
    return made


def seconds_to_ready(src: Path, cache: Path, log: Path) -> float:
    port = free_port()
    args = [
        # The edge's own command, not ``-m common``: that finds its subcommands through this
        # venv's installed entry points, which an older tree may not have.
        sys.executable, "-c", "from edge.cli import edge; edge(prog_name='minicdn edge')",
        "--cache-dir", str(cache),
        "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:9", "--disk-size", "64GiB",
    ]  # fmt: skip
    began = time.perf_counter()
    with process(args, log, cpu=None, cwd=src) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", 300, proc)
        return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--edge", action="append", default=[], help="NAME=SRC: an edge from source tree SRC")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/minicdn-startup"))
    a = ap.parse_args()
    edges = [(n, Path(s).resolve()) for n, _, s in (e.partition("=") for e in a.edge)] or [("this", ROOT)]
    cache = a.work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{make_cache(cache, a.files)} files in {cache}")
    times: dict[str, list[float]] = {name: [] for name, _ in edges}
    for r in range(a.rounds + 1):  # round 0 warms the page cache and is not counted
        order = edges if r % 2 == 0 else edges[::-1]
        for name, src in order:
            t = seconds_to_ready(src, cache, a.work / f"{name}.log")
            if r > 0:
                times[name].append(t)
            print(f"round {r} {name:>8}: {t:.2f} s to ready" + (" (warm-up, not counted)" if r == 0 else ""))
    first = statistics.median(times[edges[0][0]])
    for name, _ in edges:
        med, lo, hi = statistics.median(times[name]), min(times[name]), max(times[name])
        print(f"{name:>8}: median {med:.2f} s [{lo:.2f}-{hi:.2f}], {med / first:.2f}x {edges[0][0]}")


if __name__ == "__main__":
    main()
