"""A quick harness for the edge's miss path (issue 15): misses per second and the edge's
CPU time per miss, every request a miss.

- ``--chunks`` distinct chunks (default 20,000; raw 4-16 KiB, half random half zeros, so
  about 2:1 as zstd-3 frames), named by their SHA-256, written once under /dev/shm and
  served by nginx (one worker, ``Content-Encoding: zstd``) as the upstream.
- Each round starts every server under test on a fresh ext4 on a loop image in RAM (a
  cache filesystem that really journals and fsyncs, unlike tmpfs, and does not slow down
  as the VM's disk fills with deleted inodes), with an empty cache, and asks for every id
  once: 64 keep-alive connections from a lean asyncio client in this process.
- Servers: the edge of each ``--edge NAME=SRC`` (SRC a source tree run with this venv:
  this checkout, or ``git archive`` of an older commit), and with ``--nginx`` nginx with
  ``proxy_cache`` (``proxy_cache_lock on``, one worker) for scale.  Rounds alternate
  them, so a noisy phase of the shared machine hits all alike.
- Pinned (default): servers under test on CPU 0, upstream nginx and this client on CPU 1;
  ``--unpinned``: nobody pinned.  CPU is user + system time of the server's process tree
  (all its threads) from the first request until it is idle again (disk writes that
  trail the answers are counted).

Needs root (mount) and nginx (``apt-get install -y nginx``)::

    python -m loadtests.miss_profile [--chunks 20000] [--rounds 3] [--unpinned] [--nginx]
                                     [--edge base=/tmp/base --edge new=.]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from common import codec
from common.ids import sha256
from loadtests.bench_edge import process
from loadtests.net import free_port, wait_http
from loadtests.proctree import descendants

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, LOAD_CPU = "0", "1"

UPSTREAM_CONF = """
worker_processes 1; daemon off; master_process off; pid {work}/up.pid;
error_log {work}/up-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; sendfile on; keepalive_requests 1000000;
    client_body_temp_path {work}/up-tmp; proxy_temp_path {work}/up-tmp;
    server {{
        listen 127.0.0.1:{port};
        location ~ "^/v1/chunks/([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
            alias {data}/chunks/$1/$1$2;
            default_type application/octet-stream;
            add_header Content-Encoding zstd;
        }}
    }}
}}
"""

CACHE_CONF = """
worker_processes 1; daemon off; master_process off; pid {work}/pc.pid;
error_log {work}/pc-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; sendfile on; keepalive_requests 1000000;
    client_body_temp_path {cache}/tmp; proxy_temp_path {cache}/tmp;
    proxy_cache_path {cache}/pc levels=1:2 keys_zone=c:64m max_size=4g inactive=1d use_temp_path=off;
    upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_cache c; proxy_cache_lock on; proxy_cache_valid 200 1d;
        }}
    }}
}}
"""


@dataclass
class Result:
    server: str
    misses: int
    seconds: float
    cpu: float  # the server's CPU seconds
    upstream_cpu: float
    failed: int

    @property
    def rate(self) -> float:
        return self.misses / self.seconds

    @property
    def us_per_miss(self) -> float:
        return self.cpu / self.misses * 1e6


# -- the chunks ---------------------------------------------------------------------------


def make_chunks(data: Path, count: int, seed: int = 15) -> list[str]:
    """``count`` chunk frames under ``data/chunks/ab/<hex>`` (made once); their ids."""
    listing = data / "ids.txt"
    if listing.exists() and len(ids := listing.read_text().split()) == count:
        return ids
    shutil.rmtree(data, ignore_errors=True)
    rng = random.Random(seed)
    ids = []
    for _ in range(count):
        size = rng.randint(4 << 10, 16 << 10)
        raw = rng.randbytes(size // 2) + bytes(size - size // 2)
        hexid = sha256(raw).hex()
        path = data / "chunks" / hexid[:2] / hexid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(codec.compress(raw, level=3))
        ids.append(hexid)
    listing.write_text("\n".join(ids))
    return ids


# -- processes ----------------------------------------------------------------------------


@contextmanager
def loop_ext4(image: Path, mnt: Path, size: str = "2G") -> Iterator[Path]:
    """A fresh ext4 on a loop image in RAM, mounted at ``mnt``; unmounted afterwards."""
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float:
    ticks = 0
    for p in [pid, *descendants(pid)]:
        with suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def settle(pid: int, quiet: float = 0.5) -> float:
    """The CPU seconds of ``pid`` once it has used none for ``quiet`` seconds."""
    before = cpu_seconds(pid)
    while True:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - before < 0.02:
            return now
        before = now


# -- the load: a lean HTTP/1.1 client, every id asked once ----------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self, todo: Iterator[str], done: asyncio.Future[None], stats: dict[str, int]) -> None:
        self.todo, self.done, self.stats = todo, done, stats
        self.buf = b""
        self.need = -1  # bytes of body still to come; -1: reading a head
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        hexid = next(self.todo, None)
        if hexid is None:
            self.stats["open"] -= 1
            if self.stats["open"] == 0 and not self.done.done():
                self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()
            return
        req = f"GET /v1/chunks/{hexid} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: zstd\r\n\r\n"
        assert self.transport is not None
        self.transport.write(req.encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
                if not head.startswith(b"http/1.1 200"):
                    self.stats["failed"] += 1
                at = head.find(b"content-length:")
                eol = head.find(b"\r\n", at)
                self.need = int(head[at + 15 : eol if eol >= 0 else len(head)]) if at >= 0 else 0
            if len(self.buf) < self.need:
                return
            self.buf, self.need = self.buf[self.need :], -1
            self.stats["answered"] += 1
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done() and self.stats["open"] > 0 and self.need != -1:
            self.done.set_exception(ConnectionError("server closed a connection mid-answer"))


async def ask_each_once(port: int, ids: list[str], connections: int) -> tuple[float, dict[str, int]]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stats = {"open": connections, "answered": 0, "failed": 0}
    todo = iter(ids)
    began = time.perf_counter()
    for _ in range(connections):
        await loop.create_connection(lambda: _Conn(todo, done, stats), "127.0.0.1", port)
    await done
    return time.perf_counter() - began, stats


# -- one round of one server ---------------------------------------------------------------


def measure(
    name: str, args: list[str], env: dict[str, str], ready: str, port: int, ids: list[str],
    work: Path, cpu: str | None, upstream_pid: int, connections: int, cwd: str | None = None,
) -> Result:  # fmt: skip
    with open(work / f"{name}.log", "ab") as out:
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        proc = subprocess.Popen([*pin, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_http(ready, 30, proc, ok=(200, 404))
        time.sleep(0.3)
        cpu0, up0 = settle(proc.pid, 0.2), cpu_seconds(upstream_pid)
        spy = profile(proc.pid, work / f"{name}.stacks") if PROFILE else None
        seconds, stats = asyncio.run(ask_each_once(port, ids, connections))
        if spy is not None:  # before settling: sampling costs the process CPU of its own
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        cpu1 = settle(proc.pid)
        return Result(
            name, stats["answered"], seconds, cpu1 - cpu0, cpu_seconds(upstream_pid) - up0, stats["failed"]
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PROFILE = os.environ.get("MISS_PROFILE") == "1"


def profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (every thread, idle ones left out) into collapsed stacks."""
    spy = ROOT / ".venv" / "bin" / "py-spy"
    args = [
        str(spy),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "-o",
        str(out),
        "--rate",
        "500",
        "--threads",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load begins
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--unpinned", action="store_true")
    ap.add_argument("--nginx", action="store_true", help="also nginx proxy_cache")
    ap.add_argument("--edge", action="append", default=[], help="NAME=SRC: an edge from source tree SRC")
    ap.add_argument("--edge-arg", action="append", default=[], help="an extra edge flag (repeat)")
    ap.add_argument("--work", type=Path, default=Path("/dev/shm/minicdn-miss"))
    args = ap.parse_args()
    edges = [tuple(e.split("=", 1)) for e in args.edge] or [("edge", str(ROOT))]
    server_cpu, load_cpu = (None, None) if args.unpinned else (SERVER_CPU, LOAD_CPU)

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "up-tmp").mkdir(exist_ok=True)
    ids = make_chunks(work / "data", args.chunks)
    up_port = free_port()
    (work / "up.conf").write_text(UPSTREAM_CONF.format(work=work, port=up_port, data=work / "data"))
    results: dict[str, list[Result]] = {}
    with process(["nginx", "-c", str(work / "up.conf"), "-p", str(work)], work / "up.log", load_cpu) as up:
        upstream = f"http://127.0.0.1:{up_port}"
        wait_http(upstream + "/", 15, up, ok=(404,))
        if load_cpu is not None:
            os.sched_setaffinity(0, {int(load_cpu)})
        for rnd in range(args.rounds):
            order = [*edges, *([("nginx-pc", "")] if args.nginx else [])]
            if rnd % 2:
                order.reverse()
            for name, src in order:
                with loop_ext4(work / "cache.img", work / "mnt") as mnt:
                    port = free_port()
                    if name == "nginx-pc":
                        (mnt / "tmp").mkdir()
                        conf = work / "pc.conf"
                        conf.write_text(CACHE_CONF.format(work=work, cache=mnt, port=port, up=up_port))
                        cmd = ["nginx", "-c", str(conf), "-p", str(work)]
                        env = dict(os.environ)
                    else:
                        cmd = [
                            sys.executable, "-m", "common", "edge", "--cache-dir", str(mnt / "cache"),
                            "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                            "--memory-size", "1GiB", *args.edge_arg,
                        ]  # fmt: skip
                        env = {**os.environ, "PYTHONPATH": src}  # and cwd: ``-m`` puts it first
                    url = f"http://127.0.0.1:{port}"
                    ready = url + ("/" if name == "nginx-pc" else "/readyz")
                    r = measure(
                        name,
                        cmd,
                        env,
                        ready,
                        port,
                        ids,
                        work,
                        server_cpu,
                        up.pid,
                        args.connections,
                        src or None,
                    )
                results.setdefault(name, []).append(r)
                print(
                    f"round {rnd + 1} {name:>10}: {r.rate:8.0f} misses/s  {r.us_per_miss:6.0f} us CPU/miss"
                    f"  (upstream {r.upstream_cpu / r.misses * 1e6:4.0f} us/miss, {r.failed} failed)",
                    flush=True,
                )
    print(f"\nmedians, {args.rounds} rounds, {'unpinned' if args.unpinned else 'pinned'}, {len(ids)} ids:")
    for name, rs in results.items():
        rate = statistics.median(r.rate for r in rs)
        us = statistics.median(r.us_per_miss for r in rs)
        print(f"  {name:>10}: {rate:8.0f} misses/s  {us:6.0f} us CPU/miss")


if __name__ == "__main__":
    main()
