"""Where a request body ends, found as its bytes pass (the data plane lends the request
to aiohttp and must know where the next request starts): ``Content-Length`` or chunked
(RFC 9112 §6, §7.1).  Pure: no I/O."""

from __future__ import annotations

from edge.plane.head import CRLF, F_CONTENT_LENGTH, F_TRANSFER_ENCODING, MAX_HEAD

__all__ = ["MAX_CHUNK_LINE", "BadBody", "Body", "Chunked", "Length", "framer"]

MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions


class BadBody(Exception):
    """A request body that breaks its framing (RFC 9112 §7.1)."""


class Length:
    """Where a Content-Length body ends (RFC 9112 §6.2)."""

    __slots__ = ("left", "received")

    def __init__(self, length: int) -> None:
        self.left = length
        self.received = 0

    @property
    def done(self) -> bool:
        return not self.left

    def take(self, data: bytes) -> int:
        """How many bytes at the start of ``data`` are the body's."""
        n = min(self.left, len(data))
        self.left -= n
        self.received += n
        return n


class Chunked:
    """Where a chunked body ends (RFC 9112 §7.1), found as its bytes pass, without keeping
    them: chunk-size lines, chunk data, the last chunk and the trailer section.

    Stricter than llhttp (which aiohttp parses the same bytes with): lines end in CRLF and
    hold no other CR or LF, a chunk size is hex digits alone (64 bits at most), a chunk-size
    line is at most ``MAX_CHUNK_LINE`` bytes and the trailer section ``MAX_HEAD``.  So a
    body this accepts ends exactly where llhttp's parse of it ends, and what llhttp would
    read differently is refused here (BadBody) before aiohttp sees it."""

    __slots__ = ("done", "left", "line", "received", "state", "trailer")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.left = 0  # chunk data bytes still to come
        self.line = b""  # an incomplete line
        self.trailer = 0  # bytes of the trailer section so far
        self.received = 0
        self.done = False

    def take(self, data: bytes) -> int:
        """How many bytes at the start of ``data`` are the body's (BadBody if it breaks)."""
        i, n = 0, len(data)
        while i < n and not self.done:
            if self.state == self.DATA:
                k = min(self.left, n - i)
                i += k
                self.left -= k
                if not self.left:
                    self.state = self.DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                i = n
                if len(self.line) > (MAX_HEAD if self.state == self.TRAILER else MAX_CHUNK_LINE):
                    raise BadBody("a line of a chunked body is too long")
                break
            line, self.line = self.line + data[i : j + 1], b""
            i = j + 1
            self._line(line)
        self.received += i
        return i

    def _line(self, line: bytes) -> None:
        if not line.endswith(CRLF) or b"\r" in line[:-2]:
            raise BadBody("a line of a chunked body must end in CRLF, and only there")
        if self.state == self.SIZE:
            size = line[:-2].partition(b";")[0]
            if not size or size.strip(b"0123456789abcdefABCDEF") or len(size.lstrip(b"0")) > 16:
                raise BadBody("a chunk size must be hexadecimal digits")
            if len(line) > MAX_CHUNK_LINE:
                raise BadBody("a chunk-size line is too long")
            self.left = int(size, 16)
            self.state = self.DATA if self.left else self.TRAILER
        elif self.state == self.DATA_END:
            if line != CRLF:
                raise BadBody("chunk data must end in CRLF")
            self.state = self.SIZE
        elif line == CRLF:
            self.done = True
        elif b":" not in line:
            raise BadBody("a trailer line must be a field")
        else:
            self.trailer += len(line)
            if self.trailer > MAX_HEAD:
                raise BadBody("the trailer section is too large")


Body = Length | Chunked


def framer(low: bytes) -> Body | None:
    """How the body of a request ends, from its lowercased head, validated by llhttp and
    found to have a body: chunked when Transfer-Encoding is there (llhttp refuses one that
    does not end in chunked, or one beside Content-Length: RFC 9112 §6.1, §6.3), else
    Content-Length (digits llhttp has checked, under 2**64; maybe thousands of leading
    zeros, which int() would refuse)."""
    if F_TRANSFER_ENCODING in low:
        return Chunked()
    i = low.find(F_CONTENT_LENGTH)
    if i < 0:
        return None
    i += len(F_CONTENT_LENGTH)
    return Length(int(low[i : low.find(CRLF, i)].strip(b" \t").lstrip(b"0") or b"0"))
