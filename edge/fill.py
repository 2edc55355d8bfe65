"""The fill path for immutable objects, read top to bottom like groupcache's Group.load:

    memory → single-flight { memory again → disk (verified) → known absent
                             → owner peer → upstreams in order → verify → populate }

Everything after the first memory lookup runs inside the flight (edge.singleflight), so N
concurrent requests for a key read and verify its file once, as they fetch it once.  The
flight's callers are counted (hits by tier, negative hits, misses, coalesced) once its
lookups say what they were (edge.tally).

``batch`` walks the same path for many chunks at once (``POST /v1/chunks:batch``): the
ids no tier holds, no flight is filling and no upstream has just called absent are each
claimed as a flight, and filled together — one batch request to each owner peer for the
ids it owns, one to the upstreams (with failover) for the rest and for those of an owner
that failed.  A GET for any of those ids joins its flight like any other.

A caller that joined a flight and waits past the coalescing bound also waits on a second
fill of that key, one shared by all who timed out (edge.singleflight); whichever answers
first serves them.  Every fill that may repeat another one somewhere in the cluster — a
second fill, a fill from the upstreams after the owner peer failed or timed out, a fill in
the stead of an owner out of the ring — is counted (``minicdn_edge_fallbacks_total``):
without one, each object reaches the origin once per cluster.

The seams are small: the owner peer comes from a ``PeerPicker`` (``NoPeers`` in one-node
mode), each source is a ``Source`` (edge.upstream).  Stores to disk are queued for the disk
tier's writer thread (edge.writer), never awaited; the memory tier has the entry before any
caller is answered.  What came from the owner peer is the owner's to keep: this node holds
it only in memory, and only once it proves hot here (edge.hot); what came from an upstream
is stored in both tiers (this node owns it, or its owner failed and someone must).  What no
upstream has is remembered as absent for a short while (edge.negative).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from common import codec
from common.errors import IntegrityError, NotFound, UpstreamError
from common.http import MAX_BATCH
from common.ids import sha256
from edge.disk import DiskTier
from edge.h1client import Response, Stale
from edge.hot import HotKeys
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.negative import NegativeCache
from edge.objects import Entry, Obj
from edge.singleflight import Flights
from edge.tally import Found, Tally
from edge.tasks import TaskOwner
from edge.upstream import (
    Answer,
    Exhausted,
    Failures,
    HttpSource,
    PeerPicker,
    Source,
    SourceError,
    Sources,
    judge,
)

__all__ = ["Filler"]

Flight = asyncio.Future[Entry]

# Objects whose check works on at most this many bytes (a chunk's declared raw size, else
# the body) are verified on the loop: decompressing and hashing a 10 KiB chunk costs
# ~25 us, handing it to a worker thread and back cost ~75 us more, and the thread then
# fights the loop for the GIL (issue 15).  A 64 KiB check holds the loop ~100 us at most.
INLINE_VERIFY = 64 << 10

ZSTD = {"Accept-Encoding": "zstd"}
IDENTITY = {"Accept-Encoding": "identity"}


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _verify(obj: Obj, body: bytes) -> None:
    """``obj.verify(body)``: here when it is small work, else in a worker thread."""
    work = codec.frame_content_size(body) if obj.kind == "chunk" else len(body)
    if work <= INLINE_VERIFY:
        obj.verify(body)
    else:
        await _off_loop(obj.verify, body)


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
        negative: NegativeCache | None = None,
    ) -> None:
        self.memory = memory
        self.disk = disk
        self.upstreams = upstreams
        self.peers = peers
        self.flights = flights
        self.writes = writes
        self.metrics = metrics
        self.hot = hot or HotKeys()
        self.negative = NegativeCache(0) if negative is None else negative
        self.tally = Tally(metrics)
        self._requests: dict[str, Counter] = {}  # upstream_requests by kind (labels() is slow)

    async def load(self, obj: Obj) -> Entry:
        """The verified bytes of ``obj``: NotFound when no upstream has it, UpstreamError
        when none could give it."""
        key = obj.key
        entry = self.memory.get(key)
        if entry is not None:
            self.metrics.hits.labels("memory").inc()
            return entry
        self.tally.arrive(key, filling=key in self.flights)
        entry, _ = await self.flights.do(
            key,
            look=lambda: self._look_again(obj),  # memory again, disk (verified), known absent
            fill=lambda: self._fill(obj),  # owner peer, upstreams in order, verify, populate
            alone=lambda: self._second(obj),
        )
        return entry

    def begin(self, obj: Obj) -> Flight | None:
        """The flight of a plain miss, driven by callbacks: no task, no coroutine (issue 15:
        they cost more than the rest of a miss).  Plain: ``obj`` (a chunk) is in no tier,
        no flight and not known absent, this node fills it itself (no owner peer), and the
        first upstream has an idle kept-alive connection.  None otherwise: ``load`` it.
        What the answer needs beyond a check on the loop (another upstream, a thread) goes
        on in a task; either way it is ``load``'s fill, step for step."""
        key = obj.key
        if (
            obj.kind != "chunk"
            or not self._surely_missing(key)
            or self.peers.displaced(key)
            or self.peers.pick(key) is not None
            or not self.upstreams.sources
        ):
            return None
        src = self.upstreams.sources[0]
        if not isinstance(src, HttpSource):
            return None
        answer = src.begin(obj.path, ZSTD)
        if answer is None:
            return None
        flight = self.flights.open(key)
        self.metrics.misses.inc()  # no flight: nobody else is waiting on its lookups
        answer.add_done_callback(functools.partial(self._answered, obj, flight, src))
        return flight

    def _answered(self, obj: Obj, flight: Flight, src: HttpSource, answer: asyncio.Future[Response]) -> None:
        """``begin``'s upstream answer: the flight settled, or handed on to a task."""
        if flight.done():  # cancelled: the node is closing
            if not answer.cancelled():
                answer.exception()  # retrieved: the pool closing fails it, nobody else looks
            return
        if answer.cancelled():
            flight.cancel()
            return
        error = answer.exception()
        if isinstance(error, Stale):  # not an answer: sent again, by ``load``'s fill
            self.flights.hand(flight, lambda: self._fill(obj))
            return
        requests = self._requests.get(src.kind)
        if requests is None:
            requests = self._requests[src.kind] = self.metrics.upstream_requests.labels(src.kind)
        requests.inc()
        try:
            if error is not None:
                raise src.failure(obj.path, error) or error
            response = answer.result()
            judge(src, obj.path, response.status)
            body = response.body
            if (response.field(b"content-encoding") or "").lower() != "zstd" or (
                codec.frame_content_size(body) > INLINE_VERIFY
            ):
                answered = Answer(response.status, body, response.headers)
                self.flights.hand(flight, lambda: self._rest(obj, Failures(obj.path), answered))
                return
            obj.verify(body)
        except NotFound as exc:
            self.negative.add(obj.key)
            flight.set_exception(exc)
            return
        except (SourceError, IntegrityError) as exc:
            failed = Failures(obj.path)
            failed.add(src, self.metrics, exc)
            self.flights.hand(flight, lambda: self._rest(obj, failed, None))
            return
        except Exception as exc:  # a bug: its callers get it (a 500), as from load's fill
            flight.set_exception(exc)
            return
        entry = Entry(body, obj.etag)
        try:
            self._populate(obj, entry, False)
        except Exception as exc:
            flight.set_exception(exc)
            return
        flight.set_result(entry)

    async def _rest(self, obj: Obj, failed: Failures, answered: Answer | None) -> Entry:
        """``begin``'s fill, once it must wait: the first upstream's ``answered`` checked
        off the loop (or in another encoding), else the upstreams after those ``failed``."""
        accept = self._verifier(obj)
        try:
            if answered is not None:
                try:
                    entry = await accept(answered)
                    self._populate(obj, entry, False)
                    return entry
                except IntegrityError as exc:
                    failed.add(self.upstreams.sources[0], self.metrics, exc)
            entry = await self.upstreams.fetch(obj.path, accept, ZSTD, failed=failed, start=1)
        except NotFound:
            self.negative.add(obj.key)
            raise
        self._populate(obj, entry, False)
        return entry

    async def load_or_none(self, obj: Obj) -> Entry | None:
        try:
            return await self.load(obj)
        except NotFound:
            return None

    def batch(self, objs: Sequence[Obj]) -> Callable[[Obj], Awaitable[Entry | None]]:
        """Start filling, together, those of ``objs`` (chunks, at most MAX_BATCH) that are
        surely misses; returns how to wait for any of ``objs``: its entry, or None when no
        upstream has it.  The others are loaded one by one, when waited for."""
        assert len(objs) <= MAX_BATCH
        misses: dict[str, Obj] = {}
        for obj in objs:
            if obj.key in misses:
                self.metrics.coalesced.inc()
            elif self._surely_missing(obj.key):
                misses[obj.key] = obj
        flights = self.flights.claim(misses, lambda f: self._fill_many(misses, f)) if misses else {}
        self.metrics.misses.inc(len(flights))

        async def wait(obj: Obj) -> Entry | None:
            flight = flights.get(obj.key)
            if flight is None:
                return await self.load_or_none(obj)
            try:
                return await asyncio.shield(flight)
            except NotFound:
                return None

        return wait

    def _surely_missing(self, key: str) -> bool:
        """In no tier (by the index alone), no flight under way, not known absent."""
        return (
            self.memory.peek(key) is None
            and key not in self.flights
            and key not in self.negative
            and self.disk.surely_absent(key)
        )

    async def _look_again(self, obj: Obj) -> Entry | None:
        """Inside the flight (run by the caller that started it): the entry in a tier, or
        None when it must be filled; NotFound when it is known absent."""
        entry, found = await self.tally.counted(obj.key, self._find(obj))
        if found == "absent":
            raise NotFound(f"{obj.path}: not found upstream, a moment ago")
        return entry

    async def _find(self, obj: Obj) -> tuple[Entry | None, Found]:
        """Memory again (a fill that landed since the caller looked stored it there), the
        disk (read and verified once for every caller), and the ids known absent."""
        entry = self.memory.get(obj.key)
        if entry is not None:
            return entry, "memory"
        blob = await self.disk.get(obj.key, obj.verify)
        if blob is not None:
            entry = Entry(blob.body, obj.etag)
            self.memory.put(obj.key, entry)
            return entry, "disk"
        return None, "absent" if obj.key in self.negative else "miss"

    async def _fill(self, obj: Obj) -> Entry:
        """From the owner peer, else the upstreams in order; verified, then populated."""
        headers = ZSTD if obj.kind == "chunk" else IDENTITY
        try:
            entry = await self._from_owner(obj, headers)
            from_peer = entry is not None
            if entry is None:
                entry = await self.upstreams.fetch(obj.path, self._verifier(obj), headers)
        except NotFound:
            self.negative.add(obj.key)
            raise
        self._populate(obj, entry, from_peer)
        return entry

    async def _from_owner(self, obj: Obj, headers: Mapping[str, str]) -> Entry | None:
        """The verified entry from the key's owner peer; None when this node fills it
        itself, or the owner failed or timed out (counted: it may be a second fill)."""
        if self.peers.displaced(obj.key):
            self.metrics.fallbacks.labels("owner_down").inc()
        peer = self.peers.pick(obj.key)
        if peer is None:
            return None
        try:
            entry = await Sources([peer], self.metrics).fetch(obj.path, self._verifier(obj), headers)
        except UpstreamError as exc:
            self.metrics.fallbacks.labels(_fallback(exc)).inc()
            return None
        return entry

    async def _second(self, obj: Obj) -> Entry:
        """The second fill of a key whose first one kept its waiters past the bound."""
        self.metrics.fallbacks.labels("coalesce_timeout").inc()
        entry = await self._look_again(obj)
        return entry if entry is not None else await self._fill(obj)

    # -- many chunks at once ------------------------------------------------------------------

    async def _fill_many(self, objs: dict[str, Obj], flights: dict[str, Flight]) -> None:
        """Settle ``flights`` (claimed for ``objs``, by key): one batch to each owner peer,
        one to the upstreams for the rest."""
        mine: list[Obj] = []
        by_owner: dict[Source, list[Obj]] = {}
        for key, obj in objs.items():
            if self.peers.displaced(key):
                self.metrics.fallbacks.labels("owner_down").inc()
            owner = self.peers.pick(key)
            (mine if owner is None else by_owner.setdefault(owner, [])).append(obj)
        await asyncio.gather(
            self._from_upstreams(mine, flights),
            *(self._from_peer(peer, owned, flights) for peer, owned in by_owner.items()),
        )

    async def _from_peer(self, peer: Source, objs: list[Obj], flights: dict[str, Flight]) -> None:
        try:
            await Sources([peer], self.metrics).fetch_batch(
                [o.hex for o in objs], self._batch_acceptor(objs, flights, from_peer=True)
            )
            return
        except UpstreamError as exc:  # the owner failed for what it had not answered yet
            left = [o for o in objs if not flights[o.key].done()]
            self.metrics.fallbacks.labels(_fallback(exc)).inc(len(left))
        await self._from_upstreams(left, flights)

    async def _from_upstreams(self, objs: list[Obj], flights: dict[str, Flight]) -> None:
        if not objs:
            return
        try:
            await self.upstreams.fetch_batch([o.hex for o in objs], self._batch_acceptor(objs, flights))
        except UpstreamError as exc:
            for o in objs:
                if not flights[o.key].done():
                    flights[o.key].set_exception(exc)

    def _batch_acceptor(
        self, objs: list[Obj], flights: dict[str, Flight], from_peer: bool = False
    ) -> Callable[[str, bytes | None], Awaitable[None]]:
        by_hex = {o.hex: o for o in objs}

        async def accept(hexid: str, frame: bytes | None) -> None:
            obj = by_hex[hexid]  # Sources.fetch_batch passes only ids asked for, in order
            flight = flights[obj.key]
            if frame is None:
                self.negative.add(obj.key)
                if not flight.done():
                    flight.set_exception(NotFound(f"{obj.path}: not found upstream"))
                return
            await _verify(obj, frame)  # IntegrityError: this source fails for the rest
            entry = Entry(frame, obj.etag)
            self._populate(obj, entry, from_peer)
            if not flight.done():
                flight.set_result(entry)

        return accept

    # -- store and verify -----------------------------------------------------------------------

    def _populate(self, obj: Obj, entry: Entry, from_peer: bool) -> None:
        if from_peer:
            if self.hot.admit(obj.key):
                self.memory.put(obj.key, entry)
            return
        body = entry.body  # before the tier may seal it (reading it back would copy)
        self.memory.put(obj.key, entry)
        self.disk.store(obj.key, body)  # queued for the writer thread: no task, no await

    def _verifier(self, obj: Obj) -> Callable[[Answer], Awaitable[Entry]]:
        async def accept(answer: Answer) -> Entry:
            encoding = answer.headers.get("Content-Encoding", "identity").lower()
            body = answer.body
            if obj.kind == "chunk" and encoding == "zstd":
                await _verify(obj, body)
            elif encoding != "identity":
                raise IntegrityError(f"{obj.path}: unexpected Content-Encoding {encoding}")
            elif obj.kind == "chunk":
                body = await _off_loop(_frame_of_raw, obj, body)
            else:
                await _verify(obj, body)
            return Entry(body, obj.etag)

        return accept


def _fallback(exc: UpstreamError) -> str:
    """The FALLBACKS reason of an owner peer's failure."""
    return "peer_timeout" if isinstance(exc, Exhausted) and exc.reasons == ("timeout",) else "peer_error"


def _frame_of_raw(obj: Obj, raw: bytes) -> bytes:
    """An upstream that sent a chunk decoded: check it, and store it as a frame."""
    if sha256(raw) != obj.id:
        raise IntegrityError(f"{obj.path}: bytes do not match the id")
    return codec.compress(raw, level=3)
