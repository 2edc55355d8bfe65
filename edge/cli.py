"""``minicdn edge``: flags → EdgeSettings, then serve until SIGTERM/SIGINT and drain.

Draining (Kubernetes' convention): on the first signal /readyz turns 503 at once; after
``--drain-delay`` (time for load balancers to notice) the listener closes, requests in
flight get up to ``--drain-timeout`` to finish, background disk writes are given the
same bound, and the process exits 0.  A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import click
from aiohttp import web

from common.cli import DURATION, LISTEN, SIZE, option
from common.errors import ConfigError
from edge.app import make_app
from edge.policy import POLICIES
from edge.refs import RefSettings
from edge.service import Edge, EdgeSettings

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
@option("--peer", "peers", multiple=True, help="Peer edge URL (cluster mode; not implemented yet).")
@option("--self", "self_url", help="This edge's own URL among --peer (cluster mode).")
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
def edge(
    upstreams: tuple[str, ...],
    cache_dir: str,
    listen: tuple[str, int],
    memory_size: int,
    disk_size: int,
    peers: tuple[str, ...],
    self_url: str | None,
    policy: str,
    upstream_timeout: float,
    coalesce_timeout: float,
    ref_max_age: float,
    stale_if_error: float,
    max_object: int,
    disk_full_backoff: float,
    access_log: str | None,
    drain_delay: float,
    drain_timeout: float,
    token: str | None,
) -> None:
    """Serve the read API as a caching edge in front of upstreams."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for u in upstreams:
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"upstream: {u!r} is not an http(s) URL")
    if upstream_timeout <= 0:
        raise ConfigError("upstream_timeout: must be positive")
    if peers:
        log.warning("--peer is accepted but clusters are not implemented yet: filling from upstreams only")
    settings = EdgeSettings(
        upstreams=[u.rstrip("/") for u in upstreams],
        cache_dir=Path(cache_dir),
        memory_size=memory_size,
        disk_size=disk_size,
        policy=policy,
        upstream_timeout=upstream_timeout,
        coalesce_timeout=coalesce_timeout,
        refs=RefSettings(max_age=ref_max_age, stale_if_error=stale_if_error),
        max_object=max_object,
        token=token or None,
        access_log=access_log,
        full_backoff=disk_full_backoff,
        drain_timeout=drain_timeout,
        drain_delay=drain_delay,
    )
    _install_uvloop()
    asyncio.run(serve(Edge(settings), *listen))


async def serve(node: Edge, host: str, port: int) -> None:
    s = node.settings
    runner = web.AppRunner(make_app(node), access_log=None, shutdown_timeout=s.drain_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("edge listening on http://%s:%d, upstreams %s", host, port, ", ".join(s.upstreams))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # a second signal: the operator wants out now
        node.draining = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
        log.info("draining: not ready; closing the listener in %.1fs", s.drain_delay)
        await asyncio.sleep(s.drain_delay)
    finally:
        # Closes the listener, waits up to drain_timeout for requests in flight, then runs
        # cleanup_ctx (which gives disk writes the same bound).
        await runner.cleanup()
        log.info("drained; exiting")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    uvloop.install()
