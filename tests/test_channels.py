"""Channels: serials, rollouts, history and re-signing before expiry (clock injected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import wire
from common.errors import BadRequest, NotFound
from common.ids import sha256
from common.manifest import open_ref
from common.signing import SigningKey, generate_keypair
from origin import paths
from origin.channels import Channels, RolloutSpec
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
        storage.put(paths.version_key("demo", v), VersionRecord(sha256(v.encode()), b"d", 0).pack())
    clock = Clock()
    return Channels(storage, key, ttl=7 * 86400, clock=clock), storage, key, clock


def test_moves_raise_the_serial_and_keep_history(setup: tuple[Channels, FileStorage, SigningKey, Clock]) -> None:
    ch, storage, key, clock = setup
    r1 = open_ref(ch.move("demo", "release", "1.0.0", None), [key.public])
    clock.now += 10
    r2 = open_ref(ch.move("demo", "release", "1.1.0", RolloutSpec("1.0.0", 50)), [key.public])
    assert (r1.serial, r2.serial) == (1, 2)
    assert r2.manifest == sha256(b"1.1.0") and r2.rollout is not None and r2.rollout.manifest == sha256(b"1.0.0")
    assert r2.expires == int(clock.now) + 7 * 86400
    hist = wire.unpack(storage.get(paths.history_key("demo", "release")))
    assert [v for _, v in hist] == ["1.0.0", "1.1.0"]
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
