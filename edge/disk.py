"""The disk tier: cached objects as files under one directory (layout: edge.paths).

Contract, after bazel-remote's disk cache:

- ``put`` (or ``store``, which does not wait): reserve space in the index (evicting what
  the policy names) → write with the one crash-safe recipe (common.fsutil: temp file,
  rename; see Durability) → the entry counts only once renamed; any failure rolls the
  reservation back, and no partial file is left.  A full disk (ENOSPC, EDQUOT) is counted
  and never fails a request; see below.
- ``get``: read and *verify* (``check``, run in the executor thread with the read) before
  the bytes go anywhere; a file that fails is deleted, counted and reported as a miss, so
  a corrupted or half-written file is never served.  Every read is checked, not only the
  first after a restart: a disk hit is promoted to the memory tier, so the check is paid
  once per promotion, not per request.
- ``open``: sweep temp files a crash left, then rebuild the index from directory entries
  and one ``stat`` per file (never the content), oldest use first, in a worker thread.
  Until it is done, a key not yet indexed is looked up on disk directly.

Durability: an object file is *not* fsynced (nor its directory); refs are.  The recipe
still writes a temp file and renames it, so a file has its final name only once all its
bytes were written: a process that dies (SIGKILL, OOM) leaves complete files or swept
temp files, and the page cache keeps them.  Only a power loss or a kernel crash can lose
what the kernel had not written back yet (ext4 commits metadata every 5 s and writes data
back within ~30 s): a name may be gone (a miss), or name a file that is empty or zeroed —
which ``get`` fails to verify, deletes and treats as a miss.  So what an fsync per entry
buys is one refetch, after a power loss, of each object filled in the last seconds before
it; what it costs is two fsyncs per fill, the most expensive step of a miss (issue 15).
Refs are not content-addressed (a torn one could not be told from a good one when it is
served stale), so they keep both fsyncs.  ``flush`` (at shutdown) writes back the
filesystem once, so a clean stop loses nothing.

A limit larger than the filesystem (``--disk-size`` above the free space, or space taken
by others) would otherwise never evict: the index believes there is room, every write
fails.  So on ENOSPC the tier *fits* its limit to the filesystem: what it holds now plus
the filesystem's free space (statvfs), less a small reserve, and evicts down to that like
any limit.  Fitted limits may grow back: at most once per ``full_backoff``, an admission
re-reads statvfs and raises the limit (never above the configured one) when space
returned.  When statvfs says the write should have fitted (a quota, no inodes left), the
limit is not what is short: admissions pause for ``full_backoff`` instead, as before.

Writes (``put``, ``store``) and the unlinks of what they evict run on the tier's one
writer thread (edge.writer), in order, handed over in batches: a miss's write costs no task
and no thread-pool round trip, and a full writer (4096 writes or 64 MiB queued) sheds the
admission (``writes.shed``), never queues it.  Other file operations (reads, the index
rebuild, removals) run in the default executor; the index lives on the loop's thread.
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
from common.fsutil import TEMP_PREFIX, atomic_write, sweep_temp, syncfs
from edge import paths
from edge.policy import Evicted, Policy
from edge.tasks import TaskOwner
from edge.writer import WriterThread

__all__ = ["Blob", "DiskTier"]

log = logging.getLogger("minicdn.edge.disk")

Check = Callable[[bytes], None]
Writer = Callable[[str, bytes, bool], None]  # (path, body, replace)

RESERVE_SHARE = 0.01  # of the filesystem's size left free when a limit is fitted to it,
RESERVE_MIN = 64 << 10  # at least this (a few blocks and directory entries),
RESERVE_MAX = 256 << 20  # at most this (1% of a large disk is a lot of cache)


def _space(stat: os.statvfs_result) -> tuple[int, int]:
    """(bytes free to unprivileged writers, reserve to keep) of a filesystem."""
    size = stat.f_blocks * stat.f_frsize
    reserve = min(RESERVE_MAX, max(RESERVE_MIN, int(size * RESERVE_SHARE)))
    return stat.f_bavail * stat.f_frsize, reserve


@dataclass(frozen=True, slots=True)
class Blob:
    body: bytes
    mtime: float


def _write(path: str, body: bytes, replace: bool) -> None:
    # Only refs are replaced, and only they are fsynced: see "Durability" in the docstring.
    atomic_write(path, body, replace=replace, durable=replace)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unlink_all(victims: list[Path]) -> None:
    for path in victims:
        _unlink(path)


class _Write:
    """A job for the writer thread: unlink what admitting the key evicted, then the recipe."""

    __slots__ = ("began", "body", "disk", "done", "evicted", "key", "mtime", "replace", "size")

    def __init__(
        self,
        disk: DiskTier,
        key: str,
        body: bytes,
        replace: bool,
        mtime: float | None,
        evicted: Evicted,
        done: Callable[[bool], None],
    ) -> None:
        self.disk, self.key, self.body, self.replace, self.mtime = disk, key, body, replace, mtime
        self.evicted, self.done = evicted, done
        self.size = len(body)
        self.began = disk._fits  # which fitting of the limit this write was admitted under

    def run(self) -> None:
        if self.evicted:
            _unlink_all([paths.path_of(self.disk.root, k) for k, _ in self.evicted])
        self.disk._store(self.key, self.body, self.replace, self.mtime)

    def landed(self, error: BaseException | None) -> None:
        self.disk._landed(self, error)


class _Unlink:
    __slots__ = ("size", "victims")

    def __init__(self, victims: list[Path]) -> None:
        self.victims = victims
        self.size = 0

    def run(self) -> None:
        _unlink_all(self.victims)

    def landed(self, error: BaseException | None) -> None:
        if error is not None:
            log.error("cannot remove evicted cache files: %s", error)


class DiskTier:
    def __init__(
        self,
        root: Path,
        policy: Policy,
        *,
        on_evict: Callable[[int], None] = lambda n: None,
        on_full: Callable[[], None] = lambda: None,
        on_corrupt: Callable[[], None] = lambda: None,
        on_shed: Callable[[], None] = lambda: None,
        full_backoff: float = 5.0,
        writer: Writer = _write,
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
        max_writes: int = 4096,
        max_write_bytes: int = 64 << 20,
    ) -> None:
        self.root = root
        self.policy = policy
        self.on_evict = on_evict
        self.on_full = on_full
        self.on_corrupt = on_corrupt
        self.on_shed = on_shed  # told of each object not stored because the writer was full
        self.full_backoff = full_backoff
        self.writer = writer
        self._root = os.fspath(root)
        self.clock = clock
        self.statvfs = statvfs
        self.loaded = False
        self.full_until = 0.0
        self.configured = policy.limit  # the limit asked for; a full filesystem may lower it
        self.regrow_at = 0.0  # when a fitted limit may next be raised towards ``configured``
        # One fitting at a time, and each fits once per change: a write that failed after
        # the limit was fitted since it began tells nothing new (``_fits``).
        self._fitting = asyncio.Lock()
        self._fits = 0
        # Keys this process indexes, writes and evicts (all, unless several worker processes
        # share the directory: then each owns a share, see edge.workers); others are read only.
        self.owns: Callable[[str], bool] = lambda key: True
        # Keys whose write is in flight, with the bytes each has reserved in the index.
        self._writing: dict[str, int] = {}
        # Object writes (and the unlinks of what they evict) run on one thread, in batches.
        self.writes = WriterThread("disk writer", max_jobs=max_writes, max_bytes=max_write_bytes)
        self.chores = TaskOwner("disk", limit=64)  # rare follow-ups: regrow, a full disk

    @property
    def used(self) -> int:
        return self.policy.bytes

    @property
    def limit(self) -> int:
        return self.policy.limit

    @property
    def full(self) -> bool:
        return self.clock() < self.full_until

    @property
    def fitted(self) -> bool:
        """The limit was lowered to what the filesystem holds."""
        return self.policy.limit < self.configured

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

    def surely_absent(self, key: str) -> bool:
        """``key`` is not on disk, by the index alone (no file is looked at)."""
        return self.loaded and key not in self.policy and self.owns(key)

    async def get(self, key: str, check: Check | None) -> Blob | None:
        """The stored bytes of ``key`` after ``check`` passed on them, else None."""
        if self.surely_absent(key):
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
        the writer full, an I/O error).  ``replace`` is for refs; content-addressed keys
        are write-once."""
        if self.fitted and self.clock() >= self.regrow_at:
            await self._regrow()
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self.store(key, body, replace=replace, mtime=mtime, done=stored.set_result):
            return False
        return await stored

    def store(
        self,
        key: str,
        body: bytes,
        *,
        replace: bool = False,
        mtime: float | None = None,
        done: Callable[[bool], None] = lambda stored: None,
    ) -> bool:
        """``put`` without waiting (a miss's write, edge.fill): admit ``body`` and queue its
        write on the writer thread; False when not admitted.  Once admitted, ``done`` is
        told (on the loop) whether the file was stored."""
        if self.full or key in self._writing or not self.owns(key):
            return False
        if self.fitted and self.clock() >= self.regrow_at:
            self.chores.spawn(self._regrow())  # this write is judged by the limit as it is
        if key in self.policy:
            if not replace:
                done(True)
                return True
            self.policy.remove(key)
        if not self.writes.room(len(body)):  # shed before anything is evicted for it
            self.on_shed()
            return False
        evicted = self.policy.admit(key, len(body))
        if key not in self.policy:
            return False
        self.writes.submit(_Write(self, key, body, replace, mtime, evicted, done))  # room: taken
        self._writing[key] = len(body)
        return True

    def _unlink_later(self, victims: list[Path]) -> None:
        """On the writer (after the writes queued before), else in the executor."""
        if not self.writes.submit(_Unlink(victims)):
            self.chores.spawn(self._run(_unlink_all, victims))

    def _landed(self, job: _Write, error: BaseException | None) -> None:
        """A write's outcome, on the loop: commit it to the index, or roll it back."""
        key = job.key
        self._writing.pop(key, None)
        if error is None:
            for _, size in job.evicted:
                self.on_evict(size)
            if key in self.policy:
                job.done(True)
                return
            self._unlink_later([paths.path_of(self.root, key)])  # evicted or removed meanwhile
            job.done(False)
            return
        self.policy.remove(key)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            self.on_full()
            self.chores.spawn(self._full_then(job, job.began))
            return
        log.error("cannot write %s: %s", key, error)
        job.done(False)

    async def _full_then(self, job: _Write, began: int) -> None:
        try:
            await self._disk_full(len(job.body), began)
        finally:
            job.done(False)

    # -- a limit larger than the filesystem ------------------------------------------------

    async def _disk_full(self, size: int, began: int) -> None:
        """A write of ``size`` bytes, begun at fitting ``began``, found the filesystem full:
        fit the limit to it, or pause admissions when the limit is not what is short."""
        async with self._fitting:
            if began != self._fits:
                return  # the limit was fitted while this write ran; it may well fit now
            free, reserve = _space(await self._run(self.statvfs, self.root))  # type: ignore[arg-type]
            if free - reserve < size:
                await self._fit(min(self.policy.limit, max(0, self._committed + free - reserve)))
                return
        # statvfs says it should have fitted: a quota, or no inodes left.
        self.full_until = self.clock() + self.full_backoff
        log.warning(
            "disk full under %s with space free: admissions paused for %.0fs", self.root, self.full_backoff
        )

    async def _regrow(self) -> None:
        async with self._fitting:
            if not self.fitted or self.clock() < self.regrow_at:
                return
            free, reserve = _space(await self._run(self.statvfs, self.root))  # type: ignore[arg-type]
            await self._fit(max(self.policy.limit, min(self.configured, self._committed + free - reserve)))

    async def _fit(self, limit: int) -> None:
        """Set the limit to ``limit`` (under ``_fitting``), evicting down to it."""
        before = self.policy.limit
        self.regrow_at = self.clock() + self.full_backoff
        if limit == before:
            return
        self._fits += 1
        await self._drop(self.policy.resize(limit))
        if limit == self.configured:
            log.info("disk tier %s: space returned, limit back to %d bytes", self.root, limit)
        elif before == self.configured:
            log.warning(
                "disk tier %s: the filesystem is full at %d of %d bytes: the limit is now %d bytes",
                self.root,
                self.policy.bytes,
                self.configured,
                limit,
            )
        else:
            log.info("disk tier %s: limit fitted to the filesystem again: %d bytes", self.root, limit)

    @property
    def _committed(self) -> int:
        """Bytes of the files the tier holds: reservations of writes in flight excluded (their
        bytes are not on the filesystem yet, or only partly)."""
        return self.policy.bytes - sum(self._writing.values())

    def _store(self, key: str, body: bytes, replace: bool, mtime: float | None) -> None:
        path = paths.file_of(self._root, key)
        self.writer(path, body, replace)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    async def flush(self, grace: float = 0.0) -> None:
        """Let the writes queued land (within ``grace`` seconds), then write back the
        cache's filesystem (at shutdown: see Durability)."""
        await self.writes.close(grace)
        await self.chores.close(grace)
        try:
            await self._run(syncfs, self.root)
        except FileNotFoundError:
            pass  # never opened: nothing written
        except OSError as exc:
            log.warning("cannot write back %s: %s", self.root, exc)

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
