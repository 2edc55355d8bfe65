"""What every data-plane connection of one process shares (``Plane``): the node, the
fallback (aiohttp's ``web.Server``: called, it makes a ``RequestHandler``), the limits,
the answers, the stats, the sweeper that runs every timer on a coarse clock, draining.

Timeouts, checked by the one sweeper (no timer per request): a head not complete
``header_timeout`` after its first byte (slowloris) → 408 and close; a request body slower
than ``body`` (common.http.BodyPace) → 408 and close (aborted if aiohttp has begun its
answer); a connection idle ``keepalive_timeout`` → closed; a client that reads nothing for
``send_timeout`` while responses wait → aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.http import BodyPace
from edge.encodings import Encodings
from edge.loops import Bound
from edge.plane.answers import Answers, Reply
from edge.plane.clock import CLOCK
from edge.plane.connection import Connection
from edge.plane.head import F_USER_AGENT, Request
from edge.service import Edge
from edge.valid import positive

__all__ = ["Limits", "Plane"]

log = logging.getLogger("minicdn.edge.dataplane")


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    body: BodyPace = field(default_factory=BodyPace)

    def __post_init__(self) -> None:
        positive(
            {
                "--header-timeout": self.header_timeout,
                "--keepalive-timeout": self.keepalive_timeout,
                "--send-timeout": self.send_timeout,
            }
        )


class Plane(Bound):
    """What every connection of one process shares: the node, the fallback (aiohttp's
    ``web.Server``: called, it makes a ``RequestHandler``), limits, stats, the sweeper."""

    def __init__(
        self, node: Edge, encodings: Encodings, fallback: Callable[[], asyncio.Protocol], limits: Limits
    ) -> None:
        self.node = node
        self.fallback = fallback
        self.limits = limits
        self.stats = node.metrics.stats
        self.answers = Answers(node, encodings, self.stats)
        self.connections: set[Connection] = set()
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> Connection:
        return Connection(self)

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        limits = self.limits
        tick = max(
            0.05, min(1.0, limits.header_timeout / 4, limits.keepalive_timeout / 4, limits.body.timeout / 4)
        )
        while True:
            await asyncio.sleep(tick)
            CLOCK.tick()
            for conn in list(self.connections):
                conn.check(CLOCK.now)
                # (check is guarded: one connection's bug cannot stop every timer.)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, the others once their responses have left; abort
        what is left after ``timeout``."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def log_access(self, conn: Connection, req: Request | None, reply: Reply, seconds: float) -> None:
        access_log = self.node.access_log
        if access_log is None:
            return
        if req is None:
            access_log.request(conn.remote, "-", "-", reply.status, reply.sent, seconds, "")
            return
        ua = req.field(F_USER_AGENT) or ""
        access_log.request(
            conn.remote, req.method.decode(), req.path.decode(), reply.status, reply.sent, seconds, ua
        )
