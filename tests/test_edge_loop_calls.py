"""The miss path does not ask asyncio for the running loop per miss (edge.loops): in
CPython 3.11 each ``asyncio.get_running_loop()`` — and each ``asyncio.ensure_future`` of a
coroutine — is a ``getpid()`` system call, and the miss path used to make four or more
per miss.  Counted for real: ``strace`` attached to a real edge while it fills misses."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.edge_support import edge, publish_app, random_app, verify_chunk
from tests.procs import Service
from tests.sysdeps import STRACE, require
from tests.test_edge_conformance import Raw, chunk, get


def test_a_miss_makes_no_getpid_call(origin: Service, tmp_path: Path) -> None:
    (strace,) = require(STRACE)
    app = publish_app(origin.url, "loopcalls", random_app(tmp_path / "app", 1.0, seed=23))
    misses = app.chunks[:60]
    node = edge(tmp_path, origin.url).start()
    trace = tmp_path / "getpid.trace"
    try:
        assert node.proc is not None
        tracer = subprocess.Popen(
            [strace, "-f", "-qq", "-e", "trace=getpid,epoll_wait,epoll_pwait", "-o", str(trace),
             "-p", str(node.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.0)  # strace attaches to every thread
            assert tracer.poll() is None, "strace could not attach (ptrace not allowed?)"
            c = Raw(node.port)
            for h in misses:  # one at a time: each a miss, filled from the origin
                c.send(get(chunk(h), "Accept-Encoding: zstd"))
                verify_chunk(h, c.response())
            c.close()
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
    finally:
        node.stop()
    traced = trace.read_text()
    assert "epoll_" in traced, "strace saw none of the loop's own calls: it measured nothing"
    calls = traced.count("getpid()")
    # Before edge.loops: at least 4 a miss (240 here).  A few are the edge's own timers'.
    assert calls < len(misses) // 2, f"{calls} getpid() calls for {len(misses)} misses"
