"""``make bench-open``: how long a phone on a mobile link waits for an app to be installed —
a cold open and an update — through minicdn, against the floor of one round trip: nginx
serving the one solid archive (issue 16).

- **The link.** A network namespace made for the run (``ip netns``) holds the phone; a
  veth pair joins it to this one, shaped to ``--rate`` (20 Mbit/s) each way with ``tc
  tbf`` (this kernel has no netem).  Latency: a TCP proxy on this side of the veth holds
  every piece of data ``--rtt`` / 2 (40 ms) in each direction before passing it on, so a
  request and its answer cost one ``--rtt`` (80 ms).  (The TCP handshake with the proxy is
  not delayed: every way of opening pays one connection alike.)  Servers run on loopback
  behind the proxy; the namespace and the veth are removed at the end, whatever happens.
- **The app**: a real-package app (``loadtests.data.build_app``: ``--lib`` at two
  versions), published to a real origin and fetched through a real edge, both warmed
  first (so what is timed is the phone's link, not the origin).
- **minicdn**: the real client (``client.Client``) in a process inside the namespace,
  timed from before its first request to the install's last fsync: a cold open (empty
  store), and an update from the first version to the second (installed first, untimed).
- **Floor**: nginx serves the ``zstd -19`` archive of a deterministic tar of the same files
  (and, for the update, ``zstd -19 --patch-from`` of the old tar); the phone GETs it on one
  connection (one round trip), inflates it and writes every file, each fsynced and the
  directory too (as the client does): the least any design could take on that link.
- Every run's installed tree must equal the app's files, byte for byte, or the bench stops
  (INVALID).  Rounds alternate (floor, minicdn, then the other way round); the table shows
  medians and the ratio minicdn / floor per case.  Goal (issue 16): cold open ≤ 1.3x the floor.

Needs root (namespaces, tc), nginx and zstd (installed with apt-get when missing)::

    python -m loadtests.bench_open [--rounds 5] [--rtt 0.08] [--rate 20mbit]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench_delivery import deterministic_tar, ensure_zstd
from loadtests.bench_edge import nginx_conf, process
from loadtests.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


# -- the link ---------------------------------------------------------------------------------


def _ip(*args: str, ns: str | None = None) -> None:
    pre = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*pre, *args], check=True, capture_output=True)


@contextmanager
def link(rate: str) -> Iterator[tuple[str, str, str]]:
    """A namespace for the phone, joined by a shaped veth pair: (namespace, this side's
    address, the phone's).  Removed on the way out."""
    tag = f"mo{os.getpid() % 100000}"
    ns, here, there = f"minicdn-open-{os.getpid()}", f"{tag}a", f"{tag}b"
    octet = 16 + os.getpid() % 200
    near, far = f"10.{octet}.77.1", f"10.{octet}.77.2"
    _ip("ip", "netns", "add", ns)
    try:
        _ip("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        _ip("ip", "link", "set", there, "netns", ns)
        _ip("ip", "addr", "add", f"{near}/30", "dev", here)
        _ip("ip", "link", "set", here, "up")
        _ip("ip", "addr", "add", f"{far}/30", "dev", there, ns=ns)
        _ip("ip", "link", "set", there, "up", ns=ns)
        _ip("ip", "link", "set", "lo", "up", ns=ns)
        shape = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
        _ip("tc", "qdisc", "add", "dev", here, *shape)  # to the phone
        _ip("tc", "qdisc", "add", "dev", there, *shape, ns=ns)  # from the phone
        yield ns, near, far
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", here], check=False, capture_output=True)


class DelayProxy:
    """Listens on ``host``, forwards each connection to ``127.0.0.1:target``, holding every
    piece of data ``delay`` seconds in each direction (in order); runs in its own thread."""

    def __init__(self, host: str, target: int, delay: float) -> None:
        self.host, self.target, self.delay = host, target, delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, self.host, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        await asyncio.gather(self._pump(r, uw), self._pump(ur, w), return_exceptions=True)
        for x in (w, uw):
            x.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    w.write_eof() if w.can_write_eof() else None
                    return
                w.write(data)
                await w.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await r.read(1 << 16)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


# -- the phone (run inside the namespace) -----------------------------------------------------


def _write_tree(tar: tarfile.TarFile, out: Path) -> int:
    """Every regular file of ``tar`` under ``out``, each fsynced, then the directories."""
    n = 0
    for member in tar:
        if not member.isfile():
            continue
        dest = out / member.name
        if out.resolve() not in dest.resolve().parents:
            raise ValueError(f"{member.name}: outside the install")
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        assert src is not None
        with open(dest, "wb") as f:
            f.write(src.read())
            os.fsync(f.fileno())
        n += 1
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return n


def phone_floor(url: str, out: Path, base: Path | None) -> dict[str, Any]:
    """GET the archive (or the delta, against ``base``: the old tar), inflate, write."""
    import io
    import urllib.request

    import zstandard

    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    network = time.perf_counter() - began
    if base is None:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    else:
        d = zstandard.ZstdCompressionDict(base.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        raw = (
            zstandard.ZstdDecompressor(dict_data=d, max_window_size=1 << 31).decompressobj().decompress(body)
        )
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        files = _write_tree(tar, out)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "network": network, "bytes": len(body), "requests": 1, "files": files}


def phone_minicdn(edge: str, key: Path, store: Path, out: Path, app: str) -> dict[str, Any]:
    from client.client import Client, ClientConfig
    from common.signing import PublicKey

    config = ClientConfig(edges=(edge,), public_keys=(PublicKey.load(key),), store_dir=store)

    async def install() -> Any:
        async with Client(config) as c:
            began = time.perf_counter()
            s = await c.install(app, out)
            return time.perf_counter() - began, s

    seconds, s = asyncio.run(install())
    return {"seconds": seconds, "bytes": s.bytes_downloaded, "requests": s.requests, "plan": s.plan}


def phone_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["floor", "minicdn"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", type=Path)
    ap.add_argument("--key", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--app", default="")
    a = ap.parse_args(argv)
    if a.what == "floor":
        result = phone_floor(a.url, a.out, a.base)
    else:
        result = phone_minicdn(a.url, a.key, a.store, a.out, a.app)
    print(json.dumps(result))


def on_phone(ns: str, *args: str) -> dict[str, Any]:
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "loadtests.bench_open", "--phone", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the phone failed ({' '.join(args[:1])}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- the run ----------------------------------------------------------------------------------

FILES_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        root {files};
    }}"""


def zstd_of(*args: str) -> bytes:
    return subprocess.run(["zstd", "-19", "-q", "-c", *args], capture_output=True, check=True).stdout


@dataclass(frozen=True)
class Case:
    name: str  # cold open | update
    who: str  # floor | minicdn
    args: tuple[str, ...]  # the phone's


def measure(a: argparse.Namespace, work: Path, port: int) -> tuple[str, str, dict[str, list[dict[str, Any]]]]:
    """Publish, warm, then the rounds; the two versions and every run's result by case."""
    from loadtests.bench_delivery import cdn, move, publish, tree, wait_enriched
    from loadtests.data import build_app, chains, ensure_data

    old, new = chains()[a.lib][-2:]
    app = "openbench"
    folders = {
        v: build_app(work / "apps" / v, {a.lib: v}, data_dir=ensure_data(), app_name=app) for v in (old, new)
    }
    tars = {v: work / f"{v}.tar" for v in (old, new)}
    for v in (old, new):
        deterministic_tar(folders[v], tars[v])
    # As bench_delivery measures its anchors: zstd -19, and -19 --patch-from the old tar.
    (work / "files" / "app.tar.zst").write_bytes(zstd_of(str(tars[new])))
    (work / "files" / "update.zst").write_bytes(zstd_of(f"--patch-from={tars[old]}", str(tars[new])))
    times: dict[str, list[dict[str, Any]]] = {}
    with cdn(work / "cdn") as (origin, edge), link(a.rate) as (ns, near, _far):
        key = str(work / "cdn" / "keys" / "public.key")
        for v in (old, new):
            publish(origin.url, app, v, folders[v])
        wait_enriched(origin.url, app, 2)
        edge_port = int(edge.url.rsplit(":", 1)[1])
        with DelayProxy(near, edge_port, a.rtt / 2) as e, DelayProxy(near, port, a.rtt / 2) as n:
            e_url, n_url = f"http://{near}:{e.port}", f"http://{near}:{n.port}"
            for v in (old, new):  # warm the edge: what is timed is the link
                move(origin.url, app, "release", v)
                phone_minicdn(edge.url, Path(key), work / "warm" / v, work / "warm-out" / v, app)
            cases = [
                Case("cold open", "floor", ("floor", "--url", f"{n_url}/app.tar.zst")),
                Case("cold open", "minicdn", ("minicdn", "--url", e_url, "--key", key, "--app", app)),
                Case("update", "floor", ("floor", "--url", f"{n_url}/update.zst", "--base", str(tars[old]))),
                Case("update", "minicdn", ("minicdn", "--url", e_url, "--key", key, "--app", app)),
            ]
            for r in range(a.rounds):
                for c in cases if r % 2 == 0 else [cases[1], cases[0], cases[3], cases[2]]:
                    run = work / "phone" / f"{r}-{c.name}-{c.who}".replace(" ", "-")
                    extra = ("--out", str(run / "app"), "--store", str(run / "store"))
                    if c.who == "minicdn" and c.name == "update":  # the old version first, untimed
                        move(origin.url, app, "release", old)
                        on_phone(ns, *c.args, *extra)
                    if c.who == "minicdn":
                        move(origin.url, app, "release", new)
                    got = on_phone(ns, *c.args, *extra)
                    if tree(run / "app") != tree(folders[new]):  # every run must install the app
                        raise SystemExit(f"INVALID: {c.name} by {c.who} did not install {app}@{new} exactly")
                    times.setdefault(f"{c.name}|{c.who}", []).append(got)
                    net = f" ({got['network']:.3f} s until the body was in)" if "network" in got else ""
                    print(
                        f"round {r + 1} {c.name:9} {c.who:8}: {got['seconds']:.3f} s{net}, "
                        f"{got['bytes']:,} B, {got['requests']} requests",
                        flush=True,
                    )
    return old, new, times


def table(
    a: argparse.Namespace, old: str, new: str, times: dict[str, list[dict[str, Any]]]
) -> tuple[str, Any]:
    lines = [
        f"{a.lib} {old} → {new}; link: {a.rtt * 1000:.0f} ms RTT, {a.rate} each way; "
        f"{a.rounds} rounds, medians",
        "",
        "| case | floor (nginx, one archive) | minicdn | minicdn / floor | bytes floor / minicdn "
        "| requests |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for case in ("cold open", "update"):
        f, m = times[f"{case}|floor"], times[f"{case}|minicdn"]
        fs, ms = statistics.median(x["seconds"] for x in f), statistics.median(x["seconds"] for x in m)
        summary[case] = {"floor": fs, "minicdn": ms, "ratio": ms / fs, "requests": m[0]["requests"]}
        lines.append(
            f"| {case} | {fs:.3f} s | {ms:.3f} s | **{ms / fs:.2f}x** | "
            f"{f[0]['bytes']:,} / {m[0]['bytes']:,} | {m[0]['requests']} |"
        )
    return "\n".join(lines), summary


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--phone":
        phone_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtt", type=float, default=0.080, help="seconds a request and its answer add")
    ap.add_argument("--rate", default="20mbit", help="tc tbf rate, each way")
    ap.add_argument("--lib", default="@vant/weapp", help="the npm package the app is built around")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ensure_zstd()
    if shutil.which("nginx") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-open-") as tmp:
        work = Path(tmp)
        (work / "files").mkdir()
        (work / "nginx-tmp").mkdir()
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(nginx_conf(work, FILES_SERVER.format(port=port, files=work / "files")))
        with process(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.log", cpu=None):
            wait_http(f"http://127.0.0.1:{port}/", 15, ok=(200, 403, 404))
            old, new, times = measure(a, work, port)
    text, summary = table(a, old, new, times)
    print("\n" + text)
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "runs": times}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
