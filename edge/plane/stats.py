"""What every request counts: a prometheus_client custom collector over plain integers.

The edge's request families (``minicdn_edge_requests_total{route,code}``,
``minicdn_edge_hits_total{tier}``, ``minicdn_edge_sent_bytes_total``,
``minicdn_edge_request_seconds``) are counted here by the data plane's inline path, its
tasks and the aiohttp handlers alike, on the loop's thread, without a lock or a
prometheus_client call per request; ``collect`` renders them as the metric families
prometheus_client's own Counter and Histogram would (``_created`` samples included).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["BUCKETS", "Count", "Labelled", "Stats"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The 200s of the inline hot path, by URL segment: their (route, code) label values.
HOT_ROUTES = {"chunks": ("chunk", 200), "bundles": ("bundle", 200), "manifests": ("manifest", 200)}


def _created_series() -> bool:
    # prometheus_client's own switch for ``_created`` samples (its documented variable).
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class Count:
    """One counter child: ``inc`` as prometheus_client's, a plain number underneath."""

    __slots__ = ("created", "n")

    def __init__(self) -> None:
        self.n = 0
        self.created = time.time()

    def inc(self, amount: int = 1) -> None:
        self.n += amount


class Labelled:
    """A counter with one label: ``labels(value).inc()`` as prometheus_client's."""

    def __init__(self, values: Iterable[str]) -> None:
        self.children = {v: Count() for v in values}

    def labels(self, value: str) -> Count:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Count()
        return child


class Stats(Collector):
    def __init__(self, tiers: Iterable[str]) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self._requests_created: dict[tuple[str, int], float] = {}
        self.hot = dict.fromkeys(HOT_ROUTES, 0)  # 200s of the inline hot path, by URL segment
        self.hits = Labelled(tiers)
        self.memory_hits = self.hits.labels("memory")
        self.sent = Count()
        self.bounds: list[float] = [float(b) for b in BUCKETS] + [float("inf")]
        self.first_bound = self.bounds[0]
        self._les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.buckets = [0] * len(self.bounds)
        self.seconds = 0.0
        self.created = time.time()

    def record(self, route: str, status: int, sent: int, seconds: float) -> None:
        """One answered request (of any route, by either serving path)."""
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.sent.n += sent
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.seconds += seconds

    # -- collection ------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return [
            Metric("minicdn_edge_requests", "HTTP requests", "counter"),
            Metric("minicdn_edge_hits", "Cache hits", "counter"),
            Metric("minicdn_edge_sent_bytes", "Response body bytes sent", "counter"),
            Metric("minicdn_edge_request_seconds", "Request duration", "histogram"),
        ]

    def collect(self) -> Iterator[Metric]:
        created = _created_series()
        requests, hits, sent, seconds = self.describe()
        for (route, status), n in self._request_counts().items():
            labels = {"route": route, "code": str(status)}
            requests.add_sample("minicdn_edge_requests_total", labels, float(n))
            if created:
                requests.add_sample(
                    "minicdn_edge_requests_created", labels, self._requests_created[(route, status)]
                )
        for tier, child in self.hits.children.items():
            hits.add_sample("minicdn_edge_hits_total", {"tier": tier}, float(child.n))
            if created:
                hits.add_sample("minicdn_edge_hits_created", {"tier": tier}, child.created)
        sent.add_sample("minicdn_edge_sent_bytes_total", {}, float(self.sent.n))
        if created:
            sent.add_sample("minicdn_edge_sent_bytes_created", {}, self.sent.created)
        self._histogram(seconds, created)
        yield from (requests, hits, sent, seconds)

    def _request_counts(self) -> dict[tuple[str, int], int]:
        counts = dict(self.requests)
        for segment, n in self.hot.items():
            if n:
                key = HOT_ROUTES[segment]
                counts[key] = counts.get(key, 0) + n
        now = time.time()
        for key in counts:  # a child appears, as prometheus_client's, when first collected
            self._requests_created.setdefault(key, now)
        return counts

    def _histogram(self, family: Metric, created: bool) -> None:
        name, acc = "minicdn_edge_request_seconds", 0
        for le, n in zip(self._les, self.buckets, strict=True):
            acc += n
            family.add_sample(f"{name}_bucket", {"le": le}, float(acc))
        family.add_sample(f"{name}_count", {}, float(acc))
        family.add_sample(f"{name}_sum", {}, self.seconds)
        if created:
            family.add_sample(f"{name}_created", {}, self.created)
