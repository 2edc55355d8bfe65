"""Canonical msgpack: the byte form of every signed body.

Canonical here means: maps with their keys sorted (by their own packed bytes), the
smallest encoding of every integer (msgpack-python's default), ``str`` as msgpack str and
``bytes`` as msgpack bin.  Two encoders that follow these rules produce the same bytes
for the same value, so a signature over them is reproducible.
"""

from __future__ import annotations

from typing import Any

import msgpack

from common.errors import BadRequest

__all__ = ["pack", "unpack"]

# Bounds for anything we unpack from the network: a manifest of 20,000 files is ~1 MiB.
MAX_DOC = 64 << 20


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        items = [(msgpack.packb(k, use_bin_type=True), k, _canon(v)) for k, v in value.items()]
        items.sort(key=lambda t: t[0])
        return {k: v for _, k, v in items}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def pack(value: Any) -> bytes:
    return msgpack.packb(_canon(value), use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes, *, what: str = "document") -> Any:
    """Unpack untrusted msgpack with bounded sizes; BadRequest on anything malformed."""
    if len(data) > MAX_DOC:
        raise BadRequest(f"{what} is larger than {MAX_DOC} bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=1 << 20,
            max_bin_len=MAX_DOC,
            max_array_len=1 << 20,
            max_map_len=1 << 16,
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise BadRequest(f"malformed {what}: {exc}") from exc
