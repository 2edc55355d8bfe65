"""``make data``, the realistic-app builder, and the sample app in examples/demo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from loadtests import data

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- make data ----------------------------------------------------------------------------


def test_every_package_is_present_with_its_sha256() -> None:
    dest = data.ensure_data()
    pkgs = data.packages()
    assert len(pkgs) == 16
    assert {p.name for p in pkgs} == {"@vant/weapp", "weui-miniprogram"}
    for p in pkgs:
        f = dest / p.file
        assert f.stat().st_size == p.size, p.file
        assert _sha(f) == p.sha256, p.file


def test_the_list_matches_the_shared_manifest() -> None:
    manifest = data.SHARED / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not present on this machine")
    assert data.LIST.read_text() == manifest.read_text()


def test_a_corrupted_copy_is_detected_and_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkgs = data.packages()
    needed = [pkgs[0], pkgs[-1]]
    if not all((data.SHARED / p.file).is_file() for p in needed) and shutil.which("npm") is None:
        pytest.skip("neither ../shared/data/npm nor the npm client is available to repair the copy")
    dest = tmp_path / "npm"
    shutil.copytree(data.ensure_data(), dest)
    (dest / needed[0].file).write_bytes(b"corrupt")  # wrong size
    with open(dest / needed[1].file, "r+b") as f:  # right size, one byte flipped
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    assert _sha(dest / needed[1].file) != needed[1].sha256
    capsys.readouterr()
    data.ensure_data(dest, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pkgs)
    for p in pkgs:
        assert _sha(dest / p.file) == p.sha256
        how = next(x for x in lines if f"({p.file})" in x).split()[0]
        assert how in (("copied", "fetched") if p in needed else ("ok",)), (p.file, how)
    assert sorted(os.listdir(dest)) == sorted(p.file for p in pkgs)  # no temp files left


def _fake_npm(bin_dir: Path, source: Path, *, corrupt: bool = False) -> Path:
    """An ``npm`` that 'packs' by copying from ``source`` (optionally flipping a byte), and
    logs its arguments: the fetch path, tested without a network."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "npm.log"
    script = bin_dir / "npm"
    script.write_text(
        f"""#!{sys.executable}
import pathlib, sys
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
assert args[0] == "pack" and args[2] == "--pack-destination", args
name, version = args[1].rsplit("@", 1)
file = name.lstrip("@").replace("/", "-") + "-" + version + ".tgz"
body = bytearray((pathlib.Path({str(source)!r}) / file).read_bytes())
if {corrupt!r}:
    body[500] ^= 0xFF
(pathlib.Path(args[3]) / file).write_bytes(bytes(body))
print(file)
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def test_missing_files_are_fetched_with_npm_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = data.ensure_data()
    log = _fake_npm(tmp_path / "bin", src)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(data, "SHARED", tmp_path / "no-shared")
    dest = tmp_path / "npm"
    dest.mkdir()
    pkgs = data.packages()
    for p in pkgs[1:]:
        shutil.copy(src / p.file, dest / p.file)
    assert data.main(["fetch", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"fetched  {pkgs[0].name}@{pkgs[0].version} ({pkgs[0].file})" in out
    assert out.count("ok ") == len(pkgs) - 1
    assert log.read_text().split() == [
        "pack",
        f"{pkgs[0].name}@{pkgs[0].version}",
        "--pack-destination",
        log.read_text().split()[3],
    ]
    assert _sha(dest / pkgs[0].file) == pkgs[0].sha256


def test_a_wrong_download_is_a_hard_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = data.ensure_data()
    _fake_npm(tmp_path / "bin", src, corrupt=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(data, "SHARED", tmp_path / "no-shared")
    dest = tmp_path / "npm"
    pkg = data.packages()[0]
    with pytest.raises(data.DataError, match=rf"{pkg.file}.*SHA-256"):
        data.ensure_data(dest)
    assert list(dest.iterdir()) == []
    assert data.main(["fetch", "--dest", str(dest)]) == 1
    assert pkg.file in capsys.readouterr().err
    assert list(dest.iterdir()) == []


def test_no_npm_and_no_local_copy_exits_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(data, "SHARED", tmp_path / "no-shared")
    assert data.main(["fetch", "--dest", str(tmp_path / "npm")]) == 1
    err = capsys.readouterr().err
    assert "npm" in err and data.packages()[0].file in err


def test_install_refuses_wrong_bytes_and_leaves_nothing(tmp_path: Path) -> None:
    pkg = data.packages()[0]
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"x" * pkg.size)
    out = tmp_path / "out"
    out.mkdir()
    (out / pkg.file).write_bytes(b"previous")
    with pytest.raises(data.DataError, match="SHA-256"):
        data._install(bad, out / pkg.file, pkg)
    assert os.listdir(out) == [pkg.file] and (out / pkg.file).read_bytes() == b"previous"


def test_chains_are_in_release_order() -> None:
    c = data.chains()
    assert c["@vant/weapp"] == [
        "1.10.24",
        "1.11.0",
        "1.11.2",
        "1.11.3",
        "1.11.4",
        "1.11.5",
        "1.11.6",
        "1.11.7",
    ]
    assert c["weui-miniprogram"] == ["0.3.0", "1.0.2", "1.0.3", "1.0.4", "1.0.5", "1.0.6", "1.0.7", "1.0.8"]


# -- reading tarballs ---------------------------------------------------------------------


def test_library_files_reads_only_regular_files_inside_the_shipped_folder(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:

        def add(name: str, body: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.size = len(body) if kind == tarfile.REGTYPE else 0
            info.type = kind
            info.linkname = link
            tf.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)

        add("package/package.json", json.dumps({"name": "demo-lib", "miniprogram": "dist"}).encode())
        add("package/dist/a/index.js", b"Component({})")
        add("package/dist/../../escape.js", b"evil")
        add("package/dist/link.js", b"", tarfile.SYMTYPE, "/etc/passwd")
        add("package/dist/hard.js", b"", tarfile.LNKTYPE, "package/dist/a/index.js")
        add("other/dist/b.js", b"outside package/")
        add("/abs/package/dist/c.js", b"absolute")
        add("package/src/a.ts", b"not shipped")
    tgz = tmp_path / "demo-lib.tgz"
    tgz.write_bytes(buf.getvalue())
    name, files = data._library_files(tgz)
    assert name == "demo-lib"
    assert files == {"a/index.js": b"Component({})"}


def test_the_shipped_folder_comes_from_package_json() -> None:
    d = data.ensure_data()
    for p in data.packages():
        with tarfile.open(d / p.file) as tf:
            f = tf.extractfile("package/package.json")
            assert f is not None
            folder = json.load(f)["miniprogram"]
            expected = {
                m.name[len(f"package/{folder}/") :]
                for m in tf
                if m.isreg() and m.name.startswith(f"package/{folder}/")
            }
        name, files = data._library_files(d / p.file)
        assert name == p.name and set(files) == expected and expected


# -- build_app ----------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_components(tree: dict[str, bytes], config: str) -> int:
    comps = json.loads(tree[config])["usingComponents"]
    for target in comps.values():
        for ext in (".js", ".json", ".wxml"):
            assert f"miniprogram_npm/{target}{ext}" in tree, (config, target)
        assert json.loads(tree[f"miniprogram_npm/{target}.json"])["component"] is True
    return len(comps)


def test_build_app_is_deterministic_and_ships_the_libraries(tmp_path: Path) -> None:
    libs = {"@vant/weapp": "1.11.6", "weui-miniprogram": "1.0.8"}
    a = _tree(data.build_app(tmp_path / "a", libs, pages=4, app_name="shop"))
    b = _tree(data.build_app(tmp_path / "b", dict(reversed(libs.items())), pages=4, app_name="shop"))
    assert a == b
    # rebuilding over a previous build gives the same tree
    assert _tree(data.build_app(tmp_path / "a", libs, pages=4, app_name="shop")) == a

    d = data.ensure_data()
    for name, version in libs.items():
        pkg = next(p for p in data.packages() if (p.name, p.version) == (name, version))
        _, lib = data._library_files(d / pkg.file)
        shipped = {
            p[len(f"miniprogram_npm/{name}/") :]: body
            for p, body in a.items()
            if p.startswith(f"miniprogram_npm/{name}/")
        }
        assert shipped == lib
    assert "miniprogram_npm/@vant/weapp/button/index.js" in a
    assert "miniprogram_npm/weui-miniprogram/dialog/dialog.js" in a

    app = json.loads(a["app.json"])
    assert app["pages"] == [f"pages/p{i}/index" for i in range(4)]
    assert app["window"]["navigationBarTitleText"] == "shop"
    assert _check_components(a, "app.json") == 2
    used = set(json.loads(a["app.json"])["usingComponents"].values())
    for page in app["pages"]:
        for ext in (".js", ".json", ".wxml", ".wxss"):
            assert f"{page}{ext}" in a
        assert _check_components(a, f"{page}.json") >= 2
        used |= set(json.loads(a[f"{page}.json"])["usingComponents"].values())
        for tag in json.loads(a[f"{page}.json"])["usingComponents"]:
            assert f"<{tag} />".encode() in a[f"{page}.wxml"]
    assert any(u.startswith("@vant/weapp/") for u in used) and any(
        u.startswith("weui-miniprogram/") for u in used
    )
    own = [p for p in a if not p.startswith("miniprogram_npm/")]
    assert set(own) >= {"app.json", "app.js", "app.wxss", "sitemap.json"}


def test_build_app_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    victim = tmp_path / "important"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        data.build_app(victim, {"@vant/weapp": "1.11.6"})
    assert (victim / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, bytes]]:
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for name, chain in data.chains().items():
        for v in chain:
            out[(name, v)] = _tree(data.build_app(root / f"{name.replace('/', '_')}-{v}", {name: v}))
    return out


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [(n, c[i], c[i + 1]) for n, c in data.chains().items() for i in range(len(c) - 1)],
)
def test_consecutive_versions_differ_only_in_library_files(
    versions: dict[tuple[str, str], dict[str, bytes]], name: str, old: str, new: str
) -> None:
    a, b = versions[(name, old)], versions[(name, new)]
    changed = {p for p in a.keys() | b.keys() if a.get(p) != b.get(p)}
    assert changed, "consecutive releases should change something"
    assert all(p.startswith(f"miniprogram_npm/{name}/") for p in changed), sorted(changed)[:5]
    # and the app's own files really are the same set, not just equal where present
    assert {p for p in a if not p.startswith("miniprogram_npm/")} == {
        p for p in b if not p.startswith("miniprogram_npm/")
    }


def test_revision_changes_a_small_part_of_one_page(
    tmp_path: Path, versions: dict[tuple[str, str], dict[str, bytes]]
) -> None:
    base = versions[("@vant/weapp", "1.11.7")]
    rev = _tree(data.build_app(tmp_path / "rev", {"@vant/weapp": "1.11.7"}, revision=1))
    changed = {p for p in base.keys() | rev.keys() if base.get(p) != rev.get(p)}
    assert changed == {"pages/p0/index.js"}
    old_lines = base["pages/p0/index.js"].splitlines()
    new_lines = rev["pages/p0/index.js"].splitlines()
    assert len(old_lines) == len(new_lines)
    assert sum(x != y for x, y in zip(old_lines, new_lines, strict=True)) == 1


# -- the sample app -----------------------------------------------------------------------


def _png_ok(body: bytes) -> tuple[int, int]:
    """Parse a PNG fully (chunk CRCs, IHDR, zlib stream of the right length)."""
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(body):
        (n,) = struct.unpack(">I", body[pos : pos + 4])
        kind, payload = body[pos + 4 : pos + 8], body[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", body[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + payload) == crc, kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + n
        if kind == b"IEND":
            break
    assert pos == len(body) and ihdr is not None
    w, h, depth, color, *_ = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    assert depth == 8
    assert len(zlib.decompress(idat)) == h * (1 + w * channels)
    return w, h


def test_demo_app_json_pages_exist() -> None:
    app = json.loads((DEMO / "app.json").read_text())
    assert len(app["pages"]) >= 3 and app["window"]
    subs = app["subPackages"]
    pages = list(app["pages"])
    for sub in subs:
        root = sub["root"].rstrip("/")
        assert (DEMO / root).is_dir()
        pages += [f"{root}/{p}" for p in sub["pages"]]
    for page in pages:
        for ext in (".js", ".json", ".wxml", ".wxss"):
            assert (DEMO / f"{page}{ext}").is_file(), page + ext
            assert (DEMO / f"{page}{ext}").stat().st_size > 0, page + ext
        json.loads((DEMO / f"{page}.json").read_text())
    assert [s.get("independent", False) for s in subs].count(True) == 1
    assert [s.get("independent", False) for s in subs].count(False) >= 1
    for name in ("app.js", "app.wxss", "sitemap.json", "project.config.json", "README.md"):
        assert (DEMO / name).is_file(), name
    json.loads((DEMO / "sitemap.json").read_text())
    json.loads((DEMO / "project.config.json").read_text())


def test_demo_preload_rules_name_real_subpackages() -> None:
    app = json.loads((DEMO / "app.json").read_text())
    roots = {s["root"].rstrip("/") for s in app["subPackages"]}
    names = {s["name"] for s in app["subPackages"] if "name" in s}
    all_pages = set(app["pages"]) | {
        f"{s['root'].rstrip('/')}/{p}" for s in app["subPackages"] for p in s["pages"]
    }
    refs = []
    assert app["preloadRule"]
    for page, rule in app["preloadRule"].items():
        assert page in all_pages
        assert rule.get("network", "wifi") in ("all", "wifi")
        refs += rule["packages"]
    assert all(r.rstrip("/") in roots or r in names for r in refs)
    assert any(r in names for r in refs), "at least one package is named by its name"
    assert any(r.rstrip("/") in roots for r in refs), "at least one package is named by its root"


def test_demo_main_package_is_big_enough_and_images_are_real_pngs() -> None:
    app = json.loads((DEMO / "app.json").read_text())
    roots = tuple(s["root"].rstrip("/") + "/" for s in app["subPackages"])
    files = [p for p in DEMO.rglob("*") if p.is_file()]
    main = [p for p in files if not p.relative_to(DEMO).as_posix().startswith(roots)]
    source = sum(p.stat().st_size for p in main if p.suffix in (".js", ".json", ".wxml", ".wxss"))
    assert source >= 40_000, source
    assert sum(p.stat().st_size for p in main) >= 4 * 16384
    pngs = [p for p in files if p.suffix == ".png"]
    assert len(pngs) >= 3
    for p in pngs:
        w, h = _png_ok(p.read_bytes())
        assert 32 <= w <= 512 and 32 <= h <= 512, p
    for icon in (t["iconPath"] for t in app.get("tabBar", {}).get("list", []) if "iconPath" in t):
        assert (DEMO / icon).is_file(), icon
