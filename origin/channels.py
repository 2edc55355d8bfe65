"""Channels: signed refs that point an app's channel at a version, with gradual rollout.

Every move raises the serial by one and is atomic (one lock; the new envelope replaces
the old with the crash-safe write).  Re-signing a live ref before it expires refreshes
``issued``/``expires`` and keeps the serial: the ref's meaning is unchanged, and a client's
rollback check (serial lower than one seen) still holds.

Every move (not a re-signing) is appended to the channel's history (origin/history.py) and
reported to ``on_move(app, channel, serial, kind)`` — the change feed and the move metric —
from inside the lock, so reports come in the order the moves were made.

A publish with a channel does not move the channel at once: it leaves a **pending move**
(``apps/{app}/pending/{channel}``, durable) that ``apply_pending`` makes once the version's
enriched manifest exists — or, if enrichment failed, with the plain manifest.  An explicit
move of the channel (set, rollback) cancels its pending move: the operator spoke last.

The origin is a single writer per storage (DESIGN.md: one origin, many edges); several
origin processes on one storage would need conditional writes in the storage backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from common import wire
from common.errors import BadRequest, Conflict, NotFound
from common.ids import check_channel, check_version, sha256
from common.manifest import Ref, Rollout, open_ref
from common.signing import SigningKey
from origin import paths
from origin.history import KEEP, Entry, rollback_target
from origin.storage import Store

__all__ = ["Channels", "MoveHook", "Pending", "Resigned", "RolloutSpec", "check_percent"]

log = logging.getLogger("minicdn.origin.channels")

MoveHook = Callable[[str, str, int, str], None]  # app, channel, new serial, kind (history.KINDS)


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
        check_percent(self.percent)


def check_percent(percent: object) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise BadRequest("rollout percent must be an integer from 0 to 100")
    return percent


@dataclass(frozen=True)
class Pending:
    """A publish's channel move, waiting for the version's enriched manifest.  ``percent``
    set: roll ``version`` out to that share on top of what the channel serves then."""

    version: str
    percent: int | None
    since: int

    def pack(self) -> bytes:
        return wire.pack({"version": self.version, "percent": self.percent, "since": self.since})

    @classmethod
    def unpack(cls, data: bytes) -> Pending:
        d = wire.unpack(data, what="pending move")
        return cls(str(d["version"]), d.get("percent"), int(d.get("since", 0)))

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "percent": self.percent, "since": self.since}


class Channels:
    def __init__(
        self,
        storage: Store,
        key: SigningKey,
        *,
        ttl: float = 7 * DAY,
        clock: Callable[[], float] = time.time,
        on_move: MoveHook | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.ttl = int(ttl)
        self.clock = clock
        self.on_move: MoveHook = on_move or (lambda app, channel, serial, kind: None)
        self._lock = threading.Lock()
        # Versions whose enrichment is over in this process, done or failed (apply_pending):
        # a publish's move to one of them is made at once.  A restart forgets it and retries
        # enrichment, which settles the version again.
        self._settled: set[tuple[str, str]] = set()

    def envelope(self, app: str, channel: str) -> bytes:
        blob = self.storage.read(paths.channel_key(app, channel))
        if blob is None:
            raise NotFound(f"app {app} has no channel {channel}")
        return blob.data

    def current(self, app: str, channel: str) -> Ref | None:
        try:
            return open_ref(self.envelope(app, channel), [self.key.public])
        except NotFound:
            return None

    def move(
        self, app: str, channel: str, version: str, rollout: RolloutSpec | None, kind: str | None = None
    ) -> bytes:
        """Point ``channel`` at ``version`` (and optionally roll ``rollout`` out); returns the
        new signed ref.  ``kind`` defaults to "rollout" when only the rollout changes, else
        "set".  Cancels the channel's pending move."""
        check_channel(channel)
        with self._lock:
            envelope = self._move(app, channel, version, rollout, kind)
            self._drop_pending(app, channel)
        return envelope

    def rollback(self, app: str, channel: str) -> tuple[Ref, Ref]:
        """Move ``channel`` back to the version before (origin/history.py), without rollout;
        returns the refs before and after.  Conflict when the history has no such version."""
        check_channel(channel)
        with self._lock:
            old = self.current(app, channel)
            if old is None:
                raise NotFound(f"app {app} has no channel {channel}")
            target = rollback_target(self.history(app, channel))
            if target is None:
                raise Conflict(f"channel {channel} of {app} has no earlier version to roll back to")
            envelope = self._move(app, channel, target, None, "rollback")
            self._drop_pending(app, channel)
        return old, open_ref(envelope, [self.key.public])

    def _move(
        self, app: str, channel: str, version: str, rollout: RolloutSpec | None, kind: str | None
    ) -> bytes:
        # Under the lock.  The records are read here: enrichment rewrites a record and then
        # moves the refs naming the old manifest under this lock, so no move can slip between.
        manifest = self._manifest_of(app, version)
        roll = None
        if rollout is not None:
            roll = Rollout(rollout.version, self._manifest_of(app, rollout.version), rollout.percent)
        old = self.current(app, channel)
        if kind is None:
            same = old is not None and old.version == version and old.rollout != roll
            kind = "rollout" if same else "set"
        now = int(self.clock())
        ref = Ref(app, channel, (old.serial if old else 0) + 1, now, now + self.ttl, version, manifest, roll)
        envelope = ref.seal(self.key)
        self.storage.put(paths.channel_key(app, channel), envelope)
        spec = (rollout.version, rollout.percent) if rollout else None
        self._remember(app, channel, Entry(now, version, ref.serial, kind, spec))
        self.on_move(app, channel, ref.serial, kind)
        return envelope

    # -- pending moves (publish with a channel) ----------------------------------------------

    def plan(self, app: str, channel: str, version: str, percent: int | None) -> int | None:
        """A publish's move of ``channel`` to ``version``: made now (returns the new serial)
        when the version's enrichment is over (done, or failed in this process), else left
        pending (returns None) for ``apply_pending``.  A rollout needs a channel to roll
        out on: Conflict when it has none."""
        check_channel(channel)
        with self._lock:
            if percent is not None and self.current(app, channel) is None:
                raise Conflict(
                    f"channel {channel} of {app} has no version yet; publish without a rollout first"
                )
            pending = Pending(version, percent, int(self.clock()))
            if not (self.enriched(app, version) or (app, version) in self._settled):
                self.storage.put(paths.pending_key(app, channel), pending.pack())
                return None
            self._drop_pending(app, channel)
            return self._apply(app, channel, pending)

    def apply_pending(self, app: str, version: str) -> list[str]:
        """Make every pending move of ``app`` to ``version`` (its enrichment is over: done,
        or failed — then to the plain manifest); returns the channels moved."""
        moved = []
        with self._lock:
            self._settled.add((app, version))
            for channel, pending in self.pending(app).items():
                if pending.version == version:
                    self._apply(app, channel, pending)
                    self._drop_pending(app, channel)
                    moved.append(channel)
        return moved

    def view(self, app: str) -> tuple[dict[str, Ref], dict[str, Pending]]:
        """Every channel's current ref and every pending move of ``app``, read at one moment:
        under the lock each move holds until its pending record is dropped, so a reader never
        sees a channel moved with its pending move still listed (app_info did, for the
        instant between the two: CI caught it)."""
        with self._lock:
            refs = {name: self.current(app, name) for name in self.channel_names(app)}
            return {name: ref for name, ref in refs.items() if ref is not None}, self.pending(app)

    def pending(self, app: str) -> dict[str, Pending]:
        prefix = paths.pending_prefix(app)
        return {k[len(prefix) :]: Pending.unpack(self.storage.get(k)) for k in self.storage.list(prefix)}

    def _apply(self, app: str, channel: str, pending: Pending) -> int:
        if pending.percent is None:
            envelope = self._move(app, channel, pending.version, None, "publish")
        else:
            base = self.current(app, channel)
            main = base.version if base is not None else pending.version
            spec = RolloutSpec(pending.version, pending.percent)
            envelope = self._move(app, channel, main, spec, "publish")
        return open_ref(envelope, [self.key.public]).serial

    def _drop_pending(self, app: str, channel: str) -> None:
        self.storage.delete(paths.pending_key(app, channel))

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
                self.on_move(app, channel, fresh.serial, "enriched")
                moved += 1
        return moved

    def _record(self, app: str, version: str) -> dict[str, Any]:
        blob = self.storage.read(paths.version_key(app, version))
        if blob is None:
            raise NotFound(f"app {app} has no version {version}")
        rec: dict[str, Any] = wire.unpack(blob.data, what="version record")
        return rec

    def enriched(self, app: str, version: str) -> bool:
        return bool(self._record(app, version).get("enriched", False))

    def _manifest_of(self, app: str, version: str) -> bytes:
        mid: bytes = self._record(app, version)["manifest"]
        return mid

    def history(self, app: str, channel: str) -> list[Entry]:
        """The channel's moves, oldest first (at most history.KEEP)."""
        blob = self.storage.read(paths.history_key(app, channel))
        raw = wire.unpack(blob.data, what="history") if blob is not None else []
        return [Entry.unpack(e) for e in raw]

    def _remember(self, app: str, channel: str, entry: Entry) -> None:
        """Append to the channel's history (rollback; delta bases: versions it pointed at)."""
        hist = [e.pack() for e in self.history(app, channel)] + [entry.pack()]
        self.storage.put(paths.history_key(app, channel), wire.pack(hist[-KEEP:]))

    def versions_since(self, app: str, since: float) -> set[str]:
        """Every version a channel of ``app`` has pointed at since ``since`` (unix time):
        the history's moves in that window, the target when the window opened, and what
        each ref names now, rollouts included (delta bases, origin/enrich.py)."""
        out: set[str] = set()
        for channel in self.channel_names(app):
            at_start = None
            for when, version in ((e.time, e.version) for e in self.history(app, channel)):  # time order
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
        """Every app id, sorted: one level of the tree, not every key under it (10,000 apps
        hold tens of thousands of keys)."""
        return self.storage.names(paths.APPS)

    def channel_names(self, app: str) -> list[str]:
        prefix = paths.channels_prefix(app)
        return [k[len(prefix) :] for k in self.storage.list(prefix)]

    @staticmethod
    def etag(envelope: bytes) -> str:
        return f'"{sha256(envelope).hex()}"'
