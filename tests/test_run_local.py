"""``make run`` (deploy/run_local.py) as a user runs it: plain, and with ``TLS=1`` every
server on HTTPS with a local CA; the demo installs through an edge with ``minicdn fetch``
(trusting the CA with ``--ca``), and SIGTERM stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO, REPO, tree
from tests.procs import MINICDN, free_port


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
