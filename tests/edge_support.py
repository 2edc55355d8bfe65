"""Helpers for the edge's process tests: apps published to a real origin, an edge started
on a free loopback port (tests.procs), a scriptable upstream that sits between an edge
and the origin in a thread of its own, and polling with a deadline instead of sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import msgpack
from aiohttp import web

from common import codec
from tests.conftest import DEMO, Reply, http, publish, set_channel, tar_gz_of
from tests.procs import Service, edge_service, free_port, metric, start_all
from tests.waiting import eventually  # re-exported: the edge's tests import it from here

__all__ = [
    "App",
    "ScriptedUpstream",
    "chunk_files",
    "contention",
    "edge",
    "eventually",
    "owner_of",
    "publish_app",
    "random_app",
    "remount",
    "ring",
    "ring_size",
    "scripted",
    "tmpfs",
]


@dataclass
class App:
    name: str
    manifest: str  # hex id
    chunks: list[str]  # hex ids, unique, stream order
    raw: dict[str, int] = field(default_factory=dict)  # chunk id → raw size


def manifest_chunks(base: str, manifest_hex: str) -> list[tuple[str, int]]:
    r = http("GET", f"{base}/v1/manifests/{manifest_hex}")
    assert r.status == 200, r.body
    body = msgpack.unpackb(msgpack.unpackb(r.body, raw=False)["payload"], raw=False)
    out = [(c[0].hex(), c[1]) for p in body["packages"] for c in p["chunks"]]
    return list(dict.fromkeys(out))


def publish_app(origin: str, name: str, folder: Path, version: str = "1.0.0") -> App:
    r = publish(origin, name, version, tar_gz_of(folder))
    assert r.status in (200, 201), r.body
    assert set_channel(origin, name, "release", {"version": version}).status == 200
    manifest = r.json()["manifest"]  # type: ignore[index]
    chunks = manifest_chunks(origin, manifest)
    return App(name, manifest, [c for c, _ in chunks], dict(chunks))


def random_app(dest: Path, mib: float, seed: int = 7) -> Path:
    """The demo app plus ``mib`` MiB of incompressible assets (many distinct chunks)."""
    shutil.copytree(DEMO, dest)
    rnd = random.Random(seed)
    (dest / "assets").mkdir()
    left, i = int(mib * (1 << 20)), 0
    while left > 0:
        n = min(left, 256 << 10)
        (dest / "assets" / f"blob{i}.bin").write_bytes(rnd.randbytes(n))
        left, i = left - n, i + 1
    return dest


def edge(
    tmp: Path, *upstreams: str, extra: tuple[str, ...] = (), name: str = "edge", port: int | None = None
) -> Service:
    return edge_service(tmp, *upstreams, extra=extra, name=name, port=port)


def ring(tmp: Path, *upstreams: str, n: int = 3, extra: tuple[str, ...] = (), name: str = "ring") -> list[Service]:
    """``n`` edges in one ring (each lists all, itself included, and names itself with
    --self), health-checked every 200 ms, started together; returns once every member
    sees all ``n`` in its ring.  The caller stops them."""
    ports = [free_port() for _ in range(n)]
    peers = [a for p in ports for a in ("--peer", f"http://127.0.0.1:{p}")]
    nodes = [
        edge_service(tmp, *upstreams, name=f"{name}{i}", port=p,
                     extra=(*peers, "--self", f"http://127.0.0.1:{p}", "--peer-check-interval", "200ms", *extra))
        for i, p in enumerate(ports)
    ]
    start_all(*nodes)
    try:
        eventually(lambda: all(ring_size(s) == n for s in nodes), what=f"a ring of {n}")
    except BaseException:
        for s in nodes:
            s.kill()
        raise
    return nodes


def ring_size(svc: Service) -> float:
    return metric(svc.url, "minicdn_edge_ring_size")


def owner_of(nodes: list[Service], hexid: str, kind: str = "chunks") -> Service:
    """The member that owns an object, computed as the edges do (edge.ring)."""
    from edge.ring import Ring

    owner = Ring([s.url for s in nodes]).owner(f"{kind}/{hexid}")
    return next(s for s in nodes if s.url == owner)


def cache_dir(svc: Service) -> Path:
    return Path(svc.args[svc.args.index("--cache-dir") + 1])


def chunk_files(svc: Service) -> dict[str, Path]:
    root = cache_dir(svc) / "chunks"
    return {p.name: p for p in root.glob("*/*") if not p.name.startswith(".tmp-")}


def get_chunk(base: str, hexid: str, zstd: bool = False, **headers: str) -> Reply:
    h = dict(headers)
    if zstd:
        h["Accept-Encoding"] = "zstd"
    return http("GET", f"{base}/v1/chunks/{hexid}", headers=h)


class Answered(Protocol):
    """An HTTP answer as the tests' clients give it (header names lowercased)."""

    status: int
    headers: dict[str, str]
    body: bytes


def verify_chunk(hexid: str, reply: Answered) -> None:
    assert reply.status == 200, (reply.status, reply.body[:200])
    if reply.headers.get("content-encoding") == "zstd":
        codec.decode_chunk(bytes.fromhex(hexid), reply.body)
    else:
        assert hashlib.sha256(reply.body).hexdigest() == hexid


def batch_items(body: bytes) -> list[list[object]]:
    return list(msgpack.Unpacker(io.BytesIO(body), raw=False))


class ScriptedUpstream:
    """An HTTP server in its own thread and event loop that forwards to ``target`` and,
    per request path, may lie or stall:

    - ``corrupt``: ids whose chunk frames are sent with one byte flipped;
    - ``hold``: ids whose answers wait until ``release()`` (or the edge gives up);
    - ``redirect``: a base URL: every request is answered ``redirect_status`` with a
      ``Location`` on that base (an upstream pointing the edge at another host);
    - ``requests``: every path asked for, in order; ``batches``: the ids of each batch.

    A batch (``POST /v1/chunks:batch``) is answered item by item as a stream, ``hold`` and
    ``corrupt`` applying to each id; ``batch_short`` ends it cleanly after that many items,
    ``batch_reorder`` swaps its first two.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.corrupt: set[str] = set()
        self.corrupt_all = False
        self.hold: set[str] = set()
        self.requests: list[str] = []
        self.redirect: str | None = None
        self.redirect_status = 307
        self.batches: list[list[str]] = []
        self.batch_short: int | None = None
        self.batch_reorder = False
        self._holding = 0
        self._loop = asyncio.new_event_loop()
        self._released: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def held(self) -> int:
        """Answers (of a GET, or items of a batch) that reached a hold, released or not."""
        return self._holding

    def release(self) -> None:
        if self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._released = asyncio.Event()
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app = web.Application()

            async def upstream(request: web.Request, path: str) -> tuple[int, bytes, dict[str, str]]:
                headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
                async with session.request(request.method, self.target + path, headers=headers,
                                           data=await request.read()) as up:
                    keep = {k: v for k, v in up.headers.items()
                            if k.lower() in ("content-type", "content-encoding", "etag", "cache-control")}
                    return up.status, await up.read(), keep

            async def held(hexid: str) -> None:
                if hexid in self.hold:
                    self._holding += 1
                    assert self._released is not None
                    await self._released.wait()

            def maybe_corrupt(hexid: str, frame: bytes) -> bytes:
                if not (self.corrupt_all or hexid in self.corrupt):
                    return frame
                b = bytearray(frame)
                b[len(b) // 2] ^= 0x01
                return bytes(b)

            async def batch(request: web.Request, path: str) -> web.StreamResponse:
                self.batches.append(msgpack.unpackb(await request.read(), raw=False))
                status, body, keep = await upstream(request, path)
                if status != 200:
                    return web.Response(status=status, body=body, headers=keep)
                items = batch_items(body)
                if self.batch_reorder and len(items) > 1:
                    items[0], items[1] = items[1], items[0]
                resp = web.StreamResponse(headers=keep)
                await resp.prepare(request)
                for hexid, frame in items[: self.batch_short]:
                    await held(str(hexid))
                    if isinstance(frame, bytes):
                        frame = maybe_corrupt(str(hexid), frame)
                    await resp.write(msgpack.packb([hexid, frame], use_bin_type=True))
                await resp.write_eof()
                return resp

            async def handle(request: web.Request) -> web.StreamResponse:
                path = request.rel_url.path_qs
                self.requests.append(path)
                if self.redirect is not None:
                    return web.Response(status=self.redirect_status, headers={"Location": self.redirect + path})
                if path == "/v1/chunks:batch":
                    return await batch(request, path)
                tail = path.rsplit("/", 1)[-1]
                await held(tail)
                status, body, keep = await upstream(request, path)
                if status == 200 and path.startswith("/v1/chunks/"):
                    body = maybe_corrupt(tail, body)
                return web.Response(status=status, body=body, headers=keep)

            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            self._released.set()
            await runner.cleanup()

    def start(self) -> ScriptedUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("scripted upstream did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


@contextmanager
def scripted(target: str) -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream(target).start()
    try:
        yield up
    finally:
        up.stop()


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real, small filesystem mounted at ``where`` (root only: the test is skipped, saying
    so, where mounting is not allowed); unmounted afterwards.  ``remount(mnt, size)``
    changes its size."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


@contextmanager
def contention(victims: list[Service], cpu_hogs: int = 2, touch_mib: int = 1024,
               stall: tuple[float, float] = (0.3, 2.5), seed: int = 1, within: float = 300.0) -> Iterator[None]:
    """A machine under pressure, for the length of the block: ``cpu_hogs`` busy loops, a
    process that keeps touching ``touch_mib`` MiB, and — standing in for what heavy memory
    pressure does to a process (seconds stalled in reclaim or page faults) — one of
    ``victims`` at a time frozen (SIGSTOP) for a random ``stall`` seconds, then thawed.
    Everything it starts stops by itself after ``within`` seconds and is killed by PID when
    the block ends; every frozen victim is thawed."""
    import os
    import signal
    import sys

    end = f"time.time() + {within}"
    hogs = [subprocess.Popen([sys.executable, "-c", f"import time\nend = {end}\nwhile time.time() < end: pass"])
            for _ in range(cpu_hogs)]
    if touch_mib:
        hogs.append(subprocess.Popen([sys.executable, "-c", (
            f"import mmap, time\nn = {touch_mib} << 20\nm = mmap.mmap(-1, n)\nend = {end}\n"
            "while time.time() < end:\n    for i in range(0, n, 4096): m[i] = (m[i] + 1) % 256\n")]))
    stop = threading.Event()

    def freeze_one_at_a_time() -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            proc = rnd.choice(victims).proc
            if proc is None:
                continue
            try:
                os.kill(proc.pid, signal.SIGSTOP)
                stop.wait(rnd.uniform(*stall))
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
            stop.wait(rnd.uniform(0.2, 1.0))

    freezer = threading.Thread(target=freeze_one_at_a_time, daemon=True)
    freezer.start()
    try:
        yield
    finally:
        stop.set()
        freezer.join(30)
        for h in hogs:
            h.kill()
            h.wait(10)
