"""Bundles and deltas at the origin (origin/enrich.py): what enrichment writes, which
versions are delta bases, refs moved to enriched manifests, and resuming after a crash —
in-process with an injected clock, then against a real origin process restarted on its
own storage."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common import codec, wire
from common.manifest import Manifest, PackageEntry, open_manifest, open_ref
from common.signing import SigningKey, generate_keypair
from origin import paths
from origin.channels import DAY, Channels, RolloutSpec
from origin.enrich import Enricher, EnrichSettings
from origin.publish import Publisher, VersionRecord, tree_files
from origin.storage import FileStorage
from tests.conftest import DEMO, TOKEN, app_info, http, publish, tar_gz_of
from tests.procs import origin_service
from tests.waiting import eventually

LEVEL = 9  # the logic does not depend on the level; keep the tests quick


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    root: Path
    storage: FileStorage
    key: SigningKey
    clock: Clock
    channels: Channels
    publisher: Publisher

    def enricher(self, **settings: Any) -> Enricher:
        return Enricher(self.storage, self.key, self.channels, EnrichSettings(level=LEVEL, **settings), clock=self.clock)

    def publish(self, version: str, edit: int = 0) -> bytes:
        """DEMO with ``edit`` marking app.js and a subpackage page (a small change per version)."""
        src = self.root / "src" / version
        shutil.copytree(DEMO, src)
        for rel in ("app.js", "packageOrder/pages/checkout/checkout.js"):
            (src / rel).write_bytes((src / rel).read_bytes() + f"\n// build {edit}\n".encode())
        return self.publisher.publish("demo", version, tree_files(src)).manifest

    def record(self, version: str) -> VersionRecord:
        return VersionRecord.unpack(self.storage.get(paths.version_key("demo", version)))

    def manifest(self, mid: bytes) -> Manifest:
        return open_manifest(self.storage.get(paths.manifest_key(mid.hex())), [self.key.public], mid)

    def stream(self, pkg: PackageEntry) -> bytes:
        return b"".join(codec.decode_chunk(c.id, self.storage.get(paths.chunk_key(c.id.hex()))) for c in pkg.chunks)

    def obj(self, oid: bytes) -> bytes:
        return self.storage.get(paths.bundle_key(oid.hex()))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    storage = FileStorage(tmp_path / "store")
    key = generate_keypair(tmp_path / "keys")
    clock = Clock()
    with ThreadPoolExecutor(2) as pool:
        yield World(tmp_path, storage, key, clock, Channels(storage, key, clock=clock),
                    Publisher(storage, key, pool, workers=2, level=LEVEL, tmp_dir=tmp_path))


def test_enrichment_writes_bundles_deltas_and_a_second_manifest(world: World) -> None:
    m0_v1 = world.publish("1.0.0", 1)
    m0_v2 = world.publish("1.1.0", 2)
    world.channels.move("demo", "release", "1.0.0", None)
    enricher = world.enricher()
    assert enricher.pending() == [("demo", "1.0.0"), ("demo", "1.1.0")]  # publish order

    m1_v1 = enricher.enrich("demo", "1.0.0")
    assert m1_v1 is not None and m1_v1 != m0_v1
    rec = world.record("1.0.0")
    assert (rec.manifest, rec.all_manifests, rec.enriched) == (m1_v1, (m0_v1, m1_v1), True)
    plain, rich = world.manifest(m0_v1), world.manifest(m1_v1)
    assert rich.created == plain.created and [p.files for p in rich.packages] == [p.files for p in plain.packages]
    for p_plain, p in zip(plain.packages, rich.packages, strict=True):
        assert p.chunks == p_plain.chunks and p.deltas == ()  # nothing published before 1.0.0
        assert p.bundle is not None
        stored = world.obj(p.bundle[0])
        assert hashlib.sha256(stored).digest() == p.bundle[0] and len(stored) == p.bundle[1]
        assert codec.decompress_stream(stored, p.raw_size) == world.stream(p)
    # the channel moved from the plain manifest to the enriched one, serial + 1, history untouched
    ref = open_ref(world.channels.envelope("demo", "release"), [world.key.public])
    assert (ref.version, ref.manifest, ref.serial) == ("1.0.0", m1_v1, 2)
    assert world.channels.versions_since("demo", 0) == {"1.0.0"}

    m1_v2 = enricher.enrich("demo", "1.1.0")
    assert m1_v2 is not None
    new = world.manifest(m1_v2)
    for p in new.packages:
        assert p.bundle is not None
        # one delta, listed under both manifest ids the base version has had
        assert {d[0] for d in p.deltas} == {m0_v1, m1_v1} and len({d[1] for d in p.deltas}) == 1
        _, delta_id, size = p.deltas[0]
        delta = world.obj(delta_id)
        assert len(delta) == size < p.bundle[1]
        base = world.stream(world.manifest(m0_v1).package(p.name))
        assert codec.decompress_stream(delta, p.raw_size, base) == world.stream(p)
    assert enricher.enrich("demo", "1.1.0") is None and enricher.pending() == []  # done once
    assert world.record("1.1.0").all_manifests == (m0_v2, m1_v2)
    # a channel move now names the enriched manifest
    moved = open_ref(world.channels.move("demo", "beta", "1.1.0", None), [world.key.public])
    assert moved.manifest == m1_v2


def test_delta_bases_are_the_last_n_and_every_recent_channel_target(world: World) -> None:
    versions = [f"1.{i}.0" for i in range(1, 7)]
    plain = {v: world.publish(v, i) for i, v in enumerate(versions)}
    now = world.clock.now
    for when, version in ((now - 40 * DAY, "1.1.0"),   # left before the window: not a base
                          (now - 35 * DAY, "1.2.0"),   # the target when the window opened
                          (now - 5 * DAY, "1.3.0")):   # moved to within the window
        world.clock.now = when
        world.channels.move("demo", "release", version, None)
    world.clock.now = now
    enricher = world.enricher(delta_bases=2)
    m1 = enricher.enrich("demo", "1.6.0")  # the earlier versions are plain: one manifest id each
    assert m1 is not None
    bases = {d[0] for p in world.manifest(m1).packages for d in p.deltas}
    assert bases == {plain["1.2.0"], plain["1.3.0"], plain["1.4.0"], plain["1.5.0"]}

    # a ref's rollout counts as "pointed at" too
    world.channels.move("demo", "canary", "1.3.0", RolloutSpec("1.1.0", 10))
    world.publish("1.7.0", 7)
    m1 = enricher.enrich("demo", "1.7.0")
    assert m1 is not None
    assert plain["1.1.0"] in {d[0] for p in world.manifest(m1).packages for d in p.deltas}


def test_a_crash_between_record_and_refs_is_repaired_at_restart(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    m0 = world.publish("1.0.0", 1)
    world.channels.move("demo", "release", "1.0.0", RolloutSpec("1.0.0", 5))

    def crash(*_args: object) -> int:
        raise OSError("power cut")

    monkeypatch.setattr(world.channels, "repoint", crash)
    with pytest.raises(OSError):
        world.enricher().enrich("demo", "1.0.0")
    monkeypatch.undo()
    rec = world.record("1.0.0")
    assert rec.enriched and rec.manifest != m0
    ref = open_ref(world.channels.envelope("demo", "release"), [world.key.public])
    assert ref.manifest == m0  # the crash left the ref on the plain manifest (still stored, still valid)
    restarted = world.enricher()
    assert restarted.pending() == []
    assert restarted.repoint_stale() == 1
    ref = open_ref(world.channels.envelope("demo", "release"), [world.key.public])
    assert ref.manifest == rec.manifest and ref.rollout is not None and ref.rollout.manifest == rec.manifest
    assert ref.serial == 2 and restarted.repoint_stale() == 0


def test_a_crash_before_the_record_redoes_the_same_work(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.publish("1.0.0", 1)
    vkey = paths.version_key("demo", "1.0.0")
    swap = world.storage.swap

    def crash_on_record(key: str, data: bytes, etag: str) -> str | None:
        if key == vkey:
            raise OSError("power cut")
        return swap(key, data, etag)

    monkeypatch.setattr(world.storage, "swap", crash_on_record)
    with pytest.raises(OSError):
        world.enricher().enrich("demo", "1.0.0")
    monkeypatch.undo()
    objects = sorted(world.storage.list("objects/"))
    restarted = world.enricher()
    assert restarted.pending() == [("demo", "1.0.0")]
    mid = restarted.enrich("demo", "1.0.0")
    assert mid is not None and sorted(world.storage.list("objects/")) == objects  # same bytes, same ids
    assert not [p for p in (world.root / "store").rglob(".tmp-*")]


# -- a real origin process ------------------------------------------------------------------


def _wait_enriched(url: str, app: str, count: int, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        info = app_info(url, app)
        return info if sum(1 for v in info["versions"] if v["enriched"]) >= count else None

    return eventually(done, timeout, f"{count} versions of {app} enriched")


def test_origin_resumes_enrichment_at_start_and_serves_bundles(tmp_path: Path) -> None:
    """Versions published while no origin ran enrichment (and a record with only the fields a
    record must have) are enriched when the origin starts; a SIGKILL while it
    enriches leaves nothing half-written, and the next start finishes the work."""
    key = generate_keypair(tmp_path / "keys")
    storage = FileStorage(tmp_path / "origin" / "store")
    world = World(tmp_path, storage, key, Clock(), Channels(storage, key), None)  # type: ignore[arg-type]
    with ThreadPoolExecutor(2) as pool:
        world.publisher = Publisher(storage, key, pool, workers=2, level=LEVEL, tmp_dir=tmp_path)
        m0 = world.publish("1.0.0", 1)
        world.publish("1.1.0", 2)
    legacy = world.record("1.0.0")
    storage.put(paths.version_key("demo", "1.0.0"),  # the least a record holds (no "enriched")
                wire.pack({"manifest": legacy.manifest, "digest": legacy.digest, "created": legacy.created,
                           "heads": list(legacy.heads)}))
    world.channels.move("demo", "release", "1.0.0", None)

    origin = origin_service(tmp_path, TOKEN).start()
    try:
        info = _wait_enriched(origin.url, "demo", 2)
        versions = {v["version"]: v for v in info["versions"]}
        assert versions["1.0.0"]["manifests"][0] == m0.hex() and len(versions["1.0.0"]["manifests"]) == 2
        ref = open_ref(http("GET", f"{origin.url}/v1/apps/demo/channels/release").body, [key.public])
        assert ref.manifest.hex() == versions["1.0.0"]["manifest"] != m0.hex()
        rich = open_manifest(http("GET", f"{origin.url}/v1/manifests/{versions['1.1.0']['manifest']}").body,
                             [key.public])
        bundle_id, size = rich.packages[0].bundle  # type: ignore[misc]
        url = f"{origin.url}/v1/bundles/{bundle_id.hex()}"
        r = http("GET", url, headers={"Accept-Encoding": "zstd"})
        assert r.status == 200 and hashlib.sha256(r.body).digest() == bundle_id and len(r.body) == size
        assert "content-encoding" not in r.headers  # stored bytes, decoded by the client itself
        assert r.headers["etag"] == f'"{bundle_id.hex()}"' and "immutable" in r.headers["cache-control"]
        head = http("HEAD", url)
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == size
        part = http("GET", url, headers={"Range": "bytes=4-9"})
        assert part.status == 206 and part.body == r.body[4:10]
        assert http("GET", url, headers={"If-None-Match": r.headers["etag"]}).status == 304
        delta_id = rich.packages[0].deltas[0][1]
        assert http("GET", f"{origin.url}/v1/bundles/{delta_id.hex()}").status == 200

        # publish one more, SIGKILL at once (enrichment is starting or running), restart
        v = tmp_path / "v3"
        shutil.copytree(DEMO, v)
        (v / "app.js").write_bytes((v / "app.js").read_bytes() + b"\n// 1.2.0\n")
        assert publish(origin.url, "demo", "1.2.0", tar_gz_of(v)).status == 201
        origin.kill()
        origin.start()
        info = _wait_enriched(origin.url, "demo", 3)
    finally:
        origin.stop()
    store = FileStorage(tmp_path / "origin" / "store")
    for v in info["versions"]:
        m = open_manifest(store.get(paths.manifest_key(v["manifest"])), [key.public])
        for p in m.packages:
            named = [p.bundle[0]] if p.bundle else []
            named += [d[1] for d in p.deltas]
            assert named and all(store.stat(paths.bundle_key(i.hex())) for i in named)
    assert not [p for p in (tmp_path / "origin").rglob(".tmp-*")]
