"""The edge's half of the change feed (common.changes): it follows its upstream's
``/v1/changes`` and keeps the refs it holds current, and it keeps a log of its own for the
edges behind it (a shield relays).

- **Following.** One long-poll at a time (one per worker process), to the first upstream
  that answers, in ``--upstream`` order; the cursor is kept across a cut, so a poll that
  resumes within the upstream's log misses nothing.  The feed starts on first use: when
  this edge first stores a ref, or an edge behind it first polls it.
- **Notices.** A change to a ref held in memory: the ref is revalidated at once through
  the ref path (edge.refs ``revalidate``: a conditional GET to the upstreams, the bytes
  checked as always).  The notice itself is never served: a forged or replayed one costs
  at most that revalidation.  A notice whose serial is below the held ref's is a replay and
  costs nothing; one for a ref being revalidated is folded into one more revalidation, at
  least ``min_interval`` after the last began, so a flood of notices cannot become a flood
  of upstream requests.  A revalidation that brings a serial still below the notice's
  leaves the ref to its max-age (the feed no longer vouches for it).
- **Resets.** A reset (a first poll, a new upstream epoch, a cursor too old) starts a new
  sync: every ref held in memory is revalidated (``sweep`` at once); a ref confirmed by a
  request sent after the reset was read is vouched for (edge.refs ``Coverage``).
- **In sync**, a held ref is fresh without max-age revalidation: the upstream is asked only
  when something changed.  **Out of sync** (no answer within ``wait + grace``, an error, a
  bad answer) refs fall back to max-age and stale-if-error, ``connected`` is 0, and polls
  resume after a backoff (jittered, capped).
- **Relaying.** This edge's own log records a change when a refresh here brought new ref
  bytes (whatever asked for it), and passes on notices for refs it does not hold (an edge
  behind it may).  It takes a new epoch whenever its own sync is lost or starts again, and
  answers 503 while out of sync, so the edges behind it fall back as it does, and
  revalidate everything when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from common import jsonutil
from common.changes import Change, ChangeLog, Changes, Cursor
from common.errors import BadRequest, MinicdnError
from common.http import read_limited
from common.ids import check_app, check_channel
from edge import hops
from edge.metrics import EdgeMetrics
from edge.objects import ref_key
from edge.refs import RefCache, serial_of
from edge.tasks import TaskOwner

__all__ = ["ChangeFeed", "FeedSettings", "OutOfSync"]

log = logging.getLogger("minicdn.edge.changes")


@dataclass(frozen=True)
class FeedSettings:
    wait: float = 25.0  # the long-poll's wait=
    grace: float = 5.0  # a poll unanswered wait + grace seconds after it was sent has failed
    backoff: float = 0.25  # first pause after every upstream failed, doubled each round
    backoff_cap: float = 5.0
    min_interval: float = 0.25  # between two notice-driven revalidations of one ref
    sweep: int = 16  # revalidations at once after a reset
    max_body: int = 1 << 20


class OutOfSync(MinicdnError):
    """This edge's own feed is not in sync: the edges behind it must not trust its log."""

    code = "out_of_sync"


class _PollFailed(Exception):
    pass


SessionOf = Callable[[], aiohttp.ClientSession]


class ChangeFeed:
    def __init__(
        self,
        upstreams: Sequence[str],
        session: SessionOf,
        refs: RefCache,
        metrics: EdgeMetrics,
        node: str,
        settings: FeedSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.session = session
        self.refs = refs
        self.metrics = metrics
        self.node = node
        self.settings = settings or FeedSettings()
        self.clock = clock
        self.log = ChangeLog()
        self.tasks = TaskOwner("change revalidation")
        self._wanted = asyncio.Event()
        self._busy: set[str] = set()  # refs a notice is revalidating
        self._again: dict[str, tuple[int, float]] = {}  # notices that came meanwhile
        self._cursor: Cursor | None = None
        refs.changed = self._relay
        refs.fetched = self.want

    @property
    def connected(self) -> bool:
        return self.refs.coverage.connected

    def want(self) -> None:
        """Start following (idempotent): something here needs the feed."""
        self._wanted.set()

    async def poll(self, after: Cursor | None, wait: float, stopping: Callable[[], bool]) -> Changes:
        """Answer an edge behind this one from this edge's log (OutOfSync while this edge
        itself is out of sync).  Waits in slices of a second so that a draining edge
        answers its long-polls within one."""
        self.want()
        if not self.connected:
            raise OutOfSync("this edge's own change feed is not in sync; retry later")
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            answer = await self.log.wait(after, min(left, 1.0) if not stopping() else 0.0)
            if answer.reset or answer.changes or left <= 1.0 or stopping():
                return answer

    async def run(self) -> None:
        """Follow the upstreams' feed until cancelled (the node's background owner)."""
        try:
            await self._wanted.wait()
            await self._follow()
        finally:
            self._lost()
            await self.tasks.close()

    # -- following ------------------------------------------------------------------------

    async def _follow(self) -> None:
        index, rounds = 0, 0
        while True:
            url = self.upstreams[index]
            try:
                answer = await self._poll(url)
            except _PollFailed as exc:
                if self.connected:
                    log.warning("change feed from %s lost: %s", url, exc)
                self._lost()
                index = (index + 1) % len(self.upstreams)
                if index == 0:
                    rounds += 1
                    await asyncio.sleep(self._backoff(rounds))
                continue
            rounds = 0
            self._take(answer, self.clock())

    def _backoff(self, rounds: int) -> float:
        s = self.settings
        return float(min(s.backoff_cap, s.backoff * 2.0 ** (rounds - 1)) * random.uniform(0.5, 1.0))

    async def _poll(self, base: str) -> Changes:
        s = self.settings
        query = f"?wait={s.wait:g}" + (f"&after={self._cursor}" if self._cursor is not None else "")
        url = f"{base}/v1/changes{query}"
        headers = {"Accept": "application/json", **hops.outgoing(self.node, url=url)}
        timeout = aiohttp.ClientTimeout(total=s.wait + s.grace)
        try:
            # Not redirected: a 3xx is a failed source (edge.upstream says why).
            get = self.session().get(url, headers=headers, timeout=timeout, allow_redirects=False)
            async with get as resp:
                body = await read_limited(resp.content, s.max_body, url)
                if resp.status != 200:
                    raise _PollFailed(f"{url} answered {resp.status}")
            return Changes.from_json(jsonutil.loads(body, what="changes answer"))
        except (aiohttp.ClientError, OSError, TimeoutError, MinicdnError) as exc:
            raise _PollFailed(f"{url}: {type(exc).__name__}: {exc}") from exc

    def _take(self, answer: Changes, arrived: float) -> None:
        coverage = self.refs.coverage
        if answer.reset or coverage.since is None:
            # A new sync: what was held may have changed unannounced.  The edges behind
            # this one start a new sync with it (a new epoch of its log).
            coverage.since = arrived
            self.log.new_epoch()
            self.tasks.spawn(self._sweep(arrived))
            log.info("change feed in sync (reset at %s)", answer.cursor)
        if not coverage.connected:
            coverage.connected = True
            self.metrics.change_stream_connected.set(1)
        self._cursor = answer.cursor
        for change in answer.changes:
            self._notice(change, arrived)

    def _lost(self) -> None:
        coverage = self.refs.coverage
        if coverage.connected:
            coverage.connected = False
            self.metrics.change_stream_connected.set(0)
            self.log.new_epoch()  # wakes the edges behind: they find this edge out of sync

    async def _sweep(self, after: float) -> None:
        gate = asyncio.Semaphore(self.settings.sweep)

        async def one(key: str) -> None:
            async with gate:
                with contextlib.suppress(MinicdnError):
                    await self.refs.revalidate(key, after)

        await asyncio.gather(*(one(k) for k in self.refs.held()))

    # -- notices ----------------------------------------------------------------------------

    def _notice(self, change: Change, arrived: float) -> None:
        counted = self.metrics.change_notices
        try:
            key = ref_key(check_app(change.app), check_channel(change.channel))
        except BadRequest:
            counted.labels("invalid").inc()
            return
        held = self.refs.memory.get(key)
        if held is None:
            counted.labels("not_held").inc()
            self.log.append(change)  # an edge behind this one may hold it
            return
        if change.serial < serial_of(held.body):
            counted.labels("old").inc()
            return
        if key in self._busy:
            counted.labels("coalesced").inc()
            serial = max(change.serial, self._again.get(key, (0, 0.0))[0])
            self._again[key] = (serial, arrived)
            return
        counted.labels("revalidated").inc()
        self._busy.add(key)
        if not self.tasks.spawn(self._revalidate(key, change.serial, arrived)):
            self._busy.discard(key)

    async def _revalidate(self, key: str, serial: int, arrived: float) -> None:
        try:
            while True:
                began = self.clock()
                await self._confirm(key, serial, arrived)
                follow = self._again.pop(key, None)
                if follow is None:
                    return
                serial, arrived = follow
                pause = began + self.settings.min_interval - self.clock()
                if pause > 0:  # a rate limit, not a wait for anything
                    await asyncio.sleep(pause)
        finally:
            self._busy.discard(key)
            self._again.pop(key, None)

    async def _confirm(self, key: str, serial: int, arrived: float) -> None:
        before = self.refs.memory.get(key)
        try:
            served = await self.refs.revalidate(key, arrived)
        except MinicdnError as exc:  # gone upstream (404), or every upstream failed
            log.info("revalidating %s after a change notice: %s", key, exc)
            return
        if served is None or served.state == "stale":
            return
        if before is not None and served.entry.etag != before.etag:
            self.metrics.ref_propagation.observe(max(0.0, self.clock() - arrived))
        if serial_of(served.entry.body) < serial:
            self.refs.distrust(key)

    def _relay(self, app: str, channel: str, serial: int) -> None:
        self.log.append(Change(app, channel, serial))
