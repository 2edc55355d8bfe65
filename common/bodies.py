"""Request bodies and batch streams, for the origin and the edge (aiohttp): the pace a
body must keep (``--body-timeout``, ``--body-min-rate``), bounded reads, the ids of a
``POST /v1/chunks:batch`` and its streamed answer.  Re-exported by common.http."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import msgpack
from aiohttp import StreamReader, web

from common import errors
from common.ids import parse_hex_id

__all__ = [
    "MAX_BATCH",
    "BodyPace",
    "BrokenStream",
    "Paced",
    "declared_length",
    "read_batch_ids",
    "read_limited",
    "stream_batch",
]

log = logging.getLogger("minicdn.http")


@dataclass(frozen=True)
class BodyPace:
    """How slowly a request body may arrive: it is refused (408) once receiving it has
    taken longer than ``timeout`` plus one second for every ``min_rate`` bytes received.
    A trickle is cut after about ``timeout``; a body that keeps ``min_rate`` bytes a
    second is never cut, however large (a 64 MiB upload over a slow link)."""

    timeout: float = 30.0
    min_rate: float = 1024.0

    TIMEOUT_HELP: ClassVar[str] = (
        "A request body may take this long, plus one second per --body-min-rate bytes received (else 408)."
    )
    MIN_RATE_HELP: ClassVar[str] = "Bytes per second a long request body must keep up."

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.min_rate > 0):
            raise errors.ConfigError("--body-timeout and --body-min-rate must be > 0")

    def late(self, elapsed: float, received: int) -> bool:
        return elapsed > self.timeout + received / self.min_rate

    def left(self, elapsed: float, received: int) -> float:
        """Seconds until the body is late if nothing more arrives."""
        return self.timeout + received / self.min_rate - elapsed


class Paced:
    """``StreamReader.read`` under a BodyPace (None: unbounded): RequestTimeout when the
    next piece comes too late.  The clock starts when the reader is made."""

    def __init__(self, stream: StreamReader, pace: BodyPace | None) -> None:
        self.stream = stream
        self.pace = pace
        self.start = time.monotonic()
        self.received = 0

    async def read(self, n: int) -> bytes:
        pace = self.pace
        if pace is None:
            return await self.stream.read(n)
        try:
            async with asyncio.timeout(max(0.0, pace.left(time.monotonic() - self.start, self.received))):
                piece = await self.stream.read(n)
        except TimeoutError:
            raise errors.RequestTimeout(
                f"request body arrived slower than {pace.min_rate:.0f} bytes/s after {pace.timeout:g}s"
            ) from None
        self.received += len(piece)
        return piece


async def read_limited(
    stream: StreamReader, limit: int, what: str = "body", pace: BodyPace | None = None
) -> bytes:
    """Read a whole body, refusing (TooLarge) one longer than ``limit`` bytes without
    reading past ``limit + 1``, and (RequestTimeout) one arriving slower than ``pace``.
    (StreamReader.read(n) returns what is available, not n.)"""
    buf = bytearray()
    reader = Paced(stream, pace)
    while True:
        piece = await reader.read(limit + 1 - len(buf))
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > limit:
            raise errors.TooLarge(f"{what} is larger than {limit} bytes")


MAX_BATCH = 1024  # ids per POST /v1/chunks:batch (DESIGN.md)


def declared_length(request: web.BaseRequest) -> int:
    """The request's Content-Length, 0 when it has none.  (aiohttp's
    ``request.content_length`` is int() of the field: ValueError, a 500, on a length the
    parser took with more than 4300 digits, leading zeros and all.)"""
    field = request.headers.get("Content-Length")
    if not field:
        return 0
    digits = field.strip(" \t").lstrip("0")
    if digits and not (digits.isascii() and digits.isdigit()):  # (llhttp refuses such a head)
        raise errors.BadRequest("Content-Length must be digits")
    return int(digits or "0") if len(digits) < 30 else 1 << 100


async def read_batch_ids(
    request: web.Request, max_ids: int = MAX_BATCH, pace: BodyPace | None = None
) -> list[str]:
    """The body of ``POST /v1/chunks:batch``: a msgpack list of at most ``max_ids`` valid
    hex ids (BadRequest otherwise, TooLarge past the bound, read no further than needed,
    RequestTimeout if slower than ``pace``)."""
    limit = max_ids * 80  # msgpack-encoded 64-digit strings fit with room to spare
    if declared_length(request) > limit:
        raise errors.TooLarge(f"a batch names at most {max_ids} ids")
    body = await read_limited(request.content, limit, "batch body", pace)
    try:
        ids = msgpack.unpackb(body, raw=False, max_array_len=max_ids + 1)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise errors.BadRequest(f"batch body must be a msgpack list of hex ids: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise errors.BadRequest("batch body must be a msgpack list of hex ids")
    if len(ids) > max_ids:
        raise errors.TooLarge(f"a batch names at most {max_ids} ids, got {len(ids)}")
    for i in ids:
        parse_hex_id(i)
    return ids


class BrokenStream(ConnectionResetError):
    """A streamed answer that cannot go on once its status line has left: the connection is
    reset (the client re-asks for what it did not get).  An upstream's failure, not a bug:
    logged as one line, without a traceback."""


async def stream_batch(
    request: web.Request,
    ids: list[str],
    load: Callable[[bytes], Awaitable[bytes | None]],
    window: int,
    wrote: Callable[[int], None] = lambda n: None,
) -> web.StreamResponse:
    """Answer ``POST /v1/chunks:batch``: ``[hex id, frame or nil]`` for each id, strictly in
    request order, each written as soon as it and those before it are ready; ``load`` runs
    at most ``window`` ids ahead; ``wrote`` hears the size of each piece written.

    The status line waits for the first answer, so a batch that fails at once (every
    upstream down) is an error answer (502) like any other request's.  Once it has left, a
    failure can only break the stream: a MinicdnError becomes a BrokenStream.
    """
    tasks: list[asyncio.Task[bytes | None]] = []
    resp: web.StreamResponse | None = None
    n = 0
    try:
        for n, hexid in enumerate(ids):
            while len(tasks) < min(len(ids), n + window):
                tasks.append(asyncio.ensure_future(load(bytes.fromhex(ids[len(tasks)]))))
            piece = msgpack.packb([hexid, await tasks[n]], use_bin_type=True)
            if resp is None:
                resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
                await resp.prepare(request)
            await resp.write(piece)
            wrote(len(piece))
    except errors.MinicdnError as exc:
        if resp is None:
            raise
        raise BrokenStream(f"batch aborted after {n} answers: {exc.message}") from exc
    finally:
        for t in tasks:
            t.cancel()
    if resp is None:  # an empty batch
        resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
        await resp.prepare(request)
    await resp.write_eof()
    return resp
