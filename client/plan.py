"""Per package, the cheapest way to get what the client lacks (DESIGN.md "Chunks, bundles
and deltas"), judged from the sizes in the signed manifest:

    none    every chunk of the package is in the local store already
    delta   the package's stream against the stream of the version installed
            (its manifest id is listed in ``deltas``, and the client has that base stream)
    chunks  the missing chunks, batched
    bundle  the whole stream as one frame

The cheapest wins; on a tie the order above decides (a delta or the chunks before the
bundle).  Pure: no I/O, tested synchronously.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import ConfigError
from common.manifest import ChunkEntry, PackageEntry

__all__ = ["CHUNK_OVERHEAD", "PREFERENCES", "Plan", "check_preference", "choose"]

# What a batch answer adds per chunk beyond its frame: a 2-array (1 byte), the 64-digit
# hex id as str8 (66) and the frame's bin header (2-3), ~70 bytes; rounded up for HTTP.
CHUNK_OVERHEAD = 72
# "auto" picks the cheapest; the others force that plan where the manifest offers it
# (for measurements and tests), falling back to the cheapest otherwise.
PREFERENCES = ("auto", "delta", "chunks", "bundle")


@dataclass(frozen=True)
class Plan:
    package: str
    kind: str  # none | delta | chunks | bundle
    cost: int  # bytes expected on the wire
    missing: tuple[ChunkEntry, ...] = ()  # chunks the store lacks (what "chunks" downloads)
    object: tuple[bytes, int] | None = None  # bundle or delta: its id and stored size
    base: bytes | None = None  # delta: the manifest id of the version it applies to


def check_preference(preference: str) -> str:
    if preference not in PREFERENCES:
        raise ConfigError(f"--plan: {preference!r} is not one of {', '.join(PREFERENCES)}")
    return preference


def options(pkg: PackageEntry, missing: Iterable[ChunkEntry], base: bytes | None) -> list[Plan]:
    """Every plan the manifest offers for ``pkg``, in tie-break order.  ``base`` is the
    manifest id of the version whose stream of this package the client holds, if any."""
    missing = tuple(missing)
    if not missing:
        return [Plan(pkg.name, "none", 0)]
    out = []
    if base is not None:
        usable = [(d, size) for m, d, size in pkg.deltas if m == base]
        if usable:
            did, size = min(usable, key=lambda t: t[1])
            out.append(Plan(pkg.name, "delta", size, missing, (did, size), base))
    chunk_bytes = sum(c.stored_size + CHUNK_OVERHEAD for c in missing)
    out.append(Plan(pkg.name, "chunks", chunk_bytes, missing))
    if pkg.bundle is not None:
        out.append(Plan(pkg.name, "bundle", pkg.bundle[1], missing, pkg.bundle))
    return out


def choose(
    pkg: PackageEntry, missing: Iterable[ChunkEntry], base: bytes | None, preference: str = "auto"
) -> Plan:
    """The plan for ``pkg``: the preferred kind when offered, else the cheapest."""
    plans = options(pkg, missing, base)
    forced = [p for p in plans if p.kind == preference]
    if forced:
        return forced[0]
    return min(plans, key=lambda p: p.cost)  # min() keeps the first of equals: tie-break order
