"""The filesystem driver: each object a file under ``root`` at its key's path (the layout
the origin always had, so existing data keeps working).  Writes follow common.fsutil's
crash-safe recipe (temp file, fsync, rename or link, fsync of the directory).

- etag: the file's inode, size and mtime in nanoseconds.  Every write makes a new file and
  renames it into place; inodes are reused (ext4 hands the same few back) and file times
  may be coarse (a jiffy on kernels before 6.13), so ``put`` and ``swap`` stamp the new
  file's mtime past the old one's, under the directory's lock: a key's etags never repeat
  (write i and write i+2 could share inode, size and a coarse mtime otherwise: an ABA that
  would let a stale swap through).
- ``create``: link(2) of the written temp file, which fails if the key exists: of many
  creators (threads or processes), exactly one wins.
- ``swap``: under flock(2) of the object's directory, compare the etag, then rename: one
  swapper at a time per directory, across processes on the host.
- ``list``: a depth-first walk with siblings in key order (a directory sorts as its name
  and "/"), which yields keys in bytewise order and skips subtrees before ``after``.

For one host: several origin processes may share it (the contract holds), but each one
removes the temp files it finds when it opens the store (``sweep``), which would break a
write another process has in flight; replicas on several hosts need an object store
(``s3://``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import os
import stat as statmod
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from common.fsutil import TEMP_PREFIX, atomic_write, open_atomic, sweep_temp
from origin.storage.driver import PAGE, Blob, Item, Page, Stat

__all__ = ["FileDriver"]


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _stat_of(st: os.stat_result) -> Stat:
    return Stat(st.st_size, _etag(st), st.st_mtime)


class FileDriver:
    name = "file"

    def __init__(self, root: str | os.PathLike[str], *, sweep: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if sweep:
            sweep_temp(self.root)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def get(self, key: str) -> Blob | None:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
        return Blob(data, _etag(st))

    def stat(self, key: str) -> Stat | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _stat_of(st) if statmod.S_ISREG(st.st_mode) else None

    def stat_many(self, keys: Iterable[str]) -> dict[str, Stat | None]:
        return {key: self.stat(key) for key in keys}

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        with self._locked(os.path.dirname(path)):
            return self._replace(path, data)

    def _replace(self, path: str, data: bytes) -> str:
        """Write ``data`` over ``path`` (under its directory's lock), its mtime past the old
        file's: the new etag."""
        try:
            before = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            before = 0
        with open_atomic(path) as out:
            out.write(data)
            out.file.flush()
            stamp = max(time.time_ns(), before + 1)
            os.utime(out.file.fileno(), ns=(stamp, stamp))
            if os.fstat(out.file.fileno()).st_mtime_ns <= before:  # a coarse file system
                stamp = before + 1_000_000_000
                os.utime(out.file.fileno(), ns=(stamp, stamp))
        return _etag(os.stat(path))

    def create(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        if os.path.exists(path):
            return None
        # Writers that race past exists() all write a temp file; link() lets one win.
        if not atomic_write(path, data, replace=False):
            return None
        return _etag(os.stat(path))

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        path = self._path(key)
        with self._locked(os.path.dirname(path)):
            current = self.stat(key)
            if current is None or current.etag != etag:
                return None
            return self._replace(path, data)

    @contextlib.contextmanager
    def _locked(self, directory: str, *, make: bool = True) -> Iterator[None]:
        """flock(2) of ``directory`` for the block (made first unless ``make`` is False:
        then FileNotFoundError)."""
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not make:
                raise
            os.makedirs(directory, exist_ok=True)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            with self._locked(os.path.dirname(path), make=False):  # not inside a swap
                os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            if exc.errno != errno.EISDIR:
                raise

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def list(self, prefix: str, after: str | None = None, limit: int = PAGE) -> Page:
        items: builtins.list[Item] = []
        walk = self._walk(prefix.rstrip("/"), after or "")
        for item in walk:
            if len(items) == limit:
                return Page(items, True)
            items.append(item)
        return Page(items, False)

    def _walk(self, top: str, after: str) -> Iterator[Item]:
        """Every file under the key prefix ``top`` ("" for the root) after ``after``, in
        key order."""
        base = f"{self.root}/{top}" if top else str(self.root)
        try:
            entries = builtins.list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        named = []
        for e in entries:
            if e.name.startswith(TEMP_PREFIX):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            key = f"{top}/{e.name}" if top else e.name
            named.append((key + "/" if is_dir else key, is_dir, e))
        named.sort()
        for sort_key, is_dir, e in named:
            if is_dir:
                # every key below starts with sort_key: skip it whole when it is all <= after
                if sort_key < after and not after.startswith(sort_key):
                    continue
                yield from self._walk(sort_key[:-1], after)
            elif sort_key > after:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if statmod.S_ISREG(st.st_mode):
                    yield Item(sort_key, _stat_of(st))

    def names(self, prefix: str) -> builtins.list[str]:
        base = f"{self.root}/{prefix.rstrip('/')}" if prefix else str(self.root)
        try:
            with os.scandir(base) as entries:
                return sorted(e.name for e in entries if not e.name.startswith(TEMP_PREFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def close(self) -> None:
        pass
