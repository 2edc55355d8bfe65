"""``make bench-delivery`` as tests: a bounded run in ``make test`` (one chain, three
versions: correctness and plan choice only, no timing), and the full run marked slow."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from loadtests import bench_delivery
from loadtests.data import chains

KIB = 1024


def test_bounded_delivery_run_installs_exactly_and_updates_by_delta(tmp_path: Path) -> None:
    name = "@vant/weapp"
    versions = chains()[name][:3]
    [chain] = bench_delivery.run({name: versions}, tmp_path, log=lambda *_: None)
    # run_chain compares every install with the app's files and the edge's byte count
    # with the client's; what is left to check is the choice of plans
    assert [i.version for i in chain.installs] == versions
    assert all(i.plan == "bundle" and i.requests == 2 and i.bytes == i.edge_bytes for i in chain.installs)
    assert [(u.old, u.new) for u in chain.updates] == list(itertools.pairwise(versions))
    for u in chain.updates:
        assert u.plan == "delta" and u.requests == 2 and u.bytes == u.edge_bytes  # open, delta
        assert u.by_kind["bundles"] < u.chunks_bytes  # the delta beat the changed chunks
        # the open answer: the ref (~330 B), a head (~230 B), and the package manifest as dcz
        # against the installed one (its zstd form is tens of KiB)
        assert u.manifest_bytes < 1400
    text, _ = bench_delivery.report([chain])
    assert "| @vant/weapp |" in text


@pytest.mark.slow
def test_full_delivery_run_meets_the_byte_targets(tmp_path: Path) -> None:
    """Every chain: cold installs <= 1.05x the solid archive + 1 KiB and <= 4 requests;
    updates <= 4 requests, and summed per chain <= 1.5x patch-from + 1 KiB each, as
    measured through the edge (manifests of updates travel as dcz)."""
    results = bench_delivery.run(chains(), tmp_path)
    text, _ = bench_delivery.report(results)
    print(text)
    for chain in results:
        for i in chain.installs:
            assert i.bytes <= 1.05 * i.solid + KIB and i.requests <= 4, (chain.name, i)
        assert all(u.requests <= 4 for u in chain.updates)
        limit = 1.5 * sum(u.patch_from for u in chain.updates) + KIB * len(chain.updates)
        assert sum(u.bytes for u in chain.updates) <= limit, chain.name
