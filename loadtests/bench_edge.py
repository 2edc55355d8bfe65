"""``make bench`` (edge part): cache-hit throughput of one edge process against one nginx
worker (and Varnish) serving the same chunk files.

- Bodies: the chunks of the real packages of ``make data`` (each package version's
  stream cut by FastCDC and compressed to one zstd-19 frame per chunk, as the origin
  does), and a second set of 64 KiB incompressible chunks.
- The files are written once, in the edge's cache layout; the edge starts on that
  directory (its index rebuilt from the files) and a warm-up pass lifts every chunk into
  its memory tier; nginx (Debian's, one worker, sendfile) serves the very same files;
  Varnish (malloc storage, one thread pool) fronts that nginx and is warmed the same way.
  ``--with-aiohttp`` adds the edge with ``--no-fast-path`` (every request through aiohttp).
- Every server is pinned to CPU 0, wrk (Debian's, one thread) to CPU 1; the same wrk
  load (``-c`` connections, a Lua script picking chunk URLs at random, ``Accept-Encoding:
  zstd``) runs against each, in a rotating order, for ``--rounds`` short rounds.  A
  ratio is taken within each round (the servers' runs are seconds apart, so a slow phase
  of a shared machine hits both) and the table shows the median of those ratios, with
  their range, and the median requests per second.
- Two modes.  *open*: each server has all of CPU 0.  With 64 KiB bodies one wrk thread
  saturates its core before the servers do (it copies every body out of the socket), so
  those requests per second measure wrk; the table says so (wrk's CPU share is shown).
  *capped*: each server is held to ``--cap`` of a core by a cgroup CPU quota (v2
  ``cpu.max`` or v1 ``cpu.cfs_quota_us``), so the server, not wrk, is the bottleneck and
  requests per second compare what each server does with the same CPU time: per core.
  Capped mode needs root and a cgroup CPU controller; without them it is left out, with
  the reason printed.
- It also reads each server's CPU time (user + system of its whole process tree, from
  /proc) per request, and the edge's peak RSS (plus its sealed memfds) against what its
  memory tier held.

nginx, wrk and Varnish are installed with apt-get when missing (root needed)::

    python -m loadtests.bench_edge [--rounds 9] [--duration 3] [--connections 32]
                                   [--cap 0.6] [--no-varnish] [--with-aiohttp]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from common import codec
from common import devca as certs
from common.chunking import cut
from common.fsutil import atomic_write
from common.ids import sha256
from loadtests.data import _library_files, ensure_data, packages
from loadtests.net import free_port, wait_http
from loadtests.procmem import PeakRss
from loadtests.proctree import descendants

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "common"]
SERVER_CPU, LOAD_CPU = "0", "1"


def ensure_tools(args: argparse.Namespace) -> None:
    wanted = [("nginx", "nginx-light"), ("wrk", "wrk")]
    if args.varnish:
        wanted.append(("varnishd", "varnish"))
    missing = [pkg for tool, pkg in wanted if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench_edge needs {' '.join(missing)}: sudo apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def _store(cache: Path, raw: bytes, seen: set[bytes]) -> int:
    cid = sha256(raw)
    if cid in seen:
        return 0
    seen.add(cid)
    frame = codec.compress(raw)
    h = cid.hex()
    atomic_write(cache / "chunks" / h[:2] / h, frame)
    return len(frame)


def real_chunks(cache: Path) -> list[str]:
    """Every distinct chunk of every version of every package of ``make data``."""
    data = ensure_data()
    seen: set[bytes] = set()
    for pkg in packages():
        _name, files = _library_files(data / pkg.file)
        stream = b"".join(files[p] for p in sorted(files, key=lambda p: p.encode()))
        for off, n in cut(stream):
            _store(cache, stream[off : off + n], seen)
    return [c.hex() for c in seen]


def big_chunks(cache: Path, count: int = 256) -> list[str]:
    rnd = random.Random(64)
    seen: set[bytes] = set()
    for _ in range(count):
        _store(cache, rnd.randbytes(64 << 10), seen)
    return [c.hex() for c in seen]


@contextmanager
def process(
    args: list[str], log: Path, cpu: str | None = SERVER_CPU, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` running (pinned to ``cpu``; None: unpinned; in ``cwd``), stopped by SIGTERM,
    then SIGKILL."""
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    with open(log, "ab") as out:
        proc = subprocess.Popen([*pin, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Running:
    """A server under test: where it answers, and the process whose tree's CPU time and
    memory are its cost."""

    name: str
    url: str
    pid: int


@dataclass(frozen=True)
class Tls:
    """The TLS rows' certificate (ECDSA P-256, the same for the edge and nginx) and a
    client context that trusts its CA."""

    certs: certs.Certs
    context: ssl.SSLContext

    @classmethod
    def make(cls, folder: Path) -> Tls:
        made = certs.make(folder)
        return cls(made, ssl.create_default_context(cafile=str(made.ca)))


def _scheme(tls: Tls | None) -> str:
    return "https" if tls else "http"


def _context(tls: Tls | None) -> ssl.SSLContext | None:
    return tls.context if tls else None


@contextmanager
def edge(cache: Path, work: Path, fast_path: bool = True, tls: Tls | None = None) -> Iterator[Running]:
    port = free_port()
    args = [
        *CLI,
        "edge",
        "--cache-dir",
        str(cache),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        "http://127.0.0.1:9",
        "--memory-size",
        "2GiB",
        *([] if fast_path else ["--no-fast-path"]),
        *(["--tls-cert", str(tls.certs.cert), "--tls-key", str(tls.certs.key)] if tls else []),
    ]
    with process(args, work / "edge.log") as proc:
        url = f"{_scheme(tls)}://127.0.0.1:{port}"
        wait_http(url + "/readyz", 30, context=_context(tls))
        yield Running("edge" if fast_path else "edge-aiohttp", url, proc.pid)


def nginx_conf(work: Path, server: str) -> str:
    """A one-worker nginx (foreground, its files under ``work``) around ``server``: one
    ``server { ... }`` block, already formatted."""
    return f"""
user root;
worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
{server}
}}
"""


CHUNKS_SERVER = """
    server {{
        listen 127.0.0.1:{port}{tls};
        location ~ "^/v1/chunks/([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
            alias {cache}/chunks/$1/$1$2;
            default_type application/octet-stream;
            add_header Cache-Control "public, max-age=31536000, immutable";
            add_header Content-Encoding zstd;
        }}
    }}"""


# What the edge does by default: TLS 1.3 only, session tickets and a session cache for
# resumption, the same certificate.
NGINX_TLS = """ ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on"""


@contextmanager
def nginx(cache: Path, work: Path, tls: Tls | None = None) -> Iterator[Running]:
    port = free_port()
    (work / "nginx-tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    ssl_conf = NGINX_TLS.format(cert=tls.certs.cert, key=tls.certs.key) if tls else ""
    conf.write_text(nginx_conf(work, CHUNKS_SERVER.format(port=port, cache=cache, tls=ssl_conf)))
    with process(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.log") as proc:
        url = f"{_scheme(tls)}://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2, context=_context(tls))
            except urllib.error.HTTPError:
                break  # 404 for / : it is up
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not start; see " + str(work / "nginx-error.log")) from None
                time.sleep(0.1)
        yield Running("nginx", url, proc.pid)


@contextmanager
def varnish(backend: str, work: Path) -> Iterator[Running]:
    """Varnish (malloc storage) in front of ``backend``; warmed by the caller, so every
    measured request is a hit from Varnish's memory."""
    port = free_port()
    host, _, backend_port = backend.removeprefix("http://").partition(":")
    name = work / f"varnish-{port}"
    args = [
        "varnishd", "-F", "-n", str(name), "-a", f"127.0.0.1:{port}", "-b", f"{host}:{backend_port}",
        "-s", "malloc,1g", "-p", "http_gzip_support=off", "-p", "thread_pools=1",
    ]  # fmt: skip
    with process(args, work / "varnish.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/v1/chunks/" + "0" * 64, 30, ok=(200, 404))
        yield Running("varnish", url, proc.pid)


def lua_script(ids: list[str], path: Path, close: bool = False) -> Path:
    """``close``: every request asks for its connection to be closed after it, so each
    costs a new connection (with TLS, a handshake)."""
    body = ",\n".join(f'"/v1/chunks/{h}"' for h in ids)
    path.write_text(
        "local paths = {\n" + body + "\n}\n"
        "math.randomseed(7)\n"
        'wrk.headers["Accept-Encoding"] = "zstd"\n'
        + ('wrk.headers["Connection"] = "close"\n' if close else "")
        + "request = function()\n"
        "  return wrk.format(nil, paths[math.random(#paths)])\n"
        "end\n"
    )
    return path


def warm(url: str, ids: list[str], context: ssl.SSLContext | None = None) -> int:
    total = 0
    for h in ids:
        req = urllib.request.Request(f"{url}/v1/chunks/{h}", headers={"Accept-Encoding": "zstd"})
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            total += len(r.read())
    return total


# -- what a server costs: CPU time and resident memory of its process tree, from /proc --------


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def cpu_seconds(pid: int) -> float:
    ticks = 0
    for p in tree(pid):
        with suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuCap:
    """One cgroup per server whose CPU quota the bench switches between none (open mode)
    and a share of one core (capped mode): cgroup v2's ``cpu.max`` where the unified
    hierarchy has the cpu controller, else v1's ``cpu.cfs_quota_us``."""

    PERIOD = 100_000  # µs

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2
        self.pids: list[int] = []

    @staticmethod
    def where() -> tuple[Path, bool] | str:
        """The parent cgroup directory and whether it is v2; or why capping cannot work."""
        if os.geteuid() != 0:
            return "capped mode needs root (it writes cgroup files)"
        root = Path("/sys/fs/cgroup")
        with suppress(OSError):
            if "cpu" in (root / "cgroup.controllers").read_text().split():
                with suppress(OSError):
                    (root / "cgroup.subtree_control").write_text("+cpu")
                if "cpu" in (root / "cgroup.subtree_control").read_text().split():
                    return root, True
        if (root / "cpu" / "cpu.cfs_quota_us").exists():
            return root / "cpu", False
        return "no cgroup CPU controller here (neither v2 cpu.max nor v1 cpu.cfs_quota_us)"

    @classmethod
    def make(cls, where: tuple[Path, bool], name: str) -> CpuCap:
        parent, v2 = where
        path = parent / f"minicdn-bench-{os.getpid()}-{name}"
        path.mkdir()
        return cls(path, v2)

    def adopt(self, pid: int) -> None:
        """Move a server's whole process tree (every thread of each) into the cgroup."""
        for p in tree(pid):
            with suppress(ProcessLookupError, OSError):
                (self.path / "cgroup.procs").write_text(str(p))
                self.pids.append(p)

    def set(self, share: float | None) -> None:
        quota = None if share is None else max(1000, int(share * self.PERIOD))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota or 'max'} {self.PERIOD}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota or -1))

    def remove(self) -> bool:
        """Called once the server has stopped (a cgroup with processes cannot be removed)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.1)
        print(f"could not remove {self.path}", file=sys.stderr)
        return False


@dataclass
class Run:
    rps: float
    cpu_us: float  # the server's CPU time (user + system, whole process tree) per request
    server_share: float  # the server's CPU time over the run's wall time (1.0: one core)
    load_share: float  # wrk's, likewise


def run_wrk(server: Running, script: Path, duration: int, connections: int) -> Run:
    cpu0 = cpu_seconds(server.pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "-s",
            str(script),
            server.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk (and taskset) only: reaped just now
    cpu = cpu_seconds(server.pid) - cpu0
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors against {server.url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    load = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return Run(float(m.group(1)), cpu * 1e6 / max(1, int(n.group(1))), cpu / wall, load / wall)


@dataclass
class Row:
    label: str
    mode: str
    mean_body: int
    runs: dict[str, list[Run]]  # by server, one per round

    def rps(self, name: str) -> float:
        return statistics.median(r.rps for r in self.runs[name])

    def cpu(self, name: str) -> float:
        return statistics.median(r.cpu_us for r in self.runs[name])

    def share(self, name: str, load: bool = False) -> float:
        return statistics.median(r.load_share if load else r.server_share for r in self.runs[name])

    def ratios(self, name: str, peer: str) -> list[float]:
        """``name`` over ``peer``, round by round (their runs in one round are adjacent)."""
        return [a.rps / b.rps for a, b in zip(self.runs[name], self.runs[peer], strict=True)]


def memory_held(url: str, context: ssl.SSLContext | None = None) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=10, context=context) as r:
        m = re.search(rb'minicdn_edge_cache_bytes\{tier="memory"\} ([0-9.e+]+)', r.read())
    return int(float(m.group(1))) if m else 0


@dataclass
class Memory:
    label: str
    edge_rss: int
    edge_held: int


def bench(
    label: str,
    cache: Path,
    ids: list[str],
    work: Path,
    args: argparse.Namespace,
    caps: tuple[Path, bool] | None,
    tls: Tls | None = None,
) -> tuple[list[Row], Memory]:
    """With ``tls``, the edge and nginx over HTTPS (Varnish has no TLS), and a third mode
    where every request opens a new connection: the handshake's cost."""
    if tls:
        label += ", TLS 1.3"
    script = lua_script(ids, work / f"{label.replace(' ', '-')}.lua")
    cgroups: dict[str, CpuCap] = {}
    with ExitStack() as stack:
        # Unwound last, once every server has stopped: an empty cgroup can be removed.
        stack.callback(lambda: [c.remove() for c in cgroups.values()])
        servers = [stack.enter_context(edge(cache, work, tls=tls))]
        ngx = stack.enter_context(nginx(cache, work, tls=tls))
        servers.append(ngx)
        if args.varnish and not tls:
            servers.append(stack.enter_context(varnish(ngx.url, work)))
        if args.with_aiohttp and not tls:
            servers.append(stack.enter_context(edge(cache, work, fast_path=False)))
        body_bytes = warm(servers[0].url, ids, _context(tls))
        for s in servers[1:]:
            warm(s.url, ids, _context(tls))
        held = memory_held(servers[0].url, _context(tls))
        if caps:
            for s in servers:
                cgroups[s.name] = CpuCap.make(caps, s.name)
                cgroups[s.name].adopt(s.pid)
        print(f"{label}: {len(ids)} chunks, mean body {body_bytes // len(ids)} B", flush=True)
        modes: list[tuple[str, float | None, Path]] = [("open", None, script)]
        if caps:
            modes.append((f"capped at {args.cap:g} CPU", args.cap, script))
        if tls:
            closing = lua_script(ids, work / f"{label.replace(' ', '-')}-close.lua", close=True)
            modes.append(("new connection per request", args.cap if caps else None, closing))
        rows = []
        with PeakRss(servers[0].pid) as rss:
            for mode, share, mode_script in modes:
                for c in cgroups.values():
                    c.set(share)
                runs: dict[str, list[Run]] = {s.name: [] for s in servers}
                for r in range(args.rounds):
                    for s in servers[r % len(servers) :] + servers[: r % len(servers)]:  # rotate the order
                        run = run_wrk(s, mode_script, args.duration, args.connections)
                        runs[s.name].append(run)
                        print(
                            f"  {mode:16} round {r + 1} {s.name:12}: {run.rps:9,.0f} req/s  "
                            f"{run.cpu_us:5.1f} CPU-us/req  server {run.server_share:4.2f} CPU  "
                            f"wrk {run.load_share:4.2f} CPU",
                            flush=True,
                        )
                rows.append(Row(label, mode, body_bytes // len(ids), runs))
        return rows, Memory(label, rss.peak, held)


LOAD_BOUND = 0.95  # wrk's share of its core from which its own speed, not the server's, is measured


def table(rows: list[Row], memory: list[Memory], args: argparse.Namespace) -> str:
    names = list(rows[0].runs)
    others = [n for n in names if n != "edge"]
    lines = [
        f"{args.rounds} rounds of {args.duration}s per server, in rotating order; "
        f"wrk -t1 -c{args.connections}; servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}.",
        "req/s: medians; edge / peer: the median of the per-round ratios [lowest-highest].",
        "",
        "| bodies | mode | "
        + " | ".join(f"{n} req/s" for n in names)
        + " | "
        + " | ".join(f"edge / {n}" for n in others)
        + " | wrk CPU |",
        "|---" * (3 + len(names) + len(others)) + "|",
    ]
    for row in rows:
        cells = []
        for n in others:
            ratios = row.ratios("edge", n)
            cells.append(f"**{statistics.median(ratios):.2f}x** [{min(ratios):.2f}-{max(ratios):.2f}]")
        load = max(row.share(n, load=True) for n in names)
        lines.append(
            f"| {row.label} (mean {row.mean_body:,} B) | {row.mode} | "
            + " | ".join(f"{row.rps(n):,.0f}" for n in names)
            + " | "
            + " | ".join(cells)
            + f" | {load:.2f}{' (load-bound)' if load >= LOAD_BOUND else ''} |"
        )
    lines += [
        "",
        "CPU time of each server's processes (user + system) per request, microseconds, and each "
        "server's CPU share (1.00: all of its core):",
        "",
        "| bodies | mode | " + " | ".join(names) + " |",
        "|---" * (2 + len(names)) + "|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.mode} | "
            + " | ".join(f"{row.cpu(n):.1f} µs ({row.share(n):.2f})" for n in names)
            + " |"
        )
    if any(row.share(n, load=True) >= LOAD_BOUND for row in rows for n in names):
        lines += [
            "",
            f"load-bound: wrk used ≥ {LOAD_BOUND:.0%} of its core, so those req/s are wrk's speed; "
            "the capped rows compare the servers.",
        ]
    lines.append("")
    for m in memory:
        verdict = "within" if m.edge_rss <= m.edge_held + (150 << 20) else "OVER"
        lines.append(
            f"{m.label}: edge peak RSS + memfds {m.edge_rss / 2**20:.0f} MiB while its memory tier "
            f"held {m.edge_held / 2**20:.1f} MiB ({verdict} memory tier + 150 MiB)"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--cap",
        type=float,
        default=0.6,
        help="capped mode: each server's share of one core (0: open mode only)",
    )
    ap.add_argument("--no-varnish", dest="varnish", action="store_false", help="leave Varnish out")
    ap.add_argument("--with-aiohttp", action="store_true", help="also the edge with --no-fast-path")
    ap.add_argument("--no-tls", dest="tls", action="store_false", help="leave the TLS rows out")
    args = ap.parse_args()
    if not 0 <= args.cap <= 1:
        raise SystemExit("--cap is a share of one core: between 0 and 1")
    ensure_tools(args)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_edge pins servers and load to different CPUs: it needs at least 2")
    caps: tuple[Path, bool] | None = None  # where the servers' cgroups go; None: open mode only
    if args.cap:
        where = CpuCap.where()
        if isinstance(where, str):
            print(f"capped mode left out: {where}", flush=True)
        else:
            caps = where
    tls_missing = edge_without_tls() if args.tls else "--no-tls"
    if tls_missing:
        print(f"TLS rows left out: {tls_missing}", flush=True)
    tables: dict[str, tuple[list[Row], list[Memory]]] = {"plain": ([], [])}
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-edge-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # Varnish's child runs as its own user
        tls = None if tls_missing else Tls.make(work / "tls")
        if tls:
            tables["tls"] = ([], [])
        for label, make in (("real chunk mix", real_chunks), ("64 KiB chunks", big_chunks)):
            cache = work / label.replace(" ", "-")
            ids = make(cache)
            for kind, with_tls in (("plain", None), ("tls", tls)):
                if kind in tables:
                    got, mem = bench(label, cache, ids, work, args, caps, with_tls)
                    tables[kind][0].extend(got)
                    tables[kind][1].append(mem)
    for rows, memory in tables.values():
        print()
        print(table(rows, memory, args))


def edge_without_tls() -> str:
    """Why this edge cannot serve the TLS rows ("" when it can)."""
    out = subprocess.run([*CLI, "edge", "--help"], capture_output=True, text=True, check=False).stdout
    return "" if "--tls-cert" in out else "this edge has no --tls-cert (TLS not built yet)"


if __name__ == "__main__":
    main()
