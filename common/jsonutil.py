"""JSON from hostile sources, bounded: size and nesting depth are checked before parsing.

``json.loads`` recurses once per level of nesting, so 100,000 ``[`` raise RecursionError
(a 500 wherever it is not caught) and a deep enough document can exhaust the C stack.
``loads`` refuses a document deeper than ``max_depth`` before the parser sees it, in
linear time and at C speed: strings (which may hold brackets) are blanked by one regular
expression, everything but brackets is deleted, and then innermost ``[]``/``{}`` pairs are
removed once per level; anything left after ``max_depth`` rounds is too deep, and brackets
that stop shrinking do not nest, which is not JSON either.
"""

from __future__ import annotations

import json
import re
from typing import Any

from common.errors import BadRequest

__all__ = ["MAX_DEPTH", "depth_ok", "loads"]

MAX_DEPTH = 32
# A JSON string, escapes included ("unrolled loop" form: linear, no backtracking blow-up).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")  # one pass removes one level, not two


def depth_ok(data: bytes, max_depth: int) -> bool | None:
    """Whether the brackets of ``data`` (outside strings) nest at most ``max_depth`` deep;
    None when they do not nest at all (``[}``: not JSON, whatever its depth)."""
    brackets = _STRING.sub(b'""', data).translate(None, _NOT_BRACKET)
    for _ in range(max_depth):
        if not brackets:
            return True
        shorter = _INNERMOST.sub(b"", brackets)
        if len(shorter) == len(brackets):
            return None
        brackets = shorter
    return not brackets


def loads(
    data: bytes | str,
    *,
    what: str = "body",
    max_bytes: int | None = None,
    max_depth: int = MAX_DEPTH,
    error: type[BadRequest] = BadRequest,
) -> Any:
    """Parse ``data`` as JSON (UTF-8, a BOM allowed), or raise ``error`` naming ``what``:
    larger than ``max_bytes``, nested deeper than ``max_depth``, or not valid JSON."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes")
    nesting = depth_ok(raw, max_depth)
    if nesting is None:
        raise error(f"{what} is not valid JSON: its brackets do not match")
    if not nesting:
        raise error(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers past Python's digit limit.
        raise error(f"{what} is not valid JSON: {exc}") from exc
