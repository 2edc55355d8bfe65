"""Content negotiation on header values (pure: no aiohttp), shared by the aiohttp
handlers (common.http), the edge's data plane and dcz (common.dcz)."""

from __future__ import annotations

__all__ = ["accepts_coding"]


def accepts_coding(header: str, coding: str, wildcard: bool = True) -> bool:
    """``Accept-Encoding`` (a header value) names ``coding`` — or, when ``wildcard``,
    ``*`` — with a non-zero q-value (RFC 9110 §12.5.3)."""
    star = False
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for p in params.split(";"):
            key, _, val = p.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name == coding:
            return q > 0
        if name == "*" and wildcard:
            star = q > 0
    return star
