"""Where misses are filled from: sources (an upstream edge or origin, or a peer), tried in
order with failover, and the ``PeerPicker`` seam for the cluster (edge.cluster).

A source answers ``get(path, headers) -> Answer`` and raises UpstreamError for anything
that is not an answer (refused connection, timeout, reset, an oversize body).  ``Sources``
tries each in turn: a 404 is final (content ids and channels are the same everywhere);
a connection error, a timeout, a 5xx, a redirect or bytes that ``accept`` rejects
(IntegrityError) are counted and the next source is asked.  When all have failed:
``Exhausted`` (502, with each source's reason), or LoopDetected (508) when one of them
answered 508 (edges configured in a circle).

A source also answers a batch: ``batch(ids, headers)`` streams ``(hex id, frame or None)``
as the source sends them (``POST /v1/chunks:batch``, DESIGN.md).  ``Sources.fetch_batch``
asks each source in turn for the ids no earlier one answered: a source that answers out
of order, stops short, sends bytes ``accept`` rejects or fails mid-stream has failed for
the ids it had not answered yet, and only those go to the next source.

Every request an ``HttpSource`` sends carries this edge's ``Via`` entry (edge.hops).
No request the edge makes follows a redirect (aiohttp's default is to follow): an upstream
is configured, a peer is a ring member, and a 3xx pointing elsewhere would hand this edge's
``Via``, peer mark and proof to a host nobody configured, and pass that host's answer on as
the upstream's.  A 3xx is a failure of the source that sent it (``reason="redirect"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
import msgpack
from prometheus_client import Counter

from common.errors import IntegrityError, LoopDetected, NotFound, TooLarge, UpstreamError
from common.http import read_limited
from common.ids import sha256
from edge import hops
from edge.h1client import Pools, Response
from edge.metrics import EdgeMetrics

__all__ = [
    "BATCH_PATH",
    "Answer",
    "BatchItem",
    "Exhausted",
    "Failures",
    "HttpSource",
    "NoPeers",
    "PeerPicker",
    "Source",
    "SourceError",
    "Sources",
    "batch_body",
    "judge",
]

T = TypeVar("T")

BATCH_PATH = "/v1/chunks:batch"
BatchItem = tuple[str, bytes | None]  # (hex id, zstd frame), or None: no such chunk


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]


class SourceError(UpstreamError):
    """A source gave no usable answer; ``reason`` is one of metrics.UPSTREAM_ERRORS."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Exhausted(UpstreamError):
    """Every source failed; ``reasons`` says why each did (metrics.UPSTREAM_ERRORS)."""

    def __init__(self, message: str, reasons: Sequence[str]) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)


class Source(Protocol):
    name: str
    kind: str  # "peer" or "upstream" (the label of minicdn_edge_upstream_requests_total)

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer: ...

    def batch(self, ids: Sequence[str], headers: Mapping[str, str]) -> AsyncGenerator[BatchItem, None]: ...


class PeerPicker(Protocol):
    """The cluster seam: the owner of a key, or None when this node should fill it itself."""

    def pick(self, key: str) -> Source | None: ...

    def displaced(self, key: str) -> bool:
        """Whether the key's owner is a known member that is out of the ring now (so
        whoever fills it fills it in that owner's stead)."""


class NoPeers:
    """One-node mode: nobody else owns anything."""

    def pick(self, key: str) -> Source | None:
        return None

    def displaced(self, key: str) -> bool:
        return False


def judge(src: Source, path: str, status: int, ok: tuple[int, ...] = (200,)) -> None:
    """``src``'s answer to ``path`` with ``status``: NotFound (final; its message names no
    upstream, a client reads it), a SourceError (the next source is asked), or nothing
    when it is one of ``ok``."""
    if status == 404:
        raise NotFound(f"{path}: not found upstream")
    if status not in ok:
        raise status_error(src.name + path, status)


def status_error(where: str, status: int) -> SourceError:
    """The failure an answer with ``status`` (not the one asked for, not 404) is."""
    if status == 508:
        return SourceError(f"{where} answered 508: a loop of edges", "loop")
    if 300 <= status < 400:
        return SourceError(f"{where} answered {status}: redirects are not followed", "redirect")
    return SourceError(f"{where} answered {status}", "status")


SessionOf = Callable[[], aiohttp.ClientSession]


class HttpSource:
    """An upstream or a peer over HTTP; ``node`` is this edge's name in the ``Via`` it
    adds, and a source of kind "peer" also marks its requests as coming from a peer
    (proven with ``secret``, the ring's shared token, when there is one).  ``session`` is
    the client session, or how to get it when asked: aiohttp makes one only in a running
    loop, and a node makes its sources before it starts (edge.service)."""

    def __init__(
        self,
        base: str,
        session: aiohttp.ClientSession | SessionOf,
        timeout: float,
        max_body: int,
        kind: str = "upstream",
        node: str = "edge",
        secret: str | None = None,
        pools: Pools | None = None,
    ) -> None:
        self.name = base.rstrip("/")
        # GETs through the lean client (edge.h1client) when given; aiohttp's otherwise.
        # Batches (a streamed POST) always go through aiohttp.
        self.pools = pools
        self.seconds = timeout
        self.kind = kind
        self.session_of: SessionOf = session if callable(session) else lambda: session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # A batch streams up to 1,024 objects: ``timeout`` bounds the wait for each piece
        # of it (and the connection), not the whole.
        self.stream_timeout = aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)
        self.max_body = max_body
        self.node = node
        self.secret = secret  # proves a peer mark (edge.hops)

    def begin(self, path: str, headers: Mapping[str, str]) -> asyncio.Future[Response] | None:
        """``get`` for the miss path's callbacks (edge.fill): the lean client's answer on an
        idle kept-alive connection, as a future (``failure`` says what its error is); None
        when there is no such connection, or no lean client: ``get`` connects."""
        if self.pools is None:
            return None
        url = self.name + path
        pool = self.pools.of(self.name)
        mark = hops.outgoing(self.node, self.kind == "peer", self.secret, url)
        request = pool.request(path, {**headers, **mark})
        return pool.begin(request, self.max_body, self.seconds)

    def failure(self, path: str, exc: BaseException) -> SourceError | None:
        """The SourceError that a ``begin`` future's error ``exc`` is, as ``get`` would
        translate it; None when it is none of the client's (a bug, not a failover)."""
        return _source_error(self.name + path, exc) if isinstance(exc, Exception) else None

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        url = self.name + path
        mark = hops.outgoing(self.node, self.kind == "peer", self.secret, url)
        sent = {**headers, **mark}
        if self.pools is not None:
            with _translated(url):
                r = await self.pools.of(self.name).get(path, sent, self.max_body, self.seconds)
            return Answer(r.status, r.body, r.headers)
        with _translated(url):
            async with self.session_of().get(
                url, headers=sent, timeout=self.timeout, allow_redirects=False
            ) as resp:
                body = await read_limited(resp.content, self.max_body, url)
                return Answer(resp.status, body, resp.headers)

    async def batch(self, ids: Sequence[str], headers: Mapping[str, str]) -> AsyncGenerator[BatchItem, None]:
        body = batch_body(ids)
        # A peer's proof covers the path and query only: the ids' digest in the query binds
        # it to this batch, so a proof seen on the wire cannot mark a batch of other ids.
        url = self.name + BATCH_PATH + (f"?digest={sha256(body).hex()}" if self.kind == "peer" else "")
        mark = hops.outgoing(self.node, self.kind == "peer", self.secret, url)
        sent = {**headers, **mark, "Content-Type": "application/x-msgpack"}
        # Room for one frame of max_body and its [id, ...] envelope: a bigger one is refused.
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=self.max_body + 256)
        with _translated(url):
            async with self.session_of().post(
                url,
                data=body,
                headers=sent,
                timeout=self.stream_timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise status_error(url, resp.status)
                async for piece in resp.content.iter_any():
                    unpacker.feed(piece)
                    for item in unpacker:
                        yield _batch_item(url, item)


def batch_body(ids: Sequence[str]) -> bytes:
    """The body of a batch request: a msgpack list of hex ids (the same bytes for the same
    ids, so both ends of a peer batch agree on its digest)."""
    body: bytes = msgpack.packb(list(ids))
    return body


def _batch_item(url: str, item: object) -> BatchItem:
    if (
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], str)
        and (item[1] is None or isinstance(item[1], bytes))
    ):
        return item[0], item[1]
    raise SourceError(f"{url}: a batch answer that is not [hex id, frame or nil]", "integrity")


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    """aiohttp's and msgpack's errors, as the SourceError (and reason) they are."""
    try:
        yield
    except Exception as exc:
        translated = _source_error(url, exc)
        if translated is None:
            raise
        raise translated from exc


def _source_error(url: str, exc: Exception) -> SourceError | None:
    """The SourceError a client's error ``exc`` is; None when it is none of theirs."""
    if isinstance(exc, TimeoutError):
        return SourceError(f"{url}: timed out", "timeout")
    if isinstance(exc, TooLarge):
        return SourceError(exc.message, "status")
    if isinstance(exc, ssl.SSLError):  # before ValueError: a failed certificate check is both
        return SourceError(f"{url}: TLS: {exc}", "connect")
    if isinstance(exc, msgpack.BufferFull):
        return SourceError(f"{url}: a batch answer larger than the largest object", "status")
    if isinstance(exc, msgpack.UnpackException | ValueError):
        return SourceError(f"{url}: not a msgpack stream: {exc}", "integrity")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return SourceError(f"{url}: {type(exc).__name__}: {exc}", "connect")
    return None


class Sources:
    """Sources in order with failover; ``accept`` turns an answer into a value, or raises
    IntegrityError to reject bytes that are not what was asked for."""

    def __init__(self, sources: Sequence[Source], metrics: EdgeMetrics) -> None:
        self.sources = list(sources)
        self.metrics = metrics

    async def fetch(
        self,
        path: str,
        accept: Callable[[Answer], Awaitable[T]],
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        failed: Failures | None = None,
        start: int = 0,
    ) -> T:
        """``accept``'s value of the first answer ``ok``, from the sources after the first
        ``start`` (asked already by edge.fill's callback path, and ``failed`` so)."""
        failed = Failures(path) if failed is None else failed
        for src in self.sources[start:]:
            with failed.on(src, self.metrics):
                answer = await src.get(path, headers or {})
                judge(src, path, answer.status, ok)
                return await accept(answer)
        raise failed.error()

    async def fetch_batch(
        self,
        ids: Sequence[str],
        accept: Callable[[str, bytes | None], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Each of ``ids`` given to ``accept`` with its frame (None: no such chunk), in
        order, from the first source that answers it; Exhausted (or LoopDetected) when
        some are left that no source answered."""
        left = list(ids)
        failed = Failures(BATCH_PATH)
        for src in self.sources:
            if not left:
                return
            answered = 0
            with failed.on(src, self.metrics):
                async with contextlib.aclosing(src.batch(left, headers or {})) as items:
                    async for hexid, frame in items:
                        if answered == len(left) or hexid != left[answered]:
                            raise IntegrityError(f"{src.name} answered {hexid} out of order")
                        await accept(hexid, frame)
                        answered += 1
                if answered < len(left):
                    raise IntegrityError(f"{src.name} answered {answered} of {len(left)} ids")
            left = left[answered:]
        if left:
            raise failed.error()


class Failures:
    """What went wrong with each source asked for ``path``, counted as it happens."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[str] = []
        self.reasons: list[str] = []

    @contextlib.contextmanager
    def on(self, src: Source, metrics: EdgeMetrics) -> Iterator[None]:
        """Around one request to ``src``: count it, and swallow (recording) its failure."""
        metrics.upstream_requests.labels(src.kind).inc()
        try:
            yield
        except (SourceError, IntegrityError) as exc:
            self.add(src, metrics, exc)

    def add(self, src: Source, metrics: EdgeMetrics, exc: SourceError | IntegrityError) -> None:
        """``src`` failed with ``exc`` (its request counted already)."""
        errors = metrics.peer_errors if src.kind == "peer" else metrics.upstream_errors
        if isinstance(exc, SourceError):
            self._failed(errors, exc.reason, exc.message)
        else:
            self._failed(errors, "integrity", f"{src.name}{self.path}: {exc.message}")

    def _failed(self, errors: Counter, reason: str, message: str) -> None:
        errors.labels(reason).inc()
        self.reasons.append(reason)
        self.messages.append(message)

    def error(self) -> UpstreamError:
        message = f"{self.path}: every upstream failed ({'; '.join(self.messages) or 'none configured'})"
        if "loop" in self.reasons:
            return LoopDetected(message)
        return Exhausted(message, self.reasons)
