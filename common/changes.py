"""The change feed of channel refs: ``GET /v1/changes?after=<cursor>&wait=<seconds>``.

A server (the origin, or an edge relaying for the edges behind it) keeps a log of the last
``keep`` ref changes, each ``(app, channel, serial)``, numbered by a counter ``seq`` within
an ``epoch`` (16 hex characters made when the log is made).  A cursor ``"<epoch>.<seq>"``
names a point in that log.  The answer to a long-poll is JSON::

    {"cursor": "<epoch>.<seq>", "changes": [{"app", "channel", "serial"}, ...], "reset": false}

- no ``after``, an ``after`` of another epoch, or older than the log keeps: at once,
  ``reset: true``, no changes, the current cursor ("revalidate every ref you hold");
- changes after ``after``: at once, at most ``max_batch`` of them, cursor = the last one's;
- else: when one happens or after ``wait`` seconds (default 25, clamped to [0, 55]),
  whichever comes first (maybe no changes, the same cursor).

A notice says only that a ref *may* have changed: whoever reads it revalidates the ref it
holds from its upstream and trusts only the signed ref (a forged notice costs a
revalidation, never a ref).  Hence nothing here is signed.

The log and the cursors are plain data; only ``ChangeLog.wait`` touches asyncio.  Call
``append`` on the loop's thread (from another thread: ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import BadRequest, MinicdnError

__all__ = [
    "DEFAULT_WAIT",
    "KEEP",
    "MAX_BATCH",
    "MAX_WAIT",
    "Busy",
    "Change",
    "ChangeLog",
    "Changes",
    "Cursor",
    "parse_wait",
]

DEFAULT_WAIT = 25.0
MAX_WAIT = 55.0
KEEP = 4096  # changes a log keeps; a cursor older than these is answered with a reset
MAX_BATCH = 1024  # changes in one answer
MAX_WAITERS = 4096  # long-polls waiting at once; beyond: Busy (503)

_CURSOR = re.compile(r"([0-9a-f]{16})\.(0|[1-9][0-9]{0,17})")
_WAIT = re.compile(r"-?[0-9]{1,6}(\.[0-9]{1,6})?")


class Busy(MinicdnError):
    """Too many long-polls wait already: answer 503 with ``Retry-After``."""

    code = "busy"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Cursor:
    epoch: str
    seq: int

    @classmethod
    def parse(cls, text: str) -> Cursor:
        m = _CURSOR.fullmatch(text)
        if m is None:
            raise BadRequest(f'cursor must be "<16 hex>.<seq>", got {text[:40]!r}')
        return cls(m.group(1), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.epoch}.{self.seq}"


@dataclass(frozen=True, slots=True)
class Change:
    app: str
    channel: str
    serial: int

    def to_json(self) -> dict[str, Any]:
        return {"app": self.app, "channel": self.channel, "serial": self.serial}

    @classmethod
    def from_json(cls, obj: object) -> Change:
        if not isinstance(obj, Mapping):
            raise BadRequest("a change is a JSON object")
        app, channel, serial = obj.get("app"), obj.get("channel"), obj.get("serial")
        if not isinstance(app, str) or not isinstance(channel, str):
            raise BadRequest('a change names "app" and "channel" as strings')
        if isinstance(serial, bool) or not isinstance(serial, int) or serial < 0:
            raise BadRequest('a change\'s "serial" is a non-negative integer')
        return cls(app, channel, serial)


@dataclass(frozen=True, slots=True)
class Changes:
    """One answer of the feed."""

    cursor: Cursor
    changes: tuple[Change, ...] = ()
    reset: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": str(self.cursor),
            "changes": [c.to_json() for c in self.changes],
            "reset": self.reset,
        }

    @classmethod
    def from_json(cls, obj: object) -> Changes:
        """An answer read back (BadRequest when it is not one): what a subscriber does."""
        if not isinstance(obj, Mapping):
            raise BadRequest("a changes answer is a JSON object")
        cursor, changes, reset = obj.get("cursor"), obj.get("changes"), obj.get("reset", False)
        if not isinstance(cursor, str) or not isinstance(changes, list) or not isinstance(reset, bool):
            raise BadRequest('a changes answer has "cursor" (str), "changes" (list), "reset" (bool)')
        return cls(Cursor.parse(cursor), tuple(Change.from_json(c) for c in changes), reset)


def parse_wait(text: str | None) -> float:
    """The ``wait`` query parameter: seconds, default 25, clamped to [0, 55]."""
    if text is None:
        return DEFAULT_WAIT
    if _WAIT.fullmatch(text) is None:  # a plain decimal: no exponents, nan, inf or spaces
        raise BadRequest(f"wait must be a number of seconds, got {text[:40]!r}")
    return min(max(float(text), 0.0), MAX_WAIT)


def parse_after(text: str | None) -> Cursor | None:
    return None if text is None else Cursor.parse(text)


def new_epoch() -> str:
    return secrets.token_hex(8)


class ChangeLog:
    """The last ``keep`` changes of one epoch, and the long-polls waiting for the next."""

    def __init__(
        self,
        keep: int = KEEP,
        max_batch: int = MAX_BATCH,
        max_waiters: int = MAX_WAITERS,
        epoch: str | None = None,
        *,
        shared: bool = False,
    ) -> None:
        # shared: the log is a copy of one kept elsewhere (an origin replica tailing its
        # store): a cursor a little ahead of it in the same epoch comes from a copy that is
        # further along (a reader that failed over), so it waits for this one to catch up
        # rather than being reset (a reset makes the reader revalidate everything it holds).
        self.shared = shared
        self.keep = keep
        self.max_batch = max_batch
        self.max_waiters = max_waiters
        self.epoch = epoch or new_epoch()
        self.seq = 0
        self._log: deque[Change] = deque(maxlen=keep)  # changes seq-len(_log)+1 .. seq
        self._next: asyncio.Event | None = None  # set (and replaced) at each append
        self._waiting = 0
        self._closed = False

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.epoch, self.seq)

    @property
    def waiting(self) -> int:
        return self._waiting

    def append(self, change: Change) -> Cursor:
        self.seq += 1
        self._log.append(change)
        self._wake()
        return self.cursor

    def new_epoch(self) -> Cursor:
        """Forget every change and start a new epoch: every subscriber gets a reset (and
        revalidates all it holds).  A relaying edge does this when its own view may have
        missed changes (its upstream's feed was reset)."""
        self.epoch, self.seq = new_epoch(), 0
        self._log.clear()
        self._wake()
        return self.cursor

    def rebase(self, epoch: str, seq: int) -> Cursor:
        """Forget every change and go on from ``epoch``.``seq`` (an origin replica joining
        the feed its store keeps: its cursors then mean the same on every replica).  A
        subscriber whose cursor is elsewhere gets a reset."""
        self.epoch, self.seq = epoch, seq
        self._log.clear()
        self._wake()
        return self.cursor

    def close(self) -> None:
        """Shutting down: every long-poll answers now with what there is, and later polls
        at once (a server draining does not hold its clients for a whole ``wait``)."""
        self._closed = True
        self._wake()

    def since(self, after: Cursor | None) -> Changes | None:
        """The answer due at once for a poll ``after`` a cursor, or None: nothing new yet."""
        if self._ahead(after):
            return None  # wait for this copy to catch up
        if after is None or after.epoch != self.epoch or after.seq > self.seq:
            return Changes(self.cursor, (), True)
        oldest = self.seq - len(self._log)  # the log holds the changes after this seq
        if after.seq < oldest:
            return Changes(self.cursor, (), True)
        if after.seq == self.seq:
            return None
        start = after.seq - oldest
        picked = tuple(self._log[i] for i in range(start, min(start + self.max_batch, len(self._log))))
        return Changes(Cursor(self.epoch, after.seq + len(picked)), picked)

    async def wait(self, after: Cursor | None, timeout: float) -> Changes:
        """The answer to a long-poll: at once when due, else at the next change or after
        ``timeout`` seconds.  Busy when ``max_waiters`` polls wait already."""
        answer = self.since(after)
        if answer is not None or timeout <= 0 or self._closed:
            return answer or Changes(self._unchanged(after))
        if self._waiting >= self.max_waiters:
            raise Busy(f"{self._waiting} change polls wait already")
        if self._next is None:
            self._next = asyncio.Event()
        event = self._next
        self._waiting += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
        return self.since(after) or Changes(self._unchanged(after))

    def _unchanged(self, after: Cursor | None) -> Cursor:
        """The cursor of an answer with nothing new: the reader's own when it is ahead of a
        shared copy (it keeps its place), else this log's."""
        return after if after is not None and self._ahead(after) else self.cursor

    def _ahead(self, after: Cursor | None) -> bool:
        """A shared copy's reader a little ahead of it (at most a batch): one that failed over
        from a copy further along.  Further ahead than that is a reset, as for any log."""
        return (
            after is not None
            and self.shared
            and after.epoch == self.epoch
            and 0 < after.seq - self.seq <= self.max_batch
        )

    def _wake(self) -> None:
        event, self._next = self._next, None
        if event is not None:
            event.set()
