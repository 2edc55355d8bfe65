"""The one answer to a GET or HEAD of an object whose ETag never changes (RFC 9110 §13,
§14): from a representation (``Variant``) and what the request says about it
(``Conditions``) to a status, the header fields and the slice of the body to send.

Pure: no I/O, no asyncio, no aiohttp.  The edge's data plane and every aiohttp handler
(common.http ``serve_immutable``) answer with it, so both serve the same bytes.  HEAD is
the rim's: the same status and fields, no body.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IMMUTABLE",
    "OCTETS",
    "PLAIN",
    "Answer",
    "ByteRange",
    "Conditions",
    "Unsatisfiable",
    "Variant",
    "etag_matches",
    "parse_range",
    "represent",
]

IMMUTABLE = "public, max-age=31536000, immutable"
OCTETS = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Variant:
    """One representation of an object: its validator, its size and how it is labelled.
    With ``content_encoding`` the body is the encoded representation; ranges then count
    bytes of that representation (RFC 9110 §14.1.2 applies ranges to the selected one)."""

    etag: str
    size: int
    content_type: str = OCTETS
    content_encoding: str | None = None
    vary: str | None = None
    cache_control: str = IMMUTABLE


@dataclass(frozen=True, slots=True)
class Conditions:
    """What of a request selects the answer: its field values, OWS stripped, or None."""

    if_none_match: str | None = None
    range: str | None = None
    if_range: str | None = None


PLAIN = Conditions()


@dataclass(frozen=True, slots=True)
class Answer:
    """200 or 206 with ``body[start:end]``; 304 (no body); 416 (the rim sends an error
    body, ``code`` and ``message``, with these fields)."""

    status: int
    fields: list[tuple[str, str]]
    start: int = 0
    end: int = 0

    code = "range_not_satisfiable"
    message = "range selects no bytes"


def represent(variant: Variant, conditions: Conditions = PLAIN) -> Answer:
    """The answer to a GET of ``variant`` under ``conditions``: 304, Range/206/416, or 200."""
    etag, size = variant.etag, variant.size
    fields = [("ETag", etag), ("Cache-Control", variant.cache_control), ("Accept-Ranges", "bytes")]
    if variant.content_encoding:
        fields.append(("Content-Encoding", variant.content_encoding))
    if variant.vary:
        fields.append(("Vary", variant.vary))
    inm = conditions.if_none_match
    if inm is not None and etag_matches(inm, etag):
        return Answer(304, fields)  # RFC 9110 §13.1.2
    status, start, end = 200, 0, size
    rng_header, if_range = conditions.range, conditions.if_range
    if rng_header and (if_range is None or if_range.strip() == etag):  # RFC 9110 §13.1.5
        try:
            rng = parse_range(rng_header, size)
        except Unsatisfiable:
            fields.append(("Content-Range", f"bytes */{size}"))
            return Answer(416, fields)
        if rng is not None:
            status, start, end = 206, rng.start, rng.end + 1
            fields.append(("Content-Range", f"bytes {rng.start}-{rng.end}/{size}"))
    fields += [("Content-Type", variant.content_type), ("Content-Length", str(end - start))]
    return Answer(status, fields, start, end)


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
    Raises Unsatisfiable for a syntactically valid range that selects nothing (→ 416).

    Positions are ASCII digits of any length (§14.1.1): a first position past the body is
    unsatisfiable, a last one past it is clamped, a suffix longer than it is all of it."""
    unit, _, spec = header.partition("=")
    if unit.strip(" \t").lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip(" \t").partition("-")
    first_d, last_d = _digits(first), _digits(last)
    if not dash or (first and first_d is None) or (last and last_d is None):
        return None
    if first_d is None:
        if last_d is None:
            return None
        suffix = _position(last_d)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    if last_d is not None and (len(last_d), last_d) < (len(first_d), first_d):
        return None  # invalid syntax (RFC 9110 §14.1.1): ignore the header
    start = _position(first_d)
    if start >= size:
        raise Unsatisfiable
    end = size - 1 if last_d is None else min(_position(last_d), size - 1)
    return ByteRange(start, end)


def _digits(text: str) -> str | None:
    """``text`` as a position: ASCII digits only (``str.isdigit`` also takes '²' and other
    scripts' digits, which ``int`` refuses), without leading zeros; else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return text.lstrip("0") or "0"


BEYOND = 10**18  # larger than any body; int() refuses strings of more than 4300 digits


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 18 else BEYOND
