"""How the edge represents its objects over HTTP: the forms each kind is sent in, and the
early answer to a client that already has the object.  Both serving paths (the data
plane, edge.plane, and the aiohttp handlers, edge.handlers) answer from these and from
common.representation's ``represent``, so they agree on every answer.

Pure: no I/O, no asyncio, no aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import dcz
from common.representation import OCTETS, Answer, Conditions, Variant, represent

__all__ = [
    "BUNDLE",
    "CHUNK_RAW",
    "CHUNK_ZSTD",
    "MANIFEST_DCZ",
    "MANIFEST_RAW",
    "MANIFEST_ZSTD",
    "MSGPACK",
    "Form",
    "not_modified",
]

MSGPACK = "application/x-msgpack"


@dataclass(frozen=True, slots=True, eq=False)
class Form:
    """How a body is labelled: its Content-Type, Content-Encoding and Vary.  The forms are
    the constants below, compared (and hashed, as keys of prebuilt heads) by identity."""

    content_type: str = OCTETS
    content_encoding: str | None = None
    vary: str | None = None

    def of(self, etag: str, size: int) -> Variant:
        return Variant(etag, size, self.content_type, self.content_encoding, self.vary)


CHUNK_ZSTD = Form(OCTETS, "zstd", "Accept-Encoding")
CHUNK_RAW = Form(OCTETS, None, "Accept-Encoding")  # decoded for a client without zstd
MANIFEST_ZSTD = Form(MSGPACK, "zstd", dcz.VARY)
MANIFEST_RAW = Form(MSGPACK, None, dcz.VARY)
MANIFEST_DCZ = Form(MSGPACK, dcz.CONTENT_ENCODING, dcz.VARY)
BUNDLE = Form()

# The Vary of the kinds answered 304 before any lookup (a bundle is looked up first).
_EARLY = {"chunk": CHUNK_ZSTD.vary, "manifest": MANIFEST_ZSTD.vary}


def not_modified(kind: str, etag: str, if_none_match: str | None) -> Answer | None:
    """The id is the content's hash: a client naming it in If-None-Match already has it,
    wherever it is cached (RFC 9110 §13.1.2), so no lookup is needed: the 304, or None."""
    if if_none_match is None or kind not in _EARLY:
        return None
    answer = represent(Variant(etag, 0, vary=_EARLY[kind]), Conditions(if_none_match))
    return answer if answer.status == 304 else None
