"""Channel refs: the one mutable thing the edge caches.

A ref is fresh for ``min(upstream max-age, max_age)`` seconds after an upstream last
confirmed it; a stale ref is revalidated with If-None-Match (one flight per ref).  When
every upstream fails, a ref confirmed less than ``stale_if_error`` seconds ago is served
stale (RFC 5861's stale-if-error).  Refs live in memory and on disk; the file's mtime is
the time of the last confirmation, so a restarted edge knows how old its refs are.

The edge holds no public key: clients verify a ref's signature.  The edge checks that the
body is an envelope and, when the upstream's ETag is a SHA-256, that the bytes match it.
"""

from __future__ import annotations

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

__all__ = ["RefCache", "RefSettings", "Served"]

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

    async def get(self, app: str, channel: str) -> Served:
        key = ref_key(app, channel)
        cached, tier = await self._lookup(key)
        now = self.clock()
        if cached is not None and now - cached.validated < cached.max_age:
            self.metrics.hits.labels(tier).inc()
            return Served(cached, tier, now - cached.validated)
        self.metrics.misses.inc()
        served, joined = await self.flights.do(key, lambda: self._refresh(key, cached))
        if joined:
            self.metrics.coalesced.inc()
        return served

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
        self.memory.put(key, entry)
        return entry, "disk"

    async def _refresh(self, key: str, cached: Entry | None) -> Served:
        app, channel = key.split("/")[1:]
        path = f"/v1/apps/{app}/channels/{channel}"
        headers = {"If-None-Match": cached.etag} if cached is not None else {}
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
        if answer.status == 304 and cached is not None:
            cached.validated, cached.max_age = now, max_age
            self.writes.spawn(self.disk.set_mtime(key, now))
            return Served(cached, "revalidated", 0.0)
        entry = Entry(answer.body, etag_of(answer.body), validated=now, max_age=max_age)
        self.memory.put(key, entry)
        self.writes.spawn(self.disk.put(key, entry.body, replace=True, mtime=now))
        return Served(entry, "fetched", 0.0)


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
