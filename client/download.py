"""Downloading what the plans lack, every chunk verified before it is stored.

    chunks   ``POST /v1/chunks:batch``, ``batch_size`` ids a batch, ``in_flight`` batches at a
             time; an id a batch answers with nil is asked for alone (``GET /v1/chunks/{id}``);
             a broken batch keeps what arrived and is re-asked on the next edge for the rest
    objects  a bundle or delta (``GET /v1/bundles/{id}``): its bytes checked against its id on
             receipt (so a mismatch tries the next edge), then decoded and cut into chunks,
             each checked against its id (client/streams.py)

A chunk frame is refused unless it is no larger than the manifest's ``stored_size``, is one
zstd frame declaring the manifest's ``raw_size``, and inflates to bytes whose SHA-256 is
the chunk id.  Failover is ``Edges.with_failover``'s; store writes run in a thread.  What
is stored is reported through ``stored(n)``: the counting belongs to the install.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from client import streams
from client.plan import Plan
from client.store import LocalStore
from client.transport import Edges
from common import codec
from common.errors import IntegrityError
from common.ids import sha256
from common.manifest import ChunkEntry, PackageEntry

__all__ = ["Downloader", "together"]


class Downloader:
    def __init__(
        self,
        edges: Edges,
        store: LocalStore,
        *,
        batch_size: int,
        in_flight: int,
        stored: Callable[[int], None],
    ) -> None:
        self.edges = edges
        self.store = store
        self.batch_size = batch_size
        self.in_flight = in_flight
        self.stored = stored

    async def chunks(self, entries: list[ChunkEntry]) -> None:
        """Every chunk of ``entries``, in batches, ``in_flight`` of them at a time."""
        queue = deque(entries)

        async def worker() -> None:
            while queue:
                await self._batch([queue.popleft() for _ in range(min(self.batch_size, len(queue)))])

        workers = [asyncio.create_task(worker()) for _ in range(self.in_flight)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _batch(self, group: list[ChunkEntry]) -> None:
        """One batch, re-asked on another edge for whatever a failed edge did not deliver."""
        remaining = {e.id.hex(): e for e in group}
        max_item = max(e.stored_size for e in group)

        async def attempt(base: str) -> None:
            async for hexid, frame in self.edges.batch(base, list(remaining), max_item):
                entry = remaining[hexid]
                raw = verify(entry, frame) if frame is not None else await self._single(entry)
                await asyncio.to_thread(self.store.put, entry.id, raw)
                del remaining[hexid]
                self.stored(1)

        await self.edges.with_failover(attempt, failure="chunks could not be fetched from any edge")

    async def _single(self, entry: ChunkEntry) -> bytes:
        """A chunk a batch answered with nil for: ask for it alone, on any edge."""

        def check(body: bytes, enc: str | None) -> bytes:
            return verify(entry, body) if enc == "zstd" else verify_raw(entry, body)

        return await self.edges.get(
            f"/v1/chunks/{entry.id.hex()}",
            "chunks",
            check,
            headers={"Accept-Encoding": "zstd"},
            max_size=max(entry.stored_size, entry.raw_size),
        )

    async def object(self, pkg: PackageEntry, plan: Plan, base: bytes | None) -> None:
        """One bundle or delta (``base``: the stream a delta applies to), stored as the
        package's verified chunks."""
        assert plan.object is not None
        oid, size = plan.object

        def check(body: bytes, enc: str | None) -> bytes:
            if enc not in (None, "identity"):
                raise IntegrityError(f"{plan.kind} {oid.hex()} sent with unrequested encoding {enc}")
            if sha256(body) != oid:
                raise IntegrityError(f"{plan.kind} {oid.hex()}: bytes do not match the id")
            return body

        frame = await self.edges.get(f"/v1/bundles/{oid.hex()}", "bundles", check, max_size=size)
        pieces = await asyncio.to_thread(streams.decode, pkg, frame, base)
        self.stored(await asyncio.to_thread(self._put_missing, pieces))

    def _put_missing(self, pieces: list[tuple[bytes, bytes]]) -> int:
        """Store the verified chunks the store lacks; returns how many."""
        added = 0
        for cid, raw in pieces:
            if not self.store.has(cid):
                self.store.put(cid, raw)
                added += 1
        return added


def verify(entry: ChunkEntry, frame: bytes) -> bytes:
    if len(frame) > entry.stored_size:
        raise IntegrityError(f"chunk {entry.id.hex()}: frame larger than the manifest says")
    raw = codec.decode_chunk(entry.id, frame, max_size=entry.raw_size)
    return verify_raw(entry, raw)


def verify_raw(entry: ChunkEntry, raw: bytes) -> bytes:
    if len(raw) != entry.raw_size or sha256(raw) != entry.id:
        raise IntegrityError(f"chunk {entry.id.hex()}: content does not match its id")
    return raw


async def together(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first failure cancels the rest and is raised as itself."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
