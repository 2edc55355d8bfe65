"""``make bench-open`` as a test: a bounded run (one round) over the shaped link must
install the app exactly, by every way, every time (the bench stops INVALID otherwise), and
the link must really cost a round trip; no other timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

RTT = 0.08


def test_a_bounded_open_bench_installs_exactly_over_a_shaped_link(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("bench_open needs root, ip and tc (network namespaces, tbf)")
    out = tmp_path / "open.json"
    cmd = [sys.executable, "-m", "loadtests.bench_open", "--rounds", "1", "--rtt", str(RTT), "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"cold open|floor", "cold open|minicdn", "update|floor", "update|minicdn"}
    for run in runs["cold open|floor"] + runs["update|floor"]:
        assert run["requests"] == 1 and run["bytes"] > 0 and run["files"] > 0
        assert run["network"] >= RTT  # the proxy held the request and its answer a round trip
    for run in runs["cold open|minicdn"] + runs["update|minicdn"]:
        assert run["requests"] >= 1 and run["seconds"] >= RTT
    assert runs["update|floor"][0]["bytes"] < runs["cold open|floor"][0]["bytes"]  # a delta, not the app
    assert set(report["summary"]) == {"cold open", "update"}
    # Nothing of the link is left behind.
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "minicdn-open-" not in names
