"""``minicdn edge``: flags → EdgeSettings, then serve until SIGTERM/SIGINT and drain.

Draining (Kubernetes' convention): on the first signal /readyz turns 503 at once; after
``--drain-delay`` (time for load balancers to notice) the listener closes, requests in
flight get up to ``--drain-timeout`` to finish, background disk writes are given the
same bound, and the process exits 0.  A second signal exits at once.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import click

from common.cli import DURATION, LISTEN, SIZE, option, server_tls_options
from common.http import BodyPace
from common.malloc import fix_mmap_threshold
from common.tls import from_flags
from edge.cluster import ClusterSettings
from edge.metrics import EdgeMetrics
from edge.plane.plane import Limits
from edge.policy import POLICIES
from edge.refs import RefSettings
from edge.server import ServeOptions, run
from edge.service import Edge, EdgeSettings
from edge.workers import Slot, WorkerRegistry

__all__ = ["edge"]

log = logging.getLogger("minicdn.edge")


@click.command()
@option(
    "--upstream",
    "upstreams",
    multiple=True,
    required=True,
    help="Upstream base URL (origin or shield edge); repeat for failover, tried in order.",
)
@option("--cache-dir", required=True, type=click.Path(file_okay=False), help="Disk tier directory.")
@option("--listen", type=LISTEN, default="127.0.0.1:8081", help="HOST:PORT to serve on.")
@option("--memory-size", type=SIZE, default="256MiB", help="Memory tier bound (bytes of bodies).")
@option("--disk-size", type=SIZE, default="10GiB", help="Disk tier bound (bytes of files).")
@option("--peer", "peers", multiple=True, help="A ring member's URL (repeat; may include this edge's).")
@option("--self", "self_url", help="This edge's URL as its peers name it (default: found by asking them).")
@option("--peers-dns", type=LISTEN, help="NAME:PORT: the ring is every address of NAME (headless Service).")
@option("--peer-timeout", type=DURATION, default="10s", help="Bound on one request to an owner peer.")
@option("--peer-check-interval", type=DURATION, default="2s", help="Active /healthz checks of the peers.")
@option("--peers-dns-interval", type=DURATION, default="10s", help="How often --peers-dns is resolved again.")
@option(
    "--policy", type=click.Choice(sorted(POLICIES)), default="s3fifo", help="Eviction policy of both tiers."
)
@option("--upstream-timeout", type=DURATION, default="10s", help="Bound on one upstream request.")
@option(
    "--coalesce-timeout",
    type=DURATION,
    default="5s",
    help="A request waiting on another's fill longer than this fetches for itself.",
)
@option(
    "--ref-max-age",
    type=DURATION,
    default="30s",
    help="Longest a cached ref is fresh (capped by upstream's).",
)
@option(
    "--stale-if-error", type=DURATION, default="1d", help="Serve a ref this stale when every upstream fails."
)
@option(
    "--negative-ttl",
    type=DURATION,
    default="10s",
    help="How long an id no upstream has is answered 404 without asking again (0: off).",
)
@option("--max-object", type=SIZE, default="64MiB", help="Largest upstream body accepted.")
@option("--disk-full-backoff", type=DURATION, default="5s", help="Pause of disk admissions after ENOSPC.")
@option("--access-log", help="JSON-lines access log file ('-' for standard output).")
@option(
    "--drain-delay", type=DURATION, default="0s", help="After SIGTERM, serve (not ready) this long first."
)
@option(
    "--drain-timeout", type=DURATION, default="10s", help="Bound on finishing in-flight work after SIGTERM."
)
@option("--token", help="Bearer token for /v1/admin/* (prefer MINICDN_TOKEN).")
@option("--workers", type=int, default=1, help="Processes serving --listen (SO_REUSEPORT), one disk tier.")
@option("--header-timeout", type=DURATION, default="10s", help="Bound on receiving a request head.")
@option("--keepalive-timeout", type=DURATION, default="75s", help="Close a connection idle this long.")
@option("--send-timeout", type=DURATION, default="60s", help="Abort a client that reads nothing this long.")
@option("--body-timeout", type=DURATION, default="30s", help=BodyPace.TIMEOUT_HELP)
@option("--body-min-rate", type=SIZE, default="1KiB", help=BodyPace.MIN_RATE_HELP)
@option("--fast-path/--no-fast-path", default=True, help="Object GETs by the data plane, not aiohttp.")
@server_tls_options
@option(
    "--tls-ca",
    type=click.Path(dir_okay=False),
    help="PEM CA certificates to trust for https upstreams and peers.",
)
@option("--metrics-listen", type=LISTEN, help="HOST:PORT: plain HTTP for /metrics, /healthz, /readyz only.")
def edge(
    upstreams: tuple[str, ...],
    cache_dir: str,
    listen: tuple[str, int],
    memory_size: int,
    disk_size: int,
    peers: tuple[str, ...],
    self_url: str | None,
    peers_dns: tuple[str, int] | None,
    peer_timeout: float,
    peer_check_interval: float,
    peers_dns_interval: float,
    policy: str,
    upstream_timeout: float,
    coalesce_timeout: float,
    ref_max_age: float,
    stale_if_error: float,
    negative_ttl: float,
    max_object: int,
    disk_full_backoff: float,
    access_log: str | None,
    drain_delay: float,
    drain_timeout: float,
    token: str | None,
    workers: int,
    header_timeout: float,
    keepalive_timeout: float,
    send_timeout: float,
    body_timeout: float,
    body_min_rate: int,
    fast_path: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_min_version: str,
    tls_ocsp: str | None,
    tls_ticket_rotate: float,
    tls_ca: str | None,
    metrics_listen: tuple[str, int] | None,
) -> None:
    """Serve the read API as a caching edge in front of upstreams."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fix_mmap_threshold()  # before any worker starts (forked workers inherit it): common.malloc
    # Before any worker is forked (common.tls): they share the context and the ticket secret.
    tls = from_flags(tls_cert, tls_key, tls_min_version, tls_ticket_rotate, tls_ocsp)
    scheme = "http" if tls is None else "https"
    settings = EdgeSettings(
        upstreams=[u.rstrip("/") for u in upstreams],
        cache_dir=Path(cache_dir),
        memory_size=memory_size,
        disk_size=disk_size,
        policy=policy,
        upstream_timeout=upstream_timeout,
        coalesce_timeout=coalesce_timeout,
        refs=RefSettings(max_age=ref_max_age, stale_if_error=stale_if_error),
        negative_ttl=negative_ttl,
        max_object=max_object,
        token=token or None,
        access_log=access_log,
        full_backoff=disk_full_backoff,
        drain_timeout=drain_timeout,
        drain_delay=drain_delay,
        cluster=cluster_settings(
            peers, self_url, peers_dns, listen, peer_timeout, peer_check_interval, peers_dns_interval, scheme
        ),
        tls_ca=Path(tls_ca) if tls_ca else None,
    )
    limits = Limits(header_timeout, keepalive_timeout, send_timeout, BodyPace(body_timeout, body_min_rate))
    options = ServeOptions(listen[0], listen[1], workers, fast_path, limits, tls, metrics_listen)

    def make_node(slot: Slot, registry: WorkerRegistry) -> Edge:
        share = replace(settings, memory_size=slot.share(memory_size), disk_size=slot.share(disk_size))
        return Edge(share, EdgeMetrics.create(registry))

    raise SystemExit(run(make_node, options))


def cluster_settings(
    peers: tuple[str, ...],
    self_url: str | None,
    peers_dns: tuple[str, int] | None,
    listen: tuple[str, int],
    peer_timeout: float,
    check_interval: float,
    dns_interval: float,
    scheme: str = "http",
) -> ClusterSettings:
    urls = tuple(u.rstrip("/") for u in peers)
    if self_url is None and f"{scheme}://{listen[0]}:{listen[1]}" in urls:
        self_url = f"{scheme}://{listen[0]}:{listen[1]}"
    return ClusterSettings(  # which checks itself
        urls,
        self_url.rstrip("/") if self_url else None,
        peers_dns,
        scheme,
        peer_timeout,
        check_interval,
        dns_interval,
    )
