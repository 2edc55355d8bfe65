"""The edge's Prometheus metrics: DESIGN.md's names, on an injected registry.

Every label comes from a small fixed set (routes, status codes, tiers, kinds, reasons);
never an id or an app.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge.plane.stats import Labelled, Stats

__all__ = ["FALLBACKS", "NOTICES", "PEER_STATES", "TIERS", "TLS_HANDSHAKES", "UPSTREAM_ERRORS", "EdgeMetrics"]

TIERS = ("memory", "disk")
UPSTREAM_ERRORS = ("connect", "timeout", "status", "redirect", "integrity", "loop")
PEER_STATES = ("up", "down")
# Why a fill went to the upstreams although another fill of the same object may be under
# way somewhere in the cluster (each may cost the origin a second fetch; docs/edge.md):
# coalesce_timeout: this node's waiters gave up on its first fill and started a second;
# peer_timeout / peer_error: the owner peer took longer than --peer-timeout / failed;
# owner_down: the owner is a member out of this node's ring (dead, or thought so).
FALLBACKS = ("coalesce_timeout", "peer_timeout", "peer_error", "owner_down")
# What a change notice of the upstream's feed led to (edge.changes): a revalidation, one
# folded into a revalidation under way, nothing (its serial is below the held ref's: a
# replay), a relay only (the ref is not held here), nothing (not a valid app or channel).
NOTICES = ("revalidated", "coalesced", "old", "not_held", "invalid")
# Seconds from a notice's arrival to the new ref held, ready to serve (one hop).
# A failed handshake resumed nothing.
TLS_HANDSHAKES = (("ok", "false"), ("ok", "true"), ("failed", "false"))
PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry
    # HTTP requests answered (by route name and status code), body bytes sent to clients
    # (HEAD and 304 send none), the wall time of one request (routing to the last byte), and
    # hits: one collector of plain integers, counted by both serving paths (edge.plane.stats).
    stats: Stats
    hits: Labelled  # objects served from a tier without asking anyone (each id of a batch counts)
    misses: Counter  # objects that were in no tier and had to be filled
    upstream_requests: Counter  # requests made to fill a miss, by kind: peer or upstream
    coalesced: Counter  # callers that joined a fill already in flight instead of starting one
    cache_bytes: Gauge  # bytes held now, by tier
    cache_limit: Gauge  # the configured limit, by tier
    evicted_bytes: Counter  # bytes evicted, by tier
    upstream_errors: Counter  # failed upstream attempts: connect, timeout, status, redirect, integrity, loop
    peer_errors: Counter  # failed requests to owner peers, by the same reasons
    ring_size: Gauge  # members of this node's ring now, itself included (1 alone)
    peers: Gauge  # known peers (itself excluded) by health: up (in the ring) or down
    disk_writes_shed: Counter  # objects served but not stored: the disk writer was full
    disk_full: Counter  # disk admissions refused because the disk was full (ENOSPC)
    corrupt: Counter  # cache files that failed verification and were dropped
    stale: Counter  # refs served stale because every upstream failed
    negative_hits: Counter  # objects answered "no such object" from the negative cache
    fallbacks: Counter  # fills that may duplicate another in the cluster, by FALLBACKS reason
    change_stream_connected: Gauge  # 1 while the upstream's change feed answers (per worker)
    change_notices: Counter  # change notices received, by what they led to (NOTICES)
    ref_propagation: Histogram  # a notice's arrival to the new ref held here, seconds
    # TLS handshakes on the listener (--tls-cert), by outcome (ok, failed: refused, broken
    # off or not done within --header-timeout) and whether a session was resumed.
    tls_handshakes: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> EdgeMetrics:
        r = registry or CollectorRegistry()
        stats = Stats(TIERS)  # counters start at zero for every label of their fixed sets
        r.register(stats)
        m = cls(
            registry=r,
            stats=stats,
            hits=stats.hits,
            misses=Counter("minicdn_edge_misses", "Cache misses", registry=r),
            upstream_requests=Counter(
                "minicdn_edge_upstream_requests", "Requests to peers and upstreams", ["kind"], registry=r
            ),
            coalesced=Counter("minicdn_edge_coalesced", "Requests that joined a fill in flight", registry=r),
            cache_bytes=Gauge("minicdn_edge_cache_bytes", "Bytes cached", ["tier"], registry=r),
            cache_limit=Gauge("minicdn_edge_cache_limit_bytes", "Cache limit", ["tier"], registry=r),
            evicted_bytes=Counter("minicdn_edge_evicted_bytes", "Bytes evicted", ["tier"], registry=r),
            upstream_errors=Counter(
                "minicdn_edge_upstream_errors", "Failed upstream attempts", ["reason"], registry=r
            ),
            peer_errors=Counter(
                "minicdn_edge_peer_errors", "Failed requests to peers", ["reason"], registry=r
            ),
            ring_size=Gauge(
                "minicdn_edge_ring_size", "Members of this node's ring, itself included", registry=r
            ),
            peers=Gauge("minicdn_edge_peers", "Known peers by health", ["state"], registry=r),
            disk_full=Counter("minicdn_edge_disk_full", "Disk admissions refused: disk full", registry=r),
            disk_writes_shed=Counter(
                "minicdn_edge_disk_writes_shed",
                "Objects served but not stored on disk: the disk writer's queue was full",
                registry=r,
            ),
            corrupt=Counter(
                "minicdn_edge_corrupt", "Cache files dropped for failing verification", registry=r
            ),
            stale=Counter("minicdn_edge_stale", "Refs served stale (stale-if-error)", registry=r),
            negative_hits=Counter(
                "minicdn_edge_negative_hits", "Objects answered not found from the negative cache", registry=r
            ),
            fallbacks=Counter(
                "minicdn_edge_fallbacks",
                "Fills that may repeat another fill of the same object in the cluster",
                ["reason"],
                registry=r,
            ),
            change_stream_connected=Gauge(
                "minicdn_edge_change_stream_connected",
                "1 while the upstream's change feed is in sync (summed over worker processes)",
                registry=r,
            ),
            change_notices=Counter(
                "minicdn_edge_change_notices", "Change notices received, by outcome", ["action"], registry=r
            ),
            ref_propagation=Histogram(
                "minicdn_edge_ref_propagation_seconds",
                "From a change notice's arrival to the changed ref held here, ready to serve",
                buckets=PROPAGATION_BUCKETS,
                registry=r,
            ),
            tls_handshakes=Counter(
                "minicdn_edge_tls_handshakes",
                "TLS handshakes by outcome and resumption",
                ["outcome", "resumed"],
                registry=r,
            ),
        )
        # Counters start at zero for every label of their fixed sets.
        for tier in TIERS:
            m.evicted_bytes.labels(tier)
            m.cache_bytes.labels(tier)
        for kind in ("peer", "upstream"):
            m.upstream_requests.labels(kind)
        for reason in UPSTREAM_ERRORS:
            m.upstream_errors.labels(reason)
            m.peer_errors.labels(reason)
        for reason in FALLBACKS:
            m.fallbacks.labels(reason)
        for action in NOTICES:
            m.change_notices.labels(action)
        for state in PEER_STATES:
            m.peers.labels(state)
        for outcome, resumed in TLS_HANDSHAKES:
            m.tls_handshakes.labels(outcome, resumed)
        m.ring_size.set(1)
        return m

    def tls_handshake(self, ok: bool, resumed: bool) -> None:
        """common.tls's OnHandshake."""
        self.tls_handshakes.labels("ok" if ok else "failed", "true" if resumed else "false").inc()
