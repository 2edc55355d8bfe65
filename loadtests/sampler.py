"""Sampling a running cluster once a second, in a thread: every process of every role
(its root PID and whatever runs below it: an origin's pool workers and resource tracker,
an edge's workers) from /proc, and the /metrics page of every service; plus the moments
the driver marks (a kill, a restart, a publish).  ``data()`` is the whole record, the
JSON a report is drawn from (loadtests.report)."""

from __future__ import annotations

import threading
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any

from loadtests.net import scrape
from loadtests.procmem import tcp_states, usage
from loadtests.proctree import cmdline, descendants

__all__ = ["GAUGES", "KEPT", "Sampler"]

# What is kept of a /metrics page: name → label text the summed samples must contain.
KEPT = {
    "requests": ("minicdn_edge_requests_total", ""),
    "hits": ("minicdn_edge_hits_total", ""),
    "misses": ("minicdn_edge_misses_total", ""),
    "from_peers": ("minicdn_edge_upstream_requests_total", 'kind="peer"'),
    "from_upstream": ("minicdn_edge_upstream_requests_total", 'kind="upstream"'),
    "peer_errors": ("minicdn_edge_peer_errors_total", ""),
    "upstream_errors": ("minicdn_edge_upstream_errors_total", ""),
    "stale": ("minicdn_edge_stale_total", ""),
    "latency_count": ("minicdn_edge_request_seconds_count", ""),
    "origin_requests": ("minicdn_origin_requests_total", ""),
    "origin_chunks": ("minicdn_origin_chunk_requests_total", ""),
}
# Gauges, kept as they are (not differenced like the counters above).
GAUGES = {
    "memory_tier": ("minicdn_edge_cache_bytes", 'tier="memory"'),  # bytes of bodies, a node's workers summed
}
BUCKETS = "minicdn_edge_request_seconds_bucket"


@dataclass
class Proc:
    """One process's samples (``t`` in seconds since the sampler started)."""

    role: str
    pid: int
    cmd: str
    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)  # the most resident since the previous sample
    anon: list[int] = field(default_factory=list)
    file: list[int] = field(default_factory=list)
    memfd: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    sockets: list[int] = field(default_factory=list)
    close_wait: list[int] = field(default_factory=list)
    memfds: list[int] = field(default_factory=list)


class Sampler:
    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self.t0 = time.monotonic()
        self.started = time.time()
        self.procs: dict[str, Proc] = {}
        self.metrics: dict[str, list[dict[str, Any]]] = {}
        self.ticks: list[float] = []  # every sampling moment
        self.errors: list[str] = []  # samples that failed: the data has a hole there
        self.events: list[dict[str, Any]] = []
        self._roots: dict[str, int | None] = {}
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def watch(self, role: str, pid: int | None, url: str | None = None) -> None:
        """Sample ``role``'s process tree from ``pid`` on (None: it is down), and its
        /metrics at ``url``."""
        with self._lock:
            self._roots[role] = pid
            if url is not None:
                self._urls[role] = url

    def event(self, kind: str, role: str, label: str, **extra: Any) -> None:
        """Mark this moment (kind: kill, stop, up, publish, move...)."""
        with self._lock:
            self.events.append({"t": self.now(), "kind": kind, "role": role, "label": label, **extra})

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # keep sampling; the verdict fails on any failed sample
                with self._lock:
                    self.errors.append(f"{self.now():.1f} s: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def sample(self) -> None:
        with self._lock:
            roots = dict(self._roots)
            urls = dict(self._urls)
        t = self.now()
        states = tcp_states()
        seen = [
            (role, pid, usage(pid, states, reset_peak=True))
            for role, root in roots.items()
            if root
            for pid in [root, *descendants(root)]
        ]
        rows = {role: self._scrape(t, url, up=roots.get(role) is not None) for role, url in urls.items()}
        with self._lock:
            self.ticks.append(t)
            for role, pid, u in seen:
                if u is None:
                    continue
                # A process is its PID and start time: a PID the kernel reuses is another process.
                key = f"{pid}@{u.started}"
                proc = self.procs.get(key)
                if proc is None:
                    proc = self.procs[key] = Proc(role, pid, cmdline(pid)[:300])
                proc.t.append(t)
                proc.rss.append(u.rss)
                proc.peak.append(u.peak)
                proc.anon.append(u.anon)
                proc.file.append(u.file)
                proc.memfd.append(u.memfd)
                proc.fds.append(u.fds)
                proc.sockets.append(u.sockets)
                proc.close_wait.append(u.close_wait)
                proc.memfds.append(u.memfds)
            for role, row in rows.items():
                self.metrics.setdefault(role, []).append(row)

    @staticmethod
    def _scrape(t: float, url: str, up: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"t": t, "up": False}
        if not up:
            return row
        try:
            samples = scrape(url, timeout=2)
        except (OSError, urllib.error.URLError, ValueError):
            return row
        row["up"] = True
        for key, (name, labels) in {**KEPT, **GAUGES}.items():
            row[key] = sum(v for (n, lab), v in samples.items() if n == name and labels in lab)
        row["buckets"] = {
            lab.split('le="', 1)[1].split('"', 1)[0]: v for (n, lab), v in samples.items() if n == BUCKETS
        }
        return row

    def data(self) -> dict[str, Any]:
        """Everything sampled: processes by PID, metrics rows by role, and the events."""
        with self._lock:
            return {
                "started": self.started,
                "period": self.period,
                "ticks": list(self.ticks),
                "sampler_errors": list(self.errors),
                "procs": {key: dict(p.__dict__) for key, p in self.procs.items()},
                "metrics": self.metrics,
                "events": list(self.events),
            }
