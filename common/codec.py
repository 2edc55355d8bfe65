"""The zstd frame codec: a chunk, a bundle or a delta is one zstd frame with its content size.

Whoever decodes a frame bounds the output first (a frame's header states its content
size; a frame that does not, or states more than the caller allows, is refused before a
byte is inflated) and checks the SHA-256 of the result against the id it was asked for.

A **bundle** is a whole package stream as one frame; a **delta** is the same with an
earlier stream of the package as a raw-content dictionary (what ``zstd --patch-from``
does): the window covers dictionary and stream together, so every byte of the old
stream can be referenced.  The frames are plain RFC 8878 frames with no dictionary id:
``zstd -d -D old`` decodes a delta.
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
    "compress_stream",
    "decode_chunk",
    "decompress",
    "decompress_stream",
    "frame_content_size",
    "inflate",
    "raw_dictionary",
    "window_log_for",
]

DEFAULT_LEVEL = 19
# A chunk is at most FastCDC's max size (64 KiB by default, configurable up to 1 MiB);
# nobody has a reason to accept a chunk frame that inflates past this.
MAX_CHUNK_RAW = 1 << 20
MIN_RAW_DICTIONARY = 8  # RFC 8878 §5: a raw-content dictionary has at least 8 bytes

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


# ---- whole streams: bundles and deltas -------------------------------------------------


def window_log_for(total: int) -> int:
    """The smallest window (as a power of two, within zstd's limits) that holds ``total``
    bytes: dictionary plus content, so a delta can reach back to the first base byte."""
    need = max(1, total - 1).bit_length()
    return max(zstandard.WINDOWLOG_MIN, min(zstandard.WINDOWLOG_MAX, need))


def _stream_params(level: int, total: int, window_log: int) -> zstandard.ZstdCompressionParameters:
    # No long-distance matching: through this binding's raw-dictionary path it changes
    # nothing (measured, docs/decisions.md); the window is what lets a delta reach the
    # whole base, and level 19's match finder covers bases of 12 MiB and more.
    return zstandard.ZstdCompressionParameters.from_level(
        level, source_size=total, window_log=window_log, write_content_size=True
    )


def raw_dictionary(data: bytes) -> zstandard.ZstdCompressionDict:
    if len(data) < MIN_RAW_DICTIONARY:
        raise ValueError(f"a raw-content dictionary needs at least {MIN_RAW_DICTIONARY} bytes")
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def compress_stream(
    raw: bytes | memoryview, level: int = DEFAULT_LEVEL, base: bytes | None = None, max_window_log: int = 31
) -> bytes:
    """One frame of a whole stream (a bundle), or, with ``base``, of the stream against an
    earlier one used as a raw-content dictionary (a delta, zstd's patch-from).  The
    window covers both (up to ``max_window_log``); the frame declares its content size."""
    total = len(raw) + (len(base) if base is not None else 0)
    window_log = min(window_log_for(total), max_window_log)
    comp = zstandard.ZstdCompressor(
        compression_params=_stream_params(level, total, window_log),
        dict_data=raw_dictionary(base) if base is not None else None,
    )
    return comp.compress(raw)


def decompress_stream(frame: bytes | memoryview, size: int, base: bytes | None = None) -> bytes:
    """Inflate a bundle (or, with ``base``, a delta) that must decode to exactly ``size``
    bytes — the stream size the signed manifest states.  A frame that declares any other
    size is refused before a byte is inflated, and inflation is one shot into a buffer of
    that size, so memory is bounded by the manifest (decompression-bomb safety)."""
    declared = frame_content_size(frame)
    if declared != size:
        raise IntegrityError(f"zstd frame declares {declared} bytes, the manifest says {size}")
    total = size + (len(base) if base is not None else 0)
    return inflate(frame, size, dictionary=base, max_window=1 << max(20, window_log_for(total)))


def inflate(
    frame: bytes | memoryview, max_size: int, *, dictionary: bytes | None = None, max_window: int = 1 << 27
) -> bytes:
    """Inflate exactly one frame (optionally made with a raw-content ``dictionary``) that
    declares at most ``max_size`` bytes, in one shot into a buffer of the declared size
    (``max_window`` bounds the decoder where zstd consults it)."""
    size = frame_content_size(frame)
    if size > max_size:
        raise TooLarge(f"zstd frame declares {size} bytes, more than the {max_size} allowed")
    try:
        dctx = zstandard.ZstdDecompressor(
            dict_data=raw_dictionary(dictionary) if dictionary is not None else None,
            max_window_size=max_window,
        )
        out = dctx.decompress(frame, max_output_size=size, allow_extra_data=False)
    except (zstandard.ZstdError, ValueError) as exc:
        raise IntegrityError(f"corrupt zstd frame: {exc}") from exc
    if len(out) != size:
        raise IntegrityError(f"zstd frame inflated to {len(out)} bytes, header said {size}")
    return out
