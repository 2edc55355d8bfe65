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
At the end the locustfile prints the hit ratio of each edge and the origin's request counts.

    python -m loadtests.cluster [--duration 30] [--users 60] [--apps 30] [--keep DIR]
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loadtests.data import build_app, chains, ensure_data
from loadtests.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "common"]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HOST = "127.0.0.1"
VANT, WEUI = "@vant/weapp", "weui-miniprogram"


class Procs:
    """Processes started here, each stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], port: int) -> str:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        url = f"http://{HOST}:{port}"
        try:
            wait_http(url + "/healthz", 30, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{name}: {exc}; see {self.logs / name}.log") from exc
        print(f"{name:7} {url} (pid {proc.pid})", flush=True)
        return url

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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


def set_channel(origin: str, token: str, app: str, version: str) -> None:
    body = json.dumps({"version": version}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    http("PUT", f"{origin}/v1/apps/{app}/channels/release", body, headers)


def roll_updates(
    origin: str, token: str, apps: list[str], start: float, span: float, stop: threading.Event
) -> None:
    """Move every app's channel to 1.1.0 over [start, start + span) seconds from now."""
    t0 = time.monotonic()
    for i, app in enumerate(apps):
        if stop.wait(max(0.0, t0 + start + span * i / len(apps) - time.monotonic())):
            return
        set_channel(origin, token, app, "1.1.0")
    print(f"moved release of {len(apps)} apps to 1.1.0", flush=True)


@contextlib.contextmanager
def cluster(work: Path, token: str) -> Iterator[tuple[str, list[str], Procs]]:
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
            ],
            port,
        )
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
                    "--ref-max-age",
                    "2s",
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
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="minicdn-loadtest-"))
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    try:
        with cluster(work, token) as (origin, edges, _procs):
            apps = publish_all(origin, token, work / "apps", args.apps)
            stop = threading.Event()
            mover = threading.Thread(
                target=roll_updates, args=(origin, token, apps, args.duration / 3, args.duration / 3, stop)
            )
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
            ]
            mover.start()
            try:
                locust = subprocess.run(cmd, env=env, cwd=ROOT)
            finally:
                stop.set()
                mover.join()
            return locust.returncode
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
