"""Dictionary-Compressed Zstandard ("dcz", RFC 9842 §5.2): a response compressed against
a resource the client already holds, here an earlier manifest of the same app.

Pure functions (no aiohttp), for whoever serves or reads manifests::

    client:  Accept-Encoding: dcz, zstd
             Available-Dictionary: :<base64 of SHA-256 of the dictionary>:   (= its manifest id)
    server:  digest = parse_available_dictionary(header)     # 32 bytes, or None
             if digest and accepts_dcz(accept_encoding) and the server holds that dictionary:
                 body = encode(envelope, dictionary)          # Content-Encoding: dcz
             always: Vary: Accept-Encoding, Available-Dictionary
    client:  envelope = decode(body, dictionary, max_size)   # then check the manifest id

A dcz body is a 40-byte header — an 8-byte zstd skippable-frame magic (0x184D2A5E, length
32) and the SHA-256 of the dictionary — followed by one zstd frame made with the
dictionary as raw content (RFC 8878 §5).  The window must stay within the larger of 8 MB
and 1.25 times the dictionary, and at most 128 MB (RFC 9842 §5.2); ``encode`` keeps to it.
``decode`` inflates in one shot into a buffer of the size the frame declares, which it
bounds (a frame that does not declare its size is refused), so memory never depends on
what the sender chose for the window.
"""

from __future__ import annotations

import base64
import binascii

from common import codec
from common.errors import IntegrityError, TooLarge
from common.ids import sha256
from common.negotiate import accepts_coding

__all__ = [
    "AVAILABLE_DICTIONARY",
    "CONTENT_ENCODING",
    "HEADER_SIZE",
    "MAGIC",
    "VARY",
    "accepts_dcz",
    "available_dictionary",
    "decode",
    "dictionary_hash",
    "encode",
    "max_window",
    "parse_available_dictionary",
]

CONTENT_ENCODING = "dcz"
AVAILABLE_DICTIONARY = "Available-Dictionary"
VARY = "Accept-Encoding, Available-Dictionary"  # RFC 9842 §6.2: a cacheable dcz answer varies on both
MAGIC = bytes([0x5E, 0x2A, 0x4D, 0x18, 0x20, 0x00, 0x00, 0x00])
HEADER_SIZE = len(MAGIC) + 32


def available_dictionary(digest: bytes) -> str:
    """The request header value naming a dictionary by its SHA-256 (an RFC 8941 §3.3.5
    byte sequence: colon, base64, colon)."""
    if len(digest) != 32:
        raise ValueError("a dictionary is named by its 32-byte SHA-256")
    return f":{base64.b64encode(digest).decode()}:"


def parse_available_dictionary(value: str | None) -> bytes | None:
    """The 32-byte SHA-256 an ``Available-Dictionary`` header names, or None when the
    header is absent or malformed (a server then simply does not use dcz)."""
    if value is None:
        return None
    value = value.strip()
    if len(value) < 2 or value[0] != ":" or value[-1] != ":":
        return None
    try:
        digest = base64.b64decode(value[1:-1], validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == 32 else None


def accepts_dcz(accept_encoding: str | None) -> bool:
    """``Accept-Encoding`` names dcz with a non-zero q-value.  A wildcard does not count:
    RFC 9842 §6.1 has clients name dictionary encodings explicitly."""
    return accepts_coding(accept_encoding or "", CONTENT_ENCODING, wildcard=False)


def max_window(dictionary_size: int) -> int:
    """The largest window a dcz body may use with a dictionary of this size."""
    return min(128 << 20, max(8 << 20, dictionary_size * 5 // 4))


def dictionary_hash(data: bytes) -> bytes | None:
    """The dictionary SHA-256 a dcz body's header names, or None if it has no dcz header."""
    if len(data) < HEADER_SIZE or data[: len(MAGIC)] != MAGIC:
        return None
    return bytes(data[len(MAGIC) : HEADER_SIZE])


def encode(body: bytes, dictionary: bytes, level: int = codec.DEFAULT_LEVEL) -> bytes:
    """``body`` as a dcz body against ``dictionary`` (at least 8 bytes)."""
    window_log = max_window(len(dictionary)).bit_length() - 1
    frame = codec.compress_stream(body, level, base=dictionary, max_window_log=window_log)
    return MAGIC + sha256(dictionary) + frame


def decode(data: bytes, dictionary: bytes, max_size: int) -> bytes:
    """The body a dcz body encodes; IntegrityError if it is not dcz, names another
    dictionary, is corrupt, or does not declare a size of at most ``max_size``."""
    named = dictionary_hash(data)
    if named is None:
        raise IntegrityError("dcz body does not start with the dcz header")
    if named != sha256(dictionary):
        raise IntegrityError("dcz body was compressed against another dictionary")
    frame = memoryview(data)[HEADER_SIZE:]
    try:
        return codec.inflate(frame, max_size, dictionary=dictionary, max_window=max_window(len(dictionary)))
    except IntegrityError as exc:
        raise IntegrityError(f"dcz body: {exc.message}") from exc
    except TooLarge as exc:
        raise IntegrityError(f"dcz body: {exc.message}") from exc
