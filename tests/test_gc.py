"""Retention (origin/gc.py): what a sweep keeps and deletes, dry runs, the grace period,
crash recovery, and publishes racing a sweep (threads and killed or paused processes),
on real stores, with real publishes through origin.publish.Publisher.

Pauses and faults are injected by ``Hooked``: a real driver with a callback before each
call (it blocks on an event, or raises); nothing of the store is mocked."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common import codec
from common.errors import StorageUnavailable
from common.ids import sha256
from common.manifest import open_manifest
from common.pkgmeta import decode_heads, open_head, open_package
from common.signing import SigningKey, generate_keypair
from loadtests.net import free_port
from origin import paths
from origin.channels import DAY, Channels, RolloutSpec
from origin.enrich import Enricher, EnrichSettings
from origin.gc import Policy, PublishesRunning, Report, SweepInProgress, collect
from origin.gccli import open_store
from origin.gclock import publish_guard, sweep_lock
from origin.leases import Leases
from origin.publish import Publisher, VersionRecord, tree_files
from origin.storage import Blob, Driver, DriverError, FileStorage, Page, Stat, Store
from tests.conftest import DEMO, REPO
from tests.s3_servers import S3Server

LEVEL = 3  # the logic does not depend on the level; keep the tests quick
EVERYTHING = Policy(keep=1, keep_days=0, grace=0)  # keep the newest version and what channels name
BOUND = 30.0  # seconds: the longest any wait in these tests may take


# -- a real driver with hooks ------------------------------------------------------------------

Hook = Callable[[str, str], None]  # (operation, key or prefix) → None, or block, or raise


class Hooked:
    """``inner`` with ``hook(op, key)`` called before every operation."""

    def __init__(self, inner: Driver, hook: Hook) -> None:
        self.inner = inner
        self.hook = hook
        self.name = inner.name

    def get(self, key: str) -> Blob | None:
        self.hook("get", key)
        return self.inner.get(key)

    def stat(self, key: str) -> Stat | None:
        self.hook("stat", key)
        return self.inner.stat(key)

    def stat_many(self, keys: Iterable[str]) -> dict[str, Stat | None]:
        keys = list(keys)
        self.hook("stat_many", keys[0] if keys else "")
        return self.inner.stat_many(keys)

    def put(self, key: str, data: bytes) -> str:
        self.hook("put", key)
        return self.inner.put(key, data)

    def create(self, key: str, data: bytes) -> str | None:
        self.hook("create", key)
        return self.inner.create(key, data)

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        self.hook("swap", key)
        return self.inner.swap(key, data, etag)

    def delete(self, key: str) -> None:
        self.hook("delete", key)
        self.inner.delete(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.hook("delete_many", keys[0] if keys else "")
        self.inner.delete_many(keys)

    def list(self, prefix: str, after: str | None = None, limit: int = 1000) -> Page:
        self.hook("list", prefix)
        return self.inner.list(prefix, after, limit)

    def names(self, prefix: str) -> builtins.list[str]:
        self.hook("names", prefix)
        return self.inner.names(prefix)

    def close(self) -> None:
        self.inner.close()


class Gate:
    """Blocks the first call that ``when(op, key)`` matches until ``open()``; ``reached``
    is set when that call arrives."""

    def __init__(self, when: Callable[[str, str], bool]) -> None:
        self.when = when
        self.reached = threading.Event()
        self._open = threading.Event()

    def __call__(self, op: str, key: str) -> None:
        if not self.reached.is_set() and self.when(op, key):
            self.reached.set()
            assert self._open.wait(BOUND), "gate never opened"

    def open(self) -> None:
        self._open.set()


# -- the stores and the world on them -------------------------------------------------------------


@dataclass
class Backend:
    url: str
    server: S3Server | None = None  # None: the file driver

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs to open ``url`` (the AWS_* variables of an S3 server)."""
        return self.server.env() if self.server is not None else {}

    def open(self, hook: Hook | None = None) -> Store:
        """A new Store on the backend, like another replica's (with ``hook`` on its driver)."""
        store = self.server.store(self.url) if self.server is not None else open_store(self.url)
        if hook is not None:
            store.driver = Hooked(store.driver, hook)
        return store


# Tests run on the file driver and moto's S3 server unless marked FILE_ONLY; the race the leases exist for (a
# publish that found old chunks stored, then a sweep) also on a real Ceph RGW (started once a
# session, shared with the storage contract suite; its writes are slow, so only that one).
ALSO_RGW = pytest.mark.parametrize("backend", ["file", "moto", "rgw"], indirect=True)
# Logic that does not depend on the driver beyond the contract (create, swap, list: the
# storage contract suite checks those on every driver): the file driver only, to keep
# make test within its 15 minutes.
FILE_ONLY = pytest.mark.parametrize("backend", ["file"], indirect=True)


@pytest.fixture(params=["file", "moto"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "store"
        root.mkdir()
        return Backend(root.as_uri())
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    return Backend(server.new_bucket(), server)


class Clock:
    """The wall clock, until a test sets ``now``."""

    def __init__(self) -> None:
        self.now: float | None = None

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


@dataclass
class World:
    root: Path
    backend: Backend
    store: Store
    key: SigningKey
    clock: Clock
    channels: Channels
    pool: ThreadPoolExecutor
    sources: dict[tuple[str, str], Path] = field(default_factory=dict)

    def publisher(self, store: Store | None = None) -> Publisher:
        return Publisher(store or self.store, self.key, self.pool, workers=2, level=LEVEL, tmp_dir=self.root)

    def source(self, app: str, version: str, edit: str) -> Path:
        """The demo app with ``edit`` written into app.js and a subpackage page: versions
        with one edit share every chunk (a republish), others share most."""
        src = self.root / "src" / app / version
        if not src.exists():
            shutil.copytree(DEMO, src)
            for rel in ("app.js", "packageOrder/pages/checkout/checkout.js"):
                (src / rel).write_bytes((src / rel).read_bytes() + f"\n// {edit}\n".encode() * 400)
        self.sources[(app, version)] = src
        return src

    def publish(self, version: str, edit: str | None = None, app: str = "demo", store: Store | None = None) -> bytes:
        src = self.source(app, version, edit or version)
        return self.publisher(store).publish(app, version, tree_files(src)).manifest

    def collect(self, policy: Policy = EVERYTHING, *, dry_run: bool = False, store: Store | None = None) -> Report:
        return collect(store or self.store, policy, dry_run=dry_run, clock=self.clock)

    def versions(self, app: str = "demo") -> set[str]:
        prefix = paths.versions_prefix(app)
        return {k[len(prefix):] for k in self.store.list(prefix)}

    def objects(self) -> dict[str, int]:
        return {i.key: i.stat.size for i in self.store.items("objects/")}


@pytest.fixture
def world(tmp_path: Path, backend: Backend) -> Iterator[World]:
    store = backend.open()
    key = generate_keypair(tmp_path / "keys")
    clock = Clock()
    with ThreadPoolExecutor(2) as pool:
        yield World(tmp_path, backend, store, key, clock, Channels(store, key, clock=clock), pool)
    store.close()


def whole(w: World) -> set[str]:
    """Every version record's every manifest (signature checked), chunk (hash checked),
    bundle and delta exists, and each package's stream is the source's files; returns
    every object key the records reference."""
    referenced: set[str] = set()
    chunks: dict[str, bytes] = {}  # key → raw bytes, checked: versions share most chunks

    def chunk(cid: bytes) -> bytes:
        key = paths.chunk_key(cid.hex())
        if key not in chunks:
            chunks[key] = codec.decode_chunk(cid, w.store.get(key))
        return chunks[key]

    for app in w.store.names(paths.APPS):
        prefix = paths.versions_prefix(app)
        for rkey in w.store.list(prefix):
            rec = VersionRecord.unpack(w.store.get(rkey))
            src = w.sources.get((app, rkey[len(prefix):]))
            for mid in rec.all_manifests:
                mkey = paths.manifest_key(mid.hex())
                m = open_manifest(w.store.get(mkey), [w.key.public], mid)
                referenced.add(mkey)
                for p in m.packages:
                    stream = b"".join(chunk(c.id) for c in p.chunks)
                    if src is not None:
                        assert stream == b"".join((src / f).read_bytes() for f, _ in p.files), f"{rkey}: {p.name}"
                    referenced.update(paths.chunk_key(c.id.hex()) for c in p.chunks)
                    if p.bundle is not None:
                        bkey = paths.bundle_key(p.bundle[0].hex())
                        assert codec.decompress_stream(w.store.get(bkey), p.raw_size) == stream
                        referenced.add(bkey)
                    for _, delta, size in p.deltas:
                        dkey = paths.bundle_key(delta.hex())
                        data = w.store.get(dkey)
                        assert sha256(data) == delta and len(data) == size
                        referenced.add(dkey)
            assert len(rec.heads) == len(rec.all_manifests)  # format 2: each manifest's heads
            for mid, hid in zip(rec.all_manifests, rec.heads, strict=True):
                hkey = paths.manifest_key(hid.hex())
                referenced.add(hkey)
                for envelope in decode_heads(w.store.get(hkey)):
                    head = open_head(envelope, [w.key.public])
                    assert head.of == mid
                    pkey = paths.manifest_key(head.manifest.hex())
                    assert open_package(w.store.get(pkey), head.manifest).content == head.content
                    referenced.add(pkey)
    return referenced


# -- the policy ---------------------------------------------------------------------------------


def test_policy_keeps_the_last_n_channel_windows_pending_moves_and_rollouts(world: World) -> None:
    w, day0 = world, time.time()
    for v in ("0.9.0", "1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0", "7.0.0", "8.0.0"):
        w.publish(v)
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        w.publish(v, app="other")
    enricher = Enricher(w.store, w.key, w.channels, EnrichSettings(level=LEVEL, delta_bases=1), clock=w.clock)
    for version in ("1.0.0", "2.0.0", "3.0.0"):  # bundles, deltas and a second manifest: of a
        enricher.enrich("demo", version)  # version dropped, of one kept, and deltas from each

    def at(days: float) -> None:
        w.clock.now = day0 + days * DAY

    at(0)
    w.channels.move("demo", "release", "1.0.0", None)
    at(20)
    w.channels.move("demo", "release", "2.0.0", None)  # what release served when the window opened
    at(80)
    w.channels.move("demo", "release", "3.0.0", None)  # a move in the window
    at(85)
    w.channels.move("demo", "beta", "4.0.0", RolloutSpec("5.0.0", 10))  # a ref and its rollout
    # publishes' moves still waiting for their versions' enrichment
    assert w.channels.plan("demo", "canary", "6.0.0", None) is None
    assert w.channels.plan("demo", "nightly", "0.9.0", None) is None
    assert set(w.channels.pending("demo")) == {"canary", "nightly"}
    at(100)  # the window (30 days) opens on day 70
    policy = Policy(keep=2, keep_days=30, grace=0)

    kept = {"0.9.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0", "7.0.0", "8.0.0"}
    # the channel window as Channels.versions_since gives it (the delta bases' definition),
    # plus pending moves, plus the last 2
    pending = {p.version for p in w.channels.pending("demo").values()}
    assert w.channels.versions_since("demo", w.clock() - 30 * DAY) | pending | {"7.0.0", "8.0.0"} == kept
    before = w.objects()
    report = w.collect(policy)
    assert report.dropped == {"demo": ["1.0.0"], "other": ["1.0.0"]} and report.kept == 8 + 2
    assert w.versions("demo") == kept and w.versions("other") == {"2.0.0", "3.0.0"}
    referenced = whole(w)  # every kept version whole, bundles and deltas included
    assert set(w.objects()) == referenced  # and nothing else is left under objects/
    gone = set(before) - referenced
    assert gone and {k.split("/")[1] for k in gone} == {"chunks", "bundles", "manifests"}
    assert report.total.count == len(gone) + 2 and report.deleted["records"].count == 2
    assert w.collect(policy).total.count == 0  # a second run finds nothing


@FILE_ONLY
def test_a_pending_move_made_or_cancelled_leaves_a_tombstone_gc_reads_as_none(world: World) -> None:
    """A pending record is emptied, not deleted, once its move is made or cancelled
    (origin/channels.py): gc must read that as no pending move, not as a damaged record."""
    w = world
    w.publish("1.0.0")
    w.publish("2.0.0")
    assert w.channels.plan("demo", "release", "1.0.0", None) is None  # not enriched: pending
    assert w.channels.apply_pending("demo", "1.0.0") == ["release"]  # made: the record emptied
    assert w.store.get(paths.pending_key("demo", "release")) == b""
    report = w.collect(Policy(keep=1, keep_days=0, grace=0))
    assert report.dropped == {} and w.versions() == {"1.0.0", "2.0.0"}  # release names 1.0.0
    w.channels.move("demo", "release", "2.0.0", None)
    report = w.collect(Policy(keep=1, keep_days=0, grace=0))
    assert report.dropped == {"demo": ["1.0.0"]} and w.versions() == {"2.0.0"}


def test_dry_run_deletes_nothing_and_predicts_the_real_run(world: World) -> None:
    w = world
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        w.publish(v)
    w.channels.move("demo", "release", "1.1.0", None)
    stale = [paths.enrich_lease_key("demo", "1.0.0"), paths.publish_lock_key("gone:1:ab")]
    for key in stale:  # left by replicas killed days ago (by the clock set below)
        assert Leases(w.store, clock=lambda: w.clock() - 3 * DAY).take(key, 60) is not None
    live = Leases(w.store).take(paths.enrich_lease_key("demo", "1.1.0"), 10 * DAY)  # old, not expired
    w.clock.now = time.time() + 2 * DAY  # the lease file's mtime is two days old by our clock

    def snapshot() -> dict[str, int]:
        return {i.key: i.stat.size for prefix in ("apps/", "objects/", "leases/", "locks/") for i in w.store.items(prefix)}

    before = snapshot()
    dry = w.collect(dry_run=True)
    assert snapshot() == before and dry.dry_run
    assert dry.dropped == {"demo": ["1.0.0", "1.2.0"]}
    real = w.collect()
    after = snapshot()
    assert real.to_json()["deleted"] == dry.to_json()["deleted"] and real.dropped == dry.dropped
    gone = {k: s for k, s in before.items() if k not in after}
    kinds = {"versions": "records", "manifests": "manifests", "chunks": "chunks", "bundles": "bundles",
             "enrich": "leases", "publish": "leases"}
    by_kind: dict[str, list[int]] = {}
    for k, s in gone.items():
        by_kind.setdefault(kinds[k.split("/")[-2] if k.startswith("apps/") else k.split("/")[1]], []).append(s)
    assert {k: [len(v), sum(v)] for k, v in by_kind.items()} == {
        k: [t.count, t.bytes] for k, t in real.deleted.items() if t.count
    }
    assert real.deleted["leases"].count == 2 and not any(map(w.store.exists, stale))
    assert live is not None and w.store.exists(live.key)
    assert set(after) >= set(before) - set(gone) and w.collect().total.count == 0
    whole(w)


@FILE_ONLY
def test_grace_spares_young_objects_and_young_versions(world: World) -> None:
    w = world
    w.publish("1.0.0")
    w.publish("2.0.0")
    crashed = w.publish("3.0.0")
    w.store.delete(paths.version_key("demo", "3.0.0"))  # a publish that died before its record
    policy = Policy(keep=1, keep_days=0, grace=3600)
    young = w.collect(policy)
    assert young.total.count == 0 and young.young.count > 0  # everything is minutes old
    assert w.versions() == {"1.0.0", "2.0.0"} and w.store.exists(paths.manifest_key(crashed.hex()))
    w.clock.now = time.time() + 2 * 3600
    old = w.collect(policy)
    assert old.dropped == {"demo": ["1.0.0"]} and old.young.count == 0
    assert not w.store.exists(paths.manifest_key(crashed.hex()))
    assert set(w.objects()) == whole(w)


@FILE_ONLY
def test_an_interrupted_sweep_is_finished_by_the_next_run(world: World) -> None:
    w = world
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        w.publish(v)

    def crash(op: str, key: str) -> None:
        if op == "delete_many" and key.startswith("objects/"):
            raise DriverError("injected: the sweeper died after deleting the records")

    with pytest.raises(StorageUnavailable):
        w.collect(store=w.backend.open(crash))
    assert w.versions() == {"1.2.0"}  # records went first
    left = set(w.objects()) - whole(w)
    assert left  # the dropped versions' objects are still there, and no record names them
    again = w.collect()
    assert again.dropped == {} and again.total.count == len(left)
    assert set(w.objects()) == whole(w)


@FILE_ONLY
def test_a_damaged_kept_version_stops_the_sweep(world: World) -> None:
    w = world
    w.publish("1.0.0")
    mid = w.publish("2.0.0")
    w.store.delete(paths.manifest_key(mid.hex()))
    with pytest.raises(StorageUnavailable, match=r"versions/2\.0\.0 names manifest"):
        w.collect()
    assert w.versions() == {"1.0.0", "2.0.0"}


# -- publishes racing a sweep -------------------------------------------------------------------


def _dropped_then_republished(w: World) -> tuple[str, set[str]]:
    """Publish 1.0.0 then 2.0.0 (1.0.0 is dropped at the next sweep); return the source
    edit that republishes 1.0.0's content and 1.0.0's chunk keys, old and unreferenced."""
    w.publish("1.0.0", edit="A")
    w.publish("2.0.0", edit="B")

    def chunks(version: str) -> set[str]:
        rec = VersionRecord.unpack(w.store.get(paths.version_key("demo", version)))
        m = open_manifest(w.store.get(paths.manifest_key(rec.manifest.hex())), [w.key.public], rec.manifest)
        return {paths.chunk_key(c.id.hex()) for p in m.packages for c in p.chunks}

    only = chunks("1.0.0") - chunks("2.0.0")
    assert only and w.collect(dry_run=True).dropped == {"demo": ["1.0.0"]}
    return "A", only


def _consistent(w: World) -> None:
    """No record names a missing object (whole() raises NotFound otherwise)."""
    whole(w)


def test_a_publish_waits_for_a_sweep_that_holds_the_lock(world: World) -> None:
    w = world
    edit, old_chunks = _dropped_then_republished(w)  # chunks only 1.0.0 names
    at_delete = Gate(lambda op, key: op == "delete_many" and key.startswith("objects/"))
    sweep_store = w.backend.open(at_delete)
    sweeping = w.pool.submit(w.collect, store=sweep_store)
    assert at_delete.reached.wait(BOUND)  # marked; 1.0.0's record gone; about to delete its chunks
    probes: list[str] = []
    looks = threading.Semaphore(0)

    def replica(op: str, key: str) -> None:
        if op == "stat_many":
            probes.append(key)
        if op == "get" and key == paths.GC_LOCK:
            looks.release()

    pub_store = w.backend.open(replica)
    publishing = threading.Thread(target=w.publish, args=("1.0.1", edit), kwargs={"store": pub_store})
    publishing.start()
    for _ in range(2):  # it looked at locks/gc, stepped back, and looked again
        assert looks.acquire(timeout=BOUND)
    assert probes == []  # no chunk was looked up while the sweep held the lock
    at_delete.open()
    report = sweeping.result(BOUND)
    publishing.join(BOUND)
    assert not publishing.is_alive() and report.dropped == {"demo": ["1.0.0"]}
    assert old_chunks <= set(w.objects())  # uploaded again by the publish
    assert w.versions() == {"1.0.1", "2.0.0"}
    _consistent(w)


@pytest.mark.parametrize("backend", ["file"], indirect=True)
def test_a_sweep_waits_for_an_enrichment_in_progress(world: World) -> None:
    """Enrichment may find a bundle or delta stored already (identical bytes: a version that
    reverts a package) that only a version being dropped names; put_if_absent leaves its
    mtime old.  So enrichment holds a publish lease like a publish, and a sweep waits for it
    (the review of issue 18 found enrichment with none: a sweep could delete what the
    enriched record was about to name)."""
    w = world
    w.publish("1.0.0")
    w.publish("2.0.0")
    enricher = Enricher(w.store, w.key, w.channels, EnrichSettings(level=LEVEL, delta_bases=1), clock=w.clock)
    inside, go = threading.Event(), threading.Event()

    def pause() -> None:  # called before each compression: hold the enrichment there
        inside.set()
        assert go.wait(BOUND)

    enriching = w.pool.submit(enricher.enrich, "demo", "2.0.0", pause)
    assert inside.wait(BOUND)
    with pytest.raises(PublishesRunning):
        collect(w.store, EVERYTHING, dry_run=False, clock=w.clock, wait=0.5)
    assert w.versions() == {"1.0.0", "2.0.0"}  # the sweep deleted nothing
    go.set()
    assert enriching.result(BOUND) is not None
    report = w.collect(EVERYTHING)
    assert report.dropped == {"demo": ["1.0.0"]}
    _consistent(w)


@ALSO_RGW
def test_a_sweep_waits_for_a_publish_in_progress(world: World) -> None:
    w = world
    edit, old_chunks = _dropped_then_republished(w)
    at_manifest = Gate(lambda op, key: op == "create" and key.startswith("objects/manifests/"))
    probed: list[str] = []

    def replica(op: str, key: str) -> None:
        if op == "stat_many":
            probed.append(key)
        at_manifest(op, key)

    publishing = w.pool.submit(w.publish, "1.0.1", edit, store=w.backend.open(replica))
    assert at_manifest.reached.wait(BOUND) and probed  # found 1.0.0's chunks stored: uploads none
    waiting = threading.Event()
    early: list[str] = []

    def sweeper(op: str, key: str) -> None:
        if op == "list" and key == paths.PUBLISH_LOCKS and w.store.exists(paths.GC_LOCK):
            waiting.set()
        if op == "delete_many" and not w.store.exists(paths.version_key("demo", "1.0.1")):
            early.append(key)  # a delete before the publish's record was written

    sweeping = w.pool.submit(w.collect, store=w.backend.open(sweeper))
    assert waiting.wait(BOUND)
    assert w.versions() == {"1.0.0", "2.0.0"}  # nothing deleted while the publish runs
    at_manifest.open()
    publishing.result(BOUND)
    report = sweeping.result(BOUND)
    assert early == [] and report.dropped == {"demo": ["1.0.0", "2.0.0"]}  # marked after 1.0.1 existed
    assert old_chunks <= set(w.objects())  # still named, by 1.0.1
    assert w.versions() == {"1.0.1"}
    _consistent(w)


def test_publishes_and_sweeps_started_together_never_lose_a_chunk(world: World) -> None:
    w = world
    for i in range(3):
        w.publish(f"{i}.0.0", edit=f"e{i}")
        w.publish(f"{i}.5.0", edit=f"x{i}")  # 1.0.0 etc. are dropped by the next sweep
        with ThreadPoolExecutor(2) as two:
            sweep = two.submit(w.collect, store=w.backend.open())
            pub = two.submit(w.publish, f"{i}.9.0", f"e{i}", store=w.backend.open())
            sweep.result(BOUND)
            pub.result(BOUND)
        _consistent(w)
    assert w.collect().total.count >= 0 and not list(w.store.list(paths.PUBLISH_LOCKS))


def test_a_second_sweep_is_refused_while_one_holds_the_lock(world: World) -> None:
    w = world
    w.publish("1.0.0")
    with sweep_lock(w.store), pytest.raises(SweepInProgress):
        w.collect(store=w.backend.open())


def test_a_sweep_gives_up_on_a_publish_that_does_not_end(world: World) -> None:
    w = world
    w.publish("1.0.0")
    with publish_guard(w.store), pytest.raises(PublishesRunning):
        collect(w.store, EVERYTHING, dry_run=False, wait=0.3)
    assert not w.store.exists(paths.GC_LOCK)  # released: publishes are not blocked


# -- killed and paused processes --------------------------------------------------------------

HOLDER = r"""
import os, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import origin.gclock
origin.gclock.LEASE_TTL = float(os.environ["GC_TEST_TTL"])
from common.signing import SigningKey
from origin.gccli import open_store
from origin.publish import Publisher, tree_files
from origin.storage import Store

url, role = sys.argv[1], sys.argv[2]
store = open_store(url)
if role == "sweep":
    with origin.gclock.sweep_lock(store):
        print("holding", flush=True)
        time.sleep(3600)
inner = store.driver

class Pause:  # after the first existence check: say so, then wait for a line on stdin
    def __init__(self):
        self.done = False
    def __getattr__(self, name):
        return getattr(inner, name)
    def stat_many(self, keys):
        got = inner.stat_many(keys)
        if not self.done:
            self.done = True
            print("probed", flush=True)
            sys.stdin.readline()
        return got

store.driver = Pause()
key = SigningKey.load(sys.argv[3])
with ThreadPoolExecutor(1) as pool:
    pub = Publisher(store, key, pool, workers=1, level=3, tmp_dir=Path(sys.argv[5]))
    try:
        pub.publish("demo", "1.0.1", tree_files(Path(sys.argv[4])))
    except origin.gclock.LeaseLost as exc:
        print("lost:", exc, flush=True)
        sys.exit(3)
print("published", flush=True)
"""

TTL = 1.5  # seconds: the leases of the processes below, short so that they expire soon


def _holder(w: World, role: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **w.backend.env, "GC_TEST_TTL": str(TTL), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, w.backend.url, role, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )


def _expect(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], BOUND)
    assert ready, f"the process never said {word!r}"
    assert proc.stdout.readline().strip() == word


@contextlib.contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # works on a stopped process too
        proc.wait(BOUND)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def _publisher_process(w: World, edit: str) -> subprocess.Popen[str]:
    src = w.source("demo", "1.0.1", edit)
    return _holder(w, "publish", str(w.root / "keys" / "signing.key"), str(src), str(w.root))


@FILE_ONLY
def test_a_sweep_waits_out_the_lease_of_a_killed_publish(world: World) -> None:
    w = world
    edit, old_chunks = _dropped_then_republished(w)
    with running(_publisher_process(w, edit)) as proc:
        _expect(proc, "probed")  # it found 1.0.0's chunks stored, and will upload none of them
        (lease,) = Leases(w.store).live(paths.PUBLISH_LOCKS)
        proc.kill()
        proc.wait(BOUND)
    report = w.collect()
    assert time.time() >= lease.expires  # the sweep waited for the lease to expire
    assert report.dropped == {"demo": ["1.0.0"]} and not old_chunks & set(w.objects())
    assert w.versions() == {"2.0.0"}
    _consistent(w)


@FILE_ONLY
def test_a_publish_waits_out_the_lease_of_a_killed_sweep(world: World) -> None:
    w = world
    edit, old_chunks = _dropped_then_republished(w)
    with running(_holder(w, "sweep")) as proc:
        _expect(proc, "holding")
        lease = Leases(w.store).read(paths.GC_LOCK)
        assert lease is not None
        proc.kill()
        proc.wait(BOUND)
    w.publish("1.0.1", edit)
    assert time.time() >= lease.expires  # the publish waited for the lock to expire
    assert w.collect().dropped == {"demo": ["1.0.0", "2.0.0"]} and old_chunks <= set(w.objects())
    _consistent(w)


@FILE_ONLY
def test_a_publish_paused_past_its_lease_writes_no_record(world: World) -> None:
    w = world
    edit, old_chunks = _dropped_then_republished(w)
    with running(_publisher_process(w, edit)) as proc:
        _expect(proc, "probed")
        os.kill(proc.pid, signal.SIGSTOP)  # the whole process: its lease is no longer renewed
        try:
            report = w.collect()  # waits until the lease lapses, then deletes 1.0.0's chunks
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert report.dropped == {"demo": ["1.0.0"]} and not old_chunks & set(w.objects())
        out, _ = proc.communicate("go\n", timeout=BOUND)
        assert proc.returncode == 3 and "lease lost" in out, out
    assert w.versions() == {"2.0.0"}  # no record naming the chunks the sweep deleted
    _consistent(w)
    w.publish("1.0.1", edit)  # and a retry uploads them again
    _consistent(w)


# -- the command ----------------------------------------------------------------------------------

# ``python -m common.cli gc`` once the installed entry points list gc (pyproject.toml): the
# same group, with gc added in case the installed metadata predates it.
GC_CLI = (
    "import sys; from common.cli import main; from origin.gccli import gc; "
    "main.add_command(gc, 'gc'); main(sys.argv[1:], prog_name='minicdn')"
)


def gc_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", GC_CLI, "gc", *args], capture_output=True, text=True, env=full, timeout=60
    )


def test_the_command_is_registered() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        commands = tomllib.load(f)["project"]["entry-points"]["minicdn.commands"]
    assert commands["gc"] == "origin.gccli:gc"


@FILE_ONLY
def test_cli_dry_run_json_and_a_real_run(world: World) -> None:
    w = world
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        w.publish(v)
    flags = ["--storage", w.backend.url, "--keep", "1", "--keep-days", "0", "--grace", "0s"]
    env = w.backend.env
    before = w.objects()
    text = gc_cli(*flags, "--dry-run", env=env)
    assert text.returncode == 0, text.stderr
    assert "demo: 1.0.0 1.1.0" in text.stdout and "would delete" in text.stdout
    assert "dry run: nothing was deleted" in text.stdout
    dry = gc_cli(*flags, "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and doc["versions"]["dropped"] == {"demo": ["1.0.0", "1.1.0"]}
    assert w.objects() == before and w.versions() == {"1.0.0", "1.1.0", "1.2.0"}
    real = gc_cli(*flags, "--json", env=env)
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["deleted"] == doc["deleted"] and done["dry_run"] is False
    gone = set(before) - set(w.objects())
    assert len(gone) + 2 == done["total"]["count"] and sum(before[k] for k in gone) < done["total"]["bytes"]
    assert w.versions() == {"1.2.0"} and set(w.objects()) == whole(w)


BAD_FLAGS = [
    (["--storage", "ftp://host/x"], "expected file:///path or s3://bucket/prefix"),
    (["--storage", "file://host/x"], "file:///absolute/path"),
    (["--storage", "file:///nonexistent/minicdn-store"], "is not a directory"),
    (["--keep", "0"], "--keep"),
    (["--keep", "many"], "--keep"),
    (["--keep-days", "-1"], "--keep-days"),
    (["--keep-days", "inf"], "--keep-days"),
    (["--grace", "soon"], "--grace"),
]


def test_cli_refuses_bad_flags_with_exit_2(tmp_path: Path) -> None:
    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return gc_cli(*(args if args[0] == "--storage" else ["--storage", tmp_path.as_uri(), *args]))

    with ThreadPoolExecutor(len(BAD_FLAGS)) as pool:  # a second each, mostly imports: at once
        results = list(pool.map(run, [args for args, _ in BAD_FLAGS]))
    for (args, message), got in zip(BAD_FLAGS, results, strict=True):
        assert got.returncode == 2, (args, got.stdout, got.stderr)
        assert message in got.stderr and "Traceback" not in got.stderr, (args, got.stderr)


def test_cli_says_when_the_store_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_REGION": "us-east-1"}
    got = gc_cli("--storage", "s3://nobucket/p", "--dry-run", env=env)
    assert got.returncode == 2, (got.stdout, got.stderr)
    assert "storage_unavailable" in got.stderr and "Traceback" not in got.stderr


def test_cli_says_when_another_sweep_runs(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    with sweep_lock(store):
        got = gc_cli("--storage", tmp_path.as_uri())
    assert got.returncode == 1 and "gc_in_progress" in got.stderr and "Traceback" not in got.stderr


# -- the origin's background mode (--gc-every) ------------------------------------------------


def test_an_origin_with_gc_every_sweeps_what_the_policy_drops(tmp_path: Path) -> None:
    """A real origin with ``--gc-every 1s --gc-keep 1 --gc-keep-days 0 --gc-grace 0``: the
    version no channel names and not the last is dropped with its own chunks, the channel's
    version stays whole, and the rounds are counted."""
    from tests.conftest import DEMO, app_info, publish, set_channel, tar_gz_of, wait_enriched
    from tests.procs import metric, origin_service
    from tests.waiting import eventually

    svc = origin_service(tmp_path, "test-token", "--gc-every", "1s", "--gc-keep", "1", "--gc-keep-days", "0",
                         "--gc-grace", "0").start()
    try:
        old = tmp_path / "old"
        shutil.copytree(DEMO, old)
        (old / "only-in-old.js").write_bytes(os.urandom(40_000))  # chunks no other version has
        assert publish(svc.url, "bg", "1.0.0", tar_gz_of(old)).status == 201
        wait_enriched(svc.url, "bg", "1.0.0")
        assert publish(svc.url, "bg", "2.0.0", tar_gz_of(DEMO)).status == 201
        wait_enriched(svc.url, "bg", "2.0.0")
        assert set_channel(svc.url, "bg", "release", {"version": "2.0.0"}).status == 200

        def swept() -> bool:
            return [v["version"] for v in app_info(svc.url, "bg")["versions"]] == ["2.0.0"]

        eventually(swept, 30, "1.0.0 dropped by a background round")
        eventually(lambda: metric(svc.url, "minicdn_origin_gc_deleted_bytes_total") > 40_000, 30, "its bytes counted")
        assert metric(svc.url, "minicdn_origin_gc_runs_total", 'outcome="ok"') >= 1
        store = FileStorage(tmp_path / "origin" / "store", sweep=False)
        info = app_info(svc.url, "bg")
        m = open_manifest(store.get(paths.manifest_key(info["versions"][0]["manifest"])),
                          [SigningKey.load(tmp_path / "keys" / "signing.key").public])
        assert all(store.exists(paths.chunk_key(c.id.hex())) for p in m.packages for c in p.chunks)
    finally:
        svc.stop()


@pytest.mark.parametrize("backend", ["file"], indirect=True)
def test_the_mark_under_the_lock_reads_only_what_changed(world: World) -> None:
    """A sweep marks twice, the second time under ``locks/gc`` while publishes and moves
    wait: that pass lists, and reads only what the listing shows changed since the first."""
    from origin.gcmark import Marker

    w = world
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        w.publish(v)
    w.channels.move("demo", "release", "2.0.0", None)
    marker = Marker(w.store, EVERYTHING)
    first = marker.mark(w.clock())
    reads: list[str] = []
    real = w.store.read

    def counted(key: str) -> Blob | None:
        reads.append(key)
        return real(key)

    w.store.read = counted  # type: ignore[method-assign]
    again = marker.mark(w.clock())
    assert reads == [] and again.objects == first.objects
    w.channels.move("demo", "release", "1.0.0", None)  # a ref and a history change
    kept_rec = VersionRecord.unpack(w.store.get(paths.version_key("demo", "1.0.0")))
    newly_kept, its_heads = kept_rec.manifest, kept_rec.heads_of(kept_rec.manifest)
    reads.clear()  # (the move read through the same store, and so did the line above)
    moved = marker.mark(w.clock())
    assert sorted(reads) == sorted(  # the ref, its history, the manifest and heads of what it now keeps
        [paths.channel_key("demo", "release"), paths.history_key("demo", "release"),
         paths.manifest_key(newly_kept.hex()), paths.manifest_key(its_heads.hex())]
    )
    assert {v.name for v in moved.kept} == {"1.0.0", "3.0.0"}
