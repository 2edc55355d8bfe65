"""Where the origin keeps its objects: a small synchronous interface and a filesystem
implementation.  (An S3-compatible backend will implement the same interface and must pass
the same contract suite, tests/test_storage_contract.py.)

Calls block; the origin runs them in an executor, never on the event loop.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from common.errors import NotFound
from common.fsutil import TEMP_PREFIX, atomic_write, sweep_temp

__all__ = ["FileStorage", "Storage"]


class Storage(Protocol):
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless the key exists.  True if this call created it.
        Atomic: readers see nothing or the whole object, never part of it."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, atomically replacing what was there (refs, records)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound if absent."""

    def stat(self, key: str) -> int | None:
        """The object's size in bytes, or None if absent."""

    def list(self, prefix: str) -> Iterator[str]:
        """Every key that starts with ``prefix`` (ending in "/"), in sorted order."""

    def names(self, prefix: str) -> builtins.list[str]:
        """The names one level under ``prefix`` (ending in "/"), sorted, each once: the part
        of every key under it up to the next "/" (S3's ListObjectsV2 with a "/" delimiter).
        Costs what is one level down, not the whole tree: the origin's app listing.  A name
        may outlive its keys where the backend keeps folders (a folder left empty)."""

    def delete(self, key: str) -> bool:
        """Remove the object; True if it existed."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts) or "\x00" in key:
        raise ValueError(f"bad storage key {key!r}")
    if parts[-1].startswith(TEMP_PREFIX):
        raise ValueError(f"storage key {key!r} uses the reserved temp prefix")
    return key


class FileStorage:
    """Objects as files under ``root``; writes follow common.fsutil's crash-safe recipe."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_temp(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        # Writers that race past exists() all write a temp file; link() lets one win.
        return atomic_write(path, data, replace=False)

    def put(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no object {key}") from exc

    def stat(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str) -> Iterator[str]:
        if not prefix.endswith("/"):
            raise ValueError("list() takes a prefix that ends in '/'")
        base = self._path(prefix.rstrip("/"))
        out: list[str] = []
        for dirpath, dirs, files in os.walk(base):
            dirs.sort()
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    out.append(f"{rel}/{name}".replace(os.sep, "/"))
        yield from sorted(out)

    def names(self, prefix: str) -> builtins.list[str]:
        if not prefix.endswith("/"):
            raise ValueError("names() takes a prefix that ends in '/'")
        try:
            with os.scandir(self._path(prefix.rstrip("/"))) as entries:
                return sorted(e.name for e in entries if not e.name.startswith(TEMP_PREFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                return False
            raise
        return True
