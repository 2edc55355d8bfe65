"""The origin's Prometheus metrics (DESIGN.md names), on an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["OriginMetrics"]


@dataclass
class OriginMetrics:
    registry: CollectorRegistry
    chunk_requests: Counter  # chunks asked for: each single GET/HEAD and each id of a batch
    published_bytes: Counter  # raw bytes of every version published (new content only)
    publish_seconds: Histogram  # wall time of one publish, upload excluded
    requests: Counter  # HTTP requests by route and status code

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> OriginMetrics:
        r = registry or CollectorRegistry()
        return cls(
            registry=r,
            chunk_requests=Counter("minicdn_origin_chunk_requests", "Chunks requested", registry=r),
            published_bytes=Counter(
                "minicdn_origin_published_bytes", "Raw bytes of published versions", registry=r
            ),
            publish_seconds=Histogram(
                "minicdn_origin_publish_seconds",
                "Time to publish one version (after upload)",
                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                registry=r,
            ),
            requests=Counter("minicdn_origin_requests", "HTTP requests", ["route", "code"], registry=r),
        )
