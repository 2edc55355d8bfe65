"""A gzip stream read strictly: every member's CRC-32 and length checked (the gzip of a tar.gz)."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from common.errors import BadArchive
from origin.entry import PIECE

__all__ = ["Gunzip"]


class Gunzip:
    """A gzip file's decompressed bytes, in bounded pieces.

    zlib (``wbits=31``) checks each member's trailer, CRC-32 and ISIZE, when it reaches it;
    a stream that ends before its trailer is refused here.  Several members are one stream
    (RFC 1952 §2.2; what ``gzip -d`` does); NUL bytes after the last member are padding,
    ignored like gzip(1) and Python's gzip do; anything else after it is refused, as is a
    next member that is not gzip (zlib's header check)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.consumed = 0  # compressed bytes read, for the ratio check
        self._z = zlib.decompressobj(wbits=31)
        self._input = b""
        self._done = False

    def _fill(self) -> bool:
        if not self._input:
            self._input = self.raw.read(PIECE)
            self.consumed += len(self._input)
        return bool(self._input)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" only once the file has ended where its last member does."""
        while not self._done:
            if self._z.eof:
                self._next_member()
                continue
            more = self._fill()
            out = self._z.decompress(self._input, n)
            self._input = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if out:
                return out
            if not more and not self._z.eof:
                raise BadArchive("corrupt tar.gz: the gzip stream is truncated (its trailer is missing)")
        return b""

    def _next_member(self) -> None:
        if not self._fill():
            self._done = True
        elif self._input[0] == 0:
            while self._input:
                if self._input.strip(b"\0"):
                    raise BadArchive("corrupt tar.gz: data after the gzip stream")
                self._input = b""
                self._fill()
            self._done = True
        else:
            self._z = zlib.decompressobj(wbits=31)
