"""The change feed that origin replicas share through their store (issue 18).

Each replica serves ``GET /v1/changes`` from its own ``ChangeLog`` (common/changes.py), and
an edge may ask any replica (``--upstream`` lists several, failing over in order).  So that a
move made through one replica reaches edges that listen to another — within the same ~2 s
as on one origin — and so that a cursor means the same on every replica, the log itself
lives in the store:

::

    changes/epoch                    16 hex characters: the feed's epoch, made once
    changes/<seq, 20 digits>         {"app", "channel", "serial"}: the seq-th move

- **Appending** (after a move's ref is written, in the thread that made it): create-only
  put of ``changes/<last + 1>``.  Taken (another replica appended first): list what
  follows and try after the last.  A key ``N + 1`` is created only by someone who saw ``N``
  exist, so the log has no holes and key order is the order of appends.
- **Tailing** (one task per replica): list ``changes/`` after the last seq seen, read each
  new change and append it to the local log, whose seq then equals the store's; at once
  when this replica appended (it wakes the tail), else every ``poll`` seconds.  At start a
  replica takes the epoch and the last seq and answers every older cursor with a reset
  (its subscribers revalidate what they hold: nothing is missed).
- **Trimming**: every ``TRIM`` appends, the appender deletes the changes older than the
  last ``STORED`` (a subscriber that far behind gets a reset anyway).

A notice only says that a ref *may* have changed (common/changes.py): a replica that
misses one (the write failed after the ref was moved) leaves edges to their refs' max-age.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import threading

from common.changes import KEEP, Change, ChangeLog
from origin import paths
from origin.storage import Store

__all__ = ["EPOCH_KEY", "SharedFeed"]

log = logging.getLogger("minicdn.origin.feed")

EPOCH_KEY = paths.CHANGES + "epoch"
STORED = 2 * KEEP  # changes kept in the store
TRIM = 256  # appends between two trims
CATCH_UP = 2.0  # seconds an append waits for this replica's feed to show it


def _seq_of(key: str) -> int | None:
    name = key[len(paths.CHANGES) :]
    return int(name) if name.isdigit() and len(name) == 20 else None


class SharedFeed:
    def __init__(self, store: Store, log_: ChangeLog, *, poll: float = 0.5) -> None:
        self.store = store
        self.log = log_
        self.poll = poll
        self._hint = 0  # the highest seq this process knows exists (appenders start after it)
        self._hint_lock = threading.Lock()
        self._known = False  # whether _hint came from the store's listing (not just 0)
        self._wake: asyncio.Event | None = None
        self._tail = 0  # the last seq in self.log
        self._tailed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.appended = 0  # changes this replica wrote

    # -- appending (blocking: a worker thread) -----------------------------------------------

    def append(self, change: Change) -> int:
        """Write ``change`` as the next seq of the shared log; returns its seq."""
        body = json.dumps(change.to_json()).encode()
        with self._hint_lock:
            if not self._known:  # before the tail opened the log (a move made at start):
                # find its end first — an early seq may be free again after trimming, and
                # a change written there would sit below every reader's cursor, unseen
                self._hint, self._known = max(self._hint, self._last_after(0)), True
            seq = self._hint + 1
        while self.store.create(paths.change_key(seq), body) is None:
            seq = max(seq, self._last_after(seq)) + 1
        with self._hint_lock:
            self._hint = max(self._hint, seq)
        self.appended += 1
        if seq % TRIM == 0 and seq > STORED:
            old = range(max(1, seq - STORED - 2 * TRIM), seq - STORED + 1)
            self.store.delete_many(paths.change_key(i) for i in old)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
            # Read your writes: the move's answer leaves once this replica's own feed has it.
            with self._tailed:
                self._tailed.wait_for(lambda: self._tail >= seq, timeout=CATCH_UP)
        return seq

    def _last_after(self, seq: int) -> int:
        last = seq
        for item in self.store.items(paths.CHANGES, after=paths.change_key(seq)):
            found = _seq_of(item.key)
            if found is not None:
                last = max(last, found)
        return last

    # -- tailing (on the serving loop) -------------------------------------------------------

    def _open(self) -> tuple[str, int]:
        """The store's epoch (made if there is none) and its last seq."""
        made = secrets.token_hex(8).encode()
        epoch = made if self.store.create(EPOCH_KEY, made) is not None else self.store.get(EPOCH_KEY)
        return epoch.decode("ascii", "replace")[:16], self._last_after(0)

    async def run(self) -> None:
        """Follow the store's log into ``self.log`` until cancelled."""
        loop = asyncio.get_running_loop()
        self._loop, self._wake = loop, asyncio.Event()
        while True:
            try:
                epoch, last = await loop.run_in_executor(None, self._open)
                break
            except Exception:
                log.exception("opening the shared change feed failed; retrying")
                await asyncio.sleep(min(self.poll * 4, 5.0))
        with self._hint_lock:
            self._hint, self._known = max(self._hint, last), True
        self.log.rebase(epoch, last)
        with self._tailed:
            self._tail = last
            self._tailed.notify_all()
        log.info("change feed: epoch %s from seq %d", epoch, last)
        while True:
            try:
                got = await loop.run_in_executor(None, self._read_after, last)
            except Exception:
                log.exception("reading the shared change feed failed; retrying")
                got = []
            for seq, change in got:
                if seq != last + 1:  # trimmed past us (a long outage): start over
                    log.warning("change feed jumped from %d to %d: subscribers reset", last, seq)
                    self.log.rebase(self.log.epoch, seq - 1)
                last = seq
                if change is not None:
                    self.log.append(change)
                else:
                    self.log.rebase(self.log.epoch, seq)
            if got:
                with self._hint_lock:
                    self._hint = max(self._hint, last)
                with self._tailed:
                    self._tail = last
                    self._tailed.notify_all()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    def _read_after(self, last: int) -> list[tuple[int, Change | None]]:
        """The changes after seq ``last`` (one listing page), each read; an unreadable one
        is None (its seq still counts)."""
        out: list[tuple[int, Change | None]] = []
        page = itertools.islice(self.store.items(paths.CHANGES, after=paths.change_key(last)), 1000)
        for item in page:
            seq = _seq_of(item.key)
            if seq is None:
                continue
            blob = self.store.read(item.key)
            change = None
            if blob is not None:
                try:
                    change = Change.from_json(json.loads(blob.data))
                except Exception:
                    log.warning("change %d in the store is malformed; subscribers reset", seq)
            out.append((seq, change))
        return out
