"""The package model of WeChat's app.json: which files belong to which package.

A file under a subpackage's ``root`` belongs to that subpackage; every other file belongs
to the main package ``__APP__``.  Package streams list files in byte-wise sorted path order.

app.json comes from a publisher, so every field read here has its type checked, and every
step is linear in the size of app.json and the paths (an app may have 10,000 subpackages
and 20,000 files, and this runs while other publishes wait).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import jsonutil
from common.errors import BadArchive, UnsafeArchive
from common.manifest import MAIN_PACKAGE
from common.paths import check_relpath

__all__ = ["MAX_APP_JSON", "Layout", "PackageSpec", "layout", "stream_order"]

# Real ones are kilobytes; 10,000 subpackages with a page or two each take about 1 MiB.
# Parsing is what costs: 8 MiB of "{}," made 2.8 million dicts, 260 MiB.
MAX_APP_JSON = 2 << 20


@dataclass(frozen=True)
class PackageSpec:
    name: str  # "__APP__" or the subpackage root, without a trailing slash
    independent: bool
    files: tuple[str, ...]  # stream order


@dataclass(frozen=True)
class Layout:
    packages: tuple[PackageSpec, ...]
    preload: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class _Sub:
    root: str
    name: str | None
    independent: bool


def stream_order(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: p.encode("utf-8"))


def _parse_app_json(data: bytes) -> dict[str, Any]:
    doc = jsonutil.loads(data, what="app.json", error=BadArchive, max_bytes=MAX_APP_JSON)
    if not isinstance(doc, dict):
        raise BadArchive("app.json must be a JSON object")
    return doc


def _optional(obj: dict[str, Any], key: str, typ: type, default: Any, where: str) -> Any:
    """``obj[key]`` if it is a ``typ``; ``default`` when absent or null; else BadArchive
    (``where`` is the object's place in app.json, "subPackages[3]." say)."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, typ):
        raise BadArchive(f"app.json: {where}{key} must be a {typ.__name__}")
    return value


def _subpackages(doc: dict[str, Any], max_subpackages: int | None) -> list[_Sub]:
    if "subPackages" in doc and "subpackages" in doc:
        raise BadArchive("app.json has both 'subPackages' and 'subpackages'")
    key = "subpackages" if "subpackages" in doc else "subPackages"
    subs = _optional(doc, key, list, [], "")
    if max_subpackages is not None and len(subs) > max_subpackages:
        raise BadArchive(
            f"app.json declares {len(subs)} subpackages; an app may have at most {max_subpackages}"
        )
    return [_subpackage(s, f"{key}[{i}]") for i, s in enumerate(subs)]


def _subpackage(s: Any, where: str) -> _Sub:
    if not isinstance(s, dict):
        raise BadArchive(f"app.json: {where} must be an object")
    root = s.get("root")
    if not isinstance(root, str):
        raise BadArchive(f"app.json: {where}.root must be a string")
    name = _optional(s, "name", str, None, where + ".")
    independent = _optional(s, "independent", bool, False, where + ".")
    pages = _optional(s, "pages", list, [], where + ".")
    if not all(isinstance(p, str) for p in pages):
        raise BadArchive(f"app.json: {where}.pages must be a list of strings")
    return _Sub(_root(root, where), name or None, independent)


def _root(root: str, where: str) -> str:
    """A subpackage root as written.  One trailing '/' is WeChat's own spelling
    ("packageA/"); nothing else is normalised: "/etc" or " a" is refused, not read as
    "etc" or "a", so that the root a publisher sees is the one clients get."""
    path = root.removesuffix("/")
    try:
        check_relpath(path)
    except UnsafeArchive as exc:
        raise BadArchive(
            f"app.json: {where}.root {root[:80]!r} is not a safe relative path: {exc.message}"
        ) from exc
    if path != path.strip():
        raise BadArchive(f"app.json: {where}.root {root[:80]!r} begins or ends with white space")
    if path == MAIN_PACKAGE:
        raise BadArchive(f"app.json: {where}.root: {MAIN_PACKAGE} is reserved for the main package")
    return path


class _Roots:
    """The subpackage roots as a trie of path components: checking them for overlaps and
    finding a file's root are linear in the path lengths, where comparing every root with
    every other (and every file with every root) took 76 s for 20,000 roots."""

    _ROOT = ""  # marks a node that is a root; no path component is empty (check_relpath)

    def __init__(self, roots: list[str]) -> None:
        self._trie: dict[str, Any] = {}
        for root in roots:
            self._add(root)

    def _add(self, root: str) -> None:
        node = self._trie
        for part in root.split("/"):
            if self._ROOT in node:
                raise BadArchive(f"app.json: subpackage roots {node[self._ROOT]!r} and {root!r} overlap")
            node = node.setdefault(part, {})
        if self._ROOT in node:
            raise BadArchive(f"app.json: two subpackages have the root {root!r}")
        if node:
            raise BadArchive(f"app.json: subpackage roots {root!r} and {self._any_below(node)!r} overlap")
        node[self._ROOT] = root

    def _any_below(self, node: dict[str, Any]) -> str:
        while self._ROOT not in node:
            node = next(iter(node.values()))
        root: str = node[self._ROOT]
        return root

    def owner(self, path: str) -> str | None:
        """The root ``path`` lies under, if any."""
        node: dict[str, Any] = self._trie
        for part in path.split("/")[:-1]:
            node = node.get(part, {})
            if self._ROOT in node:
                root: str = node[self._ROOT]
                return root
            if not node:
                return None
        return None


def _names(subs: list[_Sub]) -> dict[str, str]:
    """{what preloadRule may call a package: its name in the manifest}.  A package is
    called by its root or its name; a name that would call two packages is refused."""
    by_name = {MAIN_PACKAGE: MAIN_PACKAGE} | {s.root: s.root for s in subs}
    for s in subs:
        if s.name is not None and by_name.setdefault(s.name, s.root) != s.root:
            raise BadArchive(f"app.json: subpackage name {s.name[:80]!r} also names another package")
    return by_name


def _preload(doc: dict[str, Any], by_name: dict[str, str]) -> dict[str, tuple[str, ...]]:
    rules = _optional(doc, "preloadRule", dict, {}, "")
    out: dict[str, tuple[str, ...]] = {}
    for page, rule in rules.items():
        where = f"preloadRule[{page[:80]!r}]"
        if not isinstance(rule, dict):
            raise BadArchive(f"app.json: {where} must be an object")
        pkgs = _optional(rule, "packages", list, [], where + ".")
        if not all(isinstance(n, str) for n in pkgs):
            raise BadArchive(f"app.json: {where}.packages must be a list of strings")
        resolved = []
        for n in pkgs:
            key = n.removesuffix("/")  # called by its root, written as WeChat writes roots
            if key not in by_name:
                raise BadArchive(f"app.json: {where} names unknown package {n[:80]!r}")
            resolved.append(by_name[key])
        out[page] = tuple(resolved)
    return out


def layout(paths: list[str], app_json: bytes | None, *, max_subpackages: int | None = None) -> Layout:
    """Split a version's files into packages; ``paths`` are checked relative paths.
    Anything wrong with app.json is a BadArchive naming the entry."""
    if app_json is None:
        return Layout((PackageSpec(MAIN_PACKAGE, False, tuple(stream_order(paths))),), {})
    doc = _parse_app_json(app_json)
    subs = _subpackages(doc, max_subpackages)
    roots = _Roots([s.root for s in subs])
    preload = _preload(doc, _names(subs))
    members: dict[str, list[str]] = {s.root: [] for s in subs}
    main: list[str] = []
    for p in paths:
        owner = roots.owner(p)
        (members[owner] if owner is not None else main).append(p)
    specs = [PackageSpec(MAIN_PACKAGE, False, tuple(stream_order(main)))]
    specs += [PackageSpec(s.root, s.independent, tuple(stream_order(members[s.root]))) for s in subs]
    return Layout(tuple(specs), preload)
