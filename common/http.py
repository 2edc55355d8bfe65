"""HTTP pieces shared by the origin and the edge (aiohttp): the error → status table,
the JSON error body for every error either server sends (its handlers', aiohttp's router's
and aiohttp's request parser's), the request rules aiohttp does not enforce, head limits
(the edge's), the HTTP/1.1 status line of every answer of known length, content
negotiation, and conditional / range answers for immutable objects; and, re-exported from
common.bodies, the pace a request body must keep and the batch stream.

RFC 9110 and RFC 9112 sections are cited where a rule comes from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Middleware

from common import errors
from common.bodies import (
    MAX_BATCH,
    BodyPace,
    BrokenStream,
    Paced,
    declared_length,
    read_batch_ids,
    read_limited,
    stream_batch,
)
from common.negotiate import accepts_coding
from common.representation import (
    IMMUTABLE,
    OCTETS,
    Answer,
    ByteRange,
    Conditions,
    Unsatisfiable,
    Variant,
    etag_matches,
    parse_range,
    represent,
)

__all__ = [
    "IMMUTABLE",
    "MAX_BATCH",
    "BodyPace",
    "BrokenStream",
    "ByteRange",
    "HeadLimits",
    "JsonErrors",
    "Paced",
    "Unsatisfiable",
    "accepts_coding",
    "accepts_zstd",
    "conditions",
    "declared_length",
    "error_middleware",
    "error_response",
    "etag_matches",
    "head_limits_middleware",
    "host_ok",
    "json_handlers",
    "parse_range",
    "read_batch_ids",
    "read_limited",
    "respond",
    "serve_immutable",
    "status_of",
    "stream_batch",
    "strict_middleware",
]

log = logging.getLogger("minicdn.http")

# The one table from error class to HTTP status (most specific class first).
STATUS: list[tuple[type[errors.MinicdnError], int]] = [
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.NotFound, 404),
    (errors.RequestTimeout, 408),
    (errors.Conflict, 409),
    (errors.TooLarge, 413),
    (errors.IntegrityError, 502),
    (errors.SignatureError, 502),
    (errors.RefRejected, 502),
    (errors.LoopDetected, 508),  # RFC 5842 §7.2
    (errors.UpstreamError, 502),
    (errors.ConfigError, 500),
    (errors.StorageUnavailable, 503),
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


# The ``error`` code of an answer made from a bare status (aiohttp's, or the data plane's).
CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    414: "too_large",
    417: "expectation_failed",
    431: "too_large",
    500: "internal",
    504: "timeout",
    505: "version_not_supported",
}


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTPException (4xx/5xx) as the JSON error body; a 405 keeps its ``Allow``
    (RFC 9110 §15.5.6), every other header is aiohttp's text answer's own."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, CODES.get(exc.status, "http"), exc.reason, headers)


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
        if status == 503:
            headers = {"Retry-After": "1"}  # the store (or whatever was unavailable) may be back
        resp = error_response(status, exc.code, exc.message, headers)
        if status == 408:
            resp.force_close()  # the body's end was never seen: the connection is unusable
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(exc)


# RFC 9110 §7.2 and RFC 3986 §3.2.2: uri-host [ ":" port ], where uri-host is an IP-literal
# in brackets or a reg-name (unreserved, pct-encoded, sub-delims; an IPv4 address is one).
_HOST = re.compile(
    r"(?:\[[0-9A-Za-z\-._~!$&'()*+,;=:]+\]|(?:[0-9A-Za-z\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)


HOST_RULE = "a request needs one Host field with a valid value (RFC 9112 §3.2)"
NO_VERSION = "the request line has no HTTP/1.x version"


def host_ok(value: str) -> bool:
    """A valid Host field value (OWS already stripped); empty is valid (RFC 9110 §7.2)."""
    return _HOST.fullmatch(value) is not None


@web.middleware
async def strict_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What RFC 9112 asks of a request and aiohttp's parser lets through: the version is
    HTTP/1.0 or 1.1 (a request line without one parses as 0.9: 400; 2.x over HTTP/1: 505,
    RFC 9110 §15.6.6), and Host is present once, with a valid value, on HTTP/1.1 (§3.2;
    aiohttp refuses a missing or repeated one itself, not an invalid one).  Either closes."""
    version = request.version
    if version.major == 1 and version.minor <= 1:
        hosts = request.headers.getall("Host", [])
        if (len(hosts) == 1 and host_ok(hosts[0].strip(" \t"))) or (not hosts and version.minor == 0):
            return await handler(request)
        resp = error_response(400, "bad_request", HOST_RULE)
    elif version.major >= 2:
        resp = error_response(505, "version_not_supported", f"HTTP/{version.major}.x is not supported")
    else:
        resp = error_response(400, "bad_request", NO_VERSION)
    return closing(resp)


def closing(resp: web.Response) -> web.Response:
    """``resp`` as the connection's last answer, saying so (RFC 9112 §9.6).  aiohttp sends
    ``Connection: close`` by itself only to an HTTP/1.1 request; a refused head may have
    parsed as 1.0 (aiohttp's stand-in for a head its parser refuses), 0.9 or 2.x."""
    resp.force_close()
    resp.headers["Connection"] = "close"
    return resp


# aiohttp's parser refuses a missing (HTTP/1.1) or repeated Host itself, in its own words;
# the rule is the one strict_middleware and the edge's data plane state.
_HOST_REFUSALS = ("Missing 'Host' header", "Duplicate 'Host' header")
# ... and too many fields (both of its parsers say so in these words).
_TOO_MANY_FIELDS = "Too many headers received"

LINE_TOO_LONG = (414, "too_large", "request line is too long")
HEAD_TOO_LARGE = (431, "too_large", "request head is too large")
Refusal = tuple[int, str, str]


@dataclass(frozen=True)
class HeadLimits:
    """Limits on a request head (RFC 9112 §3, RFC 6585 §5): a request line (its CRLF not
    counted) over ``line`` bytes is refused 414, a head (request line to the empty line
    that ends it, inclusive) over ``head`` bytes or with more than ``fields`` fields 431.
    The edge's data plane applies them to the bytes it reads; its aiohttp path applies
    them through ``parser_args``, JsonErrors' ``head_limits`` and ``head_limits_middleware``."""

    line: int
    head: int
    fields: int

    def __post_init__(self) -> None:
        # (parser_args tells aiohttp's two refusals apart by their limits.)
        if not 0 < self.line < self.head:
            raise errors.ConfigError("head limits: 0 < line < head")

    def parser_args(self) -> dict[str, int]:
        """aiohttp's parser limits (RequestHandler keywords) that take every head within
        these: its C parser bounds the request target by ``max_line_size`` (its Python
        parser the whole line) and a field's name and value by ``max_field_size``, and
        counts ``max_headers`` fields (the Python parser: lines, the request line and the
        empty one included).  What passes them and not these is the middleware's."""
        return {"max_line_size": self.line, "max_field_size": self.head, "max_headers": self.fields + 2}

    def parser_refusal(self, exc: BaseException | None, message: str | None) -> Refusal | None:
        """What these limits answer for a head aiohttp's parser refused (``parser_args``
        given), None when it was refused for something else."""
        if isinstance(exc, LineTooLong):
            return LINE_TOO_LONG if exc.args[1] == self.line else HEAD_TOO_LARGE
        if message == _TOO_MANY_FIELDS:
            return HEAD_TOO_LARGE
        return None

    def refusal(self, request: web.BaseRequest) -> Refusal | None:
        """What these limits answer for a head aiohttp's parser took, None if it is within
        them.  aiohttp keeps no head's bytes: its size is counted as ``name: value`` lines
        (the whitespace around a value is not kept; one space is what clients send)."""
        fields = request.raw_headers
        if len(fields) > self.fields:
            return HEAD_TOO_LARGE
        version = 9 if request.version >= HttpVersion10 else 0  # " HTTP/1.1"; none for 0.9
        line = len(request.method) + 1 + len(request.raw_path.encode("utf-8", "surrogateescape")) + version
        if line > self.line:
            return LINE_TOO_LONG
        if line + 4 + sum(len(name) + len(value) + 4 for name, value in fields) > self.head:
            return HEAD_TOO_LARGE
        return None


def head_limits_middleware(limits: HeadLimits) -> Middleware:
    """Refuses a head over ``limits`` that aiohttp's parser took (it has no limit on a
    head's total size), closing the connection as the parser's refusals do."""

    @web.middleware
    async def head_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = limits.refusal(request)
        if refused is None:
            return await handler(request)
        return closing(error_response(*refused))

    return head_limits


class JsonErrors(web.RequestHandler):
    """aiohttp's connection handler, answering with the JSON error body what aiohttp
    answers itself in text: a head its parser refuses (400), an ``Expect`` it does not know
    (417), a handler that raised something else than an HTTP answer (500).  A client's
    error is logged at debug level, one line (aiohttp logs each with its traceback).

    ``head_limits`` (the edge's): the parser's refusals of heads over them are answered as
    they say (414, 431) rather than 400; give the handler their ``parser_args`` too."""

    def __init__(self, *args: Any, head_limits: HeadLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_limits = head_limits

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if status == 500 and expect is not None and expect.lower() != "100-continue":
            # aiohttp's default Expect handler runs before any handler; it cannot build its
            # 417 for a value that is not UTF-8 (UnicodeEncodeError): send the 417 it meant.
            status, exc, message = 417, None, "unknown Expect"
        transport = request.transport
        gone = transport is None or transport.is_closing()
        if isinstance(exc, BrokenStream):
            log.warning("%s %s: %s", request.method, request.path, exc)
        elif status >= 500 and not gone:
            log.error("%s %s failed", request.method, request.path, exc_info=exc)  # a bug: show it
        else:
            log.debug("refused a request from %s: %s %s", request.remote, status, message or exc)
        if request.writer.output_size > 0:  # as aiohttp's: a second status line cannot follow
            raise ConnectionError("the response has begun; no error answer can follow")
        refused = self.head_limits.parser_refusal(exc, message) if self.head_limits else None
        if refused is not None:
            return closing(error_response(*refused))
        text = "internal error" if status >= 500 else (message or HTTPStatus(status).phrase)
        if status == 400 and text.startswith(_HOST_REFUSALS):
            text = HOST_RULE
        return closing(error_response(status, CODES.get(status, "http"), text[:200]))

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # An HTTPException raised outside the middlewares (the Expect handler's 417) comes
        # here as the answer itself.
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = http_error(resp)
        if request.version != HttpVersion11 and not resp.prepared and known_length(resp):
            try:
                await prepare_as_http11(request, resp)
            except ConnectionError:  # as aiohttp's finish_response: the client has left
                self.log_access(request, resp, start_time)
                return resp, True
        return await super().finish_response(request, resp, start_time)


def known_length(resp: web.StreamResponse) -> bool:
    """``resp`` is sent whole with its Content-Length, whatever the request's version."""
    return isinstance(resp, web.Response) and resp.content_length is not None


async def prepare_as_http11(request: web.BaseRequest, resp: web.StreamResponse) -> None:
    """Prepare ``resp`` (of known length) to leave with an HTTP/1.1 status line, saying to
    an HTTP/1.0 request what aiohttp would: ``Connection: keep-alive`` if it is kept."""
    keep_alive = request.keep_alive if resp.keep_alive is None else resp.keep_alive
    if keep_alive and request.version == HttpVersion10:
        resp.headers.setdefault("Connection", "keep-alive")
    await resp.prepare(cast(web.BaseRequest, Http11(request)))


class Http11:
    """``request`` as a response is prepared against to answer in HTTP/1.1: a server sends
    the highest minor version it supports, whatever the request's (RFC 9112 §2.3, RFC 9110
    §6.2); aiohttp writes the request's (1.0, or the 0.9 or 2.x it refuses) in the status
    line.  Only for a response of known length (``known_length``): what else the version
    decides is chunking (never to 1.0: a stream keeps the request's version, and close
    delimits it) and the Connection field (``prepare_as_http11`` says ``keep-alive`` to 1.0
    as aiohttp would; aiohttp then says ``close`` as to 1.1).  Everything but the version is
    the request's.  ``test_http_errors.py::test_answers_are_http11`` holds it to what aiohttp
    reads (StreamResponse.prepare reads ``request.version``)."""

    __slots__ = ("_request",)

    version = HttpVersion11

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def json_handlers(
    server: web.Server, head_limits: HeadLimits | None = None, **kwargs: Any
) -> Callable[[], web.RequestHandler]:
    """A protocol factory for ``server``'s connections (what ``server()`` makes) whose
    handlers are JsonErrors; ``kwargs``: the handler's, as given to the AppRunner."""
    loop = asyncio.get_running_loop()
    return lambda: JsonErrors(server, loop=loop, head_limits=head_limits, **kwargs)


def accepts_zstd(request: web.Request) -> bool:
    """The request accepts a zstd-encoded answer (named, or ``*``)."""
    return accepts_coding(request.headers.get("Accept-Encoding", ""), "zstd")


def serve_immutable(
    request: web.Request,
    body: bytes | memoryview,
    *,
    etag: str,
    content_type: str = OCTETS,
    cache_control: str = IMMUTABLE,
    content_encoding: str | None = None,
    vary: str | None = None,
) -> web.Response:
    """GET/HEAD of an object whose ETag never changes, as common.representation answers it
    (304, Range/206/416; for HEAD aiohttp sends the fields, Content-Length included, and no
    body)."""
    variant = Variant(etag, len(body), content_type, content_encoding, vary, cache_control)
    return respond(represent(variant, conditions(request)), body)


def respond(answer: Answer, body: bytes | memoryview = b"") -> web.Response:
    """common.representation's ``answer`` as aiohttp's response, ``body`` the variant's."""
    fields = dict(answer.fields)
    content_type = fields.pop("Content-Type", None)
    fields.pop("Content-Length", None)  # web.Response sets it from the body, for HEAD too
    if answer.status == 416:
        return error_response(416, answer.code, answer.message, fields)
    if answer.status == 304:
        return web.Response(status=304, headers=fields)
    part = bytes(memoryview(body)[answer.start : answer.end])
    return web.Response(status=answer.status, body=part, headers=fields, content_type=content_type)


def conditions(request: web.BaseRequest) -> Conditions:
    h = request.headers
    return Conditions(h.get("If-None-Match"), h.get("Range"), h.get("If-Range"))
