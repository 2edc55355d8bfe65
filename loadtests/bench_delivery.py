"""``make bench-delivery``: what a phone downloads for installs and updates, against
Debian's ``zstd -19`` on the same files, in the same run.

For each chain of real packages (``make data``): every version is built into an app (a
few pages plus the library under miniprogram_npm/, loadtests/data.py), published to a real
origin (which adds bundles and deltas in the background; the run waits for them), and
fetched through a real edge with the real client (``client.Client``).  Every response
body is counted — ref, manifest, chunks, bundles, deltas — by the client and, to the
byte, by the edge's ``minicdn_edge_sent_bytes_total``; every install is compared with
the app's files.

- cold install of each version (empty store) against ``zstd -19`` of a deterministic tar
  of the same files (sorted, mode 0644, owner 0, mtime 0);
- each consecutive update (one client following the ``release`` channel) against
  ``zstd -19 --patch-from=old.tar new.tar``;
- the same updates by a second client forced to the chunks plan (``plan="chunks"``), for
  comparison with the full package size;
- metadata: the open answer (ref, heads, and the package manifests that changed, each as
  dcz (RFC 9842) against the installed one when that is smaller than zstd); the "metadata"
  column is what the edge sent for it.

Targets (issue 6): cold installs <= 1.05x the solid archive + 1 KiB; updates summed over
each chain <= 1.5x patch-from + 1 KiB per update; at most 4 requests per install or update.

    python -m loadtests.bench_delivery [--chain NAME] [--versions N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.client import Client, ClientConfig, FetchSummary
from common.signing import PublicKey
from loadtests.data import build_app, chains, ensure_data
from origin.cli import pack_folder
from tests.procs import Service, edge_service, metric, origin_service

TOKEN = "bench-token"
KIB = 1024


@dataclass
class Install:
    version: str
    files_bytes: int
    solid: int  # zstd -19 of the deterministic tar
    bytes: int  # every response body, as the client counted it
    edge_bytes: int  # the same, as the edge counted it
    requests: int
    plan: str


@dataclass
class Update:
    old: str
    new: str
    package_bytes: int  # the new version's files, uncompressed
    patch_from: int  # zstd -19 --patch-from=old.tar new.tar
    bytes: int
    edge_bytes: int
    requests: int
    plan: str
    manifest_bytes: int  # the manifest as the edge sent it (dcz against the installed one, or zstd)
    chunks_bytes: int  # the same update by a client forced to the chunks plan
    chunks_requests: int
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class Chain:
    name: str
    installs: list[Install]
    updates: list[Update]


# -- the files and the zstd reference ------------------------------------------------------


def deterministic_tar(root: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tf:
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix().encode()):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            with open(path, "rb") as f:
                tf.addfile(info, f)


def zstd_size(*args: str) -> int:
    r = subprocess.run(["zstd", "-19", "-q", "-c", *args], capture_output=True, check=True)
    return len(r.stdout)


def ensure_zstd() -> None:
    if shutil.which("zstd"):
        return
    print("installing Debian's zstd ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "zstd"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- talking to the origin -----------------------------------------------------------------


def _request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return bytes(r.read())


def publish(origin: str, app: str, version: str, folder: Path) -> None:
    buf = io.BytesIO()
    pack_folder(folder, buf)  # type: ignore[arg-type]
    _request("POST", f"{origin}/v1/apps/{app}/versions/{version}", buf.getvalue(), _auth())


def move(origin: str, app: str, channel: str, version: str) -> None:
    body = json.dumps({"version": version}).encode()
    headers = {**_auth(), "Content-Type": "application/json"}
    _request("PUT", f"{origin}/v1/apps/{app}/channels/{channel}", body, headers)


def wait_enriched(origin: str, app: str, count: int, timeout: float = 600) -> None:
    """Poll until ``count`` versions of ``app`` have their bundles and deltas."""
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(_request("GET", f"{origin}/v1/apps/{app}"))
        if sum(1 for v in info["versions"] if v.get("enriched")) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app}: versions not enriched within {timeout}s")
        time.sleep(0.1)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def cdn(work: Path) -> Iterator[tuple[Service, Service]]:
    # max-age 0: the edge revalidates the ref on every fetch, so a channel move is seen at once.
    origin = origin_service(work, TOKEN, "--ref-max-age", "0").start()
    edge: Service | None = None
    try:
        edge = edge_service(work, origin.url).start()
        yield origin, edge
    finally:
        if edge is not None:
            edge.stop()
        origin.stop()


# -- fetching ------------------------------------------------------------------------------


class Fetcher:
    """One client (its own store and install) fetching through one edge."""

    def __init__(self, edge: Service, key: Path, root: Path, plan: str = "auto") -> None:
        self.edge = edge
        self.out = root / "app"
        self.config = ClientConfig(
            edges=(edge.url,), public_keys=(PublicKey.load(key),), store_dir=root / "store", plan=plan
        )

    def fetch(self, app: str) -> tuple[FetchSummary, int]:
        before = metric(self.edge.url, "minicdn_edge_sent_bytes_total")
        summary = asyncio.run(self._install(app))
        sent = int(metric(self.edge.url, "minicdn_edge_sent_bytes_total") - before)
        if sent != summary.bytes_downloaded:
            raise AssertionError(f"edge sent {sent} B, client counted {summary.bytes_downloaded} B")
        return summary, sent

    async def _install(self, app: str) -> FetchSummary:
        async with Client(self.config) as c:
            return await c.install(app, self.out)


# -- the run -------------------------------------------------------------------------------


def run_chain(name: str, versions: list[str], work: Path, data_dir: Path, log: Any = print) -> Chain:
    app = name.strip("@").replace("/", "-").lower()
    apps, tars = {}, {}
    for v in versions:
        apps[v] = build_app(work / "apps" / v, {name: v}, data_dir=data_dir)
        tars[v] = work / "tars" / f"{v}.tar"
        tars[v].parent.mkdir(parents=True, exist_ok=True)
        deterministic_tar(apps[v], tars[v])
    installs, updates = [], []
    with cdn(work / "cdn") as (origin, edge):
        key = work / "cdn" / "keys" / "public.key"
        for v in versions:
            publish(origin.url, app, v, apps[v])
        wait_enriched(origin.url, app, len(versions))
        for i, v in enumerate(versions):
            move(origin.url, app, "release", v)
            s, sent = Fetcher(edge, key, work / "cold" / str(i)).fetch(app)
            _check(work / "cold" / str(i) / "app", apps[v], s)
            files = sum(len(b) for b in tree(apps[v]).values())
            solid = zstd_size(str(tars[v]))
            installs.append(Install(v, files, solid, s.bytes_downloaded, sent, s.requests, s.plan))
            log(f"  cold {name}@{v}: {s.bytes_downloaded} B, {s.requests} requests, plan {s.plan}")
        auto = Fetcher(edge, key, work / "follow-auto")
        chunks = Fetcher(edge, key, work / "follow-chunks", plan="chunks")
        move(origin.url, app, "release", versions[0])
        auto.fetch(app)
        chunks.fetch(app)
        for old, new in itertools.pairwise(versions):
            move(origin.url, app, "release", new)
            s, sent = auto.fetch(app)
            c, _ = chunks.fetch(app)
            _check(auto.out, apps[new], s)
            _check(chunks.out, apps[new], c)
            u = Update(
                old,
                new,
                s.package_bytes,
                zstd_size(f"--patch-from={tars[old]}", str(tars[new])),
                s.bytes_downloaded,
                sent,
                s.requests,
                s.plan,
                s.by_kind.get("open", 0),
                c.bytes_downloaded,
                c.requests,
                dict(s.by_kind),
            )
            updates.append(u)
            log(f"  update {name} {old} → {new}: {u.bytes} B ({u.plan}), chunks-only {u.chunks_bytes} B")
    return Chain(name, installs, updates)


def _check(out: Path, source: Path, s: FetchSummary) -> None:
    if tree(out) != tree(source):
        raise AssertionError(f"{s.app}@{s.version}: the install differs from the app's files")


# -- the report ----------------------------------------------------------------------------


def report(results: list[Chain]) -> tuple[str, bool]:
    lines = [
        "### Cold installs (empty store)",
        "",
        "| chain | version | files | zstd -19 tar | minicdn | ratio | requests | plan |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    ok = True
    for ch in results:
        for i in ch.installs:
            ratio = i.bytes / i.solid
            ok &= i.bytes <= 1.05 * i.solid + KIB and i.requests <= 4
            lines.append(
                f"| {ch.name} | {i.version} | {i.files_bytes:,} | {i.solid:,} | {i.bytes:,} | "
                f"{ratio:.3f}x | {i.requests} | {i.plan} |"
            )
    lines += [
        "",
        "### Updates (one client following `release`)",
        "",
        "| chain | update | patch-from | minicdn | ratio | req | plan | of which metadata "
        "| chunks-only | package | chunks-only / package |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    sums = []
    for ch in results:
        for u in ch.updates:
            ok &= u.requests <= 4
            lines.append(
                f"| {ch.name} | {u.old} → {u.new} | {u.patch_from:,} | {u.bytes:,} | "
                f"{u.bytes / u.patch_from:.2f}x | {u.requests} | {u.plan} | {u.manifest_bytes:,} | "
                f"{u.chunks_bytes:,} | {u.package_bytes:,} | {100 * u.chunks_bytes / u.package_bytes:.1f}% |"
            )
        n = len(ch.updates)
        if not n:
            continue
        pf = sum(u.patch_from for u in ch.updates)
        got = sum(u.bytes for u in ch.updates)
        chunks = sum(u.chunks_bytes for u in ch.updates)
        pkg = sum(u.package_bytes for u in ch.updates)
        limit = 1.5 * pf + KIB * n
        ok &= got <= limit
        sums.append(
            f"| {ch.name} | {n} | {pf:,} | {got:,} ({got / pf:.2f}x) | "
            f"{limit:,.0f} | {chunks:,} ({chunks / pf:.1f}x) | {pkg:,} | {100 * chunks / pkg:.1f}% |"
        )
    lines += [
        "",
        "### Updates summed per chain",
        "",
        "| chain | updates | patch-from | minicdn | target (1.5x + 1 KiB each) "
        "| chunks-only | packages | chunks-only / packages |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *sums,
    ]
    lines += [
        "",
        f"targets (cold <= 1.05x + 1 KiB, updates <= 1.5x patch-from + 1 KiB each, <= 4 requests), "
        f"as measured through the edge: {'met' if ok else 'NOT met'}",
    ]
    return "\n".join(lines), ok


def run(selected: dict[str, list[str]], work: Path, log: Any = print) -> list[Chain]:
    ensure_zstd()
    data_dir = ensure_data()
    out = []
    for name, versions in selected.items():
        log(f"{name}: {len(versions)} versions")
        out.append(run_chain(name, versions, work / name.strip("@").replace("/", "_"), data_dir, log))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", action="append", help="only this npm package's chain (repeatable)")
    ap.add_argument("--versions", type=int, default=0, help="only the first N versions of each chain")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    selected = {n: vs for n, vs in chains().items() if not args.chain or n in args.chain}
    if args.versions:
        selected = {n: vs[: args.versions] for n, vs in selected.items()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minicdn-delivery-") as tmp:
        results = run(selected, Path(tmp))
    text, _ok = report(results)
    print(
        f"\ndelivery: {sum(len(c.installs) for c in results)} app versions, "
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{subprocess.run(['zstd', '--version'], capture_output=True, text=True).stdout.strip()}, "
        f"{time.monotonic() - t0:.0f}s\n"
    )
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
