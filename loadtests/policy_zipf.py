"""Eviction policies on Zipf traces: the measurement behind the edge's default policy.

Two traces, both seeded (the same figures on every run):

- ``chunks``: single chunk requests, chunk popularity Zipf(alpha), sizes log-normal
  around 16 KiB clipped to FastCDC's 4-64 KiB;
- ``installs``: apps with Zipf(alpha) popularity, each request a cold install that
  fetches every chunk of the app in order (a scan), a third of each app's chunks drawn
  from a shared pool of library chunks (the npm components that many apps ship).

For each cache size (a fraction of all distinct bytes) it prints the object and byte hit
ratios of every policy in ``edge.policy``::

    python -m loadtests.policy_zipf [--requests N]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from edge.policy import POLICIES

__all__ = ["Result", "chunk_trace", "install_trace", "simulate"]

Request = tuple[str, int]


@dataclass(frozen=True)
class Result:
    hits: float  # fraction of requests served from the cache
    byte_hits: float  # fraction of requested bytes served from the cache


def _zipf_sampler(n: int, alpha: float, rng: random.Random) -> Iterator[int]:
    cum = list(itertools.accumulate(1.0 / (k**alpha) for k in range(1, n + 1)))
    total = cum[-1]
    while True:
        yield bisect.bisect_left(cum, rng.random() * total)


def _size(rng: random.Random) -> int:
    return int(min(64 << 10, max(4 << 10, rng.lognormvariate(math.log(14 << 10), 0.6))))


def chunk_trace(objects: int, requests: int, alpha: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    sizes = [_size(rng) for _ in range(objects)]
    perm = list(range(objects))
    rng.shuffle(perm)  # popularity rank is not id order
    pick = _zipf_sampler(objects, alpha, rng)
    return [(f"c{perm[r]}", sizes[perm[r]]) for r in itertools.islice(pick, requests)]


def install_trace(apps: int, installs: int, alpha: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    shared = [(f"lib{i}", _size(rng)) for i in range(apps)]
    layout = []
    for a in range(apps):
        n = rng.randint(8, 60)
        own = [(f"a{a}.{i}", _size(rng)) for i in range(n - n // 3)]
        layout.append(own + rng.sample(shared[: apps // 4], n // 3))
    pick = _zipf_sampler(apps, alpha, rng)
    return [req for r in itertools.islice(pick, installs) for req in layout[r]]


def simulate(policy_name: str, trace: Iterable[Request], limit: int) -> Result:
    policy = POLICIES[policy_name](limit)
    hits = byte_hits = n = total = 0
    for key, size in trace:
        n += 1
        total += size
        if policy.touch(key):
            hits += 1
            byte_hits += size
        else:
            policy.admit(key, size)
    return Result(hits / n, byte_hits / total)


def distinct_bytes(trace: Iterable[Request]) -> int:
    return sum(dict(trace).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    args = ap.parse_args()
    traces = {
        "chunks a=0.8": chunk_trace(200_000, args.requests, 0.8),
        "chunks a=1.0": chunk_trace(200_000, args.requests, 1.0),
        "installs a=0.8": install_trace(5_000, args.requests // 30, 0.8),
        "installs a=1.0": install_trace(5_000, args.requests // 30, 1.0),
    }
    names = list(POLICIES)
    print("| trace | cache | " + " | ".join(f"{n} hits / bytes" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, trace in traces.items():
        universe = distinct_bytes(trace)
        for frac in (0.01, 0.05, 0.2):
            cells = []
            for name in names:
                r = simulate(name, trace, int(universe * frac))
                cells.append(f"{r.hits:.3f} / {r.byte_hits:.3f}")
            print(f"| {label} | {frac:.0%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
