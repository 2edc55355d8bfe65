"""Counting the callers of a load (edge.fill) once it is known what each one was.

A caller that missed memory is a disk hit, a negative hit or a miss; which, only the flight
it joined finds out, by looking in the tiers and among the ids known absent.  Callers that
arrive while a flight is still looking are counted by that flight when it has decided
(``counted``), all alike: N concurrent requests for a disk-resident key are N disk hits
for one disk read.  A caller that arrives once the flight has gone past its lookups to fill
(or joins a fill a batch claimed) is a miss that joined another's fill, and is counted as
it joins, not once it is answered (``arrive``): a fill may take seconds, and the metrics
should show the waiters meanwhile.

The counts are those of docs/design.md: ``minicdn_edge_hits_total{tier}``,
``minicdn_edge_negative_hits_total``, ``minicdn_edge_misses_total`` and
``minicdn_edge_coalesced_total`` (a miss that joined a fill; the caller that started it is
not one).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal, TypeVar

from edge.metrics import EdgeMetrics

__all__ = ["Found", "Tally"]

T = TypeVar("T")

# What a flight's lookups found: the entry in a tier, an id known absent, or nothing (a miss).
Found = Literal["memory", "disk", "absent", "miss"]


class Tally:
    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics
        self._looking: dict[str, int] = {}  # key → callers of its flight not counted yet

    def arrive(self, key: str, filling: bool) -> None:
        """A caller of ``key`` that missed memory, about to join or start its flight
        (``filling``: a flight of ``key`` is under way)."""
        if key in self._looking:
            self._looking[key] += 1
        elif filling:  # past its lookups: a miss joining a fill
            self.metrics.misses.inc()
            self.metrics.coalesced.inc()
        else:
            self._looking[key] = 1

    async def counted(self, key: str, look: Awaitable[tuple[T, Found]]) -> tuple[T, Found]:
        """The result of a flight's lookups, with every caller waiting on them counted."""
        try:
            value, found = await look
        except BaseException:
            self._looking.pop(key, None)  # no answer, nothing to count (as before a fill)
            raise
        callers = self._looking.pop(key, 0)  # 0: the other fill of this key counted them
        if not callers:
            return value, found
        m = self.metrics
        if found == "miss":
            m.misses.inc(callers)
            if callers > 1:
                m.coalesced.inc(callers - 1)
        elif found == "absent":
            m.negative_hits.inc(callers)
        else:
            m.hits.labels(found).inc(callers)
        return value, found
