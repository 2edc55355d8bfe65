"""The change feed behind ``GET /v1/changes`` (DESIGN.md "The change feed"): every channel
move since the origin started, numbered, for edges to long-poll.

A cursor is ``"<epoch>.<seq>"``: ``epoch`` is random per origin start, ``seq`` counts the
moves since then.  The feed keeps the last ``keep`` moves in memory; a cursor it cannot
continue (none, another epoch, too old, or from the future) gets ``reset``: the reader must
revalidate every ref it holds.  Nothing here is a statement of truth about a ref — the
signed ref is; a change only says "look again".

Waiting costs one ``asyncio.Event`` per generation: every move sets the current event and
installs a fresh one, so all waiters wake at once and nobody polls.  Loop-thread only
(``record`` is reached from worker threads through ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import BadRequest

__all__ = ["Answer", "Busy", "Change", "ChangeFeed", "parse_cursor", "parse_wait"]

KEEP = 4096  # moves kept in memory; an older cursor is answered with a reset
MAX_CHANGES = 1024  # moves in one answer
MAX_WAITERS = 10_000  # concurrent long-polls; beyond: 503
DEFAULT_WAIT = 25.0
MAX_WAIT = 55.0  # under the 60 s idle timeouts that proxies commonly apply

_CURSOR = re.compile(r"([0-9a-f]{16})\.(0|[1-9][0-9]{0,17})")
_WAIT = re.compile(r"-?[0-9]{1,6}(\.[0-9]{1,6})?")


class Busy(Exception):
    """Too many waiters: the handler answers 503 with Retry-After."""


@dataclass(frozen=True)
class Change:
    seq: int
    app: str
    channel: str
    serial: int

    def to_json(self) -> dict[str, object]:
        return {"app": self.app, "channel": self.channel, "serial": self.serial}


@dataclass(frozen=True)
class Answer:
    cursor: str
    changes: list[Change] = field(default_factory=list)
    reset: bool = False

    def to_json(self) -> dict[str, object]:
        return {"cursor": self.cursor, "changes": [c.to_json() for c in self.changes], "reset": self.reset}


def parse_cursor(text: str | None) -> tuple[str, int] | None:
    """``None`` for no cursor; (epoch, seq); BadRequest for anything else."""
    if text is None:
        return None
    m = _CURSOR.fullmatch(text)
    if m is None:
        raise BadRequest("after must be a cursor '<16 hex digits>.<seq>' from an earlier answer")
    return m.group(1), int(m.group(2))


def parse_wait(text: str | None) -> float:
    """Seconds to wait, clamped to [0, MAX_WAIT]; BadRequest unless a plain decimal number."""
    if text is None:
        return DEFAULT_WAIT
    if _WAIT.fullmatch(text) is None:
        raise BadRequest("wait must be a number of seconds")
    return min(max(float(text), 0.0), MAX_WAIT)


class ChangeFeed:
    def __init__(
        self,
        *,
        keep: int = KEEP,
        max_changes: int = MAX_CHANGES,
        max_waiters: int = MAX_WAITERS,
        on_waiters: Callable[[int], None] = lambda n: None,
        epoch: str | None = None,
    ) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.seq = 0
        self._kept: deque[Change] = deque(maxlen=keep)
        self._max_changes = max_changes
        self._max_waiters = max_waiters
        self._on_waiters = on_waiters
        self._waiters = 0
        self._moved = asyncio.Event()
        self._closed = False

    @property
    def cursor(self) -> str:
        return f"{self.epoch}.{self.seq}"

    def record(self, app: str, channel: str, serial: int) -> None:
        self.seq += 1
        self._kept.append(Change(self.seq, app, channel, serial))
        woken, self._moved = self._moved, asyncio.Event()
        woken.set()

    def close(self) -> None:
        """Shutting down: wake every waiter now (each answers with what there is) and let
        later requests answer at once."""
        self._closed = True
        self._moved.set()

    def answer(self, after: tuple[str, int] | None) -> Answer | None:
        """The answer that needs no waiting, or None (nothing after ``after`` yet)."""
        if after is None or after[0] != self.epoch or after[1] > self.seq:
            return Answer(self.cursor, reset=True)
        seq = after[1]
        if seq == self.seq:
            return None
        oldest = self._kept[0].seq if self._kept else self.seq + 1
        if seq < oldest - 1:  # moves after ``seq`` have been forgotten
            return Answer(self.cursor, reset=True)
        start = seq - oldest + 1
        picked = [self._kept[i] for i in range(start, min(start + self._max_changes, len(self._kept)))]
        return Answer(f"{self.epoch}.{picked[-1].seq}", picked)

    async def wait(self, after: tuple[str, int] | None, timeout: float) -> Answer:
        """Answer at once if there is anything to say, else when a move happens or after
        ``timeout`` seconds (then with no changes and the same cursor)."""
        now = self.answer(after)
        if now is not None:
            return now
        if timeout > 0 and not self._closed:
            if self._waiters >= self._max_waiters:
                raise Busy
            self._waiters += 1
            self._on_waiters(self._waiters)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), timeout)
            finally:
                self._waiters -= 1
                self._on_waiters(self._waiters)
        return self.answer(after) or Answer(self.cursor)

    @property
    def waiters(self) -> int:
        return self._waiters
