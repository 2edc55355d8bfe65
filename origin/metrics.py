"""The origin's Prometheus metrics (DESIGN.md names), on an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from origin.history import KINDS

__all__ = ["OriginMetrics"]

# Publishing and enriching one version: from a small app on a fast disk to a large one.
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


@dataclass
class OriginMetrics:
    registry: CollectorRegistry
    chunk_requests: Counter  # chunks asked for: each single GET/HEAD and each id of a batch
    published_bytes: Counter  # raw bytes of every version published (new content only)
    publish_seconds: Histogram  # wall time of one publish, upload excluded
    requests: Counter  # HTTP requests by route and status code
    enrich_pending: Gauge  # versions waiting for their bundles and deltas
    enrich_seconds: Histogram  # wall time of enriching one version (bundles and deltas)
    ref_earliest_expiry: Gauge  # soonest `expires` of any live ref, unix seconds (+Inf: none)
    channel_moves: Counter  # channel moves by kind (origin/history.py KINDS); not re-signings
    change_waiters: Gauge  # long-polls of GET /v1/changes waiting now
    unenriched_moves: Counter  # publish moves made with the plain manifest: enrichment failed
    tls_handshakes: Counter  # TLS handshakes by outcome and resumption (with --tls-cert)
    storage_ops: Counter  # storage operations by driver, operation and outcome (origin/storage)
    storage_seconds: Histogram  # their latency by driver and operation
    gc_runs: Counter  # background gc rounds (--gc-every) by outcome: ok, busy, error
    gc_deleted_bytes: Counter  # bytes those rounds deleted

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
                buckets=SECONDS_BUCKETS,
                registry=r,
            ),
            requests=Counter("minicdn_origin_requests", "HTTP requests", ["route", "code"], registry=r),
            enrich_pending=Gauge(
                "minicdn_origin_enrich_pending", "Versions waiting for bundles and deltas", registry=r
            ),
            enrich_seconds=Histogram(
                "minicdn_origin_enrich_seconds",
                "Time to make one version's bundles and deltas",
                buckets=SECONDS_BUCKETS,
                registry=r,
            ),
            ref_earliest_expiry=Gauge(
                "minicdn_origin_ref_earliest_expiry_timestamp_seconds",
                "Soonest expiry of any live channel ref (unix seconds; +Inf when there is none)",
                registry=r,
            ),
            channel_moves=_by_kind(
                Counter("minicdn_origin_channel_moves", "Channel moves, by kind", ["kind"], registry=r)
            ),
            change_waiters=Gauge(
                "minicdn_origin_change_waiters", "Long-polls of the change feed waiting now", registry=r
            ),
            unenriched_moves=Counter(
                "minicdn_origin_unenriched_moves",
                "Publish moves made with the plain manifest because enrichment failed",
                registry=r,
            ),
            tls_handshakes=_every_outcome(
                Counter(
                    "minicdn_origin_tls_handshakes",
                    "TLS handshakes by outcome and resumption",
                    ["outcome", "resumed"],
                    registry=r,
                )
            ),
            storage_ops=Counter(
                "minicdn_origin_storage_operations",
                "Storage operations, by driver, operation and outcome (ok, absent, exists, conflict, error)",
                ["driver", "op", "outcome"],
                registry=r,
            ),
            storage_seconds=Histogram(
                "minicdn_origin_storage_seconds",
                "Latency of storage operations, by driver and operation",
                ["driver", "op"],
                buckets=STORAGE_BUCKETS,
                registry=r,
            ),
            gc_runs=_every_label(
                Counter(
                    "minicdn_origin_gc_runs", "Background gc rounds, by outcome", ["outcome"], registry=r
                ),
                ("ok", "busy", "error"),
            ),
            gc_deleted_bytes=Counter(
                "minicdn_origin_gc_deleted_bytes", "Bytes deleted by background gc rounds", registry=r
            ),
        )

    def storage_op(self, driver: str, op: str, outcome: str, seconds: float) -> None:
        """origin.storage's Observe."""
        self.storage_ops.labels(driver, op, outcome).inc()
        self.storage_seconds.labels(driver, op).observe(seconds)

    def tls_handshake(self, ok: bool, resumed: bool) -> None:
        """common.tls's OnHandshake."""
        self.tls_handshakes.labels("ok" if ok else "failed", "true" if resumed else "false").inc()


def _every_outcome(counter: Counter) -> Counter:
    for outcome in ("ok", "failed"):
        for resumed in ("true", "false"):
            counter.labels(outcome, resumed)
    return counter


def _by_kind(counter: Counter) -> Counter:
    for kind in KINDS:  # every kind shows from the start, at zero
        counter.labels(kind)
    return counter


def _every_label(counter: Counter, values: tuple[str, ...]) -> Counter:
    for value in values:
        counter.labels(value)
    return counter
