"""One thread that does a process's disk writes, in batches (issue 15).

A miss used to write its file in a task of its own and one or two hand-offs to the shared
thread pool: a task, a future and a wake-up each way per miss, and on two cores the pool's
threads fought the loop for the GIL.  Here the loop appends a job to a list and hands the
whole list to this thread once per loop turn (``call_soon`` coalesces every job submitted
in that turn into one ``queue.put``); the thread runs the batch and hands the outcomes back
with one ``call_soon_threadsafe``.  So a burst of N misses costs two wake-ups, not 2N, and
nothing that can block (writeback throttling, a slow disk) ever runs on the loop.

Bounded: at most ``max_jobs`` jobs and ``max_bytes`` bytes queued or running; a job beyond
either is refused (``submit`` says False and counts it in ``shed``), never queued.  One
thread runs the jobs in the order submitted, so a file evicted before another is written
is unlinked first.  ``close`` stops taking jobs and lets those queued finish within a
bound; the rest land as failed (``Abandoned``), so their owner rolls them back.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Protocol

__all__ = ["Abandoned", "Job", "WriterThread"]

log = logging.getLogger("minicdn.edge.writer")

POLL = 1.0  # seconds an idle thread waits before it checks whether its loop is gone


class Abandoned(OSError):
    """A job the writer never ran: it was closed before reaching it."""


class Job(Protocol):
    size: int  # the bytes it holds while queued

    def run(self) -> None:
        """The file work, in the writer's thread (blocking is fine here)."""

    def landed(self, error: BaseException | None) -> None:
        """On the loop, once ``run`` returned (``error`` None) or raised."""


Batch = list[Job]
Outcomes = list[tuple[Job, BaseException | None]]


class WriterThread:
    def __init__(self, name: str, *, max_jobs: int = 4096, max_bytes: int = 64 << 20) -> None:
        self.name = name
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.shed = 0  # jobs refused: the writer was full or closed
        self.jobs = 0  # queued or running
        self.bytes = 0
        self.batches = 0  # handed to the thread
        self._pending: Batch = []  # submitted this loop turn, not handed over yet
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stop = False  # read by the thread: abandon what is left
        self._idle: asyncio.Future[None] | None = None

    def room(self, size: int) -> bool:
        """Whether a job of ``size`` bytes would be taken now (it is counted as shed if not)."""
        if self._closing or self.jobs >= self.max_jobs or self.bytes + size > self.max_bytes:
            self.shed += 1
            return False
        return True

    def submit(self, job: Job) -> bool:
        """Queue ``job`` (on the loop); False when it is refused."""
        if not self.room(job.size):
            return False
        if self._thread is None:
            self._start()
        self.jobs += 1
        self.bytes += job.size
        self._pending.append(job)
        if len(self._pending) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        return True

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        self._queue.put(batch)

    def _serve(self) -> None:
        """The thread: run each batch, hand its outcomes back in one call."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                batch = self._queue.get(timeout=POLL)
            except queue.Empty:
                if loop.is_closed():
                    return
                continue
            if batch is None:
                return
            outcomes: Outcomes = []
            for job in batch:
                if self._stop:
                    outcomes.append((job, Abandoned("the writer was closed before this write")))
                    continue
                try:
                    job.run()
                except BaseException as exc:  # the job's owner decides what it means
                    outcomes.append((job, exc))
                else:
                    outcomes.append((job, None))
            try:
                loop.call_soon_threadsafe(self._landed, outcomes)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                return

    def _landed(self, outcomes: Outcomes) -> None:
        for job, error in outcomes:
            self.jobs -= 1
            self.bytes -= job.size
            try:
                job.landed(error)
            except Exception:
                log.exception("%s: a write's outcome could not be handled", self.name)
        if self.jobs == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def idle(self) -> None:
        """Wait until no job is queued or running."""
        if self.jobs:
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    async def close(self, grace: float = 0.0) -> None:
        """Take no more jobs; let those queued finish within ``grace`` seconds, then
        abandon the rest (they land as ``Abandoned``) and stop the thread."""
        self._closing = True
        if self._thread is None:
            return
        await asyncio.wait([asyncio.ensure_future(self.idle())], timeout=grace)
        self._stop = True
        self._queue.put(None)
        # What the thread has not begun lands as abandoned at once; a write it is stuck in
        # is not waited for past another moment.
        await asyncio.wait([asyncio.ensure_future(self.idle())], timeout=POLL)
