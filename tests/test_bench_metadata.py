"""``make bench-delivery``'s metadata rows (loadtests/bench_metadata.py) as a test: a
bounded run (30 subpackages) must install every row's packages exactly, with the edge's
byte count agreeing with the client's (the bench stops INVALID otherwise), and meet issue
16's goals in bytes."""

from __future__ import annotations

from pathlib import Path

from loadtests import bench_metadata
from loadtests.bench_delivery import ensure_zstd, tree
from loadtests.data import chains
from loadtests.subapps import FILES_PER_SUB, build_subpackage_app, sub_root


def test_a_subpackage_app_changes_only_what_its_revisions_say(tmp_path: Path) -> None:
    lib = {bench_metadata.LIB: chains()[bench_metadata.LIB][-1]}
    a = build_subpackage_app(tmp_path / "a", lib, 12)
    b = build_subpackage_app(tmp_path / "b", lib, 12, revisions={3: 1})
    files_a, files_b = tree(a), tree(b)
    subs = [k for k in files_a if k.startswith("sub/")]
    assert len(subs) == 12 * FILES_PER_SUB
    changed = {k for k in files_a if files_a[k] != files_b[k]}
    assert changed and all(k.startswith(sub_root(3) + "/") for k in changed)
    assert files_a.keys() == files_b.keys()


def test_a_bounded_metadata_bench_installs_every_row_exactly_and_meets_its_goals(tmp_path: Path) -> None:
    ensure_zstd()
    rows = bench_metadata.measure(30, tmp_path, log=lambda _: None)
    assert [r.name.split(" (")[0] for r in rows] == [
        "cold open of the main package",
        "open one subpackage",
        "update of one installed subpackage",
        "update in which nothing it has changed",
        "cold open of another app using @vant/weapp",
        "manyfile",
        "manyfile",
    ]
    cold, opened, update, nothing, _share, *manyfile = rows
    assert cold.anchor > opened.anchor > 0 and update.anchor > 0 and nothing.anchor == 0
    assert all(r.bytes > 0 and r.requests <= 3 for r in rows)  # an open, then what it lacks
    assert nothing.plan == "none" and nothing.requests == 1  # nothing it has changed: the open only
    assert all(r.plan == "delta" for r in [update, *manyfile])
    # issue 16's goals, in bytes (deterministic: the same app gives the same bytes)
    assert all(r.met for r in rows), bench_metadata.table(rows, 30)
