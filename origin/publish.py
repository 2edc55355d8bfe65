"""The publish pipeline: files of one app version → chunks, manifest, version record.

Blocking code, run in a worker thread; zstd compression fans out to a process pool so a
publish uses every core.  Order matters for readers: chunks first, then the manifest, and
the version record last — a version is visible only once everything it names exists.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import pkgmeta, wire
from common.chunking import ChunkParams, cut
from common.codec import compress
from common.errors import Conflict, StoreError
from common.ids import check_app, check_version, sha256
from common.manifest import ChunkEntry, Manifest, PackageEntry
from common.package import Layout, PackageSpec, layout
from common.signing import SigningKey
from origin import paths
from origin.gclock import publish_guard
from origin.ingest import read_app_json
from origin.storage import Store

__all__ = ["PublishResult", "Publisher", "VersionRecord", "compress_many"]

MIN_BATCH_RAW = 64 << 10  # raw bytes per pool task: big enough to amortise pickling,
MAX_BATCH_RAW = 1 << 20  # small enough that a small app still keeps every worker busy
STORE_THREADS = 8  # concurrent chunk writes (each ends in fsync, which releases the GIL)
PROBE = 256  # chunks per existence check (one stat_many: concurrent requests on S3)


def compress_many(chunks: list[bytes], level: int) -> list[bytes]:
    """Pool task: one zstd frame per chunk."""
    return [compress(c, level) for c in chunks]


@dataclass(frozen=True)
class PublishResult:
    manifest: bytes
    chunks: int  # chunks the version is made of
    new_chunks: int  # of those, chunks this publish stored (the rest were shared)
    raw_bytes: int  # the version's files, uncompressed
    stored_bytes: int  # the version's chunks as stored (zstd frames)
    new_bytes: int  # bytes this publish added to storage (new chunks and the manifest)
    created: bool  # False: the same content was already published as this version

    def to_json(self) -> dict[str, object]:
        return {
            "manifest": self.manifest.hex(),
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "new_bytes": self.new_bytes,
        }


@dataclass(frozen=True)
class VersionRecord:
    """``apps/{app}/versions/{version}``: the version exists once this record does.

    ``manifest`` is the manifest the version serves now (channel moves name it): the plain
    one from publishing, then the enriched one (bundles and deltas, origin/enrich.py).
    ``manifests`` is every manifest the version has had, oldest first — all stay stored,
    since refs and clients may name any of them, and deltas are listed from each.
    Records written before enrichment existed unpack with ``enriched=False`` (so they are
    enriched at the next start) and ``published=0``."""

    manifest: bytes
    digest: bytes
    created: int
    manifests: tuple[bytes, ...] = ()
    enriched: bool = False
    published: float = 0.0  # wall time of the publish: orders versions published in one second
    heads: tuple[bytes, ...] = ()  # the heads object of each of ``manifests``, in that order

    def heads_of(self, mid: bytes) -> bytes:
        """The heads object of the version's manifest ``mid`` (format 2)."""
        for m, h in zip(self.all_manifests, self.heads, strict=False):
            if m == mid:
                return h
        raise StoreError(f"version record names manifest {mid.hex()} without its heads (not format 2)")

    @property
    def all_manifests(self) -> tuple[bytes, ...]:
        return self.manifests or (self.manifest,)

    @property
    def order(self) -> tuple[int, float]:
        return (self.created, self.published)

    def pack(self) -> bytes:
        return wire.pack(
            {
                "manifest": self.manifest,
                "digest": self.digest,
                "created": self.created,
                "manifests": list(self.all_manifests),
                "enriched": self.enriched,
                "published": self.published,
                "heads": list(self.heads),
            }
        )

    @classmethod
    def unpack(cls, data: bytes) -> VersionRecord:
        d = wire.unpack(data, what="version record")
        return cls(
            d["manifest"],
            d["digest"],
            d["created"],
            tuple(d.get("manifests") or ()),
            bool(d.get("enriched", False)),
            float(d.get("published", 0.0)),
            tuple(d.get("heads") or ()),
        )


class Publisher:
    def __init__(
        self,
        storage: Store,
        key: SigningKey,
        pool: Executor,
        *,
        workers: int,
        level: int = 19,
        params: ChunkParams | None = None,
        tmp_dir: Path,
    ) -> None:
        self.storage = storage
        self.key = key
        self.pool = pool
        self.workers = max(1, workers)
        self.level = level
        self.params = params or ChunkParams()
        self.tmp_dir = tmp_dir

    def publish(self, app: str, version: str, files: dict[str, Path]) -> PublishResult:
        check_app(app)
        check_version(version)
        # From the first check of which chunks exist until the record is written, a gc sweep
        # must not delete a chunk this publish found stored and so did not upload (origin/gc.py).
        with publish_guard(self.storage) as guard:
            return self._publish(app, version, files, guard.check)

    def _publish(
        self, app: str, version: str, files: dict[str, Path], still_guarded: Callable[[], None]
    ) -> PublishResult:
        lay: Layout = layout(list(files), read_app_json(files))
        total = sum(f.stat().st_size for f in files.values())
        # Enough tasks to keep every worker busy, each big enough to amortise pickling.
        work = _Work(batch_target=min(MAX_BATCH_RAW, max(MIN_BATCH_RAW, total // (4 * self.workers))))
        with ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store") as io:
            work.io = io
            try:
                cut_packages = [self._cut(spec, files, work) for spec in lay.packages]
                self._probe(work)
                work.flush(self)
                while work.pending:
                    self._drain(work)
                for wfut in work.writes:
                    if wfut.result():
                        work.new_chunks += 1
                        work.new_bytes += work.stored[work.writes[wfut]]
            finally:
                for _, fut in work.pending:
                    fut.cancel()
        packages = tuple(
            PackageEntry(
                spec.name, spec.independent, sizes, tuple(ChunkEntry(c, n, work.stored[c]) for c, n in ids)
            )
            for spec, sizes, ids in cut_packages
        )
        manifest = Manifest(app, version, int(time.time()), packages, dict(lay.preload))
        work.still_guarded = still_guarded
        return self._commit(manifest, work)

    # -- stream → chunks → frames, for every package, pipelined through the pool -------------

    def _cut(
        self, spec: PackageSpec, files: dict[str, Path], work: _Work
    ) -> tuple[PackageSpec, tuple[tuple[str, int], ...], list[tuple[bytes, int]]]:
        sizes = tuple((p, files[p].stat().st_size) for p in spec.files)
        ids: list[tuple[bytes, int]] = []
        with tempfile.TemporaryFile(dir=self.tmp_dir) as stream:
            for p in spec.files:
                with open(files[p], "rb") as f:
                    shutil.copyfileobj(f, stream, 1 << 20)
            stream.flush()
            total = stream.tell()
            if total == 0:
                return spec, sizes, ids
            with mmap.mmap(stream.fileno(), total, access=mmap.ACCESS_READ) as mm:
                for off, length in cut(mm, self.params):
                    piece = mm[off : off + length]  # a copy: nothing keeps the map exported
                    cid = sha256(piece)
                    ids.append((cid, length))
                    self._queue(cid, piece, work)
        return spec, sizes, ids

    def _queue(self, cid: bytes, piece: bytes, work: _Work) -> None:
        if cid in work.stored or cid in work.queued:
            return
        work.queued.add(cid)
        work.probe.append((cid, piece))
        work.probe_raw += len(piece)
        if len(work.probe) >= PROBE or work.probe_raw >= work.batch_target:
            self._probe(work)

    def _probe(self, work: _Work) -> None:
        """Which of the chunks cut so far the store has: one ``stat_many`` for the lot
        (concurrent requests on S3, never one HEAD after another); the rest go to be
        compressed and stored."""
        if not work.probe:
            return
        found = self.storage.stat_many(paths.chunk_key(cid.hex()) for cid, _ in work.probe)
        for cid, piece in work.probe:
            st = found[paths.chunk_key(cid.hex())]
            if st is not None:
                work.stored[cid] = st.size
                continue
            work.batch.append((cid, piece))
            work.batch_raw += len(piece)
            if work.batch_raw >= work.batch_target:
                work.flush(self)
                while len(work.pending) > 2 * self.workers:
                    self._drain(work)
        work.probe, work.probe_raw = [], 0

    def _drain(self, work: _Work) -> None:
        """Take the oldest compression task's frames and hand each to a store thread
        (fsyncs overlap each other and the compression still running)."""
        ids, fut = work.pending.popleft()
        assert work.io is not None
        for cid, frame in zip(ids, fut.result(), strict=True):
            work.stored[cid] = len(frame)
            work.writes[work.io.submit(self.storage.put_if_absent, paths.chunk_key(cid.hex()), frame)] = cid

    # -- make it visible -------------------------------------------------------------------

    def _commit(self, manifest: Manifest, stats: _Work) -> PublishResult:
        digest = manifest.content_digest()
        vkey = paths.version_key(manifest.app, manifest.version)
        existing = self._existing(vkey, digest)
        if existing is not None:
            return self._result(manifest, existing.manifest, stats, created=False)
        envelope = manifest.seal(self.key)
        mid = sha256(envelope)
        if self.storage.put_if_absent(paths.manifest_key(mid.hex()), envelope):
            stats.new_bytes += len(envelope)
        hid = store_split(self.storage, manifest, mid, self.key, {})
        record = VersionRecord(mid, digest, manifest.created, (mid,), published=time.time(), heads=(hid,))
        stats.still_guarded()  # LeaseLost if a sweep may have run meanwhile: no record then
        if not self.storage.put_if_absent(vkey, record.pack()):
            # Lost a race with a concurrent publish of the same version: same rules apply.
            existing = self._existing(vkey, digest)
            assert existing is not None
            return self._result(manifest, existing.manifest, stats, created=False)
        return self._result(manifest, mid, stats, created=True)

    def _existing(self, vkey: str, digest: bytes) -> VersionRecord | None:
        blob = self.storage.read(vkey)
        if blob is None:
            return None
        rec = VersionRecord.unpack(blob.data)
        if rec.digest != digest:
            raise Conflict(f"version {vkey.rsplit('/', 1)[-1]} exists with other content")
        return rec

    @staticmethod
    def _result(m: Manifest, mid: bytes, stats: _Work, *, created: bool) -> PublishResult:
        unique = {c.id: c.stored_size for p in m.packages for c in p.chunks}
        return PublishResult(
            manifest=mid,
            chunks=sum(len(p.chunks) for p in m.packages),
            new_chunks=stats.new_chunks,
            raw_bytes=sum(p.raw_size for p in m.packages),
            stored_bytes=sum(unique.values()),
            new_bytes=stats.new_bytes,
            created=created,
        )


def store_split(
    storage: Store, manifest: Manifest, mid: bytes, key: SigningKey, bases: dict[bytes, dict[str, bytes]]
) -> bytes:
    """Store format 2's package manifests and heads object of the version manifest ``mid``
    (before any record names them); returns the heads object's id."""
    parts = pkgmeta.split(manifest, mid, key, bases)
    for pid, body in parts.packages.items():
        storage.put_if_absent(paths.manifest_key(pid.hex()), body)
    hid = sha256(parts.heads)
    storage.put_if_absent(paths.manifest_key(hid.hex()), parts.heads)
    return hid


class _Work:
    """One publish's bookkeeping: chunk sizes known so far, compression tasks in flight,
    store writes in flight."""

    def __init__(self, batch_target: int) -> None:
        self.batch_target = batch_target
        self.stored: dict[bytes, int] = {}
        self.queued: set[bytes] = set()  # probed or to be
        self.probe: list[tuple[bytes, bytes]] = []  # cut, not yet asked whether stored
        self.probe_raw = 0
        self.batch: list[tuple[bytes, bytes]] = []
        self.batch_raw = 0
        self.pending: deque[tuple[list[bytes], Future[list[bytes]]]] = deque()
        self.writes: dict[Future[bool], bytes] = {}
        self.io: ThreadPoolExecutor | None = None
        self.new_chunks = 0
        self.new_bytes = 0
        self.still_guarded: Callable[[], None] = lambda: None

    def flush(self, pub: Publisher) -> None:
        if self.batch:
            ids = [cid for cid, _ in self.batch]
            self.pending.append(
                (ids, pub.pool.submit(compress_many, [raw for _, raw in self.batch], pub.level))
            )
            self.batch, self.batch_raw = [], 0


def tree_files(root: Path) -> dict[str, Path]:
    """{package path: file} for a folder on disk (the CLI publishes folders as archives;
    this is for tests and tools).  Symlinks are refused like in archives."""
    out: dict[str, Path] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            out[full.relative_to(root).as_posix()] = full
    return out
