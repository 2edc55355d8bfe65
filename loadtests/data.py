"""``make data``: the real mini-program libraries that benchmarks and realistic tests use,
and ``build_app``, which turns them into app versions the way WeChat's "build npm" does.

The list (name, version, file, bytes, SHA-256) is ``loadtests/npm-packages.tsv``.  Each
file is taken from ``../shared/data/npm`` when that folder exists (a developer machine or
CI), else fetched with the ordinary npm client (``npm pack NAME@VERSION``); either way
its size and SHA-256 are checked and it is moved into place atomically.

    python -m loadtests.data fetch [--dest DIR]      # default dest: data/npm (git-ignored)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.fsutil import atomic_write

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).resolve().parent / "npm-packages.tsv"
SHARED = ROOT.parent / "shared" / "data" / "npm"
DEFAULT_DEST = ROOT / "data" / "npm"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    file: str
    size: int
    sha256: str


def packages() -> list[Package]:
    out = []
    for line in LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, version, file, size, sha = line.split("\t")
        out.append(Package(name, version, file, int(size), sha))
    return out


def chains() -> dict[str, list[str]]:
    """Each npm package's versions in release order (the order of the list)."""
    out: dict[str, list[str]] = {}
    for p in packages():
        out.setdefault(p.name, []).append(p.version)
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _ok(path: Path, pkg: Package) -> bool:
    return path.is_file() and path.stat().st_size == pkg.size and _digest(path) == pkg.sha256


def _install(src: Path, dest: Path, pkg: Package) -> None:
    if src.stat().st_size != pkg.size or _digest(src) != pkg.sha256:
        raise SystemExit(f"{pkg.file}: SHA-256 or size mismatch (expected {pkg.sha256}); not installed")
    atomic_write(dest, src.read_bytes())


def _npm_pack(pkg: Package, tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"{pkg.file}: not available locally and npm is not installed (apt-get install npm)")
    r = subprocess.run(
        [npm, "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", str(tmp), "--silent"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        raise SystemExit(f"{pkg.file}: npm pack failed: {r.stderr.strip()[:500]}")
    got = tmp / pkg.file
    if not got.exists():
        raise SystemExit(f"{pkg.file}: npm pack did not produce it (got {r.stdout.strip()!r})")
    return got


def ensure_data(dest: Path | None = None, *, verbose: bool = False) -> Path:
    """Make sure every package is in ``dest`` with the right SHA-256; returns ``dest``."""
    dest = dest or DEFAULT_DEST
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in packages():
        target = dest / pkg.file
        if _ok(target, pkg):
            how = "ok"
        elif (SHARED / pkg.file).is_file():
            _install(SHARED / pkg.file, target, pkg)
            how = "copied"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                _install(_npm_pack(pkg, Path(tmp)), target, pkg)
            how = "fetched"
        if verbose:
            print(f"{how:8} {pkg.name}@{pkg.version} ({pkg.file})")
    return dest


# -- building realistic apps --------------------------------------------------------------


def _library_files(tgz: Path) -> tuple[str, dict[str, bytes]]:
    """(package name, {path: bytes}) of the folder a mini-program ships from an npm tarball:
    the one named by package.json's ``miniprogram`` field."""
    files: dict[str, bytes] = {}
    with tarfile.open(tgz, "r:gz") as tf:
        for m in tf.getmembers():
            parts = m.name.split("/")
            if not m.isreg() or parts[0] != "package" or ".." in parts:
                continue
            f = tf.extractfile(m)
            assert f is not None
            files["/".join(parts[1:])] = f.read()
    meta = json.loads(files["package.json"])
    folder = str(meta.get("miniprogram", "miniprogram_dist")).strip("/")
    shipped = {p[len(folder) + 1 :]: b for p, b in files.items() if p.startswith(folder + "/")}
    if not shipped:
        raise ValueError(f"{tgz.name}: package.json names {folder!r}, which is empty")
    return meta["name"], shipped


def _components(lib: dict[str, bytes], limit: int) -> list[str]:
    """A few component paths of a library (folders holding index.json), in a stable order."""
    comps = sorted({p.rsplit("/", 1)[0] for p in lib if p.endswith("/index.json") and p.count("/") == 1})
    return comps[:limit]


def _page(i: int, title: str, comps: dict[str, str], revision: int) -> dict[str, bytes]:
    uses = "\n".join(f"  <{tag} />" for tag in comps)
    js = (
        f"// page {i}: {title}\nPage({{\n"
        f"  data: {{ title: '{title}', revision: {revision if i == 0 else 0} }},\n"
        "  onLoad(query) { this.setData({ query }); },\n"
        "  onShow() { wx.setNavigationBarTitle({ title: this.data.title }); },\n});\n"
    )
    return {
        f"pages/p{i}/index.js": js.encode(),
        f"pages/p{i}/index.json": json.dumps({"usingComponents": comps}, indent=2).encode(),
        f"pages/p{i}/index.wxml": f'<view class="page">\n  <text>{title}</text>\n{uses}\n</view>\n'.encode(),
        f"pages/p{i}/index.wxss": b".page { padding: 24rpx; }\n",
    }


def build_app(
    dest: Path,
    libs: dict[str, str],
    *,
    pages: int = 3,
    data_dir: Path | None = None,
    app_name: str = "app",
    revision: int = 0,
) -> Path:
    """Build an app folder at ``dest``: app.json, ``pages`` pages using components of each
    library, and each library (npm name → version) under ``miniprogram_npm/<name>/``.

    Deterministic: the same arguments give byte-identical files.  ``revision`` changes one
    line of the first page (an app-side edit between two versions)."""
    data_dir = data_dir or ensure_data()
    index = {(p.name, p.version): p for p in packages()}
    files: dict[str, bytes] = {}
    comps: dict[str, str] = {}
    for name, version in sorted(libs.items()):
        pkg = index[(name, version)]
        npm_name, lib = _library_files(data_dir / pkg.file)
        for path, body in lib.items():
            files[f"miniprogram_npm/{npm_name}/{path}"] = body
        for c in _components(lib, 4):
            tag = f"{npm_name.split('/')[-1].replace('weui-miniprogram', 'mp')}-{c.replace('/', '-')}"
            comps[tag] = f"{npm_name}/{c}/index"
    tags = sorted(comps)
    for i in range(pages):
        mine = {t: comps[t] for t in tags[i::pages]} if tags else {}
        files.update(_page(i, f"{app_name} page {i}", mine, revision))
    files["app.json"] = json.dumps(
        {
            "pages": [f"pages/p{i}/index" for i in range(pages)],
            "window": {"navigationBarTitleText": app_name},
            "usingComponents": {},
        },
        indent=2,
    ).encode()
    if dest.exists():
        shutil.rmtree(dest)
    for path, body in files.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch and check every package")
    f.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        dest = ensure_data(args.dest, verbose=True)
        print(f"{len(packages())} packages in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
