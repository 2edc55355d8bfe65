"""``make loadtest``: phones against a ring of three edges in front of one origin, with locust.

What it sets up, in a temp directory, every process on 127.0.0.1 and stopped by PID at the end:

- an origin (a fresh signing key, refs with a short max-age so channel moves show quickly);
- ``--apps`` apps built from the real npm packages of ``make data`` (loadtests.data.build_app:
  each app ships one or both component libraries at some version, 1-4 pages), each
  published twice: ``1.0.0`` (on channel ``release``) and ``1.1.0`` (the next version of one of
  its libraries and a changed page).  Apps that use the same library version share its chunks;
- three edges in one ring (``--peer`` ×3, ``--self``).

Then locust runs ``loadtests/locustfile.py`` headless for ``--duration`` seconds: ``--users``
phones, each attached to one edge, opening apps chosen by Zipf popularity; an app not on the
phone is a cold install (ref, manifest, every chunk in batches), one whose channel moved is an
update (only the chunks the phone lacks).  During the middle third of the run this driver moves
the ``release`` channel of every app to ``1.1.0``, one app at a time, most popular first.
At the end the locustfile prints the hit ratio of each edge and the origin's request counts,
and this driver the propagation delay of those moves (``Propagation``: from each move's
``PUT`` returning to each edge serving the new serial; median and max per edge).  With
the origin's change feed (``GET /v1/changes``) the edges keep refs for the default
``--ref-max-age``; without it (an origin from before issue 17) for 2 s, so that moves still
show; the summary says which.  ``--report`` (default ``var/loadtest``) receives locust's
own ``locust.html`` and the report loadtests.soak writes too (loadtests.report:
``report.html``, plots over time of each process's memory and descriptors and each edge's
request rate, p50/p99 latency and hit ratio, the channel moves marked; ``series.json``;
``summary.txt``).  Every process is marked ``MINICDN_LOAD_RUN=<this run>`` and one still
running once all were stopped makes the run fail.

    python -m loadtests.cluster [--duration 30] [--users 60] [--apps 30] [--keep DIR] [--report DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loadtests import report
from loadtests.data import build_app, chains, ensure_data
from loadtests.net import free_port, wait_http
from loadtests.proctree import cmdline, kill, marked, wait_gone
from loadtests.sampler import Sampler

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "common"]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HOST = "127.0.0.1"
MARK = "MINICDN_LOAD_RUN"
VANT, WEUI = "@vant/weapp", "weui-miniprogram"


class Procs:
    """Processes started here, by name, each stopped by its PID (SIGTERM, then SIGKILL); a
    name can be killed and started again with the same arguments (port, data, cache)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.specs: dict[str, tuple[list[str], int]] = {}

    def start(self, name: str, args: list[str], port: int, ready: str = "/healthz") -> str:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs[name], self.specs[name] = proc, (args, port)
        url = f"http://{HOST}:{port}"
        try:
            wait_http(url + ready, 60, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{name}: {exc}; see {self.logs / name}.log") from exc
        print(f"{name:7} {url} (pid {proc.pid})", flush=True)
        return url

    def again(self, name: str) -> str:
        """Start ``name`` again as it was started, once it is ready to serve."""
        return self.start(name, *self.specs[name], ready="/readyz")

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def stop(self, name: str, timeout: float = 30) -> int:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds; the exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name in self.procs:
            self.stop(name, 15)


def plan_apps(count: int) -> list[tuple[str, dict[str, str], dict[str, str], int]]:
    """(name, libraries of 1.0.0, libraries of 1.1.0, pages) for ``count`` apps."""
    versions = chains()
    rnd = random.Random(2024)
    plans = []
    for i in range(count):
        use = ((VANT,), (WEUI,), (VANT, WEUI))[i % 3]
        v1 = {lib: versions[lib][rnd.randrange(len(versions[lib]) - 1)] for lib in use}
        bumped = rnd.choice(use)
        v2 = dict(v1)
        v2[bumped] = versions[bumped][versions[bumped].index(v1[bumped]) + 1]
        plans.append((f"app{i:03d}", v1, v2, 1 + i % 4))
    return plans


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {url}: {e.code} {e.read()[:300]!r}") from e


def publish_all(origin: str, token: str, work: Path, count: int) -> list[str]:
    from origin.cli import pack_folder

    data = ensure_data()
    auth = {"Authorization": f"Bearer {token}"}

    def one(plan: tuple[str, dict[str, str], dict[str, str], int]) -> int:
        name, v1, v2, pages = plan
        new_chunks = 0
        for version, libs, revision in (("1.0.0", v1, 0), ("1.1.0", v2, 1)):
            folder = build_app(
                work / name / version, libs, pages=pages, data_dir=data, app_name=name, revision=revision
            )
            buf = io.BytesIO()
            pack_folder(folder, buf)  # type: ignore[arg-type]
            answer = json.loads(
                http("POST", f"{origin}/v1/apps/{name}/versions/{version}", buf.getvalue(), auth)
            )
            new_chunks += int(answer["new_chunks"])
            shutil.rmtree(folder)
        set_channel(origin, token, name, "1.0.0")
        return new_chunks

    started = time.monotonic()
    plans = plan_apps(count)
    with ThreadPoolExecutor(2) as pool:
        chunks = sum(pool.map(one, plans))
    print(
        f"published {2 * count} versions of {count} apps in {time.monotonic() - started:.1f}s: "
        f"{chunks} chunks stored",
        flush=True,
    )
    return [name for name, *_ in plans]


def set_channel(origin: str, token: str, app: str, version: str) -> int:
    """Move ``app``'s release channel; the new ref's serial."""
    body = json.dumps({"version": version}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return ref_serial(http("PUT", f"{origin}/v1/apps/{app}/channels/release", body, headers))


def ref_serial(envelope: bytes) -> int:
    import msgpack

    return int(msgpack.unpackb(msgpack.unpackb(envelope, raw=False)["payload"], raw=False)["serial"])


def has_feed(origin: str) -> bool:
    """Whether the origin serves the change feed (issue 17) that edges follow."""
    try:
        with urllib.request.urlopen(f"{origin}/v1/changes?wait=0", timeout=10) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Propagation:
    """How long each channel move took to reach each edge: from the move's ``PUT``
    returning to the edge serving a ref of at least the new serial, polled every 10 ms
    (on a connection of its own, so that the poll is not one of the phones') for at most
    ``limit`` seconds; a move not seen by then is counted as lost."""

    POLL = 0.01

    def __init__(self, edges: list[str], limit: float = 60.0) -> None:
        self.edges = edges
        self.limit = limit
        self.delays: dict[str, list[float]] = {e: [] for e in edges}
        self.lost = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8)

    def moved(self, app: str, serial: int, at: float) -> None:
        self._pool.submit(self._watch, app, serial, at)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _watch(self, app: str, serial: int, at: float) -> None:
        pending = set(self.edges)
        while pending and time.monotonic() < at + self.limit:
            for edge in sorted(pending):
                if self._serial(edge, app) >= serial:
                    with self._lock:
                        self.delays[edge].append(time.monotonic() - at)
                    pending.discard(edge)
            if pending:
                time.sleep(self.POLL)  # a sampling interval of the measurement, not a wait
        with self._lock:
            self.lost += len(pending)

    @staticmethod
    def _serial(edge: str, app: str) -> int:
        try:
            with urllib.request.urlopen(f"{edge}/v1/apps/{app}/channels/release", timeout=10) as r:
                return ref_serial(r.read())
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return -1

    def summary(self) -> list[str]:
        lines = ["propagation (channel move returned -> edge serves it): median / max seconds, moves"]
        every: list[float] = []
        for edge, delays in self.delays.items():
            every += delays
            lines.append(f"  {edge}  {_median(delays):.3f} / {max(delays, default=0.0):.3f}  {len(delays)}")
        lines.append(
            f"  all edges  {_median(every):.3f} / {max(every, default=0.0):.3f}  {len(every)}"
            f" (lost: {self.lost})"
        )
        return lines


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def roll_updates(
    origin: str,
    token: str,
    apps: list[str],
    start: float,
    span: float,
    stop: threading.Event,
    sampler: Sampler | None = None,
    propagation: Propagation | None = None,
) -> None:
    """Move every app's channel to 1.1.0 over [start, start + span) seconds from now."""
    t0 = time.monotonic()
    for i, app in enumerate(apps):
        if stop.wait(max(0.0, t0 + start + span * i / len(apps) - time.monotonic())):
            return
        serial = set_channel(origin, token, app, "1.1.0")
        if propagation is not None:
            propagation.moved(app, serial, time.monotonic())
        if sampler is not None:
            kind, label = ("move", "release → 1.1.0 begins") if i == 0 else ("tick", f"{app} → 1.1.0")
            sampler.event(kind, "origin", label)
    if sampler is not None:
        sampler.event("move", "origin", "release → 1.1.0 done")
    print(f"moved release of {len(apps)} apps to 1.1.0", flush=True)


@contextlib.contextmanager
def cluster(
    work: Path, token: str, edge_args: tuple[str, ...] = (), origin_args: tuple[str, ...] = ()
) -> Iterator[tuple[str, list[str], Procs]]:
    """An origin (``origin``) and three edges in one ring (``edge0``..``edge2``), each
    with ``edge_args`` added; every one stopped by PID at the end."""
    env = {**os.environ, "MINICDN_TOKEN": token}
    procs = Procs(work, env)
    try:
        from common.signing import generate_keypair

        generate_keypair(work / "keys")
        port = free_port()
        origin = procs.start(
            "origin",
            [
                "origin",
                "--data",
                str(work / "origin"),
                "--listen",
                f"{HOST}:{port}",
                "--signing-key",
                str(work / "keys" / "signing.key"),
                "--ref-max-age",
                "2",
                "--workers",
                "2",
                *origin_args,
            ],
            port,
        )
        # Without the origin's change feed, refs live 2 s so that moves still show.
        ref_max_age = () if has_feed(origin) else ("--ref-max-age", "2s")
        ports = [free_port() for _ in range(3)]
        peers = [a for p in ports for a in ("--peer", f"http://{HOST}:{p}")]
        edges = [
            procs.start(
                f"edge{i}",
                [
                    "edge",
                    "--upstream",
                    origin,
                    "--cache-dir",
                    str(work / f"edge{i}"),
                    "--listen",
                    f"{HOST}:{p}",
                    *peers,
                    "--self",
                    f"http://{HOST}:{p}",
                    *ref_max_age,
                    *edge_args,
                ],
                p,
            )
            for i, p in enumerate(ports)
        ]
        yield origin, edges, procs
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=int, default=30, help="seconds of load (default 30)")
    ap.add_argument("--users", type=int, default=60, help="simulated phones at once (default 60)")
    ap.add_argument("--spawn-rate", type=float, default=30, help="phones started per second")
    ap.add_argument("--apps", type=int, default=30, help="apps published, two versions each (default 30)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of app popularity (default 1.0)")
    ap.add_argument("--keep", type=Path, help="keep logs and caches in this directory (default: a temp dir)")
    ap.add_argument("--report", type=Path, default=ROOT / "var" / "loadtest", help="where the reports go")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="minicdn-loadtest-"))
    work.mkdir(parents=True, exist_ok=True)
    args.report.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    run_id = uuid.uuid4().hex
    os.environ[MARK] = run_id  # inherited by every process started from here on
    try:
        with cluster(work, token) as (origin, edges, procs):
            apps = publish_all(origin, token, work / "apps", args.apps)
            code, sampler = _locust(args, origin, edges, apps, token, procs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    left = wait_gone(marked(MARK, run_id, exclude=[os.getpid()]), 20)
    leftovers = [f"pid {p}: {' '.join(cmdline(p).split())[:200]}" for p in left]
    kill(set(left) & set(marked(MARK, run_id, exclude=[os.getpid()])))
    data = sampler.data()
    data.update(
        title=f"minicdn load test: {args.duration} s, {args.users} locust phones, 3 edges, {args.apps} apps",
        checks=[
            {"name": "locust saw no failed request", "ok": code == 0, "detail": f"locust exited {code}"},
            {
                "name": "no process left behind",
                "ok": not leftovers,
                "detail": "; ".join(leftovers) or "none of the run's processes ran once all were stopped",
            },
        ],
        notes=[f"locust's own report: {args.report / 'locust.html'}"],
    )
    page = report.write(args.report, data)
    print(f"\nreport: {page}", flush=True)
    return code if not leftovers else 1


def _locust(
    args: argparse.Namespace,
    origin: str,
    edges: list[str],
    apps: list[str],
    token: str,
    procs: Procs,
) -> tuple[int, Sampler]:
    """Run locust for the duration, with the channel moves in the middle third, sampling
    every process; locust's exit status and the samples."""
    env = {
        **os.environ,
        "MINICDN_LOAD_EDGES": " ".join(edges),
        "MINICDN_LOAD_ORIGIN": origin,
        "MINICDN_LOAD_APPS": " ".join(apps),
        "MINICDN_LOAD_ZIPF": str(args.zipf),
    }
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{args.duration}s",
        "--stop-timeout",
        "10",
        "--host",
        edges[0],
        "--loglevel",
        "WARNING",
        "--html",
        str(args.report / "locust.html"),
    ]
    stop = threading.Event()
    span = args.duration / 3
    feed = has_feed(origin)
    propagation = Propagation(edges)
    locust = subprocess.Popen(cmd, env=env, cwd=ROOT)
    sampler = Sampler()  # t = 0: the load starts
    mover = threading.Thread(
        target=roll_updates, args=(origin, token, apps, span, span, stop, sampler, propagation)
    )
    for name, url in zip(["origin", "edge0", "edge1", "edge2"], [origin, *edges], strict=True):
        sampler.watch(name, procs.pid(name), url)
    sampler.watch("locust", locust.pid)
    sampler.start()
    mover.start()
    try:
        return locust.wait(), sampler
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
        stop.set()
        mover.join()
        propagation.close()
        sampler.stop()
        how = "the origin's change feed" if feed else "no change feed at the origin: refs live 2 s"
        print("\n".join([*propagation.summary(), f"  ({how})"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
