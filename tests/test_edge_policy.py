"""Eviction policies: one contract suite for every policy, then what sets S3-FIFO apart,
and the Zipf measurement that chose it (seeded: the same figures every run)."""

from __future__ import annotations

import random

import pytest

from edge.policy import LRU, POLICIES, S3FIFO, Policy
from loadtests.policy_zipf import chunk_trace, distinct_bytes, install_trace, simulate


@pytest.fixture(params=sorted(POLICIES))
def make(request: pytest.FixtureRequest) -> type:
    return POLICIES[request.param]  # type: ignore[return-value]


def test_bytes_never_exceed_the_limit_and_evictions_add_up(make: type) -> None:
    p: Policy = make(10_000)
    rnd = random.Random(3)
    held: dict[str, int] = {}
    for _ in range(5_000):
        key = f"k{rnd.randrange(400)}"
        if p.touch(key):
            continue
        size = rnd.randrange(1, 2_000)
        for k, s in p.admit(key, size):
            assert held.pop(k) == s
        if key in p:
            held[key] = size
        assert p.bytes == sum(held.values()) <= p.limit
        assert len(p) == len(held) and set(p) == set(held)


def test_oversize_is_refused_and_readmission_is_a_noop(make: type) -> None:
    p: Policy = make(100)
    assert p.admit("big", 101) == [] and "big" not in p
    assert p.admit("a", 60) == [] and p.admit("a", 60) == [] and p.bytes == 60


def test_remove_touch_resize(make: type) -> None:
    p: Policy = make(100)
    for k in "abcd":
        p.admit(k, 25)
    assert p.remove("b") == 25 and p.remove("b") is None and p.bytes == 75
    assert p.touch("a") and not p.touch("b")
    evicted = p.resize(30)
    assert p.bytes <= 30 and sum(s for _, s in evicted) == 75 - p.bytes


def test_s3fifo_keeps_a_hot_key_through_a_scan_that_lru_loses() -> None:
    for make, survives in ((LRU, False), (S3FIFO, True)):
        p = make(100 * 10)
        for _ in range(3):
            p.admit("hot", 10) or p.touch("hot")
        for _ in range(20):  # fill main with frequently used keys
            for k in range(50):
                if not p.touch(f"m{k}"):
                    p.admit(f"m{k}", 10)
        p.touch("hot")
        for i in range(500):  # a cold install: 5x the cache of keys seen once
            p.admit(f"scan{i}", 10)
        assert ("hot" in p) is survives, make.__name__


def test_s3fifo_ghost_hit_goes_straight_to_main() -> None:
    p = S3FIFO(1000)
    p.admit("x", 10)
    for i in range(100):
        p.admit(f"y{i}", 10)  # x leaves the small queue unused: remembered as a ghost
    assert "x" not in p
    p.admit("x", 10)
    for i in range(200):
        p.admit(f"z{i}", 10)  # a second scan: x is in main now and outlives it
    assert "x" in p


@pytest.mark.parametrize("trace", ["chunks", "installs"])
def test_zipf_s3fifo_beats_lru(trace: str) -> None:
    t = chunk_trace(20_000, 100_000, 0.8) if trace == "chunks" else install_trace(800, 2_500, 0.8)
    universe = distinct_bytes(t)
    for frac in (0.01, 0.05):
        lru = simulate("lru", t, int(universe * frac))
        s3 = simulate("s3fifo", t, int(universe * frac))
        assert s3.byte_hits > lru.byte_hits and s3.hits > lru.hits, (trace, frac, lru, s3)
