"""The client's local, content-addressed chunk store, shared by every app and version.

Raw chunk bytes under ``chunks/<h0h1>/<hex>``, each checked against its id before it is
written and again before it is used; verified manifest envelopes under
``manifests/<hex>`` (the base of an update).  Bounded: ``collect()`` removes chunks no
install references, least recently used first, until the store fits its limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from common.errors import IntegrityError
from common.fsutil import atomic_write, sweep_temp
from common.ids import sha256

__all__ = ["LocalStore"]


class LocalStore:
    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        (root / "chunks").mkdir(parents=True, exist_ok=True)
        sweep_temp(root / "chunks")

    def _path(self, cid: bytes) -> Path:
        h = cid.hex()
        return self.root / "chunks" / h[:2] / h

    def has(self, cid: bytes) -> bool:
        return self._path(cid).is_file()

    def put(self, cid: bytes, raw: bytes) -> None:
        if sha256(raw) != cid:
            raise IntegrityError(f"chunk {cid.hex()}: content does not match its id")
        atomic_write(self._path(cid), raw, replace=False)

    def get(self, cid: bytes) -> bytes:
        """The chunk's bytes, re-checked: a store corrupted on disk is caught, not installed."""
        path = self._path(cid)
        raw = path.read_bytes()
        if sha256(raw) != cid:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"stored chunk {cid.hex()} is corrupt; it was removed")
        os.utime(path)  # recency for collect()
        return raw

    def put_manifest(self, mid: bytes, envelope: bytes) -> None:
        if sha256(envelope) != mid:
            raise IntegrityError(f"manifest {mid.hex()}: bytes do not match its id")
        atomic_write(self.root / "manifests" / mid.hex(), envelope, replace=False)

    def get_manifest(self, mid: bytes) -> bytes | None:
        try:
            envelope = (self.root / "manifests" / mid.hex()).read_bytes()
        except FileNotFoundError:
            return None
        return envelope if sha256(envelope) == mid else None

    def collect_manifests(self, referenced: Iterable[bytes]) -> int:
        """Drop every stored manifest not in ``referenced`` (what the installs hold: the
        package manifests of their packages); returns the bytes freed."""
        keep = {m.hex() for m in referenced}
        folder = self.root / "manifests"
        freed = 0
        for p in folder.iterdir() if folder.is_dir() else ():
            if p.name not in keep and p.is_file():
                freed += p.stat().st_size
                p.unlink(missing_ok=True)
        return freed

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "chunks").glob("*/*") if p.is_file())

    def collect(self, referenced: Iterable[bytes]) -> int:
        """Drop unreferenced chunks, least recently used first, until within the limit;
        returns the bytes freed.  Referenced chunks are never dropped."""
        keep = {c.hex() for c in referenced}
        entries = []
        total = 0
        for p in (self.root / "chunks").glob("*/*"):
            if not p.is_file():
                continue
            st = p.stat()
            total += st.st_size
            if p.name not in keep:
                entries.append((st.st_mtime, st.st_size, p))
        freed = 0
        for _, size, p in sorted(entries):
            if total - freed <= self.limit:
                break
            p.unlink(missing_ok=True)
            freed += size
        return freed
