"""Channel refs: the one mutable thing the edge caches.

A ref is fresh for ``min(upstream max-age, max_age)`` seconds after an upstream last
confirmed it; a stale ref is revalidated with If-None-Match (one flight per ref).  When
every upstream fails, a ref confirmed less than ``stale_if_error`` seconds ago is served
stale (RFC 5861's stale-if-error).  Refs live in memory and on disk; the file's mtime is
the time of the last confirmation, so a restarted edge knows how old its refs are.

While the edge's change feed is in sync with its upstream (edge.changes), a ref held in
memory needs no max-age revalidation: the feed names every ref that changes upstream, and
``revalidate`` asks for it at once.  ``Coverage`` says which refs the feed vouches for: those
held in memory whose last confirmation was *asked for* after the feed's current sync
began (so the answer already reflects every change before the feed's cursor), for at most
``STREAM_MAX_AGE`` (a backstop: a notice lost to a bug, or a re-signed ref nobody announced,
is picked up anyway).  A ref read back from disk is revalidated on first use, as ever.

The edge holds no public key: clients verify a ref's signature.  The edge checks that the
body is an envelope and, when the upstream's ETag is a SHA-256, that the bytes match it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from common.errors import IntegrityError, NotFound, UpstreamError
from common.ids import sha256
from edge.disk import DiskTier
from edge.memory import MemoryTier
from edge.metrics import EdgeMetrics
from edge.objects import Entry, ref_key
from edge.singleflight import Flights
from edge.tasks import TaskOwner
from edge.upstream import Answer, Sources

__all__ = ["STREAM_MAX_AGE", "Coverage", "RefCache", "RefSettings", "Served", "serial_of"]

# The longest a ref is taken as fresh on the change feed's word alone.
STREAM_MAX_AGE = 600.0

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)")


@dataclass(frozen=True)
class RefSettings:
    max_age: float = 30.0  # the longest the edge treats a ref as fresh
    stale_if_error: float = 86400.0


@dataclass(frozen=True)
class Served:
    entry: Entry
    state: str  # "memory" | "disk" (fresh hits), "fetched", "revalidated", "stale"
    age: float


class Coverage:
    """Whether the change feed vouches for a ref: ``since`` is when the feed's current sync
    began (its last reset was read: edge.changes), None before any; ``connected`` whether
    its long-poll answers now."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.connected = False

    def covers(self, validated: float, now: float) -> bool:
        since = self.since
        if not self.connected or since is None:
            return False
        return since <= validated and now - validated < STREAM_MAX_AGE


def serial_of(envelope: bytes) -> int:
    """The ref's serial, unverified (the edge has no key), or -1 when it cannot be read."""
    try:
        env = msgpack.unpackb(envelope, raw=False)
        serial = msgpack.unpackb(env["payload"], raw=False)["serial"]
    except (ValueError, msgpack.UnpackException, TypeError, KeyError):
        return -1
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else -1


def etag_of(envelope: bytes) -> str:
    return f'"{sha256(envelope).hex()}"'


def _check_envelope(body: bytes) -> None:
    try:
        env = msgpack.unpackb(body, raw=False, max_bin_len=1 << 20, max_str_len=1 << 16)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise IntegrityError(f"ref is not a msgpack envelope: {exc}") from exc
    if not isinstance(env, dict) or not {"payload", "key_id", "signature"} <= env.keys():
        raise IntegrityError("ref is not a signed envelope")


class RefCache:
    def __init__(
        self,
        memory: MemoryTier,
        disk: DiskTier,
        upstreams: Sources,
        flights: Flights[Served],
        writes: TaskOwner,
        metrics: EdgeMetrics,
        settings: RefSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.memory = memory
        self.disk = disk
        self.upstreams = upstreams
        self.flights = flights
        self.writes = writes
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.coverage = Coverage()
        # Refs the feed does not vouch for until they are confirmed again: read back from
        # disk, or revalidated after a notice without the serial it named.
        self._unconfirmed: set[str] = set()
        # Called with (app, channel, serial) when a refresh brings a ref whose bytes differ
        # from those held: a relaying edge's change log (edge.changes).
        self.changed: Callable[[str, str, int], None] = lambda app, channel, serial: None
        self.fetched: Callable[[], None] = lambda: None  # a ref was confirmed: the feed is wanted

    async def get(self, app: str, channel: str) -> Served:
        key = ref_key(app, channel)
        cached, tier = await self._lookup(key)
        now = self.clock()
        if cached is not None and self._fresh(key, cached, now):
            self.metrics.hits.labels(tier).inc()
            return Served(cached, tier, now - cached.validated)
        self.metrics.misses.inc()
        served, joined = await self.flights.do(key, lambda: self._refresh(key, cached))
        if joined:
            self.metrics.coalesced.inc()
        return served

    def held(self) -> list[str]:
        """The keys of the refs in memory: the ones the change feed keeps current."""
        return list(self.memory.keys("refs/"))

    async def revalidate(self, key: str, after: float) -> Served | None:
        """Make sure the ref held under ``key`` was confirmed by a request sent at or after
        ``after`` (a notice's arrival): join the flight under way only if it started then,
        else start one.  None when the ref is not held in memory."""
        while True:
            cached = self.memory.get(key)
            if cached is None:
                return None
            if cached.validated >= after and key not in self._unconfirmed:
                return Served(cached, "memory", self.clock() - cached.validated)
            served, _ = await self.flights.do(key, functools.partial(self._refresh, key, cached))
            if served.state == "stale" or served.entry.validated >= after:
                return served

    def distrust(self, key: str) -> None:
        """Leave the ref under ``key`` to its max-age until it is confirmed again (a notice
        named a serial its revalidation did not bring)."""
        self._unconfirmed.add(key)

    def _fresh(self, key: str, cached: Entry, now: float) -> bool:
        if now - cached.validated < cached.max_age:
            return True
        return key not in self._unconfirmed and self.coverage.covers(cached.validated, now)

    async def purge(self, app: str) -> int:
        prefix = ref_key(app, "")
        keys = set(self.memory.keys(prefix)) | set(self.disk.keys(prefix))
        for key in keys:
            self.memory.remove(key)
            await self.disk.remove(key)
        return len(keys)

    async def _lookup(self, key: str) -> tuple[Entry | None, str]:
        entry = self.memory.get(key)
        if entry is not None:
            return entry, "memory"
        blob = await self.disk.get(key, None)
        if blob is None:
            return None, "disk"
        # The upstream's max-age is not kept on disk: a ref read back is revalidated once.
        entry = Entry(blob.body, etag_of(blob.body), validated=blob.mtime, max_age=0.0)
        self._unconfirmed.add(key)
        self.memory.put(key, entry)
        return entry, "disk"

    async def _refresh(self, key: str, cached: Entry | None) -> Served:
        app, channel = key.split("/")[1:]
        path = f"/v1/apps/{app}/channels/{channel}"
        headers = {"If-None-Match": cached.etag} if cached is not None else {}
        # The confirmation's time is when it was asked for: the answer reflects at least
        # the upstream's state then (RFC 9111 §4.2.3's request_time; edge.changes relies on it).
        asked = self.clock()
        try:
            ok = (200, 304) if cached is not None else (200,)
            answer = await self.upstreams.fetch(path, _accept, headers, ok=ok)
        except NotFound:
            self.memory.remove(key)
            await self.disk.remove(key)
            raise
        except UpstreamError:
            now = self.clock()
            if cached is None or now - cached.validated > self.settings.stale_if_error:
                raise
            self.metrics.stale.inc()
            return Served(cached, "stale", now - cached.validated)
        now = self.clock()
        max_age = min(self.settings.max_age, _max_age(answer))
        self._unconfirmed.discard(key)
        self.fetched()
        if answer.status == 304 and cached is not None:
            cached.validated, cached.max_age = asked, max_age
            self.writes.spawn(self.disk.set_mtime(key, asked))
            return Served(cached, "revalidated", now - asked)
        entry = Entry(answer.body, etag_of(answer.body), validated=asked, max_age=max_age)
        self.memory.put(key, entry)
        self.writes.spawn(self.disk.put(key, entry.body, replace=True, mtime=asked))
        if cached is not None and cached.etag != entry.etag:
            self.changed(app, channel, serial_of(entry.body))
        return Served(entry, "fetched", now - asked)


def _max_age(answer: Answer) -> float:
    m = _MAX_AGE.search(answer.headers.get("Cache-Control", ""))
    return float(m.group(1)) if m else float("inf")


async def _accept(answer: Answer) -> Answer:
    if answer.status == 200:
        _check_envelope(answer.body)
        etag = answer.headers.get("ETag", "")
        if re.fullmatch(r'"[0-9a-f]{64}"', etag) and etag != etag_of(answer.body):
            raise IntegrityError("ref bytes do not match the upstream's ETag")
    return answer
