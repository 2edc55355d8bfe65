"""The disk tier: cached objects as files under one directory (layout: edge.paths).

Contract, after bazel-remote's disk cache:

- ``put``: reserve space in the index (evicting what the policy names) → write with the
  one crash-safe recipe (common.fsutil: temp file, fsync, rename, fsync dir) → the entry
  counts only once renamed; any failure rolls the reservation back.  A full disk (ENOSPC,
  EDQUOT) pauses admissions for ``full_backoff`` seconds and is counted; requests never
  fail for it, and no partial file is left.
- ``get``: read and *verify* (``check``, run in the executor thread with the read) before
  the bytes go anywhere; a file that fails is deleted, counted and reported as a miss, so
  a corrupted or half-written file is never served.  Every read is checked, not only the
  first after a restart: a disk hit is promoted to the memory tier, so the check is paid
  once per promotion, not per request.
- ``open``: sweep temp files a crash left, then rebuild the index from directory entries
  and one ``stat`` per file (never the content), oldest use first, in a worker thread.
  Until it is done, a key not yet indexed is looked up on disk directly.

Every file operation runs in the default executor; the index lives on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import IntegrityError
from common.fsutil import TEMP_PREFIX, atomic_write, sweep_temp
from edge import paths
from edge.policy import Evicted, Policy

__all__ = ["Blob", "DiskTier"]

log = logging.getLogger("minicdn.edge.disk")

Check = Callable[[bytes], None]
Writer = Callable[[Path, bytes, bool], None]


@dataclass(frozen=True, slots=True)
class Blob:
    body: bytes
    mtime: float


def _write(path: Path, body: bytes, replace: bool) -> None:
    atomic_write(path, body, replace=replace)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unlink_all(victims: list[Path]) -> None:
    for path in victims:
        _unlink(path)


class DiskTier:
    def __init__(
        self,
        root: Path,
        policy: Policy,
        *,
        on_evict: Callable[[int], None] = lambda n: None,
        on_full: Callable[[], None] = lambda: None,
        on_corrupt: Callable[[], None] = lambda: None,
        full_backoff: float = 5.0,
        writer: Writer = _write,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.policy = policy
        self.on_evict = on_evict
        self.on_full = on_full
        self.on_corrupt = on_corrupt
        self.full_backoff = full_backoff
        self.writer = writer
        self.clock = clock
        self.loaded = False
        self.full_until = 0.0
        # Keys this process indexes, writes and evicts (all, unless several worker processes
        # share the directory: then each owns a share, see edge.workers); others are read only.
        self.owns: Callable[[str], bool] = lambda key: True
        # Keys whose write is in flight, with the bytes each has reserved in the index.
        self._writing: dict[str, int] = {}

    @property
    def used(self) -> int:
        return self.policy.bytes

    @property
    def limit(self) -> int:
        return self.policy.limit

    @property
    def full(self) -> bool:
        return self.clock() < self.full_until

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- start ---------------------------------------------------------------------------

    async def open(self) -> int:
        """Sweep crash leftovers and rebuild the index; returns the number of entries."""
        self.root.mkdir(parents=True, exist_ok=True)
        swept = await self._run(sweep_temp, self.root, self._owned_temp)
        found: list[tuple[str, int, float]] = await self._run(lambda: list(paths.walk(self.root)))  # type: ignore[assignment]
        found.sort(key=lambda t: t[2])
        evicted: Evicted = []
        for key, size, _ in found:
            if not self.owns(key):
                continue
            evicted += self.policy.admit(key, size)
            if key not in self.policy:  # larger than the whole tier
                evicted.append((key, size))
        await self._drop(evicted)
        self.loaded = True
        log.info(
            "disk tier %s: %d entries, %d bytes, %d temp files swept",
            self.root,
            len(self.policy),
            self.policy.bytes,
            swept,
        )
        return len(self.policy)

    def _owned_temp(self, path: str) -> bool:
        """A temp file is swept by the owner of its target (``.tmp-<name>.<random>``)."""
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        folder, _, name = rel.rpartition("/")
        key = paths.key_of(f"{folder}/{name[len(TEMP_PREFIX) :].rpartition('.')[0]}")
        return key is None or self.owns(key)

    # -- read ----------------------------------------------------------------------------

    def _read(self, key: str, check: Check | None) -> Blob:
        with open(paths.path_of(self.root, key), "rb") as f:
            body = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
        if check is not None:
            check(body)
        return Blob(body, mtime)

    async def get(self, key: str, check: Check | None) -> Blob | None:
        """The stored bytes of ``key`` after ``check`` passed on them, else None."""
        if self.loaded and key not in self.policy and self.owns(key):
            return None
        try:
            blob: Blob = await self._run(self._read, key, check)  # type: ignore[assignment]
        except FileNotFoundError:
            # A write in flight holds its reservation until its file is renamed in place;
            # only a file that should be there and is not leaves the index.
            if key not in self._writing:
                self.policy.remove(key)
            return None
        except IntegrityError as exc:
            log.warning("dropping corrupt cache file %s: %s", key, exc.message)
            self.on_corrupt()
            await self.remove(key)
            return None
        if key in self.policy:
            self.policy.touch(key)
        elif key not in self._writing and self.owns(key):  # found before the index was rebuilt
            await self._drop(self.policy.admit(key, len(blob.body)))
        return blob

    # -- write ---------------------------------------------------------------------------

    async def put(self, key: str, body: bytes, *, replace: bool = False, mtime: float | None = None) -> bool:
        """Store ``body`` under ``key``; False when it was not admitted (full disk, too big,
        an I/O error).  ``replace`` is for refs; content-addressed keys are write-once."""
        if self.full or key in self._writing or not self.owns(key):
            return False
        if key in self.policy:
            if not replace:
                return True
            self.policy.remove(key)
        evicted = self.policy.admit(key, len(body))
        if key not in self.policy:
            return False
        self._writing[key] = len(body)
        try:
            await self._drop(evicted)
            await self._run(self._store, key, body, replace, mtime)
        except OSError as exc:
            self.policy.remove(key)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.full_until = self.clock() + self.full_backoff
                self.on_full()
                log.warning("disk full under %s: admissions paused for %.0fs", self.root, self.full_backoff)
            else:
                log.error("cannot write %s: %s", key, exc)
            return False
        finally:
            self._writing.pop(key, None)
        if key not in self.policy:  # evicted or removed while it was being written
            await self._run(_unlink, paths.path_of(self.root, key))
            return False
        return True

    def _store(self, key: str, body: bytes, replace: bool, mtime: float | None) -> None:
        path = paths.path_of(self.root, key)
        self.writer(path, body, replace)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    async def set_mtime(self, key: str, mtime: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self._run(os.utime, paths.path_of(self.root, key), (mtime, mtime))

    async def remove(self, key: str) -> None:
        self.policy.remove(key)
        await self._run(_unlink, paths.path_of(self.root, key))

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.policy if k.startswith(prefix)]

    async def _drop(self, evicted: Evicted) -> None:
        if not evicted:
            return
        await self._run(_unlink_all, [paths.path_of(self.root, k) for k, _ in evicted])
        for _, size in evicted:
            self.on_evict(size)
