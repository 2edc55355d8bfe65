"""Channels: signed refs that point an app's channel at a version, with gradual rollout.

Every move raises the serial by one and is atomic (one lock; the new envelope replaces
the old with the crash-safe write).  Re-signing a live ref before it expires refreshes
``issued``/``expires`` and keeps the serial: the ref's meaning is unchanged, and a client's
rollback check (serial lower than one seen) still holds.

The origin is a single writer per storage (DESIGN.md: one origin, many edges); several
origin processes on one storage would need conditional writes in the storage backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from common import wire
from common.errors import BadRequest, NotFound
from common.ids import check_channel, check_version, sha256
from common.manifest import Ref, Rollout, open_ref
from common.signing import SigningKey
from origin import paths
from origin.storage import Storage

__all__ = ["Channels", "Resigned", "RolloutSpec"]


class Resigned(NamedTuple):
    resigned: int  # refs re-signed in this round
    soonest: float  # the soonest ``expires`` of every live ref after it (+inf: none)


DAY = 86400


@dataclass(frozen=True)
class RolloutSpec:
    version: str
    percent: int

    def __post_init__(self) -> None:
        check_version(self.version)
        if (
            isinstance(self.percent, bool)
            or not isinstance(self.percent, int)
            or not 0 <= self.percent <= 100
        ):
            raise BadRequest("rollout percent must be an integer from 0 to 100")


class Channels:
    def __init__(
        self,
        storage: Storage,
        key: SigningKey,
        *,
        ttl: float = 7 * DAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.key = key
        self.ttl = int(ttl)
        self.clock = clock
        self._lock = threading.Lock()

    def envelope(self, app: str, channel: str) -> bytes:
        key = paths.channel_key(app, channel)
        if self.storage.stat(key) is None:
            raise NotFound(f"app {app} has no channel {channel}")
        return self.storage.get(key)

    def current(self, app: str, channel: str) -> Ref | None:
        try:
            return open_ref(self.envelope(app, channel), [self.key.public])
        except NotFound:
            return None

    def move(self, app: str, channel: str, version: str, rollout: RolloutSpec | None) -> bytes:
        """Point ``channel`` at ``version`` (and optionally roll ``rollout`` out); returns the
        new signed ref."""
        check_channel(channel)
        with self._lock:
            # Read the records inside the lock: enrichment rewrites a record and then moves
            # the refs naming the old manifest under this lock, so no move can slip between.
            manifest = self._manifest_of(app, version)
            roll = None
            if rollout is not None:
                roll = Rollout(rollout.version, self._manifest_of(app, rollout.version), rollout.percent)
            old = self.current(app, channel)
            now = int(self.clock())
            ref = Ref(
                app, channel, (old.serial if old else 0) + 1, now, now + self.ttl, version, manifest, roll
            )
            envelope = ref.seal(self.key)
            self.storage.put(paths.channel_key(app, channel), envelope)
            self._remember(app, channel, now, version, old)
        return envelope

    def resign_due(self) -> Resigned:
        """Re-sign every ref with less than half its lifetime left; returns how many, and
        the soonest ``expires`` of all live refs afterwards (+inf when there are none)."""
        count, soonest = 0, float("inf")
        for app in self.apps():
            for channel in self.channel_names(app):
                with self._lock:
                    ref = self.current(app, channel)
                    if ref is None:
                        continue
                    now = int(self.clock())
                    if ref.expires - now <= self.ttl // 2:
                        ref = Ref(
                            ref.app,
                            ref.channel,
                            ref.serial,
                            now,
                            now + self.ttl,
                            ref.version,
                            ref.manifest,
                            ref.rollout,
                        )
                        self.storage.put(paths.channel_key(app, channel), ref.seal(self.key))
                        count += 1
                    soonest = min(soonest, ref.expires)
        return Resigned(count, soonest)

    def repoint(self, app: str, version: str, old: set[bytes], new: bytes) -> int:
        """Move every ref of ``app`` that names ``version`` by one of the ``old`` manifests
        (as its target or its rollout) to ``new``, another manifest of the same version
        (the enriched one); returns how many refs moved.

        The serial goes up by one: the ref's body changes, and a serial is a statement
        about changes (caches and clients that compare serials see a new ref).  The
        channel's history is not touched: the channel still points at the same version."""
        moved = 0
        for channel in self.channel_names(app):
            with self._lock:
                ref = self.current(app, channel)
                if ref is None:
                    continue
                main = ref.manifest
                if ref.version == version and main in old:
                    main = new
                roll = ref.rollout
                if roll is not None and roll.version == version and roll.manifest in old:
                    roll = Rollout(roll.version, new, roll.percent)
                if main == ref.manifest and roll == ref.rollout:
                    continue
                now = int(self.clock())
                fresh = Ref(app, channel, ref.serial + 1, now, now + self.ttl, ref.version, main, roll)
                self.storage.put(paths.channel_key(app, channel), fresh.seal(self.key))
                moved += 1
        return moved

    def _manifest_of(self, app: str, version: str) -> bytes:
        key = paths.version_key(app, version)
        if self.storage.stat(key) is None:
            raise NotFound(f"app {app} has no version {version}")
        rec = wire.unpack(self.storage.get(key), what="version record")
        mid: bytes = rec["manifest"]
        return mid

    def _remember(self, app: str, channel: str, now: int, version: str, old: Ref | None) -> None:
        """Append to the channel's history (delta bases: versions a channel pointed at)."""
        key = paths.history_key(app, channel)
        hist = wire.unpack(self.storage.get(key), what="history") if self.storage.stat(key) else []
        if old is None or old.version != version:
            hist.append([now, version])
        self.storage.put(key, wire.pack(hist[-1000:]))

    def versions_since(self, app: str, since: float) -> set[str]:
        """Every version a channel of ``app`` has pointed at since ``since`` (unix time):
        the history's moves in that window, the target when the window opened, and what
        each ref names now, rollouts included (delta bases, origin/enrich.py)."""
        out: set[str] = set()
        for channel in self.channel_names(app):
            key = paths.history_key(app, channel)
            hist = wire.unpack(self.storage.get(key), what="history") if self.storage.stat(key) else []
            at_start = None
            for when, version in hist:  # appended in time order
                if when >= since:
                    out.add(version)
                else:
                    at_start = version
            if at_start is not None:
                out.add(at_start)
            ref = self.current(app, channel)
            if ref is not None:
                out.add(ref.version)
                if ref.rollout is not None:
                    out.add(ref.rollout.version)
        return out

    def apps(self) -> list[str]:
        return sorted({k.split("/")[1] for k in self.storage.list(paths.APPS)})

    def channel_names(self, app: str) -> list[str]:
        prefix = paths.channels_prefix(app)
        return [k[len(prefix) :] for k in self.storage.list(prefix)]

    @staticmethod
    def etag(envelope: bytes) -> str:
        return f'"{sha256(envelope).hex()}"'
