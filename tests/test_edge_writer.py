"""The disk writer thread (edge.writer) and the disk tier's queued writes (DiskTier.store)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from common import codec
from common.ids import sha256
from edge import paths
from edge.disk import DiskTier
from edge.objects import Obj
from edge.policy import LRU
from edge.writer import Abandoned, WriterThread


class Note:
    """A job that records where it ran and how it landed; ``hold`` blocks it until set."""

    def __init__(self, size: int = 1, hold: threading.Event | None = None) -> None:
        self.size = size
        self.hold = hold
        self.started = threading.Event()
        self.thread = 0
        self.error: BaseException | None = None
        self.landed_on = 0

    def run(self) -> None:
        self.thread = threading.get_ident()
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(30), "the test never released the job"

    def landed(self, error: BaseException | None) -> None:
        self.error = error
        self.landed_on = threading.get_ident()


def chunk(seed: int) -> tuple[Obj, bytes]:
    raw = bytes([seed]) * 5000
    return Obj("chunk", sha256(raw)), codec.compress(raw)


async def test_jobs_of_one_loop_turn_go_to_the_thread_in_one_batch_and_land_on_the_loop() -> None:
    writer = WriterThread("test writer")
    notes = [Note() for _ in range(10)]
    assert all(writer.submit(n) for n in notes)
    await writer.idle()
    assert writer.batches == 1
    assert {n.thread for n in notes} != {threading.get_ident()} and len({n.thread for n in notes}) == 1
    assert all(n.error is None and n.landed_on == threading.get_ident() for n in notes)
    assert writer.jobs == 0 and writer.bytes == 0
    await writer.close()


async def test_jobs_beyond_the_bounds_are_shed_not_queued() -> None:
    release = threading.Event()
    writer = WriterThread("test writer", max_jobs=2, max_bytes=100)
    held = Note(hold=release)
    assert writer.submit(held) and writer.submit(Note())
    assert not writer.submit(Note())  # a third job
    assert writer.shed == 1
    release.set()
    await writer.idle()
    assert not writer.submit(Note(size=101))  # more bytes than the whole bound
    assert writer.shed == 2 and writer.submit(Note(size=100))
    await writer.close(grace=5)
    assert not writer.submit(Note())  # closed
    assert writer.shed == 3


async def test_close_waits_within_its_bound_then_abandons_what_is_not_begun() -> None:
    release = threading.Event()
    writer = WriterThread("test writer")
    held, behind = Note(hold=release), Note()
    writer.submit(held)
    await asyncio.get_running_loop().run_in_executor(None, held.started.wait, 30)
    writer.submit(behind)  # queued behind the held one
    closing = asyncio.ensure_future(writer.close(grace=0.0))
    while not writer._stop:  # the bound is over: what is not begun is abandoned
        await asyncio.sleep(0)
    release.set()
    await closing
    await writer.idle()
    assert held.error is None and isinstance(behind.error, Abandoned)


async def test_store_queues_the_write_without_a_task_and_commits_after_the_rename(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, LRU(1 << 20))
    await disk.open()
    obj, frame = chunk(1)
    outcomes: list[bool] = []
    tasks = len(asyncio.all_tasks())
    assert disk.store(obj.key, frame, done=outcomes.append)
    assert len(asyncio.all_tasks()) == tasks  # no task per write
    assert obj.key in disk.policy and outcomes == []  # reserved, not written yet
    await disk.writes.idle()
    assert outcomes == [True] and paths.path_of(tmp_path, obj.key).read_bytes() == frame
    blob = await disk.get(obj.key, obj.verify)
    assert blob is not None and blob.body == frame
    await disk.flush(grace=5)


async def test_a_write_the_writer_sheds_leaves_no_reservation(tmp_path: Path) -> None:
    (a, frame_a), (b, frame_b) = chunk(1), chunk(2)
    told: list[str] = []
    disk = DiskTier(tmp_path, LRU(1 << 20), max_writes=1, on_shed=lambda: told.append("shed"))
    await disk.open()
    assert disk.store(a.key, frame_a)
    assert not disk.store(b.key, frame_b)  # the writer holds one write at most
    assert b.key not in disk.policy and disk.writes.shed == 1
    assert told == ["shed"]  # exported as minicdn_edge_disk_writes_shed_total (edge.service)
    await disk.writes.idle()
    assert a.key in disk.policy and disk.used == len(frame_a)
    await disk.flush(grace=5)


async def test_a_failed_write_rolls_its_reservation_back(tmp_path: Path) -> None:
    def failing(path: str, body: bytes, replace: bool) -> None:
        raise OSError(5, "Input/output error")

    disk = DiskTier(tmp_path, LRU(1 << 20), writer=failing)
    await disk.open()
    obj, frame = chunk(1)
    outcomes: list[bool] = []
    assert disk.store(obj.key, frame, done=outcomes.append)
    await disk.writes.idle()
    assert outcomes == [False] and obj.key not in disk.policy and disk.used == 0
    assert not list(tmp_path.rglob("*-*"))
    await disk.flush(grace=5)


async def test_a_write_shed_by_a_full_writer_evicts_nothing(tmp_path: Path) -> None:
    (a, frame_a), (b, frame_b), (c, frame_c) = chunk(1), chunk(2), chunk(3)
    disk = DiskTier(tmp_path, LRU(len(frame_a) + len(frame_b) + 10), max_writes=1)  # room for two
    await disk.open()
    assert await disk.put(a.key, frame_a)
    assert disk.store(b.key, frame_b)  # the writer's one slot
    assert not disk.store(c.key, frame_c)  # would evict a, but the writer is full: shed first
    assert a.key in disk.policy and c.key not in disk.policy and disk.writes.shed == 1
    await disk.writes.idle()
    assert paths.path_of(tmp_path, a.key).exists() and disk.used == len(frame_a) + len(frame_b)
    await disk.flush(grace=5)


def test_an_edge_exports_its_shed_writes(tmp_path: Path) -> None:
    from edge.service import Edge, EdgeSettings

    node = Edge(EdgeSettings(upstreams=["http://127.0.0.1:9"], cache_dir=tmp_path / "cache"))
    registry = node.metrics.registry
    assert registry.get_sample_value("minicdn_edge_disk_writes_shed_total") == 0
    node.disk.on_shed()
    assert registry.get_sample_value("minicdn_edge_disk_writes_shed_total") == 1
