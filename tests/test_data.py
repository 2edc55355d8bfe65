"""``make data`` and the realistic-app builder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from loadtests import data


def test_every_package_is_present_with_its_sha256() -> None:
    dest = data.ensure_data()
    pkgs = data.packages()
    assert len(pkgs) == 16
    for p in pkgs:
        assert hashlib.sha256((dest / p.file).read_bytes()).hexdigest() == p.sha256


def test_a_corrupted_copy_is_detected_and_replaced(tmp_path: Path) -> None:
    src = data.ensure_data()
    dest = tmp_path / "npm"
    shutil.copytree(src, dest)
    victim = dest / data.packages()[0].file
    victim.write_bytes(b"corrupt")
    if not data.SHARED.is_dir() and shutil.which("npm") is None:
        pytest.skip("neither ../shared/data/npm nor npm is available to repair the copy")
    data.ensure_data(dest)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == data.packages()[0].sha256


def test_a_wrong_download_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    pkg = data.packages()[0]
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"x" * pkg.size)
    with pytest.raises(SystemExit, match="SHA-256"):
        data._install(bad, tmp_path / "out" / pkg.file, pkg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_chains_are_in_release_order() -> None:
    c = data.chains()
    assert c["@vant/weapp"][0] == "1.10.24" and c["@vant/weapp"][-1] == "1.11.7"
    assert c["weui-miniprogram"][0] == "0.3.0" and len(c["weui-miniprogram"]) == 8


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_app_is_deterministic_and_ships_the_library(tmp_path: Path) -> None:
    a = _tree(data.build_app(tmp_path / "a", {"@vant/weapp": "1.11.6"}))
    b = _tree(data.build_app(tmp_path / "b", {"@vant/weapp": "1.11.6"}))
    assert a == b
    assert any(p.startswith("miniprogram_npm/@vant/weapp/button/") for p in a)
    app = json.loads(a["app.json"])
    for page in app["pages"]:
        assert f"{page}.js" in a and f"{page}.wxml" in a
        for target in json.loads(a[f"{page}.json"])["usingComponents"].values():
            assert f"miniprogram_npm/{target}.js" in a


def test_consecutive_versions_differ_only_in_library_files(tmp_path: Path) -> None:
    old = _tree(data.build_app(tmp_path / "old", {"weui-miniprogram": "1.0.6"}))
    new = _tree(data.build_app(tmp_path / "new", {"weui-miniprogram": "1.0.7"}))
    changed = {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}
    assert changed and all(p.startswith("miniprogram_npm/weui-miniprogram/") for p in changed)


def test_demo_app_json_pages_exist() -> None:
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo"
    app = json.loads((demo / "app.json").read_text())
    pages = list(app["pages"])
    for sub in app["subPackages"]:
        pages += [sub["root"].rstrip("/") + "/" + p for p in sub["pages"]]
    for page in pages:
        for ext in (".js", ".json", ".wxml", ".wxss"):
            assert (demo / f"{page}{ext}").is_file(), page + ext
    assert any(s.get("independent") for s in app["subPackages"]) and app["preloadRule"]
