"""``make bench`` (edge part): cache-hit throughput of one edge process against one nginx
worker serving the same chunk files.

- Bodies: the chunks of the real packages of ``make data`` (each package version's
  stream cut by FastCDC and compressed to one zstd-19 frame per chunk, as the origin
  does), and a second set of 64 KiB incompressible chunks.
- The files are written once, in the edge's cache layout; the edge starts on that
  directory (its index rebuilt from the files) and a warm-up pass lifts every chunk into
  its memory tier; nginx (Debian's, one worker, sendfile) serves the very same files.
- Both servers are pinned to CPU 0, wrk (Debian's, one thread) to CPU 1; the same wrk
  load (``-c`` connections, a Lua script picking chunk URLs at random, ``Accept-Encoding:
  zstd``) runs against each, alternating, for ``--rounds`` rounds.  The table shows
  medians and the ratio.

nginx and wrk are installed with apt-get when missing (root needed)::

    python -m loadtests.bench_edge [--rounds 3] [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import codec
from common.chunking import cut
from common.fsutil import atomic_write
from common.ids import sha256
from loadtests.data import _library_files, ensure_data, packages

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "common"]
SERVER_CPU, LOAD_CPU = "0", "1"


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("nginx", "nginx-light"), ("wrk", "wrk")) if not shutil.which(tool)]
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout}s")
        time.sleep(0.1)


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def edge(cache: Path, work: Path) -> Iterator[str]:
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
    ]
    with process(args, work / "edge.log"):
        url = f"http://127.0.0.1:{port}"
        wait(url + "/readyz")
        yield url


NGINX_CONF = """
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
    server {{
        listen 127.0.0.1:{port};
        location ~ "^/v1/chunks/([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
            alias {cache}/chunks/$1/$1$2;
            default_type application/octet-stream;
            add_header Cache-Control "public, max-age=31536000, immutable";
            add_header Content-Encoding zstd;
        }}
    }}
}}
"""


@contextmanager
def nginx(cache: Path, work: Path) -> Iterator[str]:
    port = free_port()
    (work / "nginx-tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, cache=cache))
    with process(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.log"):
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
            except urllib.error.HTTPError:
                break  # 404 for / : it is up
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not start; see " + str(work / "nginx-error.log")) from None
                time.sleep(0.1)
        yield url


def lua_script(ids: list[str], path: Path) -> Path:
    body = ",\n".join(f'"/v1/chunks/{h}"' for h in ids)
    path.write_text(
        "local paths = {\n" + body + "\n}\n"
        "math.randomseed(7)\n"
        'wrk.headers["Accept-Encoding"] = "zstd"\n'
        "request = function()\n"
        "  return wrk.format(nil, paths[math.random(#paths)])\n"
        "end\n"
    )
    return path


def warm(url: str, ids: list[str]) -> int:
    total = 0
    for h in ids:
        req = urllib.request.Request(f"{url}/v1/chunks/{h}", headers={"Accept-Encoding": "zstd"})
        with urllib.request.urlopen(req, timeout=10) as r:
            total += len(r.read())
    return total


def run_wrk(url: str, script: Path, duration: int, connections: int) -> float:
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
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return float(m.group(1))


def bench(
    label: str, cache: Path, ids: list[str], work: Path, args: argparse.Namespace
) -> tuple[str, float, float]:
    script = lua_script(ids, work / f"{label}.lua")
    results: dict[str, list[float]] = {"edge": [], "nginx": []}
    with edge(cache, work) as e, nginx(cache, work) as n:
        body_bytes = warm(e, ids)
        warm(n, ids[:10])
        print(f"{label}: {len(ids)} chunks, mean body {body_bytes // len(ids)} B", flush=True)
        for r in range(args.rounds):
            for name, url in (("edge", e), ("nginx", n)) if r % 2 == 0 else (("nginx", n), ("edge", e)):
                rps = run_wrk(url, script, args.duration, args.connections)
                results[name].append(rps)
                print(f"  round {r + 1} {name:5}: {rps:,.0f} req/s", flush=True)
    return label, statistics.median(results["edge"]), statistics.median(results["nginx"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    ensure_tools()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_edge pins servers and load to different CPUs: it needs at least 2")
    rows = []
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-edge-") as tmp:
        work = Path(tmp)
        for label, make in (("real chunk mix", real_chunks), ("64 KiB chunks", big_chunks)):
            cache = work / label.replace(" ", "-")
            ids = make(cache)
            rows.append(bench(label, cache, ids, work, args))
    print(
        f"\nmedians of {args.rounds} alternating runs, {args.duration}s each, wrk -t1 -c{args.connections}, "
        f"servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}\n"
    )
    print("| bodies | edge req/s | nginx req/s | edge / nginx |")
    print("|---|---|---|---|")
    for label, e, n in rows:
        print(f"| {label} | {e:,.0f} | {n:,.0f} | {e / n:.2f}x |")


if __name__ == "__main__":
    main()
