"""The memory and disk tiers, on real files in temp dirs: bounds, crash leftovers, the
index rebuilt from the files alone, verification before serving, and a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import resource
import threading
from pathlib import Path

import pytest

from common import codec
from common.errors import IntegrityError
from common.fsutil import open_atomic
from common.ids import sha256
from edge import paths
from edge.disk import DiskTier
from edge.memory import MemoryTier
from edge.objects import Entry, Obj, Sealed
from edge.policy import LRU, S3FIFO


def chunk(i: int, size: int = 3000) -> tuple[Obj, bytes]:
    raw = random.Random(i).randbytes(size)  # incompressible: the frame is about ``size``
    return Obj("chunk", sha256(raw)), codec.compress(raw, 3)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- memory ------------------------------------------------------------------------------------


def test_memory_tier_stays_within_its_limit_and_counts_evictions() -> None:
    evicted: list[int] = []
    mem = MemoryTier(S3FIFO(10_000), evicted.append)
    for i in range(100):
        assert mem.put(f"k{i}", Entry(b"x" * 1000, '"e"'))
        assert mem.used <= 10_000
    assert len(mem) == 10 and sum(evicted) == 90_000
    assert not mem.put("huge", Entry(b"x" * 10_001, '"e"')) and mem.get("huge") is None
    mem.put("k99", Entry(b"y" * 10, '"e"'))  # replace
    assert mem.get("k99").body == b"y" * 10 and mem.used == 9_010  # type: ignore[union-attr]


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _memfds() -> set[int]:
    out = set()
    for fd in _open_fds():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:minicdn-body"):
                out.add(fd)
    return out


def test_large_bodies_are_sealed_in_memfds_that_close_with_their_entry() -> None:
    mem = MemoryTier(S3FIFO(1 << 20), seal_min=1000, max_sealed=2)
    big, small, ref = os.urandom(5000), b"s" * 999, b"r" * 5000
    before = _memfds()
    mem.put("chunks/a", Entry(big, '"a"'))
    mem.put("chunks/small", Entry(small, '"s"'))
    mem.put("refs/app/stable", Entry(ref, '"r"'))  # refs change: never sealed
    a = mem.peek("chunks/a")
    assert a is not None and a.sealed is not None and a.data is None and mem.sealed == 1
    assert a.body == big and a.sealed.read(10, 20) == big[10:20] and a.size == 5000
    assert mem.peek("chunks/small").sealed is None  # type: ignore[union-attr]
    assert mem.peek("refs/app/stable").sealed is None  # type: ignore[union-attr]
    fd = a.sealed.fd
    assert _memfds() - before == {fd}
    # The kernel holds the body immutable: no write, no resize, no removing the seals.
    with pytest.raises(PermissionError):
        os.write(fd, b"x")
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 10)
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & Sealed.SEALS == Sealed.SEALS
    # At most max_sealed: the third large body stays bytes.
    mem.put("chunks/b", Entry(os.urandom(5000), '"b"'))
    mem.put("chunks/c", Entry(os.urandom(5000), '"c"'))
    assert mem.sealed == 2 and mem.peek("chunks/c").sealed is None  # type: ignore[union-attr]
    # Removed from the tier, the memfd closes once nothing holds the entry any more.
    mem.remove("chunks/a")
    assert mem.sealed == 1 and fd in _memfds()  # ``a`` still holds it
    del a
    assert fd not in _memfds()
    mem.put("chunks/d", Entry(os.urandom(5000), '"d"'))
    assert mem.sealed == 2


def test_evicted_sealed_entries_give_their_descriptors_back() -> None:
    mem = MemoryTier(S3FIFO(20_000), seal_min=1000, max_sealed=100)
    before = _memfds()
    for i in range(50):
        mem.put(f"chunks/{i}", Entry(os.urandom(4000), f'"{i}"'))
        assert mem.sealed == len(mem) <= 5
    assert len(_memfds() - before) == mem.sealed == len(mem)


def test_a_refused_memfd_leaves_the_body_as_bytes() -> None:
    mem = MemoryTier(S3FIFO(1 << 20), seal_min=1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(_open_fds()) + 1, hard))
    filler: list[int] = []
    try:
        with pytest.raises(OSError) as full:  # take every descriptor left below the limit
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        assert full.value.errno == errno.EMFILE
        assert mem.put("chunks/a", Entry(b"z" * 5000, '"a"'))
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    a = mem.peek("chunks/a")
    assert a is not None and a.sealed is None and a.body == b"z" * 5000 and mem.sealed == 0


# -- disk --------------------------------------------------------------------------------------


async def test_put_get_and_write_once(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, LRU(1 << 20))
    await disk.open()
    obj, frame = chunk(1)
    assert await disk.put(obj.key, frame)
    assert await disk.put(obj.key, b"other bytes")  # content-addressed: a no-op success
    blob = await disk.get(obj.key, obj.verify)
    assert blob is not None and blob.body == frame
    assert paths.path_of(tmp_path, obj.key).read_bytes() == frame
    assert await disk.get("chunks/" + "0" * 64, None) is None


async def test_disk_tier_evicts_files_to_stay_within_its_limit(tmp_path: Path) -> None:
    evicted: list[int] = []
    disk = DiskTier(tmp_path, S3FIFO(20_000), on_evict=evicted.append)
    await disk.open()
    for i in range(40):
        obj, frame = chunk(i)
        await disk.put(obj.key, frame)
        assert sum(p.stat().st_size for p in files(tmp_path)) <= 20_000
    assert disk.used == sum(p.stat().st_size for p in files(tmp_path)) and sum(evicted) > 0


async def test_restart_sweeps_temp_files_and_rebuilds_the_index_from_stat_alone(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, LRU(1 << 20))
    await disk.open()
    objs = [chunk(i) for i in range(5)]
    for n, (obj, frame) in enumerate(objs):
        await disk.put(obj.key, frame)
        os.utime(paths.path_of(tmp_path, obj.key), (1000 + n, 1000 + n))  # use order: 0 oldest
    leftover = paths.path_of(tmp_path, objs[0][0].key).with_name(".tmp-crashed.abc")
    leftover.write_bytes(b"half a chunk")
    (tmp_path / "chunks" / "zz").mkdir()
    (tmp_path / "chunks" / "zz" / "stranger").write_bytes(b"not ours")

    size = sum(len(f) for _, f in objs)
    again = DiskTier(tmp_path, LRU(size - 1))  # one byte short: the oldest must go
    assert await again.open() == 4
    assert not leftover.exists()
    assert objs[0][0].key not in again.policy and not paths.path_of(tmp_path, objs[0][0].key).exists()
    for obj, frame in objs[1:]:
        blob = await again.get(obj.key, obj.verify)
        assert blob is not None and blob.body == frame


async def test_a_corrupt_file_is_dropped_not_served(tmp_path: Path) -> None:
    corrupt: list[int] = []
    disk = DiskTier(tmp_path, LRU(1 << 20), on_corrupt=lambda: corrupt.append(1))
    await disk.open()
    obj, frame = chunk(1)
    await disk.put(obj.key, frame)
    path = paths.path_of(tmp_path, obj.key)
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x40
    path.write_bytes(bytes(b))
    assert await disk.get(obj.key, obj.verify) is None
    assert corrupt == [1] and not path.exists() and obj.key not in disk.policy


async def test_a_key_is_found_on_disk_before_the_index_is_rebuilt(tmp_path: Path) -> None:
    first = DiskTier(tmp_path, LRU(1 << 20))
    await first.open()
    obj, frame = chunk(1)
    await first.put(obj.key, frame)
    cold = DiskTier(tmp_path, LRU(1 << 20))  # not opened: index still empty
    blob = await cold.get(obj.key, obj.verify)
    assert blob is not None and blob.body == frame and obj.key in cold.policy


def _enospc_after(n: int) -> object:
    def writer(path: str, body: bytes, replace: bool) -> None:
        with open_atomic(path, replace=replace) as f:
            f.write(body[:n])  # some bytes reach the temp file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    return writer


async def test_a_full_disk_pauses_admissions_leaves_no_partial_file_and_resumes(tmp_path: Path) -> None:
    now = [0.0]
    full: list[int] = []
    disk = DiskTier(tmp_path, LRU(1 << 20), on_full=lambda: full.append(1), full_backoff=5.0,
                    writer=_enospc_after(100), clock=lambda: now[0])  # type: ignore[arg-type]
    await disk.open()
    obj, frame = chunk(1)
    assert not await disk.put(obj.key, frame)
    assert full == [1] and disk.full and disk.used == 0 and files(tmp_path) == []
    other, other_frame = chunk(2)
    assert not await disk.put(other.key, other_frame)  # paused: not even tried
    assert full == [1]
    now[0] = 6.0  # space came back (the backoff elapsed)
    disk.writer = lambda p, b, r: open_atomic_write(p, b, r)
    assert await disk.put(obj.key, frame) and not disk.full
    assert (await disk.get(obj.key, obj.verify)) is not None


def open_atomic_write(path: str, body: bytes, replace: bool) -> None:
    with open_atomic(path, replace=replace) as f:
        f.write(body)


async def test_refs_are_replaced_and_keep_their_mtime(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, LRU(1 << 20))
    await disk.open()
    await disk.put("refs/demo/release", b"one", replace=True, mtime=1234.0)
    await disk.put("refs/demo/release", b"two!", replace=True, mtime=5678.0)
    blob = await disk.get("refs/demo/release", None)
    assert blob is not None and blob.body == b"two!" and blob.mtime == 5678.0 and disk.used == 4
    await disk.remove("refs/demo/release")
    assert await disk.get("refs/demo/release", None) is None


def test_objects_verify_their_bytes() -> None:
    obj, frame = chunk(1)
    obj.verify(frame)
    with pytest.raises(IntegrityError):
        obj.verify(frame[:-1] + bytes([frame[-1] ^ 1]))
    m = Obj("manifest", sha256(b"envelope"))
    m.verify(b"envelope")
    with pytest.raises(IntegrityError):
        m.verify(b"envelopf")
    assert Obj.from_key(obj.key) == obj and paths.key_of(f"chunks/{obj.hex[:2]}/{obj.hex}") == obj.key


# -- a read racing a write ----------------------------------------------------------------------


def _blocking_writer(name: str, started: threading.Event, release: threading.Event) -> object:
    """A writer that holds the write of the file ``name`` until ``release`` (others pass)."""

    def writer(path: str, body: bytes, replace: bool) -> None:
        if os.path.basename(path) == name:
            started.set()
            assert release.wait(30), "the test never released the write"
        open_atomic_write(path, body, replace)

    return writer


async def _wait(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)


async def test_a_read_while_the_write_is_in_flight_keeps_the_writes_reservation(tmp_path: Path) -> None:
    obj, frame = chunk(1)
    started, release = threading.Event(), threading.Event()
    disk = DiskTier(tmp_path, LRU(1 << 20), writer=_blocking_writer(obj.hex, started, release))  # type: ignore[arg-type]
    await disk.open()
    put = asyncio.ensure_future(disk.put(obj.key, frame))
    await _wait(started)
    assert await disk.get(obj.key, obj.verify) is None  # not written yet: a miss, nothing more
    release.set()
    assert await put
    blob = await disk.get(obj.key, obj.verify)
    assert blob is not None and blob.body == frame
    assert obj.key in disk.policy and disk.used == len(frame) == paths.path_of(tmp_path, obj.key).stat().st_size


async def test_a_write_evicted_while_in_flight_says_it_did_not_store(tmp_path: Path) -> None:
    (a, frame_a), (b, frame_b) = chunk(1), chunk(2)
    started, release = threading.Event(), threading.Event()
    disk = DiskTier(tmp_path, LRU(max(len(frame_a), len(frame_b)) + 10),  # room for one
                    writer=_blocking_writer(a.hex, started, release))  # type: ignore[arg-type]
    await disk.open()
    put_a = asyncio.ensure_future(disk.put(a.key, frame_a))
    await _wait(started)
    put_b = asyncio.ensure_future(disk.put(b.key, frame_b))  # evicts a's reservation
    await asyncio.sleep(0)  # b is admitted (writes run in order on one thread: after a's)
    assert a.key not in disk.policy
    release.set()
    assert not await put_a
    assert await put_b
    assert files(tmp_path) == [paths.path_of(tmp_path, b.key)]
    assert a.key not in disk.policy and disk.used == len(frame_b)


@pytest.mark.parametrize(
    "key", ["chunks/" + "ab" * 32, "manifests/" + "0f" * 32, "bundles/" + "ff" * 32, "refs/app/release"]
)
def test_the_writers_string_path_is_the_index_path(tmp_path: Path, key: str) -> None:
    """``file_of`` (the writer thread's) names the file ``path_of`` (everyone else's) does,
    and reading the key back from it gives the key."""
    assert paths.file_of(str(tmp_path), key) == str(paths.path_of(tmp_path, key))
    assert paths.key_of(str(paths.path_of(tmp_path, key).relative_to(tmp_path))) == key
