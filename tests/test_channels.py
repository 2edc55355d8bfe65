"""Channels: serials, rollouts, history and re-signing before expiry (clock injected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import wire
from common.errors import BadRequest, Conflict, NotFound
from common.ids import sha256
from common.manifest import Ref, open_ref
from common.signing import SigningKey, generate_keypair, seal
from origin import paths
from origin.channels import Channels, Pending, RolloutSpec
from origin.publish import VersionRecord
from origin.storage import FileStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Channels, FileStorage, SigningKey, Clock]:
    storage = FileStorage(tmp_path / "s")
    key = generate_keypair(tmp_path / "k")
    for v in ("1.0.0", "1.1.0"):
        storage.put(paths.version_key("demo", v), VersionRecord(sha256(v.encode()), b"d", 0, heads=(sha256(b"heads " + v.encode()),)).pack())
    clock = Clock()
    return Channels(storage, key, ttl=7 * 86400, clock=clock), storage, key, clock


def test_moves_raise_the_serial_and_keep_history(setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, _storage, key, clock = setup
    r1 = open_ref(ch.move("demo", "release", "1.0.0", None), [key.public])
    clock.now += 10
    r2 = open_ref(ch.move("demo", "release", "1.1.0", RolloutSpec("1.0.0", 50)), [key.public])
    assert (r1.serial, r2.serial) == (1, 2)
    assert r2.manifest == sha256(b"1.1.0") and r2.rollout is not None and r2.rollout.manifest == sha256(b"1.0.0")
    assert r2.expires == int(clock.now) + 7 * 86400
    hist = ch.history("demo", "release")
    assert [(e.version, e.serial, e.kind) for e in hist] == [("1.0.0", 1, "set"), ("1.1.0", 2, "set")]
    assert hist[1].rollout == ("1.0.0", 50) and hist[1].time == int(clock.now)
    with pytest.raises(NotFound):
        ch.move("demo", "release", "9.9.9", None)
    with pytest.raises(BadRequest):
        RolloutSpec("1.0.0", 101)
    assert open_ref(ch.envelope("demo", "release"), [key.public]).serial == 2  # a failed move changes nothing


def test_live_refs_are_resigned_when_half_their_life_is_gone(
        setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, _storage, key, clock = setup
    first = open_ref(ch.move("demo", "release", "1.0.0", None), [key.public])
    clock.now += 3 * 86400  # 4 days left of 7: not yet
    assert ch.resign_due().resigned == 0
    clock.now += 1 * 86400  # 3 days left: re-sign
    assert ch.resign_due().resigned == 1
    fresh = open_ref(ch.envelope("demo", "release"), [key.public])
    assert fresh.serial == first.serial and fresh.version == first.version and fresh.manifest == first.manifest
    assert fresh.expires == int(clock.now) + 7 * 86400 > first.expires
    assert ch.resign_due() == (0, fresh.expires)  # fresh again; the soonest expiry is its


def test_history_written_before_kinds_still_reads_and_rolls_back(
        setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, storage, _key, _clock = setup
    ch.move("demo", "release", "1.1.0", None)
    storage.put(paths.history_key("demo", "release"), wire.pack([[1, "1.0.0"], [2, "1.1.0"]]))
    assert [(e.version, e.kind) for e in ch.history("demo", "release")] == [("1.0.0", None), ("1.1.0", None)]
    old, new = ch.rollback("demo", "release")
    assert (old.version, new.version, new.serial) == ("1.1.0", "1.0.0", 2)


def test_rollback_undoes_moves_one_at_a_time_and_refuses_past_the_first(
        setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, storage, _key, _clock = setup
    storage.put(paths.version_key("demo", "1.2.0"), VersionRecord(sha256(b"1.2.0"), b"d", 0, heads=(sha256(b"heads 1.2.0"),)).pack())
    moves: list[tuple[str, str, int, str]] = []
    ch.on_move = lambda *m: moves.append(m)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        ch.move("demo", "release", v, None)
    ch.move("demo", "release", "1.2.0", RolloutSpec("1.1.0", 5))  # same version: a rollout move
    with pytest.raises(NotFound):
        ch.rollback("demo", "beta")
    assert ch.rollback("demo", "release")[1].version == "1.1.0"
    back = ch.rollback("demo", "release")[1]
    assert back.version == "1.0.0" and back.rollout is None and back.serial == 6
    with pytest.raises(Conflict, match="no earlier version"):
        ch.rollback("demo", "release")
    assert [m[3] for m in moves] == ["set", "set", "set", "rollout", "rollback", "rollback"]
    assert [m[2] for m in moves] == [1, 2, 3, 4, 5, 6]


def test_a_pending_move_waits_for_enrichment_and_an_explicit_move_cancels_it(
        setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, storage, key, _clock = setup
    ch.move("demo", "release", "1.0.0", None)
    assert ch.plan("demo", "release", "1.1.0", None) is None  # not enriched: pending
    assert open_ref(ch.envelope("demo", "release"), [key.public]).version == "1.0.0"
    assert set(ch.pending("demo")) == {"release"}
    assert ch.apply_pending("demo", "1.0.0") == []  # another version's enrichment moves nothing
    assert ch.apply_pending("demo", "1.1.0") == ["release"]
    ref = open_ref(ch.envelope("demo", "release"), [key.public])
    assert (ref.version, ref.serial, ch.history("demo", "release")[-1].kind) == ("1.1.0", 2, "publish")
    assert ch.plan("demo", "release", "1.1.0", 20) == 3  # settled (or enriched): moved at once, as a rollout
    ref = open_ref(ch.envelope("demo", "release"), [key.public])
    assert ref.version == "1.1.0" and ref.rollout is not None and ref.rollout.percent == 20
    ch.plan("demo", "beta", "1.0.0", None)
    ch.move("demo", "beta", "1.1.0", None)  # the operator spoke last
    assert ch.pending("demo") == {} and ch.apply_pending("demo", "1.0.0") == []
    with pytest.raises(Conflict):
        ch.plan("demo", "nightly", "1.0.0", 10)  # a rollout on a channel that serves nothing
    enriched = VersionRecord(sha256(b"2"), b"d", 0, enriched=True, heads=(sha256(b"heads 2"),))
    storage.put(paths.version_key("demo", "2.0.0"), enriched.pack())
    assert ch.plan("demo", "release", "2.0.0", None) == 4


def test_a_view_never_shows_a_channel_moved_with_its_pending_move_still_listed(
    setup: tuple[Channels, FileStorage, SigningKey, Clock],
) -> None:
    """apply_pending writes the ref, then empties the pending record; a reader between the two
    saw both (the origin's app_info did, once, in CI).  ``view`` waits for the lock."""
    import threading

    ch, storage, _key, _clock = setup
    assert ch.plan("demo", "release", "1.1.0", None) is None  # not enriched: pending
    seen: list[tuple[dict[str, Ref], dict[str, Pending]]] = []
    readers: list[threading.Thread] = []
    real_swap = storage.swap

    def swap(key: str, data: bytes, etag: str) -> str | None:  # the pending record's drop
        if key == paths.pending_key("demo", "release") and not readers:
            reader = threading.Thread(target=lambda: seen.append(ch.view("demo")))
            readers.append(reader)
            reader.start()
            reader.join(0.3)
            assert reader.is_alive()  # it waits for the move to end, not reads half of it
        return real_swap(key, data, etag)

    storage.swap = swap  # type: ignore[method-assign]
    assert ch.apply_pending("demo", "1.1.0") == ["release"]
    readers[0].join(10)
    refs, pending = seen[0]
    assert refs["release"].version == "1.1.0" and pending == {}


def test_a_rollback_after_enrichment_repointed_the_ref_goes_back(
    setup: tuple[Channels, FileStorage, SigningKey, Clock],
) -> None:
    """Re-pointing a ref to a version's enriched manifest raises its serial with no history
    entry; a rollback then must not wait for an entry that never comes (it answered 409
    "keeps moving" after a second, every time: the review of issue 18 found it)."""
    ch, _storage, key, _clock = setup
    ch.move("demo", "release", "1.0.0", None)
    ch.move("demo", "release", "1.1.0", None)
    enriched = sha256(b"enriched 1.1.0")
    assert ch.repoint("demo", "1.1.0", {sha256(b"1.1.0")}, enriched, sha256(b"heads of the enriched")) == 1
    repointed = open_ref(ch.envelope("demo", "release"), [key.public])
    assert repointed.serial == 3 and (repointed.manifest, repointed.heads) == (enriched, sha256(b"heads of the enriched"))
    old, new = ch.rollback("demo", "release")
    assert (old.version, new.version, new.serial) == ("1.1.0", "1.0.0", 4)


def test_a_ref_this_origin_cannot_read_does_not_stop_the_others_being_resigned(
    setup: tuple[Channels, FileStorage, SigningKey, Clock],
) -> None:
    """A ref written in a format this origin does not read (format 1, say) is logged and
    passed over; every other ref is still re-signed (one such ref stopped every pass: the
    review of issue 16 found it)."""
    ch, storage, key, clock = setup
    ch.move("demo", "alpha", "1.0.0", None)
    ch.move("demo", "beta", "1.0.0", None)
    old = wire.unpack(wire.unpack(ch.envelope("demo", "alpha"))["payload"])
    del old["heads"]
    storage.put(paths.channel_key("demo", "alpha"), seal(key, {**old, "format": 1}))
    clock.now += 5 * 86400  # past half of the 7-day ttl
    assert ch.resign_due().resigned == 1
    assert open_ref(ch.envelope("demo", "beta"), [key.public]).expires > clock.now + 86400
