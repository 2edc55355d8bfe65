"""The package model of WeChat's app.json: which files belong to which package.

A file under a subpackage's ``root`` belongs to that subpackage; every other file belongs
to the main package ``__APP__``.  Package streams list files in byte-wise sorted path order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import BadArchive
from common.manifest import MAIN_PACKAGE
from common.paths import check_relpath

__all__ = ["Layout", "PackageSpec", "layout", "stream_order"]


@dataclass(frozen=True)
class PackageSpec:
    name: str  # "__APP__" or the subpackage root, without a trailing slash
    independent: bool
    files: tuple[str, ...]  # stream order


@dataclass(frozen=True)
class Layout:
    packages: tuple[PackageSpec, ...]
    preload: dict[str, tuple[str, ...]]


def stream_order(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: p.encode("utf-8"))


def _parse_app_json(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadArchive(f"app.json is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadArchive("app.json must be a JSON object")
    return doc


def _subpackages(doc: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    subs = doc.get("subPackages", doc.get("subpackages", []))
    if not isinstance(subs, list):
        raise BadArchive("app.json: subPackages must be a list")
    out: list[tuple[str, str | None, bool]] = []
    for s in subs:
        if not isinstance(s, dict) or not isinstance(s.get("root"), str):
            raise BadArchive("app.json: every subpackage needs a string 'root'")
        try:
            root = check_relpath(s["root"].strip().strip("/"))
        except Exception as exc:
            raise BadArchive(f"app.json: bad subpackage root {s['root']!r}") from exc
        if root == MAIN_PACKAGE:
            raise BadArchive(f"app.json: {MAIN_PACKAGE} is reserved for the main package")
        name = s.get("name")
        out.append((root, name if isinstance(name, str) else None, bool(s.get("independent"))))
    roots = [r for r, _, _ in out]
    for a in roots:
        for b in roots:
            if a != b and (b + "/").startswith(a + "/"):
                raise BadArchive(f"app.json: subpackage roots {a!r} and {b!r} overlap")
    if len(set(roots)) != len(roots):
        raise BadArchive("app.json: two subpackages share a root")
    return out


def _preload(doc: dict[str, Any], subs: list[tuple[str, str | None, bool]]) -> dict[str, tuple[str, ...]]:
    rules = doc.get("preloadRule", {})
    if not isinstance(rules, dict):
        raise BadArchive("app.json: preloadRule must be an object")
    by_name = {MAIN_PACKAGE: MAIN_PACKAGE}
    for root, name, _ in subs:
        by_name[root] = root
        if name:
            by_name[name] = root
    out: dict[str, tuple[str, ...]] = {}
    for page, rule in rules.items():
        pkgs = rule.get("packages", []) if isinstance(rule, dict) else None
        if not isinstance(pkgs, list):
            raise BadArchive(f"app.json: preloadRule[{page!r}].packages must be a list")
        resolved = []
        for n in pkgs:
            key = n.strip("/") if isinstance(n, str) else n
            if key not in by_name:
                raise BadArchive(f"app.json: preloadRule[{page!r}] names unknown package {n!r}")
            resolved.append(by_name[key])
        out[str(page)] = tuple(resolved)
    return out


def layout(paths: list[str], app_json: bytes | None) -> Layout:
    """Split a version's files into packages; ``paths`` are checked relative paths."""
    if app_json is None:
        return Layout((PackageSpec(MAIN_PACKAGE, False, tuple(stream_order(paths))),), {})
    doc = _parse_app_json(app_json)
    subs = _subpackages(doc)
    members: dict[str, list[str]] = {root: [] for root, _, _ in subs}
    main: list[str] = []
    for p in paths:
        owner = next((root for root in members if p.startswith(root + "/")), None)
        (members[owner] if owner is not None else main).append(p)
    specs = [PackageSpec(MAIN_PACKAGE, False, tuple(stream_order(main)))]
    specs += [PackageSpec(root, ind, tuple(stream_order(members[root]))) for root, _, ind in subs]
    return Layout(tuple(specs), _preload(doc, subs))
