"""Talking to edges: failover across several ``--edge`` URLs with backoff, and counting
every byte and request (the fetch summary reports them).

An edge that fails (connection error, timeout, 5xx, or bytes that do not verify) is
skipped for ``cooldown`` seconds; requests go to the next one.  A request is tried at
least ``attempts`` times and for at least ``retry_for`` seconds (backoff 0.1 s doubling, at
most 2 s between tries), so that a failure shorter than that — every edge missing an
object while the origin restarts, an edge restarting — is ridden out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgpack

from common.errors import (
    IntegrityError,
    MinicdnError,
    NotFound,
    RefRejected,
    SignatureError,
    TooLarge,
    UnknownPackage,
    UpstreamError,
)
from common.http import read_limited

__all__ = ["RETRYABLE", "Edges", "Traffic"]

T = TypeVar("T")
# What one edge can get wrong and another may get right: the network, its status, and
# bytes that fail verification (a corrupt cache, a tampering middlebox, a stale ref).
RETRYABLE = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    UpstreamError,
    IntegrityError,
    SignatureError,
    RefRejected,
)


@dataclass
class Traffic:
    requests: int = 0
    bytes: int = 0  # response bodies as received (compressed where the edge compressed)
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.bytes += n
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n

    def copy(self) -> Traffic:
        return Traffic(self.requests, self.bytes, dict(self.by_kind))

    def since(self, before: Traffic) -> Traffic:
        """What was counted after ``before`` (a copy taken earlier)."""
        kinds = {k: n - before.by_kind.get(k, 0) for k, n in self.by_kind.items()}
        kinds = {k: n for k, n in kinds.items() if n}
        return Traffic(self.requests - before.requests, self.bytes - before.bytes, kinds)


class Edges:
    def __init__(
        self,
        urls: list[str],
        session: aiohttp.ClientSession,
        *,
        timeout: float = 15.0,
        attempts: int | None = None,
        backoff: float = 0.1,
        cooldown: float = 5.0,
        retry_for: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one edge URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_read=timeout)
        self.attempts = attempts or max(3, 2 * len(self.urls))
        self.backoff = backoff
        self.cooldown = cooldown
        self.retry_for = retry_for
        self.traffic = Traffic()
        self._down_until: dict[str, float] = {}
        self._next = 0

    def _order(self) -> list[str]:
        now = time.monotonic()
        start = self._next % len(self.urls)
        ring = self.urls[start:] + self.urls[:start]
        up = [u for u in ring if self._down_until.get(u, 0) <= now]
        down = sorted((u for u in ring if u not in up), key=lambda u: self._down_until[u])
        return up + down

    def _failed(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + self.cooldown

    async def retry(self, attempt: int, started: float) -> bool:
        """After failed try number ``attempt`` (from 0) of a request begun at ``started``
        (monotonic): whether to try again — then after the backoff has been slept."""
        if attempt + 1 >= self.attempts and time.monotonic() - started >= self.retry_for:
            return False
        await asyncio.sleep(min(2.0, self.backoff * 2**attempt))
        return True

    async def with_failover(self, op: Callable[[str], Awaitable[T]], *, failure: str) -> T:
        """Run ``op(edge_url)`` on edges in turn until one succeeds: the one failover loop
        of the client.  A NotFound is final; an error the next edge may not repeat marks
        the edge failed and is retried (``retry``); once both bounds have passed, the last
        error is raised — a MinicdnError as itself, anything else as an UpstreamError whose
        message begins with ``failure``."""
        last: BaseException | None = None
        started, attempt = time.monotonic(), 0
        while True:
            url = self._order()[0]
            try:
                return await op(url)
            except NotFound:
                raise
            except RETRYABLE as exc:
                last = exc
                self._failed(url)
            if not await self.retry(attempt, started):
                break
            attempt += 1
        if isinstance(last, MinicdnError) and not isinstance(last, UpstreamError):
            raise last  # e.g. IntegrityError: every edge sent bytes that do not verify
        raise UpstreamError(f"{failure} ({type(last).__name__}: {last})")

    async def get(
        self,
        path: str,
        kind: str,
        check: Callable[[bytes, str | None], T],
        headers: dict[str, str] | None = None,
        max_size: int = 64 << 20,
        data: bytes | None = None,
    ) -> T:
        """GET (POST ``data`` when given) with failover; ``check(body, content_encoding)``
        verifies the answer (and raises to make the next edge try)."""

        async def op(base: str) -> T:
            self.traffic.requests += 1
            method = "GET" if data is None else "POST"
            async with self.session.request(
                method, base + path, data=data, headers=headers, timeout=self.timeout
            ) as resp:
                if resp.status == 404:
                    code, message = await _error_of(resp, f"{path}: not found")
                    self.traffic.add(kind, resp.content.total_bytes)
                    raise (UnknownPackage if code == UnknownPackage.code else NotFound)(message)
                if resp.status >= 400:
                    _code, message = await _error_of(resp, "")
                    self.traffic.add(kind, resp.content.total_bytes)
                    raise UpstreamError(f"{base}{path} answered {resp.status} {message}".rstrip())
                try:
                    body = await read_limited(resp.content, max_size, path)
                except TooLarge as exc:
                    raise IntegrityError(exc.message) from exc
                finally:
                    self.traffic.add(kind, resp.content.total_bytes)
                return check(body, resp.headers.get("Content-Encoding"))

        return await self.with_failover(op, failure=f"{path} failed on every edge")

    async def batch(
        self, base: str, ids: list[str], max_item: int
    ) -> AsyncIterator[tuple[str, bytes | None]]:
        """One ``POST /v1/chunks:batch`` to one edge, yielding answers as they stream in.
        Raises on a broken stream; the caller re-asks for what it did not get (inside
        ``with_failover``)."""
        self.traffic.requests += 1
        # The buffer holds at most one item plus one network piece (fed in 64 KiB slices).
        unpacker = msgpack.Unpacker(
            raw=False, max_bin_len=max_item, max_buffer_size=2 * max_item + (256 << 10)
        )
        async with self.session.post(
            base + "/v1/chunks:batch",
            data=msgpack.packb(ids),
            headers={"Content-Type": "application/x-msgpack"},
            timeout=self.timeout,
        ) as resp:
            if resp.status >= 400:
                raise UpstreamError(f"{base} batch answered {resp.status}")
            n = 0
            async for data in resp.content.iter_chunked(64 << 10):
                self.traffic.add("chunks", len(data))
                try:
                    unpacker.feed(data)
                    items = list(unpacker)
                except (ValueError, msgpack.UnpackException) as exc:
                    raise IntegrityError(f"{base} sent a malformed batch answer: {exc}") from exc
                for item in items:
                    hexid, frame = _batch_item(item, ids, n)
                    n += 1
                    yield hexid, frame
            if n != len(ids):
                raise UpstreamError(f"{base} batch ended after {n} of {len(ids)} answers")


async def _error_of(resp: aiohttp.ClientResponse, default: str) -> tuple[str | None, str]:
    """The ``error`` and ``message`` of a JSON error body (docs/design.md), else None and
    ``default``."""
    try:
        doc = json.loads(await read_limited(resp.content, 4096, "error"))
    except (MinicdnError, ValueError):
        return None, default
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
        return None, default
    code = doc.get("error")
    return (code if isinstance(code, str) else None), doc["message"][:500]


def _batch_item(item: Any, ids: list[str], n: int) -> tuple[str, bytes | None]:
    if (
        not isinstance(item, list)
        or len(item) != 2
        or n >= len(ids)
        or item[0] != ids[n]
        or not (item[1] is None or isinstance(item[1], bytes))
    ):
        raise IntegrityError("batch answer out of order or malformed")
    return item[0], item[1]
