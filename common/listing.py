"""Paging through the app list (``GET /v1/apps?prefix=&limit=&cursor=``), as the origin
answers it and an edge checks and forwards it.  Pure.

App ids sort as strings, so a page is a slice of the sorted list: the ids that start with
``prefix`` and come after ``cursor`` (the last id of the page before), at most ``limit`` of
them.  The cursor is that last id itself: stable under publishes (a new app lands on the
page where it sorts) and checkable (it must be an app id).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from common.errors import BadRequest
from common.ids import APP_RE

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Page", "page", "parse_page", "query_of"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    prefix: str = ""
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def parse_page(query: Mapping[str, str], counts: Mapping[str, int]) -> Page | None:
    """The page a query asks for, or None for the bare listing (none of the parameters:
    every app, as before paging existed).  ``counts``: how often each key occurs."""
    if not any(k in query for k in ("prefix", "limit", "cursor")):
        return None
    for key in ("prefix", "limit", "cursor"):
        if counts.get(key, 0) > 1:
            raise BadRequest(f"{key} given more than once")
    prefix = query.get("prefix", "")
    if prefix and not APP_RE.fullmatch(prefix):
        raise BadRequest(f"prefix {prefix[:80]!r} is no start of an app id: must match {APP_RE.pattern}")
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
    cursor = query.get("cursor")
    if cursor is not None and not APP_RE.fullmatch(cursor):
        raise BadRequest(f"cursor {cursor[:80]!r} is not one this origin gave: it must be an app id")
    return Page(prefix, int(raw), cursor)


def query_of(want: Page) -> str:
    """The query string that asks for ``want`` (what an edge forwards upstream): only what
    ``parse_page`` accepted, so nothing else a client sent goes on."""
    fields = {"prefix": want.prefix, "limit": str(want.limit)}
    if want.cursor is not None:
        fields["cursor"] = want.cursor
    return urlencode(fields)


def page(names: Sequence[str], want: Page) -> tuple[list[str], str | None]:
    """The ids of ``want`` from the sorted ``names``, and the cursor of the next page (None:
    this is the last one)."""
    start = bisect.bisect_left(names, want.prefix)
    if want.cursor is not None:
        start = max(start, bisect.bisect_right(names, want.cursor))
    out: list[str] = []
    for name in names[start : start + want.limit + 1]:
        if not name.startswith(want.prefix):
            break
        out.append(name)
    more = len(out) > want.limit
    out = out[: want.limit]
    return out, out[-1] if more else None
