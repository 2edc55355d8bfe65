"""Format 2's per-package metadata (docs/design.md "Format 2"): what a phone needs for the
packages it opens, and nothing of the packages it does not.

    ref (signed)            a channel → a version: its version manifest's id and its heads
                            object's id (common/manifest.py)
    version manifest        the whole version, signed (common/manifest.py): for edges,
                            tools and the origin itself; a phone never needs it
    heads object            the version's heads, in byte order of name: for edges
    head (signed, small)    one package of the version: ``of`` (the version manifest's
                            id), name, independent, the package's content digest and its
                            package manifest's id
    package manifest        content-addressed, unsigned: files, chunks, bundle, deltas (by
                            the content they apply to) and the preload rules of its pages

A phone verifies the ref (signature, expiry, serial), then each head (signature, ``of``
equal to the manifest the ref names for it, the name it asked for), then each package
manifest (SHA-256 equal to the head's ``manifest``; content digest, of files, chunks
and preload rules, equal to the head's ``content``).  It pays one ref and one head per
package it holds, plus the package manifests whose content changed: flat in the number
of packages of the app.

Encoding is canonical msgpack (``common.wire``); every decoder here checks types, sizes and
invariants, as ``common.manifest`` does.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import signing, wire
from common.errors import BadRequest, IntegrityError, MinicdnError, SignatureError
from common.ids import sha256
from common.manifest import MAIN_PACKAGE, ChunkEntry, Manifest, _id, decode_streams, streams_wire
from common.paths import check_relpath

__all__ = [
    "FORMAT",
    "MAX_HEAD",
    "MAX_HEADS",
    "Head",
    "PackageMeta",
    "Split",
    "content_digest",
    "contents_of",
    "decode_head",
    "decode_heads",
    "decode_package",
    "open_head",
    "open_package",
    "owner_of",
    "pack_heads",
    "split",
]

FORMAT = 2
MAX_HEAD = 4096  # bytes of one head envelope: a name of 1,024 bytes and three ids fit
MAX_HEADS = 1 << 20  # heads in one heads object (the origin's own limit is far lower)
MAX_PRELOAD_NAMES = 1024  # packages one page's preload rule may name


def content_digest(
    files: Sequence[tuple[str, int]],
    chunks: Sequence[ChunkEntry],
    preload: dict[str, tuple[str, ...]] | None = None,
) -> bytes:
    """SHA-256 of ``{"files": [[path, size]...], "chunks": [[id, raw, stored]...],
    "preload": {page: [name...]}}``: what makes two versions of a package "the same"
    (bundle and deltas aside).  The preload rules count: a phone that holds a package of
    the same content uses its own copy of them."""
    body = {
        "files": [[p, s] for p, s in files],
        "chunks": [[c.id, c.raw_size, c.stored_size] for c in chunks],
        "preload": {page: list(names) for page, names in (preload or {}).items()},
    }
    return sha256(wire.pack(body))


@dataclass(frozen=True)
class PackageMeta:
    """A package manifest: one package of one version, content-addressed."""

    name: str
    files: tuple[tuple[str, int], ...]
    chunks: tuple[ChunkEntry, ...]
    bundle: tuple[bytes, int] | None = None
    deltas: tuple[tuple[bytes, bytes, int], ...] = ()  # (from content digest, delta id, size)
    preload: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def content(self) -> bytes:
        return content_digest(self.files, self.chunks, self.preload)

    @property
    def raw_size(self) -> int:
        return sum(s for _, s in self.files)

    def to_wire(self) -> dict[str, Any]:
        body = streams_wire(self.files, self.chunks, self.bundle, self.deltas)
        out: dict[str, Any] = {"format": FORMAT, "name": self.name, **body}
        if self.preload:
            out["preload"] = {page: list(names) for page, names in self.preload.items()}
        return out

    def pack(self) -> bytes:
        """The stored bytes; the package manifest's id is their SHA-256."""
        return wire.pack(self.to_wire())


@dataclass(frozen=True)
class Head:
    """One package of one version, signed: ``of`` is the id of the version manifest the
    head belongs to (the one the ref names), ``manifest`` the package manifest's id."""

    of: bytes
    name: str
    independent: bool
    content: bytes
    manifest: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "of": self.of,
            "name": self.name,
            "independent": self.independent,
            "content": self.content,
            "manifest": self.manifest,
        }

    def seal(self, key: signing.SigningKey) -> bytes:
        return signing.seal(key, self.to_wire())


def owner_of(page: str, names: Iterable[str] | set[str]) -> str:
    """The package a page (or file) path belongs to: the subpackage whose root is one of
    its leading directories, else the main package."""
    names = names if isinstance(names, set) else set(names)
    parts = page.strip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        root = "/".join(parts[:i])
        if root in names:
            return root
    return MAIN_PACKAGE


@dataclass(frozen=True)
class Split:
    """A version manifest as format 2's per-package objects."""

    heads: bytes  # the heads object (its id is its SHA-256)
    packages: dict[bytes, bytes]  # package manifest id → its bytes


def split(
    manifest: Manifest, mid: bytes, key: signing.SigningKey, bases: dict[bytes, dict[str, bytes]]
) -> Split:
    """The heads and package manifests of the version manifest ``manifest`` (id ``mid``).
    ``bases``: for every version manifest a delta of ``manifest`` is listed from, the
    content digest of each of its packages (a delta is listed by the content it applies
    to).  Deterministic: the same arguments give the same bytes (Ed25519 is)."""
    rules = preload_by_package(manifest)
    heads: list[tuple[bytes, bytes]] = []
    packages: dict[bytes, bytes] = {}
    for p in manifest.packages:
        deltas: dict[tuple[bytes, bytes], int] = {}
        for from_mid, delta, size in p.deltas:
            if from_mid not in bases or p.name not in bases[from_mid]:
                raise ValueError(f"{p.name}: a delta from manifest {from_mid.hex()}, contents not given")
            deltas[(bases[from_mid][p.name], delta)] = size
        meta = PackageMeta(
            p.name,
            p.files,
            p.chunks,
            p.bundle,
            tuple((f, d, size) for (f, d), size in deltas.items()),
            rules.get(p.name, {}),
        ).pack()
        pid = sha256(meta)
        packages[pid] = meta
        head = Head(mid, p.name, p.independent, content_digest(p.files, p.chunks, rules.get(p.name)), pid)
        heads.append((p.name.encode(), head.seal(key)))
    heads.sort()
    return Split(pack_heads([h for _, h in heads]), packages)


def contents_of(manifest: Manifest) -> dict[str, bytes]:
    """name → content digest of each package of a version manifest (``split``'s ``bases``)."""
    rules = preload_by_package(manifest)
    return {p.name: content_digest(p.files, p.chunks, rules.get(p.name)) for p in manifest.packages}


def preload_by_package(manifest: Manifest) -> dict[str, dict[str, tuple[str, ...]]]:
    """The version's preload rules, each with the package of its page."""
    names = {p.name for p in manifest.packages}
    rules: dict[str, dict[str, tuple[str, ...]]] = {}
    for page, wanted in manifest.preload.items():
        rules.setdefault(owner_of(page, names), {})[page] = wanted
    return rules


# ---- strict decoding -------------------------------------------------------------------


def _format2(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: not a map")
    if body.get("format") != FORMAT:
        raise BadRequest(f"{what}: format {body.get('format')!r} is not one this reader knows (2)")
    return body


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise BadRequest(f"{what}: a package name must be a string")
    if v == "__APP__":
        return v
    try:
        return check_relpath(v)
    except MinicdnError as exc:
        raise BadRequest(f"{what}: package name {v[:80]!r} is not a safe relative path") from exc


def decode_package(body: Any) -> PackageMeta:
    p = _format2(body, "package manifest")
    name = _name(p.get("name"), "package manifest")
    what = f"package {name!r}"
    files, chunks, bundle, deltas = decode_streams(p, what)
    if len({path for path, _ in files}) != len(files):
        raise BadRequest(f"{what}: a path is listed twice")
    preload: dict[str, tuple[str, ...]] = {}
    rules = p.get("preload") or {}
    if not isinstance(rules, dict):
        raise BadRequest(f"{what}: preload is not a map")
    for page, names in rules.items():
        if not isinstance(page, str) or not isinstance(names, list) or len(names) > MAX_PRELOAD_NAMES:
            raise BadRequest(f"{what}: bad preload entry")
        preload[page] = tuple(_name(n, what) for n in names)
    return PackageMeta(name, files, chunks, bundle, deltas, preload)


def open_package(data: bytes, expected_id: bytes) -> PackageMeta:
    """A served package manifest, checked against the id a verified head names."""
    if sha256(data) != expected_id:
        raise IntegrityError(f"package manifest {expected_id.hex()}: bytes do not match the id")
    try:
        return decode_package(wire.unpack(data, what="package manifest"))
    except BadRequest as exc:
        # Its id is signed (through a head): a malformed one was signed malformed.
        raise SignatureError(f"signed package manifest is malformed: {exc.message}") from exc


def decode_head(body: Any) -> Head:
    h = _format2(body, "head")
    independent = h.get("independent")
    if not isinstance(independent, bool):
        raise BadRequest("head: 'independent' must be a boolean")
    return Head(
        of=_id(h.get("of"), "head"),
        name=_name(h.get("name"), "head"),
        independent=independent,
        content=_id(h.get("content"), "head"),
        manifest=_id(h.get("manifest"), "head"),
    )


def open_head(data: bytes, keys: Iterable[signing.PublicKey]) -> Head:
    if len(data) > MAX_HEAD:
        raise SignatureError(f"head is larger than {MAX_HEAD} bytes")
    body = signing.open_envelope(data, keys, what="head")
    try:
        return decode_head(body)
    except BadRequest as exc:
        raise SignatureError(f"signed head is malformed: {exc.message}") from exc


def pack_heads(envelopes: Sequence[bytes]) -> bytes:
    """A version's heads object: the msgpack array of its head envelopes, in byte order of
    the names they carry (the caller's order is kept: it sorts)."""
    return wire.pack(list(envelopes))


def decode_heads(data: bytes) -> list[bytes]:
    """The head envelopes of a heads object (each still to be opened with ``open_head``)."""
    heads = wire.unpack(data, what="heads")
    if not isinstance(heads, list) or len(heads) > MAX_HEADS:
        raise BadRequest(f"heads: not an array of at most {MAX_HEADS} envelopes")
    if not all(isinstance(h, bytes) and len(h) <= MAX_HEAD for h in heads):
        raise BadRequest(f"heads: an entry is not an envelope of at most {MAX_HEAD} bytes")
    return heads
