"""Bundles and deltas (DESIGN.md "Chunks, bundles and deltas"), made in the background once
a version is visible, one version at a time, in publish order.

A manifest is signed and named by its hash, so gaining ``bundle`` and ``deltas`` means a
second manifest of the same version.  Publishing writes the plain manifest M0 and the
version record; enriching a version then runs:

    1. per package: its stream (from the stored chunks, each verified) → the bundle;
       per delta base → the stream against the base's stream (kept if smaller than the bundle)
    2. store each object (put_if_absent: content-addressed; a crash leaves harmless orphans)
    3. seal M1 = M0 + bundle/deltas and store it           — M1 names only objects that exist
    4. rewrite the version record: manifest M1, manifests [M0, M1], enriched
                                                           — channel moves from now on name M1
    5. move refs that name M0 to M1 (serial + 1)

Nothing is deleted: M0 stays, so a ref or a client naming it is never left dangling.
Delta bases are the last ``delta_bases`` versions published before this one plus every earlier
version a channel pointed at within ``delta_window`` (origin/channels.py ``versions_since``);
each delta is listed once for every manifest id its base has had, so a client holding
either manifest of the base finds it.

Restart: steps 1-3 are idempotent, so a version whose record is not yet ``enriched`` is
simply done again (``pending``, publish order); a crash between steps 4 and 5 is repaired
by ``repoint_stale``.  Blocking code, run in a worker thread; ``pause`` is called before
each compression so the service can hold enrichment while a publish runs, or stop it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import codec, pkgmeta
from common.errors import ConfigError, Conflict, IntegrityError, NotFound
from common.ids import sha256
from common.manifest import Manifest, PackageEntry, open_manifest
from common.signing import SigningKey
from origin import paths
from origin.channels import DAY, Channels
from origin.gclock import publish_guard
from origin.publish import VersionRecord, store_split
from origin.storage import Store

__all__ = ["MAX_DELTA_BASES", "MAX_LEVEL", "EnrichSettings", "Enricher"]

log = logging.getLogger("minicdn.origin.enrich")

MAX_CHANNEL_BASES = 8  # bases from channel history beyond the last N (bounds the work per version)
MAX_LEVEL = 22  # zstd's highest level
MAX_DELTA_BASES = 64  # each base costs a compression per package of every version published


@dataclass(frozen=True)
class EnrichSettings:
    """Each field but ``max_stream`` is the origin's flag of the same name (``--delta-bases``)."""

    level: int = codec.DEFAULT_LEVEL
    delta_bases: int = 3  # the last N versions published before this one
    delta_window: float = 30 * DAY  # plus every earlier version a channel pointed at this recently
    max_stream: int = 64 << 20  # a package stream larger than this gets no bundle or deltas

    def __post_init__(self) -> None:
        if not 1 <= self.level <= MAX_LEVEL:
            raise ConfigError(f"--level must be between 1 and {MAX_LEVEL}")
        if not 0 <= self.delta_bases <= MAX_DELTA_BASES:
            raise ConfigError(f"--delta-bases must be between 0 and {MAX_DELTA_BASES}")
        if not self.delta_window >= 0:  # also refuses NaN
            raise ConfigError("--delta-window must not be negative")
        if self.max_stream < 1:
            raise ConfigError("max_stream must be at least 1 byte")


class Enricher:
    def __init__(
        self,
        storage: Store,
        key: SigningKey,
        channels: Channels,
        settings: EnrichSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.key = key
        self.channels = channels
        self.settings = settings or EnrichSettings()
        self.clock = clock

    # -- what to do ---------------------------------------------------------------------------

    def pending(self) -> list[tuple[str, str]]:
        """(app, version) of every version not enriched yet, in publish order."""
        todo = []
        for app in self.channels.apps():
            for version, rec in self._records(app).items():
                if not rec.enriched:
                    todo.append((rec.order, app, version))
        return [(app, version) for _, app, version in sorted(todo)]

    def repoint_stale(self) -> int:
        """Move refs that still name an older manifest of an enriched version to its
        current one (a crash fell between steps 4 and 5); returns how many moved."""
        moved = 0
        for app in self.channels.apps():
            records = self._records(app)
            for channel in self.channels.channel_names(app):
                ref = self.channels.current(app, channel)
                if ref is None:
                    continue
                targets = [(ref.version, ref.manifest)]
                if ref.rollout is not None:
                    targets.append((ref.rollout.version, ref.rollout.manifest))
                for version, mid in targets:
                    rec = records.get(version)
                    if rec is not None and rec.manifest != mid and mid in rec.all_manifests:
                        moved += self.channels.repoint(
                            app, version, {mid}, rec.manifest, rec.heads_of(rec.manifest)
                        )
        return moved

    # -- doing it -----------------------------------------------------------------------------

    def _rewrite(self, vkey: str, rec: VersionRecord, etag: str) -> None:
        """Step 4, by compare-and-swap from the record read at the start: a record deleted
        meanwhile (gc dropped the version) is not brought back."""
        if self.storage.swap(vkey, rec.pack(), etag) is None:
            raise Conflict(f"{vkey} changed while it was being enriched")

    def enrich(self, app: str, version: str, pause: Callable[[], None] = lambda: None) -> bytes | None:
        """Enrich one version (steps 1-5); returns the new manifest id, or None when the
        version was enriched already or nothing could be added."""
        vkey = paths.version_key(app, version)
        blob = self.storage.read(vkey)
        if blob is None:
            raise NotFound(f"no version record {vkey}")
        rec = VersionRecord.unpack(blob.data)
        if rec.enriched:
            return None
        # Under a publish lease (origin/gclock.py), as a publish: a bundle or delta found
        # stored already (put_if_absent: a no-op, its mtime stays old) may be an object only
        # a version being dropped names, and a gc sweep must not delete it between here and
        # the record that names it again.  SweepInProgress / LeaseLost: try again later.
        with publish_guard(self.storage) as held:
            plain = self._manifest(rec.all_manifests[0])
            bases = self._bases(app, version, rec)
            packages = tuple(self._package(pkg, bases, pause) for pkg in plain.packages)
            if packages == plain.packages:
                held.check()
                self._rewrite(vkey, dataclasses.replace(rec, enriched=True), blob.etag)
                return None
            enriched = dataclasses.replace(plain, packages=packages)
            envelope = enriched.seal(self.key)
            mid = sha256(envelope)
            self.storage.put_if_absent(paths.manifest_key(mid.hex()), envelope)
            contents = {
                m: pkgmeta.contents_of(base) for base_rec, base in bases for m in base_rec.all_manifests
            }
            hid = store_split(self.storage, enriched, mid, self.key, contents)
            done = dataclasses.replace(
                rec, manifest=mid, manifests=(*rec.all_manifests, mid), enriched=True, heads=(*rec.heads, hid)
            )
            held.check()
            self._rewrite(vkey, done, blob.etag)
        moved = self.channels.repoint(app, version, set(rec.all_manifests), mid, hid)
        log.info("enriched %s@%s: manifest %s, %d refs moved", app, version, mid.hex()[:16], moved)
        return mid

    def _package(
        self, pkg: PackageEntry, bases: list[tuple[VersionRecord, Manifest]], pause: Callable[[], None]
    ) -> PackageEntry:
        if pkg.raw_size == 0 or pkg.raw_size > self.settings.max_stream:
            return pkg
        pause()
        stream = self._stream(pkg)
        bundle = codec.compress_stream(stream, self.settings.level)
        bundle_id = self._put(bundle)
        deltas: list[tuple[bytes, bytes, int]] = []
        made: dict[tuple[bytes, ...], tuple[bytes, int] | None] = {}  # same base stream → same delta
        for base_rec, base in bases:
            try:
                old = base.package(pkg.name)
            except KeyError:
                continue
            if not codec.MIN_RAW_DICTIONARY <= old.raw_size <= self.settings.max_stream:
                continue
            key = tuple(c.id for c in old.chunks)
            if key not in made:
                pause()
                delta = codec.compress_stream(stream, self.settings.level, base=self._stream(old))
                # A delta no smaller than the bundle is never anyone's cheapest plan.
                made[key] = (self._put(delta), len(delta)) if len(delta) < len(bundle) else None
            if (got := made[key]) is not None:
                deltas += [(m, got[0], got[1]) for m in base_rec.all_manifests]
        return dataclasses.replace(pkg, bundle=(bundle_id, len(bundle)), deltas=tuple(deltas))

    def _bases(self, app: str, version: str, rec: VersionRecord) -> list[tuple[VersionRecord, Manifest]]:
        records = self._records(app)

        def key(v: str) -> tuple[tuple[int, float], str]:
            return (records[v].order, v)

        earlier = [v for v in sorted(records, key=key) if key(v) < (rec.order, version)]
        chosen = earlier[-self.settings.delta_bases :] if self.settings.delta_bases > 0 else []
        recent = self.channels.versions_since(app, self.clock() - self.settings.delta_window)
        chosen += [v for v in reversed(earlier) if v in recent and v not in chosen][:MAX_CHANNEL_BASES]
        return [(records[v], self._manifest(records[v].all_manifests[0])) for v in chosen]

    # -- storage ------------------------------------------------------------------------------

    def _records(self, app: str) -> dict[str, VersionRecord]:
        prefix = paths.versions_prefix(app)
        out = {}
        for key in self.storage.list(prefix):
            blob = self.storage.read(key)
            if blob is not None:  # gone since the listing (gc dropped the version)
                out[key[len(prefix) :]] = VersionRecord.unpack(blob.data)
        return out

    def _manifest(self, mid: bytes) -> Manifest:
        return open_manifest(self.storage.get(paths.manifest_key(mid.hex())), [self.key.public], mid)

    def _stream(self, pkg: PackageEntry) -> bytes:
        """The package's stream from its stored chunks, each checked against its id."""
        parts = []
        for c in pkg.chunks:
            raw = codec.decode_chunk(c.id, self.storage.get(paths.chunk_key(c.id.hex())), max_size=c.raw_size)
            if len(raw) != c.raw_size:
                raise IntegrityError(f"chunk {c.id.hex()}: {len(raw)} bytes, the manifest says {c.raw_size}")
            parts.append(raw)
        return b"".join(parts)

    def _put(self, obj: bytes) -> bytes:
        oid = sha256(obj)
        self.storage.put_if_absent(paths.bundle_key(oid.hex()), obj)
        return oid
