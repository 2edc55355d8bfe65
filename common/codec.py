"""The zstd frame codec: one chunk (or bundle) is one zstd frame with its content size.

Whoever decodes a frame bounds the output first (a frame's header states its content
size; a frame that does not, or states more than the caller allows, is refused before a
byte is inflated) and checks the SHA-256 of the result against the id it was asked for.
"""

from __future__ import annotations

import threading

import zstandard

from common.errors import IntegrityError, TooLarge
from common.ids import sha256

__all__ = [
    "DEFAULT_LEVEL",
    "MAX_CHUNK_RAW",
    "compress",
    "decode_chunk",
    "decompress",
    "frame_content_size",
]

DEFAULT_LEVEL = 19
# A chunk is at most FastCDC's max size (64 KiB by default, configurable up to 1 MiB);
# nobody has a reason to accept a chunk frame that inflates past this.
MAX_CHUNK_RAW = 1 << 20

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = _local.__dict__.get("d")
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(raw: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """One zstd frame whose header carries the content size."""
    return _compressor(level).compress(raw)


def frame_content_size(frame: bytes | memoryview) -> int:
    """The content size a frame's header declares; IntegrityError if it is not a frame."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"not a zstd frame: {exc}") from exc
    if size < 0:
        raise IntegrityError("zstd frame does not declare its content size")
    return int(size)


def decompress(frame: bytes | memoryview, max_size: int) -> bytes:
    """Inflate exactly one frame, refusing (TooLarge) one that would exceed ``max_size``."""
    size = frame_content_size(frame)
    if size > max_size:
        raise TooLarge(f"zstd frame declares {size} bytes, more than the {max_size} allowed")
    try:
        out = _decompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt zstd frame: {exc}") from exc
    if len(out) != size:
        raise IntegrityError(f"zstd frame inflated to {len(out)} bytes, header said {size}")
    return out


def decode_chunk(chunk_id: bytes, frame: bytes | memoryview, max_size: int = MAX_CHUNK_RAW) -> bytes:
    """The raw bytes of a chunk frame, checked against the chunk's id (its SHA-256)."""
    try:
        raw = decompress(frame, max_size)
    except TooLarge as exc:
        raise IntegrityError(f"chunk {chunk_id.hex()}: {exc.message}") from exc
    if sha256(raw) != chunk_id:
        raise IntegrityError(f"chunk {chunk_id.hex()}: content does not match its id")
    return raw
