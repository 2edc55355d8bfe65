"""Request heads on the data plane: their limits, the few fields the fast path reads, and
what it asks of a head llhttp has taken (version, Host).

Request heads are delimited by the connection (CRLF CRLF) and validated by llhttp
(``httptools``), which is fed exactly the bytes of each head, as they arrive; once a head
has passed it, the fields are found in it by a plain search (a validated head has one
field per CRLF-started line, no obs-fold, no whitespace before the colon).

Limits (RFC 9112 §3, RFC 6585 §5): a request line over ``MAX_LINE`` bytes → 414, a head
over ``MAX_HEAD`` bytes or ``MAX_FIELDS`` fields → 431, a malformed head → 400, a request
line without an HTTP/1.x version (llhttp reads it as HTTP/0.9) → 400, HTTP/2.x → 505, a
missing (HTTP/1.1), repeated or invalid Host → 400 (RFC 9112 §3.2).
"""

from __future__ import annotations

import re
from functools import lru_cache

from common.http import HOST_RULE, NO_VERSION, host_ok
from common.negotiate import accepts_coding
from common.representation import PLAIN, Conditions

__all__ = [
    "MAX_FIELDS",
    "MAX_HEAD",
    "MAX_LINE",
    "Request",
    "accepts_zstd",
    "host_fields_ok",
    "plain_shape",
    "refusal",
]

MAX_LINE = 8190  # request line, as aiohttp's default
MAX_HEAD = 16384  # request line and every field
MAX_FIELDS = 100
CRLF = b"\r\n"
KINDS = {b"chunks": "chunk", b"bundles": "bundle", b"manifests": "manifest"}
HEX64 = re.compile(r"[0-9a-f]{64}")

# Field names as they appear in a lowercased head: a field line starts after a CRLF.
F_ACCEPT_ENCODING = b"\r\naccept-encoding:"
F_IF_NONE_MATCH = b"\r\nif-none-match:"
F_RANGE = b"\r\nrange:"
F_IF_RANGE = b"\r\nif-range:"
F_USER_AGENT = b"\r\nuser-agent:"
F_EXPECT = b"\r\nexpect:"
F_AVAILABLE_DICTIONARY = b"\r\navailable-dictionary:"
F_HOST = b"\r\nhost:"
F_CONTENT_LENGTH = b"\r\ncontent-length:"
F_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
HOP_FIELDS = (b"\r\nvia:", b"\r\nx-minicdn-peer:")


@lru_cache(maxsize=512)
def accepts_zstd(header: str) -> bool:
    """common.http.accepts_coding for zstd, cached per distinct header value."""
    return accepts_coding(header, "zstd")


def plain_shape(shape: bytes) -> bool | None:
    """``shape`` is a validated head from the space after its target: None when the
    inline hot path must not answer it (not HTTP/1.1, a conditional, a range, Expect, a
    dictionary offer, or a Host to refuse), else whether it accepts zstd."""
    low = shape.lower()
    if (
        not low.startswith(b" http/1.1\r\n")
        or b"\r\nif-" in low
        or F_RANGE in low
        or F_EXPECT in low
        or F_AVAILABLE_DICTIONARY in low
        or not host_fields_ok(low, True)
    ):
        return None
    i = low.find(F_ACCEPT_ENCODING)
    if i < 0:
        return False
    i += len(F_ACCEPT_ENCODING)
    return accepts_zstd(shape[i : low.find(b"\r\n", i)].strip(b" \t").decode("latin-1"))


def host_fields_ok(low: bytes, http11: bool) -> bool:
    """RFC 9112 §3.2 on a lowercased validated head (or its shape): one Host field with a
    valid value; none at all only before HTTP/1.1."""
    i = low.find(F_HOST)
    if i < 0:
        return not http11
    i += len(F_HOST)
    j = low.find(CRLF, i)
    return low.find(F_HOST, j) < 0 and host_ok(low[i:j].strip(b" \t").decode("latin-1"))


def refusal(version: str, low: bytes) -> tuple[int, str, str] | None:
    """Why a head llhttp has taken (``version`` as it read it, the head lowercased) is
    still refused: a request line without an HTTP/1.x version (llhttp reads it as
    HTTP/0.9, and takes 2.x; RFC 9110 §15.6.6), or its Host fields (RFC 9112 §3.2)."""
    if version == "1.1" or version == "1.0":
        return None if host_fields_ok(low, version == "1.1") else (400, "bad_request", HOST_RULE)
    if version >= "2":
        return 505, "version_not_supported", f"HTTP/{version[0]}.x is not supported"
    return 400, "bad_request", NO_VERSION


class Request:
    __slots__ = ("close", "head", "http10", "key", "kind", "low", "method", "path", "t0")

    def __init__(
        self, head: bytes, low: bytes, method: bytes, path: bytes, kind: str, close: bool, t0: float
    ) -> None:
        self.head = head
        self.low = low
        self.method = method
        self.path = path
        self.kind = kind
        self.key = path[4:].decode("ascii")  # "chunks/<hex>": the tiers' key
        self.close = close
        self.t0 = t0
        line = head.find(b"\r\n")
        self.http10 = head[line - 3 : line] == b"1.0"  # kept alive only when it asks for it

    def field(self, name: bytes) -> str | None:
        i = self.low.find(name)
        if i < 0:
            return None
        i += len(name)
        return self.head[i : self.head.find(b"\r\n", i)].strip(b" \t").decode("latin-1")

    @property
    def hexid(self) -> str:
        return self.key.partition("/")[2]

    @property
    def etag(self) -> str:
        return f'"{self.hexid}"'

    def conditions(self) -> Conditions:
        """What the head says of the answer it wants (common.representation)."""
        low = self.low
        if b"\r\nif-" not in low and F_RANGE not in low:
            return PLAIN
        return Conditions(self.field(F_IF_NONE_MATCH), self.field(F_RANGE), self.field(F_IF_RANGE))
