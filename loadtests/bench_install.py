"""The install work of an app of many files (issue 16: "install work stays in view"): the
real client installing every package of ``subapps.build_manyfile_app`` (thousands of
files) from a warm edge on loopback, against ``zstd -d | tar -x`` of a deterministic tar of
the same files followed by ``sync``, in the same run, rounds alternating (which goes first
alternates too).  File creation on this VM is noisy, so every round's ratio is shown
beside the medians.  Every client install is compared with the app's files, byte for byte.

What the client does that tar does not: it verifies every chunk and fsyncs every file and
directory of a staging tree before it swaps it in (an install is all or nothing across a
crash, docs/client.md); tar writes and one ``sync`` flushes everything at the end.

    python -m loadtests.bench_install [--rounds 5] [--subpackages 27] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from client.client import Client, ClientConfig
from common.signing import PublicKey
from loadtests.bench_delivery import cdn, deterministic_tar, ensure_zstd, move, publish, tree, wait_enriched
from loadtests.data import chains, ensure_data
from loadtests.subapps import build_manyfile_app

APP = "manyfile"


def install_minicdn(edge: str, key: Path, root: Path, packages: list[str]) -> float:
    config = ClientConfig(edges=(edge,), public_keys=(PublicKey.load(key),), store_dir=root / "store")

    async def go() -> None:
        async with Client(config) as c:
            await c.install(APP, root / "app", packages=packages)

    began = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - began


def install_tar(archive: Path, root: Path) -> float:
    out = root / "app"
    out.mkdir(parents=True)
    began = time.perf_counter()
    subprocess.run(f"zstd -d -q -c {archive} | tar -x -C {out}", shell=True, check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - began


def measure(rounds: int, subpackages: int, work: Path, log: Any = print) -> dict[str, Any]:
    data = ensure_data()
    weui = chains()["weui-miniprogram"]
    vant = chains()["@vant/weapp"][-1]
    app = build_manyfile_app(work / "src", vant, [weui[-1]] * subpackages, data_dir=data)
    files = tree(app)
    packages = [f"lib/w{k}" for k in range(subpackages)]
    tar = work / "app.tar"
    deterministic_tar(app, tar)
    subprocess.run(["zstd", "-19", "-q", "-f", str(tar), "-o", str(tar) + ".zst"], check=True)
    runs: dict[str, list[float]] = {"minicdn": [], "tar": []}
    with cdn(work / "cdn") as (origin, edge):
        publish(origin.url, APP, "1.0.0", app)
        wait_enriched(origin.url, APP, 1)
        move(origin.url, APP, "release", "1.0.0")
        key = work / "cdn" / "keys" / "public.key"
        install_minicdn(edge.url, key, work / "warm", packages)  # the edge warm: what is timed is the phone
        for r in range(rounds):
            order = ["minicdn", "tar"] if r % 2 == 0 else ["tar", "minicdn"]
            for who in order:
                root = work / f"round-{r}-{who}"
                if who == "minicdn":
                    seconds = install_minicdn(edge.url, key, root, packages)
                    if tree(root / "app") != files:
                        raise SystemExit("INVALID: the client's install is not the app's files")
                else:
                    seconds = install_tar(Path(str(tar) + ".zst"), root)
                runs[who].append(seconds)
                log(f"round {r + 1} {who:8}: {seconds:.3f} s")
                shutil.rmtree(root)
    ratios = [m / t for m, t in zip(runs["minicdn"], runs["tar"], strict=True)]
    return {
        "files": len(files),
        "bytes": sum(len(b) for b in files.values()),
        "minicdn": statistics.median(runs["minicdn"]),
        "tar": statistics.median(runs["tar"]),
        "ratio": statistics.median(runs["minicdn"]) / statistics.median(runs["tar"]),
        "round_ratios": [round(x, 2) for x in ratios],
        "runs": runs,
    }


def table(m: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Install of every package of an app of {m['files']:,} files ({m['bytes']:,} bytes), loopback, "
            "medians:",
            "",
            "| zstd -d \\| tar -x + sync | minicdn client | minicdn / tar | each round |",
            "|---|---|---|---|",
            f"| {m['tar']:.3f} s | {m['minicdn']:.3f} s | {m['ratio']:.2f}x | "
            f"{', '.join(f'{x:.2f}' for x in m['round_ratios'])} |",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--subpackages", type=int, default=27)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ensure_zstd()
    with tempfile.TemporaryDirectory(prefix="minicdn-bench-install-") as tmp:
        m = measure(a.rounds, a.subpackages, Path(tmp))
    print("\n" + table(m))
    if a.json:
        a.json.write_text(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
