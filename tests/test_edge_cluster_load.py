"""A bounded smoke run of ``make loadtest``: locust phones against an origin and a ring of
three edges for a few seconds (loadtests/cluster.py, loadtests/locustfile.py).

locust is in the ``test`` extra (and the ``load`` one), so ``make test`` installs it.
About 15 s on the 2-core reference machine.  The full-length run is ``make loadtest``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_a_short_loadtest_serves_phones_without_failures_and_each_chunk_once_from_the_origin(
    tmp_path: Path,
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loadtests.cluster", "--duration", "5", "--users", "12", "--apps", "4",
         "--report", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]  # locust exits non-zero when any request failed
    edges = re.findall(r"^http://127\.0\.0\.1:\d+\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out,
                       re.MULTILINE)
    assert len(edges) == 3, out[-3000:]
    for ratio, _hits, _misses, _peer, _up, peer_errors, ring in edges:
        assert 0 < float(ratio) <= 1 and peer_errors == "0" and ring == "3"
    stored = int(re.search(r"(\d+) chunks stored", out).group(1))  # type: ignore[union-attr]
    origin = re.search(r"^origin: (\d+) requests, (\d+) chunk requests", out, re.MULTILINE)
    assert origin is not None, out[-3000:]
    assert 0 < int(origin.group(2)) <= stored  # the ring asked the origin for each chunk at most once
    # The reports: locust's own, and the plots over time (loadtests.report) with their checks.
    assert "</html>" in (tmp_path / "locust.html").read_text().lower()
    assert (tmp_path / "report.html").read_text().count("<svg") >= 6
    checks = json.loads((tmp_path / "series.json").read_text())["checks"]
    assert [c["ok"] for c in checks] == [True, True], checks
