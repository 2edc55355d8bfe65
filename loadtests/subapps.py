"""Apps with many subpackages, for issue 16's metadata rows: ``build_subpackage_app`` makes
an app of ``loadtests.data.build_app`` (a few pages and a library under miniprogram_npm/,
the main package) plus ``subpackages`` subpackages ``sub/s0000`` … of ``FILES_PER_SUB``
files each (a page's .js/.wxml/.wxss/.json and a small utils.js), listed in app.json.

Deterministic: the same arguments give the same bytes.  ``revisions`` (subpackage index →
revision) changes exactly those subpackages (their utils.js and page banner); the main
package changes only with ``main_revision``.  So a series of versions can change one
subpackage, or only subpackages a phone has not installed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from loadtests.data import _library_files, _page, build_app, ensure_data, packages

__all__ = ["FILES_PER_SUB", "build_manyfile_app", "build_subpackage_app", "sub_root"]

FILES_PER_SUB = 5


def sub_root(i: int) -> str:
    return f"sub/s{i:04d}"


def _subpackage(i: int, app_name: str, revision: int) -> dict[str, bytes]:
    root = sub_root(i)
    page = _page(i + 1, app_name, {}, 0)  # i + 1: page 0's banner is the main package's
    files = {f"{root}/{path}": body for path, body in page.items()}
    files[f"{root}/utils.js"] = (
        f"// {app_name} {root}: helpers of this subpackage (revision {revision}).\n"
        f"export const ROOT = '{root}';\n"
        f"export const REVISION = {revision};\n"
        "export function label(item) {\n"
        f"  return `${{item.name}} (#${{item.id}}, {root})`;\n"
        "}\n"
    ).encode()
    return files


def build_subpackage_app(
    dest: Path,
    libs: dict[str, str],
    subpackages: int,
    *,
    app_name: str = "many",
    main_revision: int = 0,
    revisions: Mapping[int, int] | None = None,
    data_dir: Path | None = None,
) -> Path:
    if subpackages < 0:
        raise ValueError("subpackages must not be negative")
    revisions = revisions or {}
    build_app(dest, libs, pages=2, data_dir=data_dir, app_name=app_name, revision=main_revision)
    app_json = json.loads((dest / "app.json").read_text())
    app_json["subpackages"] = [
        {"root": sub_root(i), "pages": [f"pages/p{i + 1}/index"]} for i in range(subpackages)
    ]
    (dest / "app.json").write_text(json.dumps(app_json, indent=2) + "\n")
    for i in range(subpackages):
        for path, body in _subpackage(i, app_name, revisions.get(i, 0)).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
    return dest


def build_manyfile_app(
    dest: Path,
    main_lib: str,
    sub_libs: list[str],
    *,
    app_name: str = "manyfile",
    data_dir: Path | None = None,
) -> Path:
    """An app of many files in a few subpackages, from ``make data`` packages: the main
    package is ``build_app`` with ``@vant/weapp`` at ``main_lib``; subpackage ``lib/wK``
    (one per entry of ``sub_libs``) holds a page and ``weui-miniprogram`` at that version
    under its own miniprogram_npm/.  A new version changes exactly the packages whose
    library version changes."""
    data_dir = data_dir if data_dir is not None else ensure_data()
    build_app(dest, {"@vant/weapp": main_lib}, pages=3, data_dir=data_dir, app_name=app_name)
    index = {(p.name, p.version): p for p in packages()}
    app_json = json.loads((dest / "app.json").read_text())
    app_json["subpackages"] = []
    for k, version in enumerate(sub_libs):
        root = f"lib/w{k}"
        npm_name, lib = _library_files(data_dir / index[("weui-miniprogram", version)].file)
        files = {f"{root}/miniprogram_npm/{npm_name}/{path}": body for path, body in lib.items()}
        files.update({f"{root}/{path}": body for path, body in _page(100 + k, app_name, {}, 0).items()})
        for path, body in files.items():
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(body)
        app_json["subpackages"].append({"root": root, "pages": [f"pages/p{100 + k}/index"]})
    (dest / "app.json").write_text(json.dumps(app_json, indent=2) + "\n")
    return dest
