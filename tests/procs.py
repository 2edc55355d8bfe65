"""Real processes for tests: start a minicdn service on a free loopback port, wait until
it answers /healthz, and always stop it by PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.net import free_port, scrape, total, wait_http

__all__ = [
    "MINICDN",
    "Service",
    "edge_service",
    "free_port",
    "metric",
    "origin_chunks",
    "origin_service",
    "running",
    "start_all",
    "wait_http",
]

MINICDN = [sys.executable, "-m", "common"]


@dataclass
class Service:
    args: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Service:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Service:
        """Start the process without waiting for it (see ``start_all``)."""
        env = {**os.environ, **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*MINICDN, *self.args], stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 20.0) -> Service:
        try:
            wait_http(self.url + "/healthz", timeout, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise type(exc)(f"{exc}; the end of its log:\n{self.output()[-3000:]}") from exc
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


def start_all(*services: Service, timeout: float = 20.0) -> list[Service]:
    """Start several services at once (their start-ups overlap); on any failure every one
    of them is stopped by PID."""
    try:
        for svc in services:
            svc.launch()
        for svc in services:
            svc.wait_ready(timeout)
    except BaseException:
        for svc in services:
            svc.kill()
        raise
    return list(services)


def origin_service(
    tmp: Path, token: str = "test-token", *extra: str, name: str = "origin", env: dict[str, str] | None = None
) -> Service:
    """An origin on a free port with a fresh key under tmp/keys (public key: tmp/keys/public.key),
    working in tmp/``name`` (replicas of one store: one name each), ``env`` added to its own."""
    keys = tmp / "keys"
    if not (keys / "signing.key").exists():
        from common.signing import generate_keypair

        generate_keypair(keys)
    port = free_port()
    return Service(
        ["origin", "--data", str(tmp / name), "--listen", f"127.0.0.1:{port}",
         "--signing-key", str(keys / "signing.key"), "--workers", "2", *extra],
        port, tmp / f"{name}-{port}.log", env={"MINICDN_TOKEN": token, **(env or {})},
    )


def edge_service(
    tmp: Path, *upstreams: str, extra: tuple[str, ...] = (), name: str = "edge", port: int | None = None
) -> Service:
    """An edge on a free port (or ``port``) in front of ``upstreams``, caching under tmp/<name>-<port>."""
    port = port or free_port()
    args = ["edge", "--cache-dir", str(tmp / f"{name}-{port}"), "--listen", f"127.0.0.1:{port}", *extra]
    for u in upstreams:
        args += ["--upstream", u]
    return Service(args, port, tmp / f"{name}-{port}.log", env={"MINICDN_TOKEN": "test-token"})


def metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a Prometheus metric's samples whose labels contain ``labels``
    (e.g. metric(u, "minicdn_edge_hits_total", 'tier="disk"')); 0 if absent."""
    return total(scrape(url), name, labels)


def origin_chunks(origin: Service) -> float:
    """Chunk requests the origin has answered."""
    return metric(origin.url, "minicdn_origin_chunk_requests_total")
