"""Manifest and channel-ref bodies (DESIGN.md), with strict decoding of untrusted input.

Encoding is canonical msgpack (``common.wire``); ids are 32-byte binary values.  Decoding
checks every field's type and every invariant a reader relies on (stream sizes add up,
paths are safe), so code past this module can trust what it holds.  Unknown keys are
ignored (room to grow).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common import signing, wire
from common.errors import BadRequest, ExpiredRef, MinicdnError, RollbackRef, SignatureError
from common.ids import check_app, check_channel, check_version, sha256
from common.paths import check_relpath

__all__ = [
    "MAIN_PACKAGE",
    "ChunkEntry",
    "Manifest",
    "PackageEntry",
    "Ref",
    "Rollout",
    "app_of",
    "in_rollout",
    "open_manifest",
    "open_ref",
    "rollout_bucket",
]

FORMAT = 2  # docs/design.md "Format 2": refs name a heads object; heads and package
# manifests are common/pkgmeta.py's.  A reader refuses any other format.
MAIN_PACKAGE = "__APP__"


@dataclass(frozen=True)
class ChunkEntry:
    id: bytes
    raw_size: int
    stored_size: int


@dataclass(frozen=True)
class PackageEntry:
    name: str
    independent: bool
    files: tuple[tuple[str, int], ...]
    chunks: tuple[ChunkEntry, ...]
    # Later issue (bundles and deltas): [bundle_id, stored_size] and
    # [[from_manifest_id, delta_id, stored_size], ...].  Absent until the origin makes them.
    bundle: tuple[bytes, int] | None = None
    deltas: tuple[tuple[bytes, bytes, int], ...] = ()

    @property
    def raw_size(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def stored_size(self) -> int:
        return sum(c.stored_size for c in self.chunks)

    def to_wire(self) -> dict[str, Any]:
        body = streams_wire(self.files, self.chunks, self.bundle, self.deltas)
        return {"name": self.name, "independent": self.independent, **body}


def streams_wire(
    files: Iterable[tuple[str, int]],
    chunks: Iterable[ChunkEntry],
    bundle: tuple[bytes, int] | None,
    deltas: Iterable[tuple[bytes, bytes, int]],
) -> dict[str, Any]:
    """A package's files, chunks, bundle and deltas as a manifest carries them (version
    manifests and, format 2, package manifests alike)."""
    out: dict[str, Any] = {
        "files": [[p, s] for p, s in files],
        "chunks": [[c.id, c.raw_size, c.stored_size] for c in chunks],
    }
    if bundle is not None:
        out["bundle"] = [bundle[0], bundle[1]]
    listed = [[m, d, s] for m, d, s in deltas]
    if listed:
        out["deltas"] = listed
    return out


@dataclass(frozen=True)
class Manifest:
    app: str
    version: str
    created: int
    packages: tuple[PackageEntry, ...]
    preload: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def package(self, name: str) -> PackageEntry:
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, PackageEntry]:
        # A dict, not a scan: enrichment and the client look up every package of apps that
        # may have 10,000 of them (a scan each made that quadratic).
        return {p.name: p for p in self.packages}

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "app": self.app,
            "version": self.version,
            "created": self.created,
            "packages": [p.to_wire() for p in self.packages],
            "preload": {page: list(names) for page, names in self.preload.items()},
        }

    def content_digest(self) -> bytes:
        """What makes two publishes of one version "the same content": files and chunks,
        not the creation time."""
        body = self.to_wire()
        del body["created"]
        return hashlib.sha256(wire.pack(body)).digest()

    def seal(self, key: signing.SigningKey) -> bytes:
        return signing.seal(key, self.to_wire())


@dataclass(frozen=True)
class Rollout:
    version: str
    manifest: bytes
    percent: int
    heads: bytes = field(kw_only=True)  # the version's heads object (common/pkgmeta.py)


@dataclass(frozen=True)
class Ref:
    app: str
    channel: str
    serial: int
    issued: int
    expires: int
    version: str
    manifest: bytes
    rollout: Rollout | None = None
    heads: bytes = field(kw_only=True)  # the version's heads object (common/pkgmeta.py)

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "app": self.app,
            "channel": self.channel,
            "serial": self.serial,
            "issued": self.issued,
            "expires": self.expires,
            "version": self.version,
            "manifest": self.manifest,
            "heads": self.heads,
            "rollout": None
            if self.rollout is None
            else {
                "version": self.rollout.version,
                "manifest": self.rollout.manifest,
                "heads": self.rollout.heads,
                "percent": self.rollout.percent,
            },
        }

    def seal(self, key: signing.SigningKey) -> bytes:
        return signing.seal(key, self.to_wire())

    def target_for(self, user_id: str | None) -> tuple[str, bytes]:
        """(version, manifest id) this ref gives ``user_id``; no user id means no rollout."""
        version, manifest, _ = self.target_of(None if user_id is None else rollout_bucket(self.app, user_id))
        return version, manifest

    def target_of(self, bucket: int | None) -> tuple[str, bytes, bytes]:
        """(version, manifest id, heads id) this ref gives a user in rollout ``bucket``
        (0..99, ``rollout_bucket``); None: no user, no rollout."""
        r = self.rollout
        if r is not None and bucket is not None and bucket < r.percent:
            return r.version, r.manifest, r.heads
        return self.version, self.manifest, self.heads

    def check_fresh(self, now: int, highest_serial: int | None) -> None:
        """Refuse an expired ref, or one older than a serial already seen (rollback)."""
        if self.expires <= now:
            raise ExpiredRef(f"ref {self.app}/{self.channel} expired at {self.expires}")
        if highest_serial is not None and self.serial < highest_serial:
            raise RollbackRef(
                f"ref {self.app}/{self.channel} has serial {self.serial}, "
                f"lower than {highest_serial} already seen"
            )


def rollout_bucket(app: str, user_id: str) -> int:
    """A user's rollout bucket, 0..99: in a rollout of P percent when below P."""
    return int(hashlib.sha256(f"{app}:{user_id}".encode()).hexdigest()[:8], 16) % 100


def in_rollout(app: str, user_id: str, percent: int) -> bool:
    return rollout_bucket(app, user_id) < percent


# ---- strict decoding -------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    v = d.get(key)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise BadRequest(f"{what}: field {key!r} missing or of the wrong type")
    return v


def _id(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise BadRequest(f"{what}: an id must be 32 bytes")
    return v


def _size(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1 << 40:
        raise BadRequest(f"{what}: a size must be a non-negative integer")
    return v


Streams = tuple[
    tuple[tuple[str, int], ...],
    tuple[ChunkEntry, ...],
    tuple[bytes, int] | None,
    tuple[tuple[bytes, bytes, int], ...],
]


def _package(p: Any) -> PackageEntry:
    if not isinstance(p, dict):
        raise BadRequest("manifest: a package is not a map")
    name = _get(p, "name", str, "package")
    files, chunks, bundle, deltas = decode_streams(p, f"package {name!r}")
    independent = p.get("independent", False)
    if not isinstance(independent, bool):
        raise BadRequest(f"package {name!r}: 'independent' must be a boolean")
    return PackageEntry(name, independent, files, chunks, bundle, deltas)


def decode_streams(p: dict[str, Any], what: str) -> Streams:
    """A package's files, chunks, bundle and deltas, checked: types, safe paths, sizes that
    add up (``streams_wire``'s inverse)."""
    files = []
    for f in _get(p, "files", list, what):
        if not isinstance(f, list) or len(f) < 2 or not isinstance(f[0], str):
            raise BadRequest(f"{what}: bad file entry")
        files.append((check_relpath(f[0]), _size(f[1], what)))
    chunks = []
    for c in _get(p, "chunks", list, what):
        if not isinstance(c, list) or len(c) < 3:
            raise BadRequest(f"{what}: bad chunk entry")
        chunks.append(ChunkEntry(_id(c[0], what), _size(c[1], what), _size(c[2], what)))
    if sum(s for _, s in files) != sum(c.raw_size for c in chunks):
        raise BadRequest(f"{what}: file sizes and chunk sizes do not add up")
    bundle = None
    if p.get("bundle") is not None:
        b = _get(p, "bundle", list, what)
        if len(b) < 2:
            raise BadRequest(f"{what}: bad bundle entry")
        bundle = (_id(b[0], what), _size(b[1], what))
    deltas = []
    for d in p.get("deltas") or []:
        if not isinstance(d, list) or len(d) < 3:
            raise BadRequest(f"{what}: bad delta entry")
        deltas.append((_id(d[0], what), _id(d[1], what), _size(d[2], what)))
    return tuple(files), tuple(chunks), bundle, tuple(deltas)


def _unknown_format(what: str, body: Any) -> str:
    found = body.get("format") if isinstance(body, dict) else None
    return f"{what}: format {found!r} is not one this reader knows (it reads format {FORMAT})"


def decode_manifest(body: Any) -> Manifest:
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadRequest(_unknown_format("manifest", body))
    packages = tuple(_package(p) for p in _get(body, "packages", list, "manifest"))
    names = [p.name for p in packages]
    if len(set(names)) != len(names):
        raise BadRequest("manifest: two packages share a name")
    preload: dict[str, tuple[str, ...]] = {}
    for page, pkgs in (body.get("preload") or {}).items():
        if not isinstance(pkgs, list) or not all(isinstance(n, str) for n in pkgs):
            raise BadRequest("manifest: bad preload entry")
        preload[str(page)] = tuple(pkgs)
    return Manifest(
        app=check_app(_get(body, "app", str, "manifest")),
        version=check_version(_get(body, "version", str, "manifest")),
        created=_get(body, "created", int, "manifest"),
        packages=packages,
        preload=preload,
    )


def decode_ref(body: Any) -> Ref:
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadRequest(_unknown_format("ref", body))
    rollout = None
    r = body.get("rollout")
    if r is not None:
        if not isinstance(r, dict):
            raise BadRequest("ref: rollout is not a map")
        percent = _get(r, "percent", int, "rollout")
        if not 0 <= percent <= 100:
            raise BadRequest("ref: rollout percent outside 0..100")
        rollout = Rollout(
            check_version(_get(r, "version", str, "rollout")),
            _id(r.get("manifest"), "rollout"),
            percent,
            heads=_id(r.get("heads"), "rollout"),
        )
    return Ref(
        app=check_app(_get(body, "app", str, "ref")),
        channel=check_channel(_get(body, "channel", str, "ref")),
        serial=_get(body, "serial", int, "ref"),
        issued=_get(body, "issued", int, "ref"),
        expires=_get(body, "expires", int, "ref"),
        version=check_version(_get(body, "version", str, "ref")),
        manifest=_id(body.get("manifest"), "ref"),
        rollout=rollout,
        heads=_id(body.get("heads"), "ref"),
    )


def app_of(envelope: bytes) -> str | None:
    """The ``app`` a manifest envelope's payload names, read without verifying anything
    (to pick a useful compression dictionary, never to trust); None if it is not one."""
    try:
        body = wire.unpack(wire.unpack(envelope, what="envelope")["payload"], what="manifest")
    except (MinicdnError, KeyError, TypeError):
        return None
    app = body.get("app") if isinstance(body, dict) else None
    return app if isinstance(app, str) else None


def open_manifest(
    data: bytes, keys: Iterable[signing.PublicKey], expected_id: bytes | None = None
) -> Manifest:
    """Verify and decode a served manifest envelope (its id is SHA-256 of these bytes)."""
    if expected_id is not None and sha256(data) != expected_id:
        raise SignatureError("manifest bytes do not match the manifest id")
    body = signing.open_envelope(data, keys, what="manifest")
    try:
        return decode_manifest(body)
    except BadRequest as exc:
        raise SignatureError(f"signed manifest is malformed: {exc.message}") from exc


def open_ref(data: bytes, keys: Iterable[signing.PublicKey]) -> Ref:
    body = signing.open_envelope(data, keys, what="ref")
    try:
        return decode_ref(body)
    except BadRequest as exc:
        raise SignatureError(f"signed ref is malformed: {exc.message}") from exc
