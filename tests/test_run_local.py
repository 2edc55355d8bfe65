"""``make run`` (deploy/run_local.py) as a user runs it: plain, and with ``TLS=1`` every
server on HTTPS with a local CA; the demo installs through an edge with ``minicdn fetch``
(trusting the CA with ``--ca``), and SIGTERM stops everything it started.

``make run-s3`` too, for real: a Ceph RGW, two origin replicas on one bucket, two edges
listing both origins in different orders (skipped without Ceph's packages, failed under
``CI=true``: tests/sysdeps.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.manifest import open_ref
from common.signing import PublicKey
from tests.conftest import DEMO, REPO, http, publish, set_channel, tar_gz_of, tree, wait_enriched
from tests.procs import MINICDN, free_port
from tests.sysdeps import CEPH, require
from tests.waiting import eventually


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_make_run_serves_the_demo_and_stops_on_sigterm(tmp_path: Path, tls: bool) -> None:
    var = tmp_path / "var"
    ports = [free_port() for _ in range(3)]
    env = {
        **os.environ,
        "MINICDN_RUN_VAR": str(var),
        "MINICDN_RUN_ORIGIN_PORT": str(ports[0]),
        "MINICDN_RUN_EDGE_PORTS": f"{ports[1]},{ports[2]}",
        "MINICDN_RUN_TLS": "1" if tls else "0",
    }
    env.pop("MINICDN_TOKEN", None)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "deploy" / "run_local.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything." not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        scheme = "https" if tls else "http"
        assert f"edge1    {scheme}://127.0.0.1:{ports[1]}" in log.read_text()
        fetch = [
            *MINICDN, "fetch", "demo", "--edge", f"{scheme}://127.0.0.1:{ports[1]}",
            "--public-key", str(var / "keys" / "public.key"), "--out", str(tmp_path / "demo"),
        ]  # fmt: skip
        if tls:
            fetch += ["--ca", str(var / "tls" / "ca.pem")]
        done = subprocess.run(fetch, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        installed = tree(tmp_path / "demo")
        assert installed and installed == {k: v for k, v in tree(DEMO).items() if k in installed}
        assert "app.json" in installed
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    # Nothing it started is left listening: each port can be bound again (SO_REUSEADDR lets
    # connections in TIME_WAIT be; a listener still there would refuse the bind).
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def _fetch(edge: str, var: Path, out: Path) -> None:
    """``minicdn fetch`` of the demo through ``edge``: it installs, byte for byte."""
    fetch = [*MINICDN, "fetch", "demo", "--edge", edge, "--public-key", str(var / "keys" / "public.key"),
             "--out", str(out)]  # fmt: skip
    done = subprocess.run(fetch, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = tree(out)
    assert "app.json" in installed and installed == {k: v for k, v in tree(DEMO).items() if k in installed}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_make_run_s3_replicas_on_rgw_serve_and_stop(tmp_path: Path) -> None:
    """RGW + two origins on its bucket + two edges: the demo installs through both edges; a
    channel move made through origin A reaches the edge that asks origin B first, signed;
    SIGTERM stops every process it started, RGW's daemons included (by their PIDs)."""
    require(*CEPH)
    var = tmp_path / "var"
    origins, edges, rgw_port = [free_port(), free_port()], [free_port(), free_port()], free_port()
    env = {
        **os.environ,
        "MINICDN_RUN_VAR": str(var),
        "MINICDN_RUN_S3": "1",
        "MINICDN_RUN_ORIGIN_PORTS": ",".join(map(str, origins)),
        "MINICDN_RUN_EDGE_PORTS": ",".join(map(str, edges)),
        "MINICDN_RUN_RGW_PORT": str(rgw_port),
        "MINICDN_RUN_TLS": "0",
    }
    for k in [k for k in env if k.startswith("AWS_")] + ["MINICDN_TOKEN"]:
        env.pop(k, None)  # what it needs it prints and passes on itself
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "deploy" / "run_local.py")], stdout=out,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip
    pids: list[int] = []
    try:
        eventually(lambda: "Ctrl-C stops everything." in log.read_text() or proc.poll() is not None, 90,
                   lambda: log.read_text())  # fmt: skip
        text = log.read_text()
        assert proc.poll() is None, text
        pids = [int(p) for p in re.findall(r"\(pid (\d+),", text)]
        daemons = json.loads((var / "rgw" / "rgw.json").read_text())["pids"]
        pids += daemons.values()
        assert len(pids) == 4 + 3, text  # two origins, two edges; mon, osd, radosgw
        a, b = (f"http://127.0.0.1:{p}" for p in origins)
        e1, e2 = (f"http://127.0.0.1:{p}" for p in edges)
        assert f"edge2    {e2}" in text and f"rgw      http://127.0.0.1:{rgw_port}" in text, text
        assert "s3://minicdn/run" in text

        for i, edge in enumerate((e1, e2)):
            _fetch(edge, var, tmp_path / f"demo{i}")
        edge2_pid = int(re.search(r"edge2 .*\(pid (\d+),", text).group(1))  # type: ignore[union-attr]
        args = Path(f"/proc/{edge2_pid}/cmdline").read_bytes().decode().split("\0")
        assert [args[i + 1] for i, a in enumerate(args) if a == "--upstream"] == [b, a], args

        # A move through origin A, seen through edge 2, whose first --upstream is origin B.
        token = (var / "token").read_text().strip()
        r = publish(a, "demo", "1.0.1", tar_gz_of(DEMO), token=token)
        assert r.status in (200, 201), r.body
        wait_enriched(a, "demo", "1.0.1")
        r = set_channel(a, "demo", "release", {"version": "1.0.1"}, token=token)
        assert r.status == 200, r.body
        key = PublicKey.load(var / "keys" / "public.key")

        def served(base: str) -> str:
            r = http("GET", f"{base}/v1/apps/demo/channels/release", timeout=10)
            assert r.status == 200, r.body
            return open_ref(r.body, [key]).version

        eventually(lambda: served(e2) == "1.0.1", 10, "the move through origin A reached edge 2 (B first)")
        assert served(b) == "1.0.1"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    left = [p for p in pids if not _gone(p)]
    assert left == [], f"still running after SIGTERM: {left}\n{log.read_text()}"
    for port in [*origins, *edges, rgw_port]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
