"""Negative caching: ids the upstreams said do not exist, remembered for ``ttl`` seconds so
that asking again (a client retrying a batch of 1,024 random ids, a loop of 404s) costs
the origin nothing.

Why this is safe for content-addressed objects, which may be published a moment later:
the origin stores every chunk before the manifest that names it, and every bundle, delta
and manifest before the manifest or ref that names it (origin/publish.py, enrich.py); and
a client learns an id only from a signed manifest or ref.  So an id a client has a reason
to ask for already exists upstream: the upstream never says 404 for it, and no entry is
ever made for it.  An entry can only delay an id someone asked for *before* it was
published — which only a guess or the publisher itself can do — and by at most ``ttl``
(behind a chain of edges, ``ttl`` per edge).  The ttl is short anyway so that an operator
restoring a lost object, or an upstream that answered 404 in error, heals quickly.

Bounded: at most ``max_keys`` entries, the oldest dropped first, because hostile clients
can send endless random ids (each costs the upstream one lookup per ``ttl`` at most while
it is remembered; random ids are never asked twice, so the bound costs nothing real).

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["NegativeCache"]


class NegativeCache:
    def __init__(
        self, ttl: float, max_keys: int = 16384, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()  # key → when it expires, oldest first

    def __len__(self) -> int:
        return len(self._until)

    def add(self, key: str) -> None:
        """Remember that ``key`` does not exist upstream (no-op when ``ttl`` is 0)."""
        if self.ttl <= 0 or self.max_keys <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = self.clock() + self.ttl
        while len(self._until) > self.max_keys:
            self._until.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or (until := self._until.get(key)) is None:
            return False
        if self.clock() < until:
            return True
        del self._until[key]
        return False

    def discard(self, key: str) -> None:
        """Forget ``key`` (it was found after all)."""
        self._until.pop(key, None)
