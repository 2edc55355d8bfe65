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

Several origin replicas may share one store (issue 18).  Every write of a ref is a
compare-and-swap from the etag read (``Store.update``): a move computes the new ref from
the one it read, and if another replica moved the channel in between, it reads again and
recomputes — so no move is lost and serials rise strictly.  The in-process lock only
orders this process's own moves.  The history and the pending records are written the
same way.  A pending record is never deleted, only emptied by a swap (a tombstone: RGW
ignores conditional DELETEs), so "apply this pending move" and "an operator's move cancels
it" can be decided by compare-and-swap:

- an explicit move empties the pending record *before* it writes the ref;
- applying a pending move re-reads the pending record inside the ref's swap loop and moves
  only while it is still there, then empties it by a swap from the etag it read;
- applying one is idempotent: a ref already where the move would put it is left alone, so
  two replicas applying one pending move make one move.

Enrichment rewrites a version record and then moves the refs naming the old manifest.  A
move on another replica may read the record just before: so every move reads the record
again after its write and repoints its ref if the manifest changed meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from common import wire
from common.errors import BadRequest, Conflict, NotFound, SignatureError
from common.ids import check_channel, check_version, sha256
from common.manifest import Ref, Rollout, open_ref
from common.signing import SigningKey
from origin import paths
from origin.history import KEEP, Entry, rollback_target
from origin.publish import VersionRecord
from origin.storage import Store

__all__ = ["Channels", "MoveHook", "Pending", "Resigned", "RolloutSpec", "check_percent"]

log = logging.getLogger("minicdn.origin.channels")

MoveHook = Callable[[str, str, int, str], None]  # app, channel, new serial, kind (history.KINDS)


class Resigned(NamedTuple):
    resigned: int  # refs re-signed in this round
    soonest: float  # the soonest ``expires`` of every live ref after it (+inf: none)


DAY = 86400
ROLLBACK_TRIES = 20  # rounds of a move that depends on what the channel is (another replica moves it)
HISTORY_LAG_TRIES = 6  # of those, rounds a rollback waits for a move's history entry (50 ms each)


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
            self._manifest_of(app, version)  # NotFound before anything is written
            self._drop_pending(app, channel)
            made = self._move(app, channel, version, rollout, kind)
            assert made is not None
        return made

    def rollback(self, app: str, channel: str) -> tuple[Ref, Ref]:
        """Move ``channel`` back to the version before (origin/history.py), without rollout;
        returns the refs before and after.  Conflict when the history has no such version."""
        check_channel(channel)
        with self._lock:
            for attempt in range(ROLLBACK_TRIES):
                old = self.current(app, channel)
                if old is None:
                    raise NotFound(f"app {app} has no channel {channel}")
                hist = self.history(app, channel)
                last = hist[-1].serial if hist else None
                if last is not None and last < old.serial and attempt < HISTORY_LAG_TRIES:
                    # A move through another replica writes its history entry just after its
                    # ref: wait a moment for it.  (A re-pointing to an enriched manifest
                    # raises the serial with no entry at all: then go on with what there is.)
                    time.sleep(0.05)
                    continue
                target = rollback_target(hist)
                if target is None:
                    raise Conflict(f"channel {channel} of {app} has no earlier version to roll back to")
                self._drop_pending(app, channel)
                envelope = self._move(app, channel, target, None, "rollback", expect=old.serial)
                if envelope is not None:
                    return old, open_ref(envelope, [self.key.public])
            raise Conflict(f"channel {channel} of {app} keeps moving; try the rollback again")

    def _move(
        self,
        app: str,
        channel: str,
        version: str,
        rollout: RolloutSpec | None,
        kind: str | None,
        *,
        expect: int | None = None,
        still: Callable[[], bool] | None = None,
    ) -> bytes | None:
        """Write the moved ref by compare-and-swap; None when nothing was written: the ref is
        no longer at serial ``expect``, ``still()`` turned false, or (with ``still``: a
        pending move) the ref is already where the move puts it."""
        manifest, heads = self._manifest_of(app, version)
        roll = None
        if rollout is not None:
            rm, rh = self._manifest_of(app, rollout.version)
            roll = Rollout(rollout.version, rm, rollout.percent, heads=rh)
        hows: list[str] = []

        def change(old: Ref | None) -> Ref | None:
            hows.clear()
            if expect is not None and (old is None or old.serial != expect):
                return None
            if still is not None:
                if old is not None and old.version == version and old.rollout == roll:
                    return None  # applied already (another replica): one move, not two
                if not still():
                    return None
            how = kind
            if how is None:
                same = old is not None and old.version == version and old.rollout != roll
                how = "rollout" if same else "set"
            hows.append(how)
            now = int(self.clock())
            serial = (old.serial if old else 0) + 1
            return Ref(app, channel, serial, now, now + self.ttl, version, manifest, roll, heads=heads)

        written = self._update_ref(app, channel, change)
        if written is None:
            return None
        ref, envelope = written
        how = hows[0]
        spec = (rollout.version, rollout.percent) if rollout else None
        self._remember(app, channel, Entry(ref.issued, version, ref.serial, how, spec))
        self.on_move(app, channel, ref.serial, how)
        # Enrichment on another replica may have rewritten the record since it was read.
        if self._manifest_of(app, version)[0] != manifest or (
            roll is not None and self._manifest_of(app, roll.version)[0] != roll.manifest
        ):
            self._repoint_after(app, version, roll.version if roll else None)
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
            if not self._over(app, version):
                self.storage.put(paths.pending_key(app, channel), pending.pack())
                # The replica enriching it may have finished (and applied the pending moves
                # it saw) between the check and the write: then this one is ours to make.
                if not self._over(app, version):
                    return None
                return self._apply(app, channel, pending)
            self._drop_pending(app, channel)
            return self._apply(app, channel, pending, still=False)

    def _over(self, app: str, version: str) -> bool:
        return self.enriched(app, version) or (app, version) in self._settled

    def apply_pending(self, app: str, version: str) -> list[str]:
        """Make every pending move of ``app`` to ``version`` (its enrichment is over: done,
        or failed — then to the plain manifest); returns the channels moved."""
        moved = []
        with self._lock:
            self._settled.add((app, version))
            for channel, pending in self.pending(app).items():
                if pending.version == version and self._apply(app, channel, pending) is not None:
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
        out = {}
        for key in self.storage.list(prefix):
            blob = self.storage.read(key)
            if blob is not None and blob.data:  # empty: a tombstone (moved or cancelled)
                out[key[len(prefix) :]] = Pending.unpack(blob.data)
        return out

    def _apply(self, app: str, channel: str, pending: Pending, *, still: bool = True) -> int | None:
        """Make ``pending``'s move (while its record still holds it, unless ``still`` is
        False: a move made at once), then empty the record; the new serial, or None when
        nothing moved (cancelled, or made already by another replica)."""
        key = paths.pending_key(app, channel)
        packed = pending.pack()

        def holds() -> bool:
            blob = self.storage.read(key)
            return blob is not None and blob.data == packed

        for _ in range(ROLLBACK_TRIES):
            if pending.percent is None:
                check = holds if still else None
                envelope = self._move(app, channel, pending.version, None, "publish", still=check)
            else:
                base = self.current(app, channel)
                main = base.version if base is not None else pending.version
                spec = RolloutSpec(pending.version, pending.percent)
                envelope = self._move(
                    app,
                    channel,
                    main,
                    spec,
                    "publish",
                    expect=base.serial if base is not None else None,
                    still=holds if still else None,
                )
                if envelope is None and (not still or holds()) and self.current(app, channel) != base:
                    continue  # the channel moved under the rollout's base: compute it again
            if still:
                self.storage.update(key, lambda data: b"" if data == packed else None)
            return None if envelope is None else open_ref(envelope, [self.key.public]).serial
        raise Conflict(f"channel {channel} of {app} keeps moving; the publish's move was not made")

    def _drop_pending(self, app: str, channel: str) -> None:
        """Cancel the channel's pending move (an explicit move): empty its record."""
        self.storage.update(paths.pending_key(app, channel), lambda data: b"" if data else None)

    def resign_due(self) -> Resigned:
        """Re-sign every ref with less than half its lifetime left; returns how many, and
        the soonest ``expires`` of all live refs afterwards (+inf when there are none).
        Each re-signing is a swap from the ref read: of replicas doing this at once, one
        writes and the others find the ref fresh."""
        count, soonest = 0, float("inf")
        for app in self.apps():
            for channel in self.channel_names(app):
                try:
                    with self._lock:
                        resigned, ref = self._resign(app, channel)
                except SignatureError as exc:  # e.g. a ref of a format this origin does not read
                    log.error("ref %s/%s cannot be re-signed: %s", app, channel, exc.message)
                    continue
                count += resigned
                if ref is not None:
                    soonest = min(soonest, ref.expires)
        return Resigned(count, soonest)

    def _resign(self, app: str, channel: str) -> tuple[bool, Ref | None]:
        fresh: list[Ref] = []  # the ref left fresh (not due), if so

        def change(ref: Ref | None) -> Ref | None:
            fresh.clear()
            now = int(self.clock())
            if ref is None or ref.expires - now > self.ttl // 2:
                fresh.extend([ref] if ref is not None else [])
                return None
            return dataclasses.replace(ref, issued=now, expires=now + self.ttl)

        written = self._update_ref(app, channel, change)
        if written is not None:
            return True, written[0]
        return False, fresh[0] if fresh else None

    def repoint(self, app: str, version: str, old: set[bytes], new: bytes, new_heads: bytes) -> int:
        """Move every ref of ``app`` that names ``version`` by one of the ``old`` manifests
        (as its target or its rollout) to ``new``, another manifest of the same version
        (the enriched one, whose heads object is ``new_heads``); returns how many refs moved.

        The serial goes up by one: the ref's body changes, and a serial is a statement
        about changes (caches and clients that compare serials see a new ref).  The
        channel's history is not touched: the channel still points at the same version."""
        moved = 0
        for channel in self.channel_names(app):
            with self._lock:
                serial = self._repoint_one(app, channel, version, old, new, new_heads)
            if serial is not None:
                self.on_move(app, channel, serial, "enriched")
                moved += 1
        return moved

    def _repoint_one(
        self, app: str, channel: str, version: str, old: set[bytes], new: bytes, new_heads: bytes
    ) -> int | None:
        def change(ref: Ref | None) -> Ref | None:
            if ref is None:
                return None
            main, heads = ref.manifest, ref.heads
            if ref.version == version and ref.manifest in old:
                main, heads = new, new_heads
            roll = ref.rollout
            if roll is not None and roll.version == version and roll.manifest in old:
                roll = Rollout(roll.version, new, roll.percent, heads=new_heads)
            if main == ref.manifest and roll == ref.rollout:
                return None
            now = int(self.clock())
            return Ref(
                app, channel, ref.serial + 1, now, now + self.ttl, ref.version, main, roll, heads=heads
            )

        written = self._update_ref(app, channel, change)
        return None if written is None else written[0].serial

    def _update_ref(
        self, app: str, channel: str, change: Callable[[Ref | None], Ref | None]
    ) -> tuple[Ref, bytes] | None:
        """Replace the channel's ref by ``change(current ref)`` (None: leave it), by
        compare-and-swap (``Store.update``: ``change`` is called again if another replica
        wrote first); the ref written and its envelope, or None."""
        made: list[tuple[Ref, bytes]] = []

        def step(data: bytes | None) -> bytes | None:
            made.clear()
            ref = change(None if data is None else open_ref(data, [self.key.public]))
            if ref is None:
                return None
            made.append((ref, ref.seal(self.key)))
            return made[0][1]

        if self.storage.update(paths.channel_key(app, channel), step) is None:
            return None
        return made[0]

    def _repoint_after(self, app: str, version: str, rolled: str | None) -> None:
        """A move named a manifest its version record no longer names (enrichment rewrote
        the record meanwhile, on another replica): point it at the record's manifest."""
        for name in {version, rolled} - {None}:
            assert name is not None
            rec = self._record(app, name)
            older = set(rec.all_manifests) - {rec.manifest}
            self.repoint(app, name, older, rec.manifest, rec.heads_of(rec.manifest))

    def _record(self, app: str, version: str) -> VersionRecord:
        blob = self.storage.read(paths.version_key(app, version))
        if blob is None:
            raise NotFound(f"app {app} has no version {version}")
        return VersionRecord.unpack(blob.data)

    def enriched(self, app: str, version: str) -> bool:
        return self._record(app, version).enriched

    def _manifest_of(self, app: str, version: str) -> tuple[bytes, bytes]:
        """The manifest the version serves now and its heads object."""
        rec = self._record(app, version)
        return rec.manifest, rec.heads_of(rec.manifest)

    def history(self, app: str, channel: str) -> list[Entry]:
        """The channel's moves, oldest first (at most history.KEEP)."""
        blob = self.storage.read(paths.history_key(app, channel))
        raw = wire.unpack(blob.data, what="history") if blob is not None else []
        return [Entry.unpack(e) for e in raw]

    def _remember(self, app: str, channel: str, entry: Entry) -> None:
        """Append to the channel's history (rollback; delta bases: versions it pointed at),
        in serial order: moves through two replicas may append in either order."""

        def change(data: bytes | None) -> bytes:
            hist = wire.unpack(data, what="history") if data is not None else []
            entries = sorted([*(Entry.unpack(e) for e in hist), entry], key=lambda e: e.serial or 0)
            return wire.pack([e.pack() for e in entries[-KEEP:]])

        self.storage.update(paths.history_key(app, channel), change)

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
