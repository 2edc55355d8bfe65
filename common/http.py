"""HTTP pieces shared by the origin and the edge (aiohttp): the error → status table,
content negotiation, and conditional / range answers for immutable objects.

RFC 9110 sections are cited where a rule comes from.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack
from aiohttp import StreamReader, web

from common import errors
from common.ids import parse_hex_id
from common.negotiate import accepts_coding

__all__ = [
    "IMMUTABLE",
    "ByteRange",
    "accepts_coding",
    "accepts_zstd",
    "error_middleware",
    "error_response",
    "etag_matches",
    "parse_range",
    "read_batch_ids",
    "read_limited",
    "serve_immutable",
    "status_of",
    "stream_batch",
]

log = logging.getLogger("minicdn.http")

IMMUTABLE = "public, max-age=31536000, immutable"

# The one table from error class to HTTP status (most specific class first).
STATUS: list[tuple[type[errors.MinicdnError], int]] = [
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.TooLarge, 413),
    (errors.IntegrityError, 502),
    (errors.SignatureError, 502),
    (errors.RefRejected, 502),
    (errors.LoopDetected, 508),  # RFC 5842 §7.2
    (errors.UpstreamError, 502),
    (errors.ConfigError, 500),
]


def status_of(exc: errors.MinicdnError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": code, "message": message}).encode(),
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON ``{"error": code, "message": text}``."""
    try:
        return await handler(request)
    except errors.MinicdnError as exc:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http")
        return error_response(exc.status, code, exc.reason, dict(exc.headers) if exc.status == 405 else None)


async def read_limited(stream: StreamReader, limit: int, what: str = "body") -> bytes:
    """Read a whole body, refusing (TooLarge) one longer than ``limit`` bytes without
    reading past ``limit + 1``.  (StreamReader.read(n) returns what is available, not n.)"""
    buf = bytearray()
    while True:
        piece = await stream.read(limit + 1 - len(buf))
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > limit:
            raise errors.TooLarge(f"{what} is larger than {limit} bytes")


MAX_BATCH = 1024  # ids per POST /v1/chunks:batch (DESIGN.md)


async def read_batch_ids(request: web.Request, max_ids: int = MAX_BATCH) -> list[str]:
    """The body of ``POST /v1/chunks:batch``: a msgpack list of at most ``max_ids`` valid
    hex ids (BadRequest otherwise, TooLarge past the bound, read no further than needed)."""
    limit = max_ids * 80  # msgpack-encoded 64-digit strings fit with room to spare
    if request.content_length is not None and request.content_length > limit:
        raise errors.TooLarge(f"a batch names at most {max_ids} ids")
    body = await read_limited(request.content, limit, "batch body")
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

    Once the status line has left, a failure can only break the stream (the client's batch
    reader reports it and re-asks for what it did not get): a MinicdnError becomes a reset.
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
    await resp.prepare(request)
    tasks: list[asyncio.Task[bytes | None]] = []
    n = 0
    try:
        for n, hexid in enumerate(ids):
            while len(tasks) < min(len(ids), n + window):
                tasks.append(asyncio.ensure_future(load(bytes.fromhex(ids[len(tasks)]))))
            piece = msgpack.packb([hexid, await tasks[n]], use_bin_type=True)
            await resp.write(piece)
            wrote(len(piece))
    except errors.MinicdnError as exc:
        raise ConnectionResetError(f"batch aborted after {n} answers: {exc.message}") from exc
    finally:
        for t in tasks:
            t.cancel()
    await resp.write_eof()
    return resp


def accepts_zstd(request: web.Request) -> bool:
    """The request accepts a zstd-encoded answer (named, or ``*``)."""
    return accepts_coding(request.headers.get("Accept-Encoding", ""), "zstd")


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive


class Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> ByteRange | None:
    """One byte range, or None to ignore the header and send 200 (RFC 9110 §14.2: a server
    may ignore a Range it does not support, e.g. several ranges or other units).
    Raises Unsatisfiable for a syntactically valid range that selects nothing (→ 416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first == "" or first.isdigit()) or not (last == "" or last.isdigit()):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid syntax (RFC 9110 §14.1.1): ignore the header
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def serve_immutable(
    request: web.Request,
    body: bytes | memoryview,
    *,
    etag: str,
    content_type: str = "application/octet-stream",
    cache_control: str = IMMUTABLE,
    content_encoding: str | None = None,
    vary: str | None = None,
) -> web.Response:
    """GET/HEAD of an object whose ETag never changes: 304, Range/206/416, HEAD.

    With ``content_encoding`` the body is the encoded representation; ranges then count
    bytes of that representation (RFC 9110 §14.1.2 applies ranges to the selected one).
    """
    headers = {"ETag": etag, "Cache-Control": cache_control, "Accept-Ranges": "bytes"}
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    if vary:
        headers["Vary"] = vary
    inm = request.headers.get("If-None-Match")
    if inm is not None and etag_matches(inm, etag):
        return web.Response(status=304, headers=headers)  # RFC 9110 §13.1.2
    size = len(body)
    status = 200
    rng_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if rng_header and (if_range is None or if_range.strip() == etag):  # RFC 9110 §13.1.5
        try:
            rng = parse_range(rng_header, size)
        except Unsatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return error_response(416, "range_not_satisfiable", "range selects no bytes", headers)
        if rng is not None:
            status = 206
            headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
            body = memoryview(body)[rng.start : rng.end + 1]
    # For HEAD aiohttp sends the headers (Content-Length included) and no body.
    return web.Response(status=status, body=bytes(body), headers=headers, content_type=content_type)
