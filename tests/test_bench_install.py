"""``make bench-open``'s install-work rows (loadtests/bench_install.py) as a test: a bounded
run (one round, an app of a few subpackages) installs every package exactly (the bench
stops INVALID otherwise) and times both ways.  No timing is asserted."""

from __future__ import annotations

from pathlib import Path

from loadtests import bench_install
from loadtests.bench_delivery import ensure_zstd


def test_a_bounded_install_work_run_installs_the_app_exactly(tmp_path: Path) -> None:
    ensure_zstd()
    m = bench_install.measure(1, 2, tmp_path, log=lambda _: None)
    assert m["files"] > 600 and len(m["runs"]["minicdn"]) == len(m["runs"]["tar"]) == 1
    assert m["minicdn"] > 0 and m["tar"] > 0
    assert "minicdn / tar" in bench_install.table(m)
