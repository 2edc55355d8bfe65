"""The publish pipeline: files of one app version → chunks, manifest, version record.

Blocking code, run in a worker thread; zstd compression fans out to a process pool so a
publish uses every core.  Order matters for readers: chunks first, then the manifest, and
the version record last — a version is visible only once everything it names exists.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

from common import wire
from common.chunking import ChunkParams, cut
from common.codec import compress
from common.errors import Conflict
from common.ids import check_app, check_version, sha256
from common.manifest import ChunkEntry, Manifest, PackageEntry
from common.package import Layout, PackageSpec, layout
from common.signing import SigningKey
from origin import paths
from origin.storage import Storage

__all__ = ["PublishResult", "Publisher", "compress_many"]

BATCH_RAW = 1 << 20  # raw bytes per pool task: big enough to amortise pickling


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
    manifest: bytes
    digest: bytes
    created: int

    def pack(self) -> bytes:
        return wire.pack({"manifest": self.manifest, "digest": self.digest, "created": self.created})

    @classmethod
    def unpack(cls, data: bytes) -> VersionRecord:
        d = wire.unpack(data, what="version record")
        return cls(d["manifest"], d["digest"], d["created"])


class Publisher:
    def __init__(
        self,
        storage: Storage,
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
        app_json = files["app.json"].read_bytes() if "app.json" in files else None
        lay: Layout = layout(list(files), app_json)
        stats = _Stats()
        packages = tuple(self._package(spec, files, stats) for spec in lay.packages)
        manifest = Manifest(app, version, int(time.time()), packages, dict(lay.preload))
        return self._commit(manifest, stats)

    # -- one package: stream → chunks → frames ---------------------------------------------

    def _package(self, spec: PackageSpec, files: dict[str, Path], stats: _Stats) -> PackageEntry:
        sizes = [(p, files[p].stat().st_size) for p in spec.files]
        with tempfile.TemporaryFile(dir=self.tmp_dir) as stream:
            for p in spec.files:
                with open(files[p], "rb") as f:
                    while piece := f.read(1 << 20):
                        stream.write(piece)
            stream.flush()
            total = stream.tell()
            if total == 0:
                return PackageEntry(spec.name, spec.independent, tuple(sizes), ())
            with mmap.mmap(stream.fileno(), total, access=mmap.ACCESS_READ) as mm:
                chunks = self._chunks(memoryview(mm), stats)
        return PackageEntry(spec.name, spec.independent, tuple(sizes), chunks)

    def _chunks(self, data: memoryview, stats: _Stats) -> tuple[ChunkEntry, ...]:
        ids: list[tuple[bytes, int]] = []
        batch: list[tuple[bytes, bytes]] = []
        batch_raw = 0
        pending: deque[tuple[list[bytes], Future[list[bytes]]]] = deque()
        try:
            for off, length in cut(data, self.params):
                piece = data[off : off + length]
                cid = sha256(piece)
                ids.append((cid, length))
                if cid in stats.stored or cid in stats.queued:
                    continue
                size = self.storage.stat(paths.chunk_key(cid.hex()))
                if size is not None:
                    stats.stored[cid] = size
                    continue
                stats.queued.add(cid)
                batch.append((cid, bytes(piece)))
                batch_raw += length
                if batch_raw >= BATCH_RAW:
                    pending.append(self._submit(batch))
                    batch, batch_raw = [], 0
                    while len(pending) > 2 * self.workers:
                        self._store(*pending.popleft(), stats)
            if batch:
                pending.append(self._submit(batch))
            while pending:
                self._store(*pending.popleft(), stats)
        finally:
            for _, fut in pending:
                fut.cancel()
        return tuple(ChunkEntry(cid, n, stats.stored[cid]) for cid, n in ids)

    def _submit(self, batch: list[tuple[bytes, bytes]]) -> tuple[list[bytes], Future[list[bytes]]]:
        ids = [cid for cid, _ in batch]
        return ids, self.pool.submit(compress_many, [raw for _, raw in batch], self.level)

    def _store(self, ids: list[bytes], fut: Future[list[bytes]], stats: _Stats) -> None:
        for cid, frame in zip(ids, fut.result(), strict=True):
            if self.storage.put_if_absent(paths.chunk_key(cid.hex()), frame):
                stats.new_chunks += 1
                stats.new_bytes += len(frame)
            stats.stored[cid] = len(frame)
            stats.queued.discard(cid)

    # -- make it visible -------------------------------------------------------------------

    def _commit(self, manifest: Manifest, stats: _Stats) -> PublishResult:
        digest = manifest.content_digest()
        vkey = paths.version_key(manifest.app, manifest.version)
        existing = self._existing(vkey, digest)
        if existing is not None:
            return self._result(manifest, existing.manifest, stats, created=False)
        envelope = manifest.seal(self.key)
        mid = sha256(envelope)
        if self.storage.put_if_absent(paths.manifest_key(mid.hex()), envelope):
            stats.new_bytes += len(envelope)
        record = VersionRecord(mid, digest, manifest.created)
        if not self.storage.put_if_absent(vkey, record.pack()):
            # Lost a race with a concurrent publish of the same version: same rules apply.
            existing = self._existing(vkey, digest)
            assert existing is not None
            return self._result(manifest, existing.manifest, stats, created=False)
        return self._result(manifest, mid, stats, created=True)

    def _existing(self, vkey: str, digest: bytes) -> VersionRecord | None:
        if self.storage.stat(vkey) is None:
            return None
        rec = VersionRecord.unpack(self.storage.get(vkey))
        if rec.digest != digest:
            raise Conflict(f"version {vkey.rsplit('/', 1)[-1]} exists with other content")
        return rec

    @staticmethod
    def _result(m: Manifest, mid: bytes, stats: _Stats, *, created: bool) -> PublishResult:
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


class _Stats:
    def __init__(self) -> None:
        self.stored: dict[bytes, int] = {}
        self.queued: set[bytes] = set()
        self.new_chunks = 0
        self.new_bytes = 0


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
