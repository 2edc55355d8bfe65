"""The fill path for immutable objects, read top to bottom like groupcache's Group.load:

    memory → disk → single-flight → (memory again) → owner peer → upstreams in order
           → verify → store → serve

A caller that joined a flight and waits past the coalescing bound fetches for itself and
does not store what it got (the flight will).  Stores to disk run in the background,
owned by ``writes``; the memory tier has the entry before any caller is answered.

What came from the owner peer is the owner's to keep: this node holds it only in memory,
and only once it proves hot here (edge.hot); what came from an upstream is stored in both
tiers (this node owns it, or its owner failed and someone must).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from common import codec
from common.errors import IntegrityError, NotFound, UpstreamError
from common.ids import sha256
from edge.disk import DiskTier
from edge.hot import HotKeys
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.objects import Entry, Obj
from edge.singleflight import Flights
from edge.tasks import TaskOwner
from edge.upstream import Answer, PeerPicker, Sources

__all__ = ["Filler"]


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Filler:
    def __init__(
        self,
        memory: MemoryTier,
        disk: DiskTier,
        upstreams: Sources,
        peers: PeerPicker,
        flights: Flights[Entry],
        writes: TaskOwner,
        metrics: EdgeMetrics,
        hot: HotKeys | None = None,
    ) -> None:
        self.memory = memory
        self.disk = disk
        self.upstreams = upstreams
        self.peers = peers
        self.flights = flights
        self.writes = writes
        self.metrics = metrics
        self.hot = hot or HotKeys()

    async def load(self, obj: Obj) -> Entry:
        """The verified bytes of ``obj``: NotFound when no upstream has it, UpstreamError
        when none could give it."""
        entry = await self._lookup(obj)
        if entry is not None:
            return entry
        self.metrics.misses.inc()
        entry, joined = await self.flights.do(
            obj.key, lambda: self._load(obj), alone=lambda: self._alone(obj)
        )
        if joined:
            self.metrics.coalesced.inc()
        return entry

    async def load_or_none(self, obj: Obj) -> Entry | None:
        try:
            return await self.load(obj)
        except NotFound:
            return None

    async def _lookup(self, obj: Obj) -> Entry | None:
        entry = self.memory.get(obj.key)
        if entry is not None:
            self.metrics.hits.labels("memory").inc()
            return entry
        blob = await self.disk.get(obj.key, obj.verify)
        if blob is None:
            return None
        self.metrics.hits.labels("disk").inc()
        entry = Entry(blob.body, obj.etag)
        self.memory.put(obj.key, entry)
        return entry

    async def _load(self, obj: Obj) -> Entry:
        # Inside the flight, look again: a flight that landed between our lookup and our
        # start has already put the entry in memory.
        entry = self.memory.get(obj.key)
        if entry is not None:
            return entry
        entry, from_peer = await self._fetch(obj)
        self._populate(obj, entry, from_peer)
        return entry

    async def _alone(self, obj: Obj) -> Entry:
        entry, _ = await self._fetch(obj)
        return entry

    async def _fetch(self, obj: Obj) -> tuple[Entry, bool]:
        """The verified entry, and whether the owner peer gave it."""
        headers = {"Accept-Encoding": "zstd" if obj.kind == "chunk" else "identity"}
        peer = self.peers.pick(obj.key)
        if peer is not None:
            try:
                return await Sources([peer], self.metrics).fetch(obj.path, self._verifier(obj), headers), True
            except UpstreamError:
                pass  # the owner failed or timed out: fill from the upstreams ourselves
        return await self.upstreams.fetch(obj.path, self._verifier(obj), headers), False

    def _populate(self, obj: Obj, entry: Entry, from_peer: bool) -> None:
        if from_peer:
            if self.hot.admit(obj.key):
                self.memory.put(obj.key, entry)
            return
        body = entry.body  # before the tier may seal it (reading it back would copy)
        self.memory.put(obj.key, entry)
        self.writes.spawn(self.disk.put(obj.key, body))

    def _verifier(self, obj: Obj) -> Callable[[Answer], Any]:
        async def accept(answer: Answer) -> Entry:
            encoding = answer.headers.get("Content-Encoding", "identity").lower()
            body = answer.body
            if obj.kind == "chunk" and encoding == "zstd":
                await _off_loop(obj.verify, body)
            elif encoding != "identity":
                raise IntegrityError(f"{obj.path}: unexpected Content-Encoding {encoding}")
            elif obj.kind == "chunk":
                body = await _off_loop(_frame_of_raw, obj, body)
            else:
                await _off_loop(obj.verify, body)
            return Entry(body, obj.etag)

        return accept


def _frame_of_raw(obj: Obj, raw: bytes) -> bytes:
    """An upstream that sent a chunk decoded: check it, and store it as a frame."""
    if sha256(raw) != obj.id:
        raise IntegrityError(f"{obj.path}: bytes do not match the id")
    return codec.compress(raw, level=3)
