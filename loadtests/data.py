"""``make data``: the real mini-program libraries that benchmarks and realistic tests use,
and ``build_app``, which turns them into app versions the way WeChat's "build npm" does.

The list (name, version, file, bytes, SHA-256) is ``loadtests/npm-packages.tsv``.  Each
file is taken from ``../shared/data/npm`` (relative to the repository root) when that
folder holds it, else fetched with the ordinary npm client (``npm pack NAME@VERSION``, from
whatever registry npm is configured for); either way its size and SHA-256 are checked while
it is written to a temp file next to the target, which is then fsynced and renamed into place.

    python -m loadtests.data fetch [--dest DIR]      # default dest: data/npm (git-ignored)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).resolve().parent / "npm-packages.tsv"
SHARED = ROOT.parent / "shared" / "data" / "npm"
DEFAULT_DEST = ROOT / "data" / "npm"

# The tag prefixes each library's own documentation uses (<van-button>, <mp-dialog>).
_TAG_PREFIX = {"@vant/weapp": "van", "weui-miniprogram": "mp"}


class DataError(Exception):
    """A package could not be put in place (wrong bytes, npm missing or failing)."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    file: str
    size: int
    sha256: str


def packages() -> list[Package]:
    """The rows of ``npm-packages.tsv``, in file order (each package's release order)."""
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
    """Copy ``src`` to ``dest`` atomically, checking the bytes actually written against
    ``pkg``'s size and SHA-256; on a mismatch nothing is left behind and DataError names the file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
                size += len(piece)
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        if size != pkg.size or h.hexdigest() != pkg.sha256:
            raise DataError(
                f"{pkg.file}: SHA-256/size mismatch (got {size} bytes, {h.hexdigest()}; "
                f"expected {pkg.size} bytes, {pkg.sha256}); not installed"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dirfd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _npm_pack(pkg: Package, tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            f"{pkg.file}: not in the destination nor in {SHARED}, and the npm client is not "
            "installed to fetch it (install npm, e.g. `apt-get install npm`, and re-run)"
        )
    try:
        r = subprocess.run(
            [npm, "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", str(tmp)],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as e:
        raise DataError(f"{pkg.file}: npm pack {pkg.name}@{pkg.version} timed out") from e
    if r.returncode != 0:
        raise DataError(f"{pkg.file}: npm pack {pkg.name}@{pkg.version} failed: {r.stderr.strip()[-800:]}")
    got = tmp / pkg.file
    if not got.is_file():
        tgzs = sorted(tmp.glob("*.tgz"))
        if len(tgzs) != 1:
            raise DataError(f"{pkg.file}: npm pack did not produce it (stdout: {r.stdout.strip()[-300:]!r})")
        got = tgzs[0]
    return got


def ensure_data(dest: Path | None = None, *, verbose: bool = False) -> Path:
    """Make sure every package is in ``dest`` (default ``data/npm``) with the right size and
    SHA-256, copying from ``../shared`` or fetching with npm as needed; returns ``dest``."""
    dest = Path(dest) if dest is not None else DEFAULT_DEST
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in packages():
        target = dest / pkg.file
        shared = SHARED / pkg.file
        if _ok(target, pkg):
            how = "ok"
        elif shared.is_file() and shared.resolve() != target.resolve():
            _install(shared, target, pkg)
            how = "copied"
        else:
            with tempfile.TemporaryDirectory(prefix="minicdn-npm-") as tmp:
                _install(_npm_pack(pkg, Path(tmp)), target, pkg)
            how = "fetched"
        if verbose:
            print(f"{how:8} {pkg.name}@{pkg.version} ({pkg.file})", flush=True)
    return dest


# -- building realistic apps --------------------------------------------------------------


def _library_files(tgz: Path) -> tuple[str, dict[str, bytes]]:
    """(package name, {path: bytes}) of the folder a mini-program ships from an npm tarball:
    the one named by package.json's ``miniprogram`` field.  Only regular files under
    ``package/`` are read; links, devices and paths with ``..`` are ignored."""
    files: dict[str, bytes] = {}
    with tarfile.open(tgz, "r:gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isreg() or len(parts) < 2 or parts[0] != "package":
                continue
            if any(p in ("", ".", "..") or "\\" in p for p in parts[1:]):
                continue
            f = tf.extractfile(m)
            if f is None:
                continue
            files["/".join(parts[1:])] = f.read()
    if "package.json" not in files:
        raise ValueError(f"{tgz.name}: no package/package.json")
    meta = json.loads(files["package.json"])
    folder = str(meta.get("miniprogram") or "miniprogram_dist").strip("/")
    if not folder or ".." in folder.split("/"):
        raise ValueError(f"{tgz.name}: bad miniprogram folder {folder!r}")
    shipped = {p[len(folder) + 1 :]: b for p, b in files.items() if p.startswith(folder + "/")}
    if not shipped:
        raise ValueError(f"{tgz.name}: package.json names {folder!r}, which is empty")
    return str(meta["name"]), shipped


def _components(lib: dict[str, bytes], limit: int) -> list[str]:
    """Up to ``limit`` component paths of a library (``button/index``, ``dialog/dialog``):
    top-level folders holding a ``.json`` with ``"component": true`` plus its ``.js`` and
    ``.wxml``, in sorted order."""
    found = []
    for folder in sorted({p.split("/", 1)[0] for p in lib if "/" in p}):
        for stem in ("index", folder):
            base = f"{folder}/{stem}"
            if f"{base}.js" not in lib or f"{base}.wxml" not in lib or f"{base}.json" not in lib:
                continue
            try:
                meta = json.loads(lib[f"{base}.json"])
            except ValueError:
                continue
            if isinstance(meta, dict) and meta.get("component") is True:
                found.append(base)
                break
    return found[:limit]


def _tag(npm_name: str, comp: str) -> str:
    prefix = _TAG_PREFIX.get(npm_name, npm_name.rsplit("/", 1)[-1])
    return f"{prefix}-{comp.split('/', 1)[0]}"


_SECTIONS = ("Featured", "New arrivals", "Seasonal", "Best sellers", "Near you", "Offers")


def _page(i: int, app_name: str, comps: dict[str, str], revision: int) -> dict[str, bytes]:
    """One of the app's own pages: a list page with a header, a pull-to-refresh list and
    the library components given (tag → path).  Page 0 shows ``revision`` in its banner."""
    title = _SECTIONS[i % len(_SECTIONS)]
    if i >= len(_SECTIONS):
        title += f" {i // len(_SECTIONS) + 1}"
    banner = f"Welcome to {app_name}" + (f" (update {revision})" if i == 0 and revision else "")
    items = ",\n".join(
        f"      {{ id: {i * 100 + k}, name: 'Item {i}.{k}', price: {(i * 37 + k * 113) % 4000 + 500}, "
        f"tag: '{_SECTIONS[(i + k) % len(_SECTIONS)].lower()}' }}"
        for k in range(8)
    )
    js = f"""// {app_name}: page {i} ({title}).
const PAGE_SIZE = 8;

function priceText(cents) {{
  return `${{Math.floor(cents / 100)}}.${{String(cents % 100).padStart(2, '0')}}`;
}}

Page({{
  data: {{
    title: '{title}',
    banner: '{banner}',
    loading: false,
    finished: false,
    page: 0,
    items: [],
    all: [
{items}
    ],
  }},

  onLoad(query) {{
    this.query = query || {{}};
    this.loadMore();
  }},

  onShow() {{
    wx.setNavigationBarTitle({{ title: this.data.title }});
  }},

  onPullDownRefresh() {{
    this.setData({{ page: 0, items: [], finished: false }});
    this.loadMore();
    wx.stopPullDownRefresh();
  }},

  onReachBottom() {{
    if (!this.data.finished) this.loadMore();
  }},

  loadMore() {{
    const start = this.data.page * PAGE_SIZE;
    const next = this.data.all.slice(start, start + PAGE_SIZE).map((it) => ({{
      ...it,
      priceText: priceText(it.price),
    }}));
    this.setData({{
      items: this.data.items.concat(next),
      page: this.data.page + 1,
      finished: start + PAGE_SIZE >= this.data.all.length,
    }});
  }},

  onTapItem(e) {{
    const id = e.currentTarget.dataset.id;
    wx.showToast({{ title: `#${{id}}`, icon: 'none' }});
  }},
}});
"""
    uses = "".join(f"  <{tag} />\n" for tag in comps)
    wxml = f"""<view class="page">
  <view class="banner">{{{{banner}}}}</view>
  <view class="header">
    <text class="title">{{{{title}}}}</text>
  </view>
{uses}  <view class="list">
    <view wx:for="{{{{items}}}}" wx:key="id" class="item" data-id="{{{{item.id}}}}" bindtap="onTapItem">
      <text class="name">{{{{item.name}}}}</text>
      <text class="tag">{{{{item.tag}}}}</text>
      <text class="price">{{{{item.priceText}}}}</text>
    </view>
  </view>
  <view wx:if="{{{{finished}}}}" class="footer">No more items</view>
</view>
"""
    wxss = """.page { padding: 24rpx; background: #f7f7f7; min-height: 100vh; }
.banner { padding: 16rpx 24rpx; border-radius: 12rpx; background: #fff4e5; color: #8a5a00; }
.header { display: flex; align-items: center; margin: 24rpx 0 16rpx; }
.title { font-size: 36rpx; font-weight: 600; }
.list { background: #fff; border-radius: 12rpx; }
.item { display: flex; align-items: center; padding: 24rpx; border-bottom: 1rpx solid #eee; }
.item:last-child { border-bottom: none; }
.name { flex: 1; font-size: 30rpx; }
.tag { margin-right: 16rpx; font-size: 22rpx; color: #999; }
.price { font-size: 30rpx; color: #e4393c; }
.footer { padding: 32rpx; text-align: center; color: #aaa; font-size: 24rpx; }
"""
    page_json = {"navigationBarTitleText": title, "enablePullDownRefresh": True, "usingComponents": comps}
    return {
        f"pages/p{i}/index.js": js.encode(),
        f"pages/p{i}/index.json": (json.dumps(page_json, indent=2) + "\n").encode(),
        f"pages/p{i}/index.wxml": wxml.encode(),
        f"pages/p{i}/index.wxss": wxss.encode(),
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
    """Build an app folder at ``dest``: ``app.json`` (pages, window, and the first component
    of each library as a global component), ``app.js``/``app.wxss``, ``pages`` pages using
    further components, and each library (npm name → version) under ``miniprogram_npm/<name>/``.

    Deterministic: the same arguments give byte-identical files, and the app's own files do
    not depend on the library versions, so two versions differ only under ``miniprogram_npm/``
    — unless ``revision`` differs, which changes one line of the first page.  An existing
    ``dest`` is replaced if it is empty or a previous build (holds ``app.json``)."""
    if pages < 1:
        raise ValueError("an app needs at least one page")
    dest = Path(dest)
    data_dir = Path(data_dir) if data_dir is not None else ensure_data()
    index = {(p.name, p.version): p for p in packages()}
    files: dict[str, bytes] = {}
    global_comps: dict[str, str] = {}
    page_comps: dict[str, str] = {}
    for name, version in sorted(libs.items()):
        if (name, version) not in index:
            raise KeyError(f"{name}@{version} is not in {LIST.name}")
        npm_name, lib = _library_files(data_dir / index[(name, version)].file)
        for path, body in lib.items():
            files[f"miniprogram_npm/{npm_name}/{path}"] = body
        for k, comp in enumerate(_components(lib, 1 + 2 * pages)):
            (global_comps if k == 0 else page_comps)[_tag(npm_name, comp)] = f"{npm_name}/{comp}"
    tags = sorted(page_comps)
    for i in range(pages):
        files.update(_page(i, app_name, {t: page_comps[t] for t in tags[i::pages]}, revision))
    app_json = {
        "pages": [f"pages/p{i}/index" for i in range(pages)],
        "window": {
            "navigationBarTitleText": app_name,
            "navigationBarBackgroundColor": "#ffffff",
            "navigationBarTextStyle": "black",
            "backgroundTextStyle": "dark",
        },
        "usingComponents": global_comps,
        "sitemapLocation": "sitemap.json",
    }
    files["app.json"] = (json.dumps(app_json, indent=2) + "\n").encode()
    files["app.js"] = (
        f"// {app_name}\nApp({{\n  globalData: {{ name: '{app_name}', launchedAt: 0 }},\n"
        "  onLaunch() {\n    this.globalData.launchedAt = Date.now();\n  },\n});\n"
    ).encode()
    files["app.wxss"] = b"page { font-family: -apple-system, 'PingFang SC', sans-serif; color: #333; }\n"
    files["sitemap.json"] = b'{\n  "rules": [{ "action": "allow", "page": "*" }]\n}\n'

    if dest.exists():
        if any(dest.iterdir()) and not (dest / "app.json").is_file():
            raise FileExistsError(f"{dest} exists and is not an app folder; not replacing it")
        shutil.rmtree(dest)
    for path in sorted(files):
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[path])
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch and check every package")
    f.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"default: {DEFAULT_DEST}")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        try:
            dest = ensure_data(args.dest, verbose=True)
        except DataError as e:
            print(f"make data: {e}", file=sys.stderr)
            return 1
        print(f"{len(packages())} packages in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
