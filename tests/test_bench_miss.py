"""``make bench-edge``'s miss rows as a test: a bounded run (2,000 chunks, one round of
one second per cache and mode) must be valid; no timing is asserted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from loadtests import bench_miss
from loadtests.bench_edge import ensure_tools

CHUNKS = 2000


def test_bounded_miss_bench_is_valid(tmp_path: Path) -> None:
    if reason := bench_miss.unable():
        pytest.skip(reason)
    ensure_tools(argparse.Namespace(varnish=False))
    out = tmp_path / "miss.json"
    argv = ["--chunks", str(CHUNKS), "--rounds", "1", "--duration", "1", "--out", str(out)]
    outcome = bench_miss.measure(bench_miss.parse(argv), log=lambda _: None)

    assert [(r.mode, r.cache) for r in outcome.runs] == [
        ("pinned", "edge"),
        ("pinned", "nginx"),
        ("unpinned", "edge"),
        ("unpinned", "nginx"),
    ]
    for run in outcome.runs:
        assert run.problems == [], (run.mode, run.cache, run.problems)
        # every answer counted was 200 and the chunk asked for (else a problem above); each
        # id the cache was asked for came from the origin exactly once
        assert run.received > 0 and run.fetched == run.distinct
        assert run.received <= run.fetched <= run.handed <= CHUNKS
        if run.received == CHUNKS:
            assert run.fetched == CHUNKS
        if run.cache == "edge":
            assert run.upstream_requests == run.fetched
        assert run.cache_cpu > 0 and run.misses_per_s > 0

    result = json.loads(out.read_text())
    assert result["valid"] is True
    assert {(r["mode"], r["cache"]) for r in result["rows"]} == {
        (m, c) for m in ("pinned", "unpinned") for c in ("edge", "nginx")
    }
    assert all(len(result["ratios"][m]) == 1 and result["ratios"][m][0] > 0 for m in ("pinned", "unpinned"))
    assert "edge / nginx" in outcome.text and "INVALID" not in outcome.text
