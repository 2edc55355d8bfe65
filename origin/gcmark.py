"""gc's mark phase: which versions the policy keeps, and every object they reference
(the policy itself: origin/gc.py's docstring).  Reads only; blocking, run in a thread.

gc holds no signing key, so refs and manifests are decoded without checking signatures:
the store is the origin's own, and a manifest's bytes are checked against its id (the
SHA-256 its key names).  Manifests are immutable, so what each references is cached by id
for the whole run (``Marker.refs``); records, refs, histories and pending moves are cached
with the etag their listing gave (``Marker._seen``).  A sweep marks twice, once before
taking ``locks/gc`` and again under it, and the second pass costs the listings (four an
app) and reads only what changed since the first.  Apps are marked ``THREADS`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common import wire
from common.errors import ConfigError, MinicdnError, StorageUnavailable
from common.ids import sha256
from common.manifest import Ref, decode_manifest, decode_ref
from common.opening import index_heads
from origin import paths
from origin.channels import DAY, Pending
from origin.history import Entry
from origin.publish import VersionRecord
from origin.storage import Store

__all__ = ["Damaged", "Marked", "Marker", "Policy", "Version"]

T = TypeVar("T")
THREADS = 8  # apps marked at once (each a few listings and reads: latency, not CPU)


class Damaged(StorageUnavailable):
    """The store holds something gc cannot read (a kept version's manifest is absent or
    corrupt): it sweeps nothing rather than guess what that thing references."""

    code = "store_damaged"


@dataclass(frozen=True)
class Policy:
    """What a sweep keeps (flags of ``minicdn gc`` of the same names)."""

    keep: int = 10  # --keep: the last N versions of each app, in publish order
    keep_days: float = 30.0  # --keep-days: every version a channel pointed at this recently
    grace: float = DAY  # --grace, seconds: nothing written more recently is swept

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"--keep must be a whole number of at least 1, not {self.keep!r}")
        for flag, value in (("--keep-days", self.keep_days), ("--grace", self.grace)):
            if not 0 <= value < float("inf"):  # also refuses NaN
                raise ConfigError(f"{flag} must be a finite number, not negative: {value!r}")


@dataclass(frozen=True)
class Version:
    app: str
    name: str
    key: str  # its record's key
    size: int  # its record's bytes
    mtime: float  # when its record was last written
    record: VersionRecord


@dataclass
class Marked:
    kept: list[Version] = field(default_factory=list)
    dropped: list[Version] = field(default_factory=list)  # in publish order within an app
    objects: set[str] = field(default_factory=set)  # keys under objects/ that stay


class Marker:
    """One gc run's marking, with its cache of what each manifest references."""

    def __init__(self, store: Store, policy: Policy) -> None:
        self.store = store
        self.policy = policy
        self.refs: dict[bytes, frozenset[str]] = {}  # manifest id → object keys it names
        self._seen: dict[str, tuple[str, bytes]] = {}  # key → (etag, bytes) read this run

    def mark(self, now: float) -> Marked:
        out = Marked()
        apps = self.store.names(paths.APPS)
        with ThreadPoolExecutor(THREADS, thread_name_prefix="gc-mark") as pool:
            for part in pool.map(lambda app: self._mark_app(app, now, Marked()), apps):
                out.kept += part.kept
                out.dropped += part.dropped
                out.objects |= part.objects
        return out

    def _listed(self, prefix: str) -> Iterable[tuple[str, float, bytes]]:
        """(key, mtime, bytes) of every object under ``prefix``: bytes read again only when
        the listing's etag differs from what this run read before."""
        for item in self.store.items(prefix):
            seen = self._seen.get(item.key)
            if seen is not None and seen[0] == item.stat.etag:
                yield item.key, item.stat.mtime, seen[1]
                continue
            blob = self.store.read(item.key)
            if blob is None:  # deleted since the listing (by another sweep): nothing to keep
                continue
            self._seen[item.key] = (blob.etag, blob.data)
            yield item.key, item.stat.mtime, blob.data

    def _mark_app(self, app: str, now: float, out: Marked) -> Marked:
        versions = self._versions(app)
        newest = {v.name for v in versions[-self.policy.keep :]}
        refs = self._refs(app)
        named = self._channel_versions(app, now - self.policy.keep_days * DAY, refs)
        named |= {p.version for p in self._pending(app)}
        young = now - self.policy.grace  # a record written since: a publish or enrichment just made
        for v in versions:
            keep = v.name in newest or v.name in named or v.mtime > young
            (out.kept if keep else out.dropped).append(v)
            if keep:
                for mid in v.record.all_manifests:
                    out.objects |= self._names(mid, v.key)
                for hid in v.record.heads:
                    out.objects |= self._heads(hid, v.key)
        for ref in refs:  # what a ref names stays even if its record is gone (never deleted here)
            named_by = paths.channel_key(app, ref.channel)
            for mid in (ref.manifest, *((ref.rollout.manifest,) if ref.rollout else ())):
                out.objects |= self._names(mid, named_by, absent_ok=True)
            for hid in (ref.heads, *((ref.rollout.heads,) if ref.rollout else ())):
                out.objects |= self._heads(hid, named_by, absent_ok=True)
        return out

    # -- versions -------------------------------------------------------------------------------

    def _versions(self, app: str) -> list[Version]:
        """Every version of ``app``, in publish order (VersionRecord.order, then name)."""
        prefix = paths.versions_prefix(app)
        out = []
        for key, mtime, data in self._listed(prefix):
            try:
                record = VersionRecord.unpack(data)
            except (MinicdnError, KeyError, TypeError, ValueError) as exc:
                raise Damaged(f"{key} is not a version record ({exc}): gc sweeps nothing") from exc
            out.append(Version(app, key[len(prefix) :], key, len(data), mtime, record))
        return sorted(out, key=lambda v: (v.record.order, v.name))

    # -- channels: Channels.versions_since, without the key to verify refs ------------------------

    def _refs(self, app: str) -> list[Ref]:
        return [_decode(decode_ref, data, key) for key, _, data in self._listed(paths.channels_prefix(app))]

    def _channel_versions(self, app: str, since: float, refs: Iterable[Ref]) -> set[str]:
        """Every version a channel pointed at since ``since``: its moves in the window, its
        target when the window opened, and what its ref names now, rollout included."""
        out: set[str] = set()
        for ref in refs:
            out.add(ref.version)
            if ref.rollout is not None:
                out.add(ref.rollout.version)
        for _key, _, data in self._listed(paths.app_prefix(app) + "history/"):
            raw = wire.unpack(data, what="history")
            at_start = None
            for e in map(Entry.unpack, raw):  # time order
                if e.time >= since:
                    out.add(e.version)
                else:
                    at_start = e.version
            if at_start is not None:
                out.add(at_start)
        return out

    def _pending(self, app: str) -> list[Pending]:
        # empty: a move made or cancelled (origin/channels.py)
        return [Pending.unpack(data) for _, _, data in self._listed(paths.pending_prefix(app)) if data]

    # -- what a manifest names --------------------------------------------------------------------

    def _names(self, mid: bytes, named_by: str, *, absent_ok: bool = False) -> frozenset[str]:
        """The manifest's key and every chunk, bundle and delta it names."""
        if mid in self.refs:
            return self.refs[mid]
        key = paths.manifest_key(mid.hex())
        blob = self.store.read(key)
        if blob is None:
            if absent_ok:
                return frozenset()
            raise Damaged(f"{named_by} names manifest {mid.hex()}, which is absent: gc sweeps nothing")
        if sha256(blob.data) != mid:
            raise Damaged(f"{key} does not hash to its id: gc sweeps nothing")
        m = _decode(decode_manifest, blob.data, key)
        keys = {key}
        for p in m.packages:
            keys.update(paths.chunk_key(c.id.hex()) for c in p.chunks)
            if p.bundle is not None:
                keys.add(paths.bundle_key(p.bundle[0].hex()))
            keys.update(paths.bundle_key(delta.hex()) for _, delta, _ in p.deltas)
        self.refs[mid] = frozenset(keys)
        return self.refs[mid]

    def _heads(self, hid: bytes, named_by: str, *, absent_ok: bool = False) -> frozenset[str]:
        """A heads object's key and the key of every package manifest its heads name."""
        if hid in self.refs:
            return self.refs[hid]
        key = paths.manifest_key(hid.hex())
        blob = self.store.read(key)
        if blob is None:
            if absent_ok:
                return frozenset()
            raise Damaged(f"{named_by} names heads {hid.hex()}, which are absent: gc sweeps nothing")
        if sha256(blob.data) != hid:
            raise Damaged(f"{key} does not hash to its id: gc sweeps nothing")
        try:
            heads = index_heads(blob.data)
        except MinicdnError as exc:
            raise Damaged(f"{key} cannot be read ({exc}): gc sweeps nothing") from exc
        keys = {key} | {paths.manifest_key(head.manifest.hex()) for _, head in heads.values()}
        self.refs[hid] = frozenset(keys)
        return self.refs[hid]


def _decode(decode: Callable[[Any], T], envelope: bytes, key: str) -> T:
    """The signed body of an envelope (common.signing.seal's layout), unverified, decoded."""
    try:
        return decode(wire.unpack(wire.unpack(envelope, what=key)["payload"], what=key))
    except (MinicdnError, KeyError, TypeError) as exc:
        raise Damaged(f"{key} cannot be read ({exc}): gc sweeps nothing") from exc
