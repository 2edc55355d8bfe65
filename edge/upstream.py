"""Where misses are filled from: sources (an upstream edge or origin, or a peer), tried in
order with failover, and the ``PeerPicker`` seam for the cluster (edge.cluster).

A source answers ``get(path, headers) -> Answer`` and raises UpstreamError for anything
that is not an answer (refused connection, timeout, reset, an oversize body).  ``Sources``
tries each in turn: a 404 is final (content ids and channels are the same everywhere);
a connection error, a timeout, a 5xx, a redirect or bytes that ``accept`` rejects
(IntegrityError) are counted and the next source is asked.  When all have failed: UpstreamError (502), or
LoopDetected (508) when one of them answered 508 (edges configured in a circle).

Every request an ``HttpSource`` sends carries this edge's ``Via`` entry (edge.hops).
No request the edge makes follows a redirect (aiohttp's default is to follow): an upstream
is configured, a peer is a ring member, and a 3xx pointing elsewhere would hand this edge's
``Via``, peer mark and proof to a host nobody configured, and pass that host's answer on as
the upstream's.  A 3xx is a failure of the source that sent it (``reason="redirect"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp

from common.errors import IntegrityError, LoopDetected, NotFound, TooLarge, UpstreamError
from common.http import read_limited
from edge import hops
from edge.metrics import EdgeMetrics

__all__ = ["Answer", "HttpSource", "NoPeers", "PeerPicker", "Source", "Sources"]

T = TypeVar("T")


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


class Source(Protocol):
    name: str
    kind: str  # "peer" or "upstream" (the label of minicdn_edge_upstream_requests_total)

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer: ...


class PeerPicker(Protocol):
    """The cluster seam: the owner of a key, or None when this node should fill it itself."""

    def pick(self, key: str) -> Source | None: ...


class NoPeers:
    """One-node mode: nobody else owns anything."""

    def pick(self, key: str) -> Source | None:
        return None


class HttpSource:
    """An upstream or a peer over HTTP; ``node`` is this edge's name in the ``Via`` it
    adds, and a source of kind "peer" also marks its requests as coming from a peer
    (proven with ``secret``, the ring's shared token, when there is one)."""

    def __init__(
        self,
        base: str,
        session: aiohttp.ClientSession,
        timeout: float,
        max_body: int,
        kind: str = "upstream",
        node: str = "edge",
        secret: str | None = None,
    ) -> None:
        self.name = base.rstrip("/")
        self.kind = kind
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_body = max_body
        self.node = node
        self.secret = secret  # proves a peer mark (edge.hops)

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        url = self.name + path
        mark = hops.outgoing(self.node, self.kind == "peer", self.secret, url)
        sent = {**headers, **mark}
        try:
            async with self.session.get(
                url, headers=sent, timeout=self.timeout, allow_redirects=False
            ) as resp:
                body = await read_limited(resp.content, self.max_body, url)
                return Answer(resp.status, body, resp.headers)
        except TimeoutError as exc:
            raise SourceError(f"{url}: timed out", "timeout") from exc
        except TooLarge as exc:
            raise SourceError(exc.message, "status") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise SourceError(f"{url}: {type(exc).__name__}: {exc}", "connect") from exc


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
    ) -> T:
        failures: list[str] = []
        loop = False
        for src in self.sources:
            self.metrics.upstream_requests.labels(src.kind).inc()
            errors = self.metrics.peer_errors if src.kind == "peer" else self.metrics.upstream_errors
            try:
                answer = await src.get(path, headers or {})
                if answer.status == 404:
                    raise NotFound(f"{path}: not found upstream")
                if answer.status == 508:
                    loop = True
                    raise SourceError(f"{src.name}{path} answered 508: a loop of edges", "loop")
                if 300 <= answer.status < 400 and answer.status not in ok:
                    raise SourceError(
                        f"{src.name}{path} answered {answer.status}: redirects are not followed", "redirect"
                    )
                if answer.status not in ok:
                    raise SourceError(f"{src.name}{path} answered {answer.status}", "status")
                return await accept(answer)
            except SourceError as exc:
                errors.labels(exc.reason).inc()
                failures.append(exc.message)
            except IntegrityError as exc:
                errors.labels("integrity").inc()
                failures.append(f"{src.name}{path}: {exc.message}")
        error = LoopDetected if loop else UpstreamError
        raise error(f"{path}: every upstream failed ({'; '.join(failures) or 'none configured'})")
