"""Serving an edge: the listener, the data plane in front of the aiohttp application, the
worker processes, and draining.

``run`` is what ``minicdn edge`` calls once its flags are parsed.  With one worker the
edge serves in this process; with more, ``edge.workers.supervise`` forks them and each
runs ``serve`` on its own SO_REUSEPORT socket of the same port.

Draining (Kubernetes' convention): on the first signal /readyz turns 503 at once; after
``drain_delay`` (time for load balancers to notice) the listener closes; connections of
the data plane finish what they were asked and close, and aiohttp's get the same bound
(``drain_timeout``); background disk writes are given it too, and the process exits 0.
A second signal exits at once.

With ``--tls-cert``/``--tls-key`` the listener speaks TLS (common.tls): the pair is loaded
once, before any worker is forked, so every worker shares one context and its session
ticket ratchet (common.tickets; the supervisor steps its copy on a tick); SIGHUP reloads
the pair (in the supervisor too, so that a worker started again gets it) and a refused
pair leaves the old one serving.  The data plane runs its own TLS transport
(edge.plane.tls); with --no-fast-path aiohttp sits behind the loop's TLS protocol.
``--metrics-listen`` adds a plain-HTTP listener for /metrics, /healthz and /readyz only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from common.errors import ConfigError
from common.http import HeadLimits, error_middleware, json_handlers
from common.tls import ServerTls
from edge import handlers as h
from edge.app import make_app
from edge.handlers import EDGE, ENCODINGS
from edge.plane.head import MAX_FIELDS, MAX_HEAD, MAX_LINE
from edge.plane.lending import Returned
from edge.plane.plane import Limits, Plane
from edge.plane.tls import TlsListener, listening_sockets
from edge.service import Edge
from edge.workers import Slot, WorkerRegistry, supervise

__all__ = ["ServeOptions", "run", "serve"]

log = logging.getLogger("minicdn.edge")

# Builds this process's node for its slot, on the registry its metrics must use.
MakeNode = Callable[[Slot, WorkerRegistry], Edge]

# The data plane's limits on a request head, which aiohttp applies too (the same answers
# with or without --fast-path; a head lent by the data plane is within them already).
HEAD_LIMITS = HeadLimits(MAX_LINE, MAX_HEAD, MAX_FIELDS)

BACKLOG = 1024  # pending connections per listening socket
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL
NOFILE_CEILING = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8081
    workers: int = 1
    fast_path: bool = True  # False: every request through aiohttp (to measure against)
    limits: Limits = field(default_factory=Limits)
    tls: ServerTls | None = None  # --tls-cert, --tls-key: the listener speaks TLS
    metrics_listen: tuple[str, int] | None = None  # a plain listener for /metrics and the probes

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")


def run(make_node: MakeNode, options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; the exit status."""
    raise_nofile()
    if options.workers <= 1:
        return _worker(make_node, options, Slot())
    metrics_dir = Path(tempfile.mkdtemp(prefix="minicdn-edge-metrics-"))
    longest = len(os.fsencode(Slot(options.workers - 1, options.workers, metrics_dir).control_socket()))
    if longest > UNIX_PATH_MAX:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        raise SystemExit(
            f"minicdn edge: $TMPDIR is too long for the workers' sockets ({longest} > {UNIX_PATH_MAX} bytes)"
        )
    try:
        tls = options.tls
        reload = tls.reload if tls is not None else None
        # The supervisor steps its ticket ratchet too (common.tickets): see Tickets.advance.
        tick = (
            (tls.tickets.period, tls.tickets.advance) if tls is not None and tls.tickets.supported else None
        )
        return supervise(
            options.workers,
            lambda slot: _worker(make_node, options, slot),
            metrics_dir,
            on_hup=reload,
            tick=tick,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def raise_nofile(ceiling: int = NOFILE_CEILING) -> int:
    """Raise the soft limit on open files to the hard one (at most ``ceiling``), as nginx's
    worker_rlimit_nofile or Go's runtime do: every connection and every sealed body is a
    descriptor, and a soft limit of 1024 (a shell's default) would cap both.  The soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft
        log.info("open-files limit raised from %d to %d (the hard limit is %s)", soft, target, hard)
        return target
    return soft


def _worker(make_node: MakeNode, options: ServeOptions, slot: Slot) -> int:
    _install_uvloop()
    registry = WorkerRegistry(slot)
    if slot.metrics_dir is not None:
        registry.retire_previous()
    node = make_node(slot, registry)
    if slot.count > 1:
        node.disk.owns = slot.owns
        node.siblings = slot.siblings()
    asyncio.run(serve(node, options, registry))
    return 0


async def serve(node: Edge, options: ServeOptions, registry: WorkerRegistry | None = None) -> None:
    s = node.settings
    handler_args: dict[str, Any] = {
        # Not a log: Returned tells the data plane when aiohttp has answered a lent request.
        "access_log": logging.getLogger("minicdn.edge.aiohttp"),
        "access_log_class": Returned,
        "keepalive_timeout": options.limits.keepalive_timeout,
        **HEAD_LIMITS.parser_args(),
    }
    # With the data plane in front, every head aiohttp parses from a client has passed them.
    app = make_app(node, head_limits=None if options.fast_path else HEAD_LIMITS)
    runner = web.AppRunner(app, shutdown_timeout=s.drain_timeout, **handler_args)
    await runner.setup()
    assert runner.server is not None
    # aiohttp's connection handlers, answering its own errors as JSON: the data plane's
    # fallback, every connection's with --no-fast-path, and the workers' control sockets'.
    aiohttp_server: Callable[[], asyncio.Protocol] = json_handlers(runner.server, HEAD_LIMITS, **handler_args)
    loop = asyncio.get_running_loop()
    plane: Plane | None = None
    factory: Callable[[], asyncio.BaseProtocol]
    if options.fast_path:
        plane = Plane(node, app[ENCODINGS], aiohttp_server, options.limits)
        plane.start()
        factory = plane.connection
    else:
        factory = aiohttp_server
    reuse_port = options.workers > 1 or None
    server: asyncio.AbstractServer | TlsListener
    # The handshake is the first part of the first request head: --header-timeout bounds it.
    handshake_timeout = options.limits.header_timeout
    if options.tls is not None and plane is not None:
        # The data plane's own TLS (edge.plane.tls): OpenSSL on the socket, not memory BIOs.
        socks = listening_sockets(options.host, options.port, bool(reuse_port), BACKLOG)
        server = TlsListener(
            socks, options.tls, plane.connection, handshake_timeout, node.metrics.tls_handshake
        )
    else:
        if options.tls is not None:  # --no-fast-path: aiohttp behind the loop's TLS protocol
            factory = options.tls.accepting(factory, handshake_timeout, node.metrics.tls_handshake)
        server = await loop.create_server(
            factory, options.host, options.port, reuse_port=reuse_port, backlog=BACKLOG
        )
    rotation = None
    if options.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, options.tls.reload)
        rotation = asyncio.ensure_future(options.tls.rotate_tickets())
    # A worker's SIGHUP was blocked since its fork (edge.workers): from now on it reloads.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    metrics = None
    if options.metrics_listen is not None:
        metrics = await _metrics_listener(node, options.metrics_listen, reuse_port)
    snapshots = control = None
    if registry is not None and registry.slot.metrics_dir is not None:
        snapshots = asyncio.ensure_future(registry.snapshots())
        path = registry.slot.control_socket()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a predecessor's, in a slot started again
        control = await loop.create_unix_server(aiohttp_server, str(path))
    log.info(
        "edge listening on %s://%s:%d (pid %d), upstreams %s",
        options.scheme,
        options.host,
        options.port,
        os.getpid(),
        ", ".join(s.upstreams),
    )
    if node.cluster is not None:
        c = s.cluster
        members = ", ".join(c.peers) or (f"every address of {c.dns[0]}:{c.dns[1]}" if c.dns else "")
        log.info("in a ring as %s with %s", node.cluster.self_url or "(to be found)", members)
    stop = asyncio.Event()

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
        server.close()
        if rotation is not None:
            rotation.cancel()
        if control is not None:
            control.close()
        if plane is not None:
            await plane.drain(s.drain_timeout)
            await plane.close()
        # Waits up to drain_timeout for aiohttp's requests in flight, then runs cleanup_ctx
        # (which gives disk writes the same bound).
        await runner.cleanup()
        if metrics is not None:
            await metrics()
        if snapshots is not None:
            snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshots
        if registry is not None:
            registry.write_snapshot()
        log.info("drained; exiting")


async def _metrics_listener(
    node: Edge, listen: tuple[str, int], reuse_port: bool | None
) -> Callable[[], Awaitable[None]]:
    """Plain HTTP for Prometheus and probes beside a TLS listener: /metrics, /healthz and
    /readyz only (not the API, not the admin calls), JSON errors for anything else."""
    app = web.Application(middlewares=[error_middleware])
    app[EDGE] = node
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/readyz", h.readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    factory = json_handlers(runner.server, HEAD_LIMITS, access_log=None)
    server = await asyncio.get_running_loop().create_server(factory, *listen, reuse_port=reuse_port)
    log.info("metrics listening on http://%s:%d", *listen)

    async def close() -> None:
        server.close()
        await runner.cleanup()

    return close


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    uvloop.install()
