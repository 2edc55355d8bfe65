"""What a phone pays for the metadata of an app with many subpackages (issue 16's rows), in
bytes through a real edge, against ``zstd -19`` of just the files it installs.

The app: ``loadtests.subapps`` — ``build_app``'s main package (two pages and
``@vant/weapp`` under miniprogram_npm/) plus ``--subpackages`` subpackages of five files each
(1,000: 5,000 files).  Three versions are published to a real origin (bundles and deltas
made, the run waits for them): v2 changes subpackage ``sub/s0007`` only, v3 changes ten
other subpackages only.  Every body the client receives is counted (ref, manifest, bundles,
deltas, chunks), and checked against the edge's ``minicdn_edge_sent_bytes_total``; every
install is compared with the app's files.

| row | what the phone does | anchor |
|---|---|---|
| cold open | installs the main package of v1 (empty store) | zstd -19 of a tar of the main package |
| open one subpackage | has the main package, opens ``sub/s0500`` | zstd -19 of a tar of that subpackage |
| update one subpackage | has main + ``sub/s0007`` at v1, updates to v2 | --patch-from, those files |
| update, nothing of it changed | has main + ``sub/s0007`` at v2, updates to v3 | 0 |

Issue 16's goals are printed beside each row (≤ 1.05x + 2 KiB; ≤ 1.05x + 2 KiB; ≤ 1.5x +
2 KiB; ≤ 1 KiB); nothing is asserted here: the rows are the baseline the new format must
beat.  ``--publish-only N`` publishes an app of N subpackages and reports whether the
origin took it and how long that took (issue 16: 10,000 must publish).

    python -m loadtests.bench_metadata [--subpackages 1000] [--json FILE] [--publish-only N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.client import Client, ClientConfig, FetchSummary
from common.signing import PublicKey
from loadtests.bench_delivery import (
    cdn,
    deterministic_tar,
    ensure_zstd,
    move,
    publish,
    tree,
    wait_enriched,
    zstd_size,
)
from loadtests.data import build_app, chains, ensure_data
from loadtests.subapps import build_manyfile_app, build_subpackage_app, sub_root
from tests.procs import Service, metric

LIB = "@vant/weapp"
APP = "many"
OTHER = "other"
MANYFILE = "manyfile"
KIB = 1024


@dataclass
class Row:
    name: str
    bytes: int
    anchor: int
    requests: int
    plan: str
    goal: str
    met: bool
    by_kind: dict[str, int]


def subset_tar(root: Path, keep: Any, out: Path, work: Path) -> Path:
    """A deterministic tar of the files of ``root`` whose relative path ``keep`` accepts."""
    import shutil

    copy = work / f"subset-{out.stem}"
    shutil.rmtree(copy, ignore_errors=True)
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and keep(rel):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_bytes(path.read_bytes())
    deterministic_tar(copy, out)
    return out


class Phone:
    """One client with its own store and install, fetching through one edge."""

    def __init__(self, edge: Service, key: Path, root: Path) -> None:
        self.edge, self.out = edge, root / "app"
        self.config = ClientConfig(
            edges=(edge.url,), public_keys=(PublicKey.load(key),), store_dir=root / "store"
        )

    def install(
        self, packages: tuple[str, ...] = (), app: str = APP, out: Path | None = None
    ) -> FetchSummary:
        before = metric(self.edge.url, "minicdn_edge_sent_bytes_total")

        async def go() -> FetchSummary:
            async with Client(self.config) as c:
                return await c.install(app, out or self.out, packages=list(packages))

        s = asyncio.run(go())
        sent = int(metric(self.edge.url, "minicdn_edge_sent_bytes_total") - before)
        if sent != s.bytes_downloaded:
            raise SystemExit(f"INVALID: the edge sent {sent} B, the client counted {s.bytes_downloaded} B")
        return s


def _same(out: Path, app: Path, keep: Any) -> None:
    want = {k: v for k, v in tree(app).items() if keep(k)}
    if tree(out) != want:
        raise SystemExit(f"INVALID: {out} is not the app's files")


def _is_main(rel: str) -> bool:
    return not rel.startswith("sub/")


def _row(
    name: str, s: FetchSummary, anchor: int, slack: int, factor: float, *, metadata: bool = False
) -> Row:
    """A row judged on every byte, or with ``metadata`` on the open answer's alone."""
    limit = int(anchor * factor) + slack
    goal = f"<= {factor:g}x + {slack // KIB} KiB" if factor else f"<= {slack // KIB} KiB"
    judged = s.by_kind.get("open", 0) if metadata else s.bytes_downloaded
    return Row(
        name,
        s.bytes_downloaded,
        anchor,
        s.requests,
        s.plan,
        goal + (" of metadata" if metadata else ""),
        judged <= limit,
        dict(s.by_kind),
    )


def measure(subpackages: int, work: Path, log: Any = print) -> list[Row]:
    data = ensure_data()
    lib = chains()[LIB][-1]
    v = {
        "1.0.0": {},
        "1.0.1": {7: 1},
        "1.0.2": {7: 1, **{i: 1 for i in range(100, 110)}},
    }
    apps = {
        ver: build_subpackage_app(
            work / "apps" / ver, {LIB: lib}, subpackages, app_name=APP, revisions=revs, data_dir=data
        )
        for ver, revs in v.items()
    }
    one, opened = sub_root(7), sub_root(min(500, subpackages - 1))

    def mine(rel: str) -> bool:
        return _is_main(rel) or rel.startswith(one + "/")

    tars = work / "tars"
    tars.mkdir(parents=True, exist_ok=True)
    main_tar = subset_tar(apps["1.0.0"], _is_main, tars / "main.tar", work)
    opened_tar = subset_tar(apps["1.0.0"], lambda r: r.startswith(opened + "/"), tars / "opened.tar", work)
    mine_old = subset_tar(apps["1.0.0"], mine, tars / "mine-old.tar", work)
    mine_new = subset_tar(apps["1.0.1"], mine, tars / "mine-new.tar", work)
    rows = []
    with cdn(work / "cdn") as (origin, edge):
        key = work / "cdn" / "keys" / "public.key"
        began = time.monotonic()
        for ver, folder in apps.items():
            publish(origin.url, APP, ver, folder)
        wait_enriched(origin.url, APP, len(apps))
        took = time.monotonic() - began
        log(f"published and enriched 3 versions of {subpackages} subpackages in {took:.1f} s")
        move(origin.url, APP, "release", "1.0.0")
        cold = Phone(edge, key, work / "cold")
        s = cold.install()
        _same(cold.out, apps["1.0.0"], _is_main)
        rows.append(_row("cold open of the main package", s, zstd_size(str(main_tar)), 2 * KIB, 1.05))
        s = cold.install((opened,))
        _same(cold.out, apps["1.0.0"], lambda r: _is_main(r) or r.startswith(opened + "/"))
        rows.append(_row(f"open one subpackage ({opened})", s, zstd_size(str(opened_tar)), 2 * KIB, 1.05))
        phone = Phone(edge, key, work / "follower")
        phone.install((one,))
        move(origin.url, APP, "release", "1.0.1")
        s = phone.install((one,))
        _same(phone.out, apps["1.0.1"], mine)
        patch = zstd_size(f"--patch-from={mine_old}", str(mine_new))
        rows.append(_row(f"update of one installed subpackage ({one})", s, patch, 2 * KIB, 1.5))
        move(origin.url, APP, "release", "1.0.2")
        s = phone.install((one,))
        _same(phone.out, apps["1.0.2"], mine)
        rows.append(_row("update in which nothing it has changed", s, 0, 1 * KIB, 0))
        # another app with the same library, on the phone that holds this one's main package
        other = build_app(work / "apps" / OTHER, {LIB: lib}, pages=3, data_dir=data, app_name=OTHER)
        publish(origin.url, OTHER, "1.0.0", other)
        wait_enriched(origin.url, OTHER, 1)
        move(origin.url, OTHER, "release", "1.0.0")
        s = cold.install(app=OTHER, out=work / "cold" / OTHER)
        _same(work / "cold" / OTHER, other, lambda _: True)
        rows.append(_row(f"cold open of another app using {LIB} (metadata)", s, 0, 2 * KIB, 0, metadata=True))
        rows += manyfile_rows(origin, edge, key, work, data)
    return rows


def manyfile_rows(origin: Service, edge: Service, key: Path, work: Path, data: Path) -> list[Row]:
    """Updates of an app of many files (``subapps.build_manyfile_app``) on a phone that holds
    its main package and one subpackage: the main package's library moves, then both."""
    vant, weui = chains()[LIB], chains()["weui-miniprogram"]
    versions = {
        "2.0.0": (vant[-3], [weui[-2]] * 9),
        "2.0.1": (vant[-2], [weui[-2]] * 9),  # the main package changes
        "2.0.2": (vant[-1], [weui[-1]] + [weui[-2]] * 8),  # the main package and lib/w0
    }
    apps = {
        v: build_manyfile_app(work / "apps" / f"mf-{v}", main, subs, data_dir=data)
        for v, (main, subs) in versions.items()
    }
    for v, folder in apps.items():
        publish(origin.url, MANYFILE, v, folder)
    wait_enriched(origin.url, MANYFILE, len(apps))

    def held(rel: str) -> bool:
        return not rel.startswith("lib/") or rel.startswith("lib/w0/")

    files = sum(1 for p in apps["2.0.0"].rglob("*") if p.is_file())
    tars = {v: subset_tar(folder, held, work / "tars" / f"mf-{v}.tar", work) for v, folder in apps.items()}
    phone = Phone(edge, key, work / "manyfile")
    move(origin.url, MANYFILE, "release", "2.0.0")
    phone.install(("lib/w0",), app=MANYFILE)
    rows = []
    for old, new in itertools.pairwise(apps):
        move(origin.url, MANYFILE, "release", new)
        s = phone.install(("lib/w0",), app=MANYFILE)
        _same(phone.out, apps[new], held)
        patch = zstd_size(f"--patch-from={tars[old]}", str(tars[new]))
        rows.append(_row(f"{MANYFILE} ({files:,} files, 9 subpackages) {old} → {new}", s, patch, KIB, 1.5))
    return rows


def publish_only(subpackages: int, work: Path) -> dict[str, Any]:
    folder = build_subpackage_app(work / "app", {LIB: chains()[LIB][-1]}, subpackages, app_name=APP)
    with cdn(work / "cdn") as (origin, _edge):
        began = time.monotonic()
        try:
            publish(origin.url, APP, "1.0.0", folder)
        except urllib.error.HTTPError as exc:  # the origin's refusal, reported with its reason
            why = exc.read().decode(errors="replace")[:500]
            return {"subpackages": subpackages, "published": False, "status": exc.code, "error": why}
        return {"subpackages": subpackages, "published": True, "seconds": round(time.monotonic() - began, 2)}


def table(rows: list[Row], subpackages: int) -> str:
    lines = [
        f"An app of {subpackages} subpackages ({subpackages * 5:,} files) plus a main package; "
        "bytes through an edge.",
        "",
        "| what the phone does | bytes | of which metadata | anchor | ratio | requests | plan "
        "| issue 16's goal | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.bytes / r.anchor:.1f}x" if r.anchor else "—"
        lines.append(
            f"| {r.name} | {r.bytes:,} | {r.by_kind.get('open', 0):,} | {r.anchor:,} | {ratio} | "
            f"{r.requests} | {r.plan} | {r.goal} | {'yes' if r.met else 'no'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subpackages", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--publish-only", type=int, default=0, help="publish an app of N subpackages, and stop")
    a = ap.parse_args()
    ensure_zstd()
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-metadata-") as tmp:
        if a.publish_only:
            print(json.dumps(publish_only(a.publish_only, Path(tmp))))
            return 0
        rows = measure(a.subpackages, Path(tmp))
    print("\n" + table(rows, a.subpackages))
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
