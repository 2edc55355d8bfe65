"""Loopback helpers shared by the benchmarks, the load test and the test suite: a free
port, waiting for a server to answer, reading a /metrics page."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "scrape", "total", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    ok: tuple[int, ...] = (200,),
    context: ssl.SSLContext | None = None,
) -> None:
    """Poll ``url`` until it answers with a status in ``ok``: RuntimeError if ``proc``
    exits first, TimeoutError after ``timeout`` seconds (``context``: for an https URL)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.05)


def scrape(base: str, timeout: float = 10) -> dict[tuple[str, str], float]:
    """Every sample of a /metrics page: (name, label text) → value."""
    with urllib.request.urlopen(base + "/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


def total(samples: dict[tuple[str, str], float], name: str, labels: str = "") -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and labels in lab)
