"""What a version holds and what updating from one version to another costs: the operator's
view of manifests (``GET /v1/apps/{app}/versions/{version}`` and ``.../compare``).  Pure:
manifests and bytes in, JSON-ready dicts out.

An update's cost follows the client's rules (client/plan.py, whose numbers a client pays):
per package of the new version, for a client that holds every package of the old one,

    none    every chunk of the package is among the old version's chunks
    delta   the smallest delta from any manifest of the old version (the package existed)
    chunks  the chunks the old version lacks, each once, plus ``CHUNK_OVERHEAD`` per chunk
    bundle  the whole package as one frame

and the cheapest wins, ties going to the order above.  Which files changed is told by
content: a file of the same path and size in both versions is hashed from the packages'
streams (``file_digests``) unless the two packages have the same chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from common.manifest import Manifest, PackageEntry

__all__ = ["CHUNK_OVERHEAD", "Digests", "compare", "file_digests", "summary"]

# What a batch answer adds per chunk beyond its frame (client/plan.py's number: the origin
# may not import the client, so the two must be kept equal by hand).
CHUNK_OVERHEAD = 72
PLANS = ("none", "delta", "chunks", "bundle")  # the tie-break order
Digests = Callable[[PackageEntry], Mapping[str, bytes]]  # path → SHA-256 of the file's bytes


def summary(manifest: Manifest, version_of: Mapping[bytes, str]) -> dict[str, Any]:
    """Sizes of a version and of each of its packages; ``version_of`` names the versions
    that deltas start from (by manifest id)."""
    packages = [_package(p, version_of) for p in manifest.packages]
    bundles = [p["bundle_bytes"] for p in packages if p["bundle_bytes"] is not None]
    return {
        "files": sum(p["files"] for p in packages),
        "raw_bytes": sum(p["raw_bytes"] for p in packages),
        "chunk_bytes": sum(p["chunk_bytes"] for p in packages),
        "bundle_bytes": sum(bundles) if len(bundles) == len(packages) else None,
        "packages": packages,
    }


def _package(pkg: PackageEntry, version_of: Mapping[bytes, str]) -> dict[str, Any]:
    return {
        "name": pkg.name,
        "independent": pkg.independent,
        "files": len(pkg.files),
        "raw_bytes": pkg.raw_size,
        "chunks": len(pkg.chunks),
        "chunk_bytes": pkg.stored_size,
        "bundle_bytes": None if pkg.bundle is None else pkg.bundle[1],
        "deltas": [
            {"from_version": version_of.get(m), "from_manifest": m.hex(), "bytes": size}
            for m, _did, size in pkg.deltas
        ],
    }


def compare(old: Manifest, old_ids: Iterable[bytes], new: Manifest, digests: Digests) -> dict[str, Any]:
    """Per package, what updating from ``old`` (whose manifest ids are ``old_ids``) to
    ``new`` costs by each plan, which is cheapest, and which files changed."""
    ids = set(old_ids)
    held = {c.id for p in old.packages for c in p.chunks}
    before = {p.name: p for p in old.packages}
    rows = [_update(before.get(p.name), p, ids, held, digests) for p in new.packages]
    rows += [_removed(p) for p in old.packages if p.name not in {n.name for n in new.packages}]
    return {"bytes": sum(r["bytes"] for r in rows), "packages": rows}


def _update(
    base: PackageEntry | None, pkg: PackageEntry, ids: set[bytes], held: set[bytes], digests: Digests
) -> dict[str, Any]:
    missing = {c.id: c.stored_size for c in pkg.chunks if c.id not in held}
    plans: dict[str, int | None] = {"none": None, "delta": None, "chunks": None, "bundle": None}
    if not missing:
        plans["none"] = 0
    else:
        if base is not None:
            plans["delta"] = min((size for m, _d, size in pkg.deltas if m in ids), default=None)
        plans["chunks"] = sum(size + CHUNK_OVERHEAD for size in missing.values())
        plans["bundle"] = None if pkg.bundle is None else pkg.bundle[1]
    cheapest = min((k for k in PLANS if plans[k] is not None), key=lambda k: plans[k] or 0)
    files = _files(base, pkg, digests)
    changed = base is None or any(files.values())
    return {
        "name": pkg.name,
        "independent": pkg.independent,
        "state": "added" if base is None else "changed" if changed else "unchanged",
        "plans": plans,
        "cheapest": cheapest,
        "bytes": plans[cheapest],
        "missing_chunks": len(missing),
        "files": files,
    }


def _removed(pkg: PackageEntry) -> dict[str, Any]:
    plans = {"none": 0, "delta": None, "chunks": None, "bundle": None}
    files = {"added": [], "removed": [[p, s] for p, s in pkg.files], "changed": []}
    return {
        "name": pkg.name,
        "independent": pkg.independent,
        "state": "removed",
        "plans": plans,
        "cheapest": "none",
        "bytes": 0,
        "missing_chunks": 0,
        "files": files,
    }


def _files(base: PackageEntry | None, pkg: PackageEntry, digests: Digests) -> dict[str, list[list[Any]]]:
    """``added`` [path, size], ``removed`` [path, size], ``changed`` [path, old size, new size]."""
    if base is None:
        return {"added": [[p, s] for p, s in pkg.files], "removed": [], "changed": []}
    old, new = dict(base.files), dict(pkg.files)
    same_size = [p for p in new if p in old and old[p] == new[p]]
    if same_size and base.chunks != pkg.chunks:
        a, b = digests(base), digests(pkg)
        touched = {p for p in same_size if a[p] != b[p]}
    else:
        touched = set()  # identical streams: no file of the same size differs
    return {
        "added": [[p, s] for p, s in pkg.files if p not in old],
        "removed": [[p, s] for p, s in base.files if p not in new],
        "changed": [[p, old[p], s] for p, s in pkg.files if p in old and (old[p] != s or p in touched)],
    }


def file_digests(files: Iterable[tuple[str, int]], stream: Iterable[bytes]) -> dict[str, bytes]:
    """SHA-256 of each file of a package, from its stream in pieces (its raw chunks, in
    order): one chunk in memory at a time, whatever the package's size."""
    pieces = iter(stream)
    piece, at = b"", 0
    out: dict[str, bytes] = {}
    for path, size in files:
        h, need = hashlib.sha256(), size
        while need:
            if at == len(piece):
                piece, at = next(pieces), 0
            take = piece[at : at + need]
            h.update(take)
            at, need = at + len(take), need - len(take)
        out[path] = h.digest()
    return out
