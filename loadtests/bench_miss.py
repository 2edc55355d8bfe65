"""``make bench-edge`` (miss part): cache misses per second and CPU per miss of one edge
process against nginx ``proxy_cache`` (one worker, ``proxy_cache_lock on``), both in front
of the same nginx "origin" serving the same generated chunks (issue 15).

- Chunks: ``--chunks`` distinct ones, generated deterministically: text-like bytes (words
  of a 4,000-word vocabulary), sizes uniform in 2-18.4 KiB (mean 10.2 KiB), each one zstd
  frame (level 3; the origin uses 19, which costs 1 ms a chunk to make and decodes as fast)
  named by the SHA-256 of its raw bytes, written in the origin's storage layout
  (origin/paths.py) in a directory in /dev/shm.
- The origin: Debian's nginx, one worker, sendfile, answering ``/v1/chunks/<hex>`` from
  those files with the headers the origin sends (``Content-Encoding: zstd``, ``Vary:
  Accept-Encoding``, ``ETag: "<hex>"``, immutable) and logging each request it serves.
- The caches under test: ``python -m common edge --upstream <origin>`` with default
  settings (fast path), or nginx with ``proxy_cache`` (``use_temp_path=off``, keepalive to
  the origin).  Each run (one cache, one round) gets a fresh ext4 filesystem
  (``mkfs.ext4``, journal on, 4 KiB blocks) on a loop device over a sparse file in
  /dev/shm, made and mounted for that run and unmounted and deleted after it: a
  filesystem that fills with deleted inodes slows down, and a RAM-backed one keeps a
  shared machine's disk out of the figures.  A fresh origin per run, too (its log is
  the run's).
- Load: wrk (one thread, ``--connections``) with a Lua script handing out the chunk ids
  in order, each once, for ``--duration`` seconds (it stops early once every id has been
  answered).  Every answer is checked: status 200, and the ETag names an id not answered
  before whose frame has exactly the body's length.  Misses per second are the distinct
  ids answered over the time from the first request to the last answer.
- Afterwards the origin's access log must show every id it was asked for exactly once, no
  id the client was not given, and at least every id the client got; the edge's own
  count of upstream requests must agree.  A run that breaks any of this makes the whole
  bench invalid (it says why and exits 1).
- Two modes, with rounds alternating edge/nginx (the order flips every round).
  *pinned*: the cache under test and the origin on CPU 0, wrk on CPU 1 (as in the issue:
  the origin's cost per miss is the same for both caches and comes out of the same core;
  its share of the CPU is shown).  *unpinned*: nothing pinned, so threads of the edge
  may run beside its loop (or fight it).
- CPU per miss: user + system time of the cache's whole process tree (from /proc), from
  just before wrk starts until the tree is idle again after it (the edge writes to disk
  in the background), over the requests the origin served it; the origin's likewise,
  and its share (origin / (origin + cache)).  The ext4 journal thread of the run's
  filesystem is read too (kernel time neither process tree holds).

Needs root (mount), 2 CPUs, nginx and wrk (installed with apt-get when missing)::

    python -m loadtests.bench_miss [--chunks 100000] [--rounds 6] [--duration 5]
                                   [--connections 64] [--out var/bench/miss.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from common import codec
from common.ids import sha256
from loadtests.bench_edge import LOAD_CPU, SERVER_CPU, Running, cpu_seconds, ensure_tools, tree
from loadtests.net import free_port, scrape, total, wait_http
from loadtests.proctree import kill, wait_gone
from origin.paths import chunk_key

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "common"]
RAM = Path("/dev/shm")
LEVEL = 3
KIB = 1024


# -- the chunks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunks:
    """Generated chunks in the origin's layout under ``root``; ``listing`` has one
    ``<hex> <frame length>`` line per chunk, in the order wrk asks for them."""

    root: Path
    ids: list[str]
    listing: Path
    raw_mean: float
    frame_mean: float


def generate(root: Path, count: int, seed: int = 15) -> Chunks:
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 10))) for _ in range(4000)]
    corpus = " ".join(rnd.choices(vocab, k=1 << 20)).encode()
    ids: list[str] = []
    lines: list[str] = []
    raw_bytes = frame_bytes = 0
    for i in range(count):
        size = rnd.randint(2 * KIB, 18842)
        start = rnd.randrange(len(corpus) - size)
        raw = b"%d\n" % i + corpus[start : start + size]  # the number keeps every chunk distinct
        frame = codec.compress(raw, level=LEVEL)
        h = sha256(raw).hex()
        path = root / chunk_key(h)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(frame)
        ids.append(h)
        lines.append(f"{h} {len(frame)}\n")
        raw_bytes += len(raw)
        frame_bytes += len(frame)
    listing = root / "listing.txt"
    listing.write_text("".join(lines))
    return Chunks(root, ids, listing, raw_bytes / count, frame_bytes / count)


# -- a fresh filesystem per run -----------------------------------------------------------------


@dataclass(frozen=True)
class Fs:
    path: Path
    device: str  # e.g. "loop3"


def _device_of(mount: Path) -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        source, target, *_ = line.split()
        if target == str(mount):
            return source.removeprefix("/dev/")
    raise RuntimeError(f"{mount} is not mounted")


@contextmanager
def ram_ext4(size: int, inodes: int) -> Iterator[Fs]:
    """ext4 on a loop device over a sparse file in /dev/shm (RAM), unmounted and deleted
    on the way out, whatever happens inside."""
    with tempfile.TemporaryDirectory(prefix="minicdn-missfs-", dir=RAM) as tmp:
        image, mount = Path(tmp) / "ext4.img", Path(tmp) / "mnt"
        mount.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)
        # Inode tables written now, not by ext4lazyinit in the background of the first run.
        mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes)]
        subprocess.run([*mkfs, "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            yield Fs(mount, _device_of(mount))
        finally:
            _unmount(mount)


def _unmount(mount: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    # Still busy: detach it now; the kernel frees the loop device when the last user goes.
    subprocess.run(["umount", "-l", str(mount)], check=False)
    print(f"{mount} was busy: unmounted lazily", file=sys.stderr)


def _is_tmpfs(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) and line.split()[2] == "tmpfs"
        for line in Path("/proc/mounts").read_text().splitlines()
    )


def journal_pid(fs: Fs) -> int | None:
    """The jbd2 kernel thread of ``fs``'s journal (its CPU time belongs to no process tree)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip().startswith(f"jbd2/{fs.device}-"):
                    return int(entry.name)
    return None


# -- servers -----------------------------------------------------------------------------------


@contextmanager
def launch(
    args: list[str], log: Path, cpus: str | None, stop: signal.Signals = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """A server on ``cpus`` (None: anywhere), stopped with ``stop``; its whole tree is
    waited for, and what is left of it after 15 s is SIGKILLed, by PID."""
    pin = ["taskset", "-c", cpus] if cpus else []
    with open(log, "ab") as out:
        proc = subprocess.Popen([*pin, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        family = tree(proc.pid)
        proc.send_signal(stop)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill(wait_gone(family[1:], 15))


ORIGIN_CONF = """
user root;
worker_processes 1;
daemon off;
master_process on;
pid {work}/origin.pid;
error_log {work}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format fetched '$status $uri';
    access_log {log} fetched buffer=64k;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    etag off;
    {temps}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ "^/v1/chunks/(?<hex>(?<a>[0-9a-f]{{2}})(?<b>[0-9a-f]{{2}})[0-9a-f]{{60}})$" {{
            alias {root}/objects/chunks/$a/$b/$hex;
            default_type application/octet-stream;
            add_header Content-Encoding zstd;
            add_header Vary Accept-Encoding;
            add_header ETag '"$hex"';
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
    }}
}}
"""

CACHE_CONF = """
user root;
worker_processes 1;
daemon off;
master_process on;
pid {work}/cache.pid;
error_log {work}/cache-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    {temps}
    proxy_cache_path {cache} levels=1:2 keys_zone=chunks:64m max_size=10g inactive=1d use_temp_path=off;
    upstream origin {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /v1/chunks/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache chunks;
            proxy_cache_lock on;
            proxy_cache_key $uri;
        }}
    }}
}}
"""


def _temps(work: Path) -> str:
    (work / "nginx-tmp").mkdir(exist_ok=True)
    return " ".join(
        f"{k}_temp_path {work}/nginx-tmp;" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


@contextmanager
def nginx(conf: str, work: Path, cpus: str | None, stop: signal.Signals) -> Iterator[Running]:
    path = work / f"nginx-{os.urandom(4).hex()}.conf"
    path.write_text(conf)
    port = int(re.search(r"listen 127\.0\.0\.1:(\d+)", conf).group(1))  # type: ignore[union-attr]
    with launch(["nginx", "-c", str(path), "-p", str(work)], work / "nginx.log", cpus, stop) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", 15, proc, ok=(404,))
        yield Running("nginx", url, proc.pid)


@contextmanager
def origin(chunks: Chunks, work: Path, log: Path, cpus: str | None) -> Iterator[Running]:
    conf = ORIGIN_CONF.format(work=work, log=log, temps=_temps(work), port=free_port(), root=chunks.root)
    # SIGQUIT: a graceful stop, which writes out the buffered access log.
    with nginx(conf, work, cpus, signal.SIGQUIT) as server:
        yield Running("origin", server.url, server.pid)


@contextmanager
def nginx_cache(cache: Path, upstream: str, work: Path, cpus: str | None) -> Iterator[Running]:
    host = upstream.removeprefix("http://")
    conf = CACHE_CONF.format(work=work, temps=_temps(work), cache=cache, upstream=host, port=free_port())
    with nginx(conf, work, cpus, signal.SIGTERM) as server:
        yield server


@contextmanager
def edge_cache(cache: Path, upstream: str, work: Path, cpus: str | None) -> Iterator[Running]:
    cache.mkdir()
    port = free_port()
    args = [*CLI, "edge", "--cache-dir", str(cache), "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    with launch(args, work / "edge.log", cpus) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", 60, proc)
        yield Running("edge", url, proc.pid)


CacheServer = Callable[[Path, str, Path, str | None], AbstractContextManager[Running]]
CACHES: dict[str, CacheServer] = {"edge": edge_cache, "nginx": nginx_cache}


# -- load: each id once, every answer checked ------------------------------------------------------

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } minicdn_timespec;
int clock_gettime(int clock, minicdn_timespec *tp);
]]
local ts = ffi.new("minicdn_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local paths, lengths, seen = {}, {}, {}
for line in io.lines("@LISTING@") do
  local hex, n = line:match("^(%x+) (%d+)$")
  paths[#paths + 1] = "/v1/chunks/" .. hex
  lengths[hex] = tonumber(n)
end
local refill = paths[1]:sub(12)

handed, received, bad, wrong, extra, first, last = 0, 0, 0, 0, 0, 0, 0
wrk.headers["Accept-Encoding"] = "zstd"

local verified = false
request = function()
  -- wrk calls request() once before connecting, to count pipelined requests: not sent
  if not verified then
    verified = true
    return wrk.format("GET", paths[1])
  end
  if handed < #paths then
    handed = handed + 1
    if handed == 1 then first = now() end
    return wrk.format("GET", paths[handed])
  end
  -- every id handed out, some still in flight: wrk must send something, so a hit (a run
  -- that gets here has too few --chunks for its speed; the bench says so)
  extra = extra + 1
  return wrk.format("GET", paths[1])
end

response = function(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    return
  end
  local hex = (headers["ETag"] or headers["Etag"] or headers["etag"] or ""):match("%x+")
  if hex == nil or lengths[hex] ~= #body then
    wrong = wrong + 1
    return
  end
  if seen[hex] then
    if hex ~= refill or handed < #paths then wrong = wrong + 1 end
    return
  end
  seen[hex] = true
  received = received + 1
  last = now()
  if received == #paths then wrk.thread:stop() end
end

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

function done(summary, latency, requests)
  local t = threads[1]
  io.write("MISSBENCH")
  for _, k in ipairs({"handed", "received", "bad", "wrong", "extra"}) do
    io.write(string.format(" %s=%d", k, t:get(k)))
  end
  io.write(string.format(" first=%.6f last=%.6f stopped=%.6f\n", t:get("first"), t:get("last"), now()))
end
"""


def lua_script(chunks: Chunks, path: Path) -> Path:
    path.write_text(LUA.replace("@LISTING@", str(chunks.listing)))
    return path


@dataclass(frozen=True)
class Tally:
    """What the wrk script saw: ids handed out and answered (distinct), answers that were
    not 200 or not the chunk asked for, hits sent after the last id, and the span from
    the first request to the last new answer."""

    handed: int
    received: int
    bad: int
    wrong: int
    extra: int
    span: float
    socket_errors: str


def run_wrk(url: str, script: Path, cpus: str | None, duration: int, connections: int, ids: int) -> Tally:
    pin = ["taskset", "-c", cpus] if cpus else []
    cmd = [
        *pin,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    m = re.search(r"MISSBENCH (.*)", out)
    if not m:
        raise RuntimeError(f"cannot read the wrk script's tally:\n{out}")
    f = dict(kv.split("=") for kv in m.group(1).split())
    errors = re.search(r"Socket errors: (.*)", out)
    return Tally(
        int(f["handed"]),
        int(f["received"]),
        int(f["bad"]),
        int(f["wrong"]),
        int(f["extra"]),
        # Through every id: until the last of them came; else until wrk stopped.
        float(f["last"] if int(f["received"]) == ids else f["stopped"]) - float(f["first"]),
        errors.group(1) if errors else "",
    )


# -- one run: one cache, one round, everything fresh -------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    servers: str | None  # the CPUs of the cache under test and the origin (None: any)
    load: str | None  # wrk's


PINNED = Mode("pinned", SERVER_CPU, LOAD_CPU)
UNPINNED = Mode("unpinned", None, None)


@dataclass
class Run:
    cache: str
    mode: str
    round: int
    misses_per_s: float
    handed: int
    received: int
    fetched: int  # requests the origin served this cache
    distinct: int  # distinct ids among them (fetched == distinct: none twice)
    extra: int  # hits on the first id sent after the last id was handed out (see LUA)
    seconds: float  # from the first request to the last new answer
    cache_cpu: float  # seconds, user + system of the cache's process tree
    origin_cpu: float
    journal_cpu: float  # the jbd2 thread of the run's filesystem
    upstream_requests: float | None = None  # the edge's own count (its /metrics)
    problems: list[str] = field(default_factory=list)

    @property
    def cache_us(self) -> float:
        return self.cache_cpu * 1e6 / max(1, self.fetched)

    @property
    def origin_us(self) -> float:
        return self.origin_cpu * 1e6 / max(1, self.fetched)

    @property
    def journal_us(self) -> float:
        return self.journal_cpu * 1e6 / max(1, self.fetched)

    @property
    def busy(self) -> float:
        """CPU the cache and the origin used over the run (1.0: one core's worth); pinned,
        well under 1.0 means something else had their core."""
        return (self.cache_cpu + self.origin_cpu) / max(1e-9, self.seconds)

    @property
    def origin_share(self) -> float:
        return self.origin_cpu / max(1e-9, self.origin_cpu + self.cache_cpu)


def thread_cpu(pid: int | None) -> float:
    """Seconds one thread (a kernel thread here) has run, to the nanosecond."""
    if pid is None:
        return 0.0
    with suppress(OSError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    return 0.0


def settle(pid: int, limit: float = 10.0) -> None:
    """Until the process tree has been idle for 0.3 s: the edge writes to disk behind the
    answers, and that work is part of a miss."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - before < 0.005:
            return
        before = now


def fs_size(chunks: Chunks) -> tuple[int, int]:
    """Bytes and inodes of a run's filesystem: room for every chunk (in 4 KiB blocks) in
    both caches' layouts, with nginx's temp files and directories."""
    blocks = sum(-(-n // 4096) for n in _frame_lengths(chunks)) * 4096
    return max(256 << 20, 2 * blocks + (128 << 20)), 2 * len(chunks.ids) + 20_000


def _frame_lengths(chunks: Chunks) -> list[int]:
    return [int(line.split()[1]) for line in chunks.listing.read_text().splitlines()]


def one_run(name: str, mode: Mode, rnd: int, chunks: Chunks, work: Path, args: argparse.Namespace) -> Run:
    script = work / "miss.lua"
    log = work / f"origin-{mode.name}-{rnd}-{name}.log"
    size, inodes = fs_size(chunks)
    with ExitStack() as stack:
        fs = stack.enter_context(ram_ext4(size, inodes))
        up = stack.enter_context(origin(chunks, work, log, mode.servers))
        cache = stack.enter_context(CACHES[name](fs.path / name, up.url, work, mode.servers))
        jbd2 = journal_pid(fs)
        c0, o0, j0 = cpu_seconds(cache.pid), cpu_seconds(up.pid), thread_cpu(jbd2)
        tally = run_wrk(cache.url, script, mode.load, args.duration, args.connections, len(chunks.ids))
        settle(cache.pid)
        c1, o1, j1 = cpu_seconds(cache.pid), cpu_seconds(up.pid), thread_cpu(jbd2)
        upstream_requests = (
            total(scrape(cache.url), "minicdn_edge_upstream_requests_total") if name == "edge" else None
        )
    # The origin has stopped, so its log is whole; "/" is the readiness probe.
    served = [line.split(" ", 1) for line in log.read_text().splitlines()]
    fetched = Counter(uri.removeprefix("/v1/chunks/") for _, uri in served if uri.startswith("/v1/chunks/"))
    failed = sum(1 for status, uri in served if uri != "/" and status != "200")
    run = Run(
        name,
        mode.name,
        rnd,
        tally.received / tally.span if tally.span > 0 else 0.0,
        tally.handed,
        tally.received,
        sum(fetched.values()),
        len(fetched),
        tally.extra,
        tally.span,
        c1 - c0,
        o1 - o0,
        j1 - j0,
    )
    run.upstream_requests = upstream_requests
    run.problems = check(run, tally, fetched, chunks, args.connections)
    if failed:
        run.problems.append(f"the origin answered {failed} requests with a status other than 200")
    return run


def check(
    run: Run,
    tally: Tally,
    fetched: Counter[str],
    chunks: Chunks,
    connections: int,
) -> list[str]:
    """Why the run does not count (empty: it does)."""
    problems = []
    if tally.bad:
        problems.append(f"{tally.bad} answers were not 200")
    if tally.wrong:
        problems.append(f"{tally.wrong} answers were not the chunk asked for (ETag or length)")
    if tally.socket_errors:
        problems.append(f"wrk socket errors: {tally.socket_errors}")
    if tally.received == 0:
        problems.append("no answer at all")
    handed = set(chunks.ids[: tally.handed])
    if set(fetched) - handed:
        problems.append(f"the origin served {len(set(fetched) - handed)} requests the client never made")
    twice = [k for k, n in fetched.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} ids fetched from the origin more than once")
    if not tally.received <= run.fetched <= tally.handed:
        problems.append(
            f"the origin served {run.fetched} fills for {tally.received} of {tally.handed} ids answered"
        )
    if tally.handed - tally.received > connections:  # in flight when wrk stopped
        problems.append(
            f"{tally.handed - tally.received} ids unanswered, more than the {connections} in flight"
        )
    if run.upstream_requests is not None and run.upstream_requests != run.fetched:
        problems.append(
            f"the edge counted {run.upstream_requests:.0f} upstream requests, the origin served {run.fetched}"
        )
    return problems


# -- rounds, and what they add up to -----------------------------------------------------------------


def bench(
    chunks: Chunks, work: Path, args: argparse.Namespace, log: Callable[[str], None] = print
) -> list[Run]:
    lua_script(chunks, work / "miss.lua")
    runs: list[Run] = []
    for mode in (PINNED, UNPINNED):
        for rnd in range(1, args.rounds + 1):
            order = ["edge", "nginx"] if rnd % 2 else ["nginx", "edge"]
            for name in order:
                run = one_run(name, mode, rnd, chunks, work, args)
                runs.append(run)
                log(
                    f"  {mode.name:8} round {rnd} {name:5}: {run.misses_per_s:8,.0f} misses/s "
                    f"({run.received:,} in {run.seconds:.2f} s)  cache {run.cache_us:6.1f} µs/miss  "
                    f"origin {run.origin_us:5.1f} µs/miss  journal {run.journal_us:4.1f} µs/miss  "
                    f"busy {run.busy:.2f} CPU"
                    + (f"  INVALID: {'; '.join(run.problems)}" if run.problems else "")
                )
    return runs


@dataclass(frozen=True)
class Row:
    """One cache in one mode, over the rounds."""

    mode: str
    cache: str
    misses_per_s: float  # median
    low: float
    high: float
    cache_us: float  # medians, per miss
    origin_us: float
    journal_us: float
    origin_share: float


def rows(runs: list[Run]) -> list[Row]:
    out = []
    for mode in (PINNED.name, UNPINNED.name):
        for cache in CACHES:
            mine = [r for r in runs if r.mode == mode and r.cache == cache]
            if not mine:
                continue
            rates = [r.misses_per_s for r in mine]
            out.append(
                Row(
                    mode,
                    cache,
                    statistics.median(rates),
                    min(rates),
                    max(rates),
                    statistics.median(r.cache_us for r in mine),
                    statistics.median(r.origin_us for r in mine),
                    statistics.median(r.journal_us for r in mine),
                    statistics.median(r.origin_share for r in mine),
                )
            )
    return out


def ratios(runs: list[Run], mode: str) -> list[float]:
    """edge / nginx misses per second, round by round (their runs in a round are adjacent)."""
    by = {(r.cache, r.round): r.misses_per_s for r in runs if r.mode == mode}
    rounds = sorted({rnd for _, rnd in by})
    return [by["edge", rnd] / by["nginx", rnd] for rnd in rounds if by.get(("nginx", rnd))]


FILESYSTEM = "ext4 (mkfs.ext4 -m 0, journal) on a loop device over a sparse file in /dev/shm, fresh per run"


def table(runs: list[Run], chunks: Chunks, args: argparse.Namespace) -> str:
    raw, frame = chunks.raw_mean / KIB, chunks.frame_mean / KIB
    lines = [
        f"{len(chunks.ids):,} chunks (mean {raw:.1f} KiB raw, {frame:.1f} KiB as a zstd frame), each asked "
        f"for once; {args.rounds} rounds of up to {args.duration} s per cache, alternating; "
        f"wrk -t1 -c{args.connections}.",
        f"pinned: cache and origin on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; unpinned: nothing pinned.",
        f"Cache filesystem: {FILESYSTEM}.",
        "misses/s: median [lowest-highest]; CPU per miss: user + system of the process tree over "
        "the origin's fills, median; origin share: origin CPU / (origin + cache).",
        "",
        "| mode | cache | misses/s | cache CPU/miss | origin CPU/miss | origin share | journal CPU/miss |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows(runs):
        rate = f"{row.misses_per_s:,.0f} [{row.low:,.0f}-{row.high:,.0f}]"
        cpu = f"{row.cache_us:.0f} µs | {row.origin_us:.0f} µs | {row.origin_share:.0%}"
        lines.append(f"| {row.mode} | {row.cache} | {rate} | {cpu} | {row.journal_us:.1f} µs |")
    for mode in (PINNED.name, UNPINNED.name):
        if r := ratios(runs, mode):
            ratio = f"**{statistics.median(r):.2f}x** [{min(r):.2f}-{max(r):.2f}]"
            lines.append(f"| {mode} | **edge / nginx** | {ratio} | | | | |")
    lines.append("")
    if through := [r for r in runs if r.extra]:
        lines.append(
            f"{len(through)} runs got through all {len(chunks.ids):,} ids before the time was up and kept "
            "connections busy with hits until the last miss was answered: raise --chunks for clean figures."
        )
    if bad := [r for r in runs if r.problems]:
        lines += [f"INVALID: {r.mode} round {r.round} {r.cache}: {'; '.join(r.problems)}" for r in bad]
    else:
        lines.append("Valid: every answer was 200 and the chunk asked for; the origin served each id once.")
    return "\n".join(lines)


def result(runs: list[Run], chunks: Chunks, args: argparse.Namespace) -> dict[str, object]:
    return {
        "valid": not any(r.problems for r in runs),
        "chunks": len(chunks.ids),
        "raw_mean": chunks.raw_mean,
        "frame_mean": chunks.frame_mean,
        "zstd_level": LEVEL,
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": args.connections,
        "filesystem": FILESYSTEM,
        "pinning": {"pinned": {"servers": SERVER_CPU, "wrk": LOAD_CPU}, "unpinned": None},
        "rows": [asdict(r) for r in rows(runs)],
        "ratios": {m: ratios(runs, m) for m in (PINNED.name, UNPINNED.name)},
        "runs": [
            {
                **asdict(r),
                "cache_us": r.cache_us,
                "origin_us": r.origin_us,
                "journal_us": r.journal_us,
                "origin_share": r.origin_share,
                "busy": r.busy,
            }
            for r in runs
        ],
    }


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds every ExitStack: servers stopped, filesystems unmounted


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (at most)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "miss.json")
    return ap.parse_args(argv)


def unable() -> str | None:
    """Why this machine cannot run the bench (None: it can)."""
    if os.geteuid() != 0:
        return "bench_miss mounts a fresh filesystem per run: it needs root"
    if (os.cpu_count() or 1) < 2:
        return "bench_miss pins servers and load to different CPUs: it needs at least 2"
    if not _is_tmpfs(RAM):
        return f"{RAM} is not a tmpfs: the cache filesystem's image must live in RAM"
    try:
        with ram_ext4(64 << 20, 1024):
            return None
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot mount an ext4 image on a loop device here: {exc}"


@dataclass
class Outcome:
    runs: list[Run]
    chunks: Chunks
    text: str
    result: dict[str, object]


def measure(args: argparse.Namespace, log: Callable[[str], None] = print) -> Outcome:
    """The whole bench (tools installed, root checked by the caller); writes ``args.out``."""
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-miss-", dir=RAM) as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        chunks = generate(work / "origin", args.chunks)
        log(f"{args.chunks:,} chunks generated in {time.monotonic() - t0:.0f} s")
        runs = bench(chunks, work, args, log)
    out = Outcome(runs, chunks, table(runs, chunks, args), result(runs, chunks, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out.result, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if reason := unable():
        raise SystemExit(reason)
    ensure_tools(argparse.Namespace(varnish=False))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _interrupted)
    out = measure(args, log=lambda line: print(line, flush=True))
    print(f"\n{out.text}\n\n{args.out}")
    return 0 if out.result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
