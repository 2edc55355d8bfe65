"""Releases with real processes: ``minicdn publish --channel`` moves the channel only once
the version's enriched manifest exists (so the very first update is a delta), ``--no-wait``,
pending moves across a restart and a failed enrichment, and the operator commands
(``channel history``, ``channel rollback``, ``apps``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client.client import Client, ClientConfig, FetchSummary
from common.manifest import open_ref
from common.signing import PublicKey
from loadtests.bench_delivery import deterministic_tar, zstd_size
from loadtests.data import build_app, chains
from origin import paths
from origin.publish import VersionRecord
from origin.storage import FileStorage
from tests.conftest import TOKEN, app_info, enriched, http, tree
from tests.procs import Service, metric, origin_service
from tests.waiting import eventually

KIB = 1024
LIB = "@vant/weapp"


def cli(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MINICDN_TOKEN": token})  # fmt: skip


@dataclass
class World:
    origin: Service
    tmp: Path
    apps: dict[str, Path]  # version → app folder
    tars: dict[str, Path]  # version → deterministic tar of it (for zstd --patch-from)

    @property
    def key(self) -> PublicKey:
        return PublicKey.load(self.tmp / "keys" / "public.key")

    def publish(self, app: str, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
        r = cli("publish", str(self.apps[version]), "--origin", self.origin.url, "--app", app,
                "--version", version, "--quiet", *extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r

    def ref(self, app: str, channel: str) -> Any:
        r = http("GET", f"{self.origin.url}/v1/apps/{app}/channels/{channel}")
        return open_ref(r.body, [self.key]) if r.status == 200 else None

    def manifest(self, app: str, version: str) -> str:
        return str(next(v["manifest"] for v in app_info(self.origin.url, app)["versions"] if v["version"] == version))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("release")
    apps, tars = {}, {}
    for v in chains()[LIB][:4]:
        apps[v] = build_app(tmp / "apps" / v, {LIB: v})
        tars[v] = tmp / "tars" / f"{v}.tar"
        tars[v].parent.mkdir(parents=True, exist_ok=True)
        deterministic_tar(apps[v], tars[v])
    origin = origin_service(tmp, TOKEN).start()
    try:
        yield World(origin, tmp, apps, tars)
    finally:
        origin.stop()


async def _install(config: ClientConfig, app: str, out: Path) -> FetchSummary:
    async with Client(config) as c:
        return await c.install(app, out, channel="release")


def test_the_first_update_after_publish_returns_is_a_delta(world: World, tmp_path: Path) -> None:
    v1, v2 = list(world.apps)[:2]
    first = world.publish("wave", v1, "--channel", "release")
    assert f"channel release → {v1}" in first.stdout and "enriched manifest" in first.stdout
    config = ClientConfig(edges=(world.origin.url,), public_keys=(world.key,), store_dir=tmp_path / "store")
    cold = asyncio.run(_install(config, "wave", tmp_path / "app"))
    assert cold.version == v1
    second = world.publish("wave", v2, "--channel", "release")
    assert "enriched manifest" in second.stdout, second.stdout
    update = asyncio.run(_install(config, "wave", tmp_path / "app"))  # the very first one, no waiting
    patch_from = zstd_size(f"--patch-from={world.tars[v1]}", str(world.tars[v2]))
    assert update.version == v2 and update.plan == "delta", update
    assert update.bytes_downloaded <= 1.5 * patch_from + KIB, (update.bytes_downloaded, patch_from)
    assert tree(tmp_path / "app") == tree(world.apps[v2])
    assert update.manifest == world.manifest("wave", v2)  # the enriched one
    moves = metric(world.origin.url, "minicdn_origin_channel_moves_total", 'kind="publish"')
    assert moves >= 2 and metric(world.origin.url, "minicdn_origin_channel_moves_total", 'kind="enriched"') == 0


def test_no_wait_returns_at_once_and_the_move_follows_enrichment(world: World) -> None:
    v1, v2 = list(world.apps)[:2]
    world.publish("nowait", v1, "--channel", "release")
    r = world.publish("nowait", v2, "--channel", "release", "--no-wait")
    assert f"channel release → {v2}: pending, made when enrichment" in r.stdout, r.stdout
    eventually(lambda: world.ref("nowait", "release").version == v2, 60, f"release on {v2}")
    ref = world.ref("nowait", "release")
    assert ref.manifest.hex() == enriched(world.origin.url, "nowait", v2)["manifest"]
    assert ref.serial == 2  # one move, straight to the enriched manifest: never the plain one


def test_a_rollout_publish_rolls_out_on_what_the_channel_serves(world: World) -> None:
    v1, v2 = list(world.apps)[:2]
    refused = cli("publish", str(world.apps[v1]), "--origin", world.origin.url, "--app", "roll", "--version", v1,
                  "--channel", "release", "--rollout", "10", "--quiet")  # fmt: skip
    assert refused.returncode == 1 and "409" in refused.stderr and "no version yet" in refused.stderr
    world.publish("roll", v1, "--channel", "release")
    r = world.publish("roll", v2, "--channel", "release", "--rollout", "10")
    assert f"rolling out {v2} to 10%" in r.stdout
    ref = world.ref("roll", "release")
    assert ref.version == v1 and ref.rollout.version == v2 and ref.rollout.percent == 10
    assert ref.rollout.manifest.hex() == world.manifest("roll", v2)


def test_history_rollback_and_apps_tables(world: World) -> None:
    v1, v2, v3 = list(world.apps)[:3]
    for v in (v1, v2, v3):
        world.publish("ops", v, "--channel", "release")
    url = ["--origin", world.origin.url, "--app", "ops", "--channel", "release"]
    hist = cli("channel", "history", *url)
    assert hist.returncode == 0, hist.stderr
    lines = hist.stdout.splitlines()
    assert lines[0].split() == ["time", "serial", "kind", "version", "rollout"]
    assert [ln.split()[2:5] for ln in lines[1:4]] == [[str(i), "publish", v] for i, v in enumerate((v1, v2, v3), 1)]
    assert f"rollback → {v2}" in lines[-1]
    back = cli("channel", "rollback", *url, "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"app": "ops", "channel": "release", "from": v3, "version": v2, "serial": 4}
    assert world.ref("ops", "release").version == v2
    assert cli("channel", "rollback", *url).returncode == 0 and world.ref("ops", "release").version == v1
    none = cli("channel", "rollback", *url)
    assert none.returncode == 2 and "no earlier version to roll back to" in none.stderr and "Traceback" not in none.stderr
    missing = cli("channel", "rollback", "--origin", world.origin.url, "--app", "ops", "--channel", "nope")
    assert missing.returncode == 2 and "not_found" in missing.stderr
    wrong = cli("channel", "rollback", *url, token="wrong")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    as_json = json.loads(cli("channel", "history", *url, "--json").stdout)
    assert [e["kind"] for e in as_json["entries"]] == ["publish"] * 3 + ["rollback"] * 2
    assert as_json["rollback_to"] is None and as_json["version"] == v1
    assert metric(world.origin.url, "minicdn_origin_channel_moves_total", 'kind="rollback"') >= 2

    one = cli("apps", "ops", "--origin", world.origin.url)
    assert one.returncode == 0, one.stderr
    assert "version" in one.stdout and "enriched" in one.stdout and "release" in one.stdout
    rows = {ln.split()[0]: ln.split() for ln in one.stdout.splitlines() if ln.strip()}
    assert rows[v3][3] == "yes" and rows["release"][1] == v1
    listing = cli("apps", "--origin", world.origin.url)
    assert listing.returncode == 0 and any(ln.startswith("ops ") for ln in listing.stdout.splitlines())
    doc = json.loads(cli("apps", "ops", "--origin", world.origin.url, "--json").stdout)
    assert doc["channels"]["release"]["version"] == v1 and doc["pending"] == {}
    assert cli("apps", "nope", "--origin", world.origin.url).returncode == 2


def test_rollback_and_history_over_http_are_json_4xx_for_hostile_input(world: World) -> None:
    base = world.origin.url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path, headers, status in [
        ("POST", "/v1/apps/ops/channels/release/rollback", {}, 401),
        ("POST", "/v1/apps/Bad%20App/channels/release/rollback", auth, 400),
        ("POST", "/v1/apps/ops/channels/..%2F..%2Fx/rollback", auth, 400),
        ("POST", "/v1/apps/ghost/channels/release/rollback", auth, 404),
        ("GET", "/v1/apps/ops/channels/" + "c" * 300 + "/history", {}, 400),
        ("GET", "/v1/apps/ghost/channels/release/history", {}, 404),
        ("GET", "/v1/apps/ops/channels/release/rollback", {}, 405),
        ("POST", "/v1/apps/wave/versions/9.9.9?rollout=10", auth, 400),
        ("POST", "/v1/apps/wave/versions/9.9.9?channel=Bad%20C", auth, 400),
        ("POST", "/v1/apps/wave/versions/9.9.9?channel=release&rollout=101", auth, 400),
        ("POST", "/v1/apps/wave/versions/9.9.9?channel=release&rollout=-1", auth, 400),
    ]:
        r = http(method, base + path, b"", headers)
        assert r.status == status, (method, path, r.status, r.body)
        assert isinstance(r.json(), dict) and "error" in r.json()  # type: ignore[operator]


def test_pending_moves_survive_a_restart_and_a_failed_enrichment_moves_to_the_plain_manifest(world: World) -> None:
    """Pending moves are records in storage: made at start when their version is enriched
    already, else when its enrichment (retried at start) ends — done, or failed."""
    v1, v2, v3 = list(world.apps)[:3]
    world.publish("durable", v1, "--channel", "release")
    world.publish("durable", v2)
    world.publish("durable", v3)
    enriched(world.origin.url, "durable", v3)
    assert world.origin.stop() == 0
    storage = FileStorage(world.tmp / "origin" / "store")
    # beta: a crash after v2 was enriched, before its pending move was made
    storage.put(paths.pending_key("durable", "beta"), _pending(v2))
    # release: v3's enrichment never ran, and will fail (a chunk only v3 has is gone)
    key = paths.version_key("durable", v3)
    rec = VersionRecord.unpack(storage.get(key))
    plain = rec.all_manifests[0]
    undone = VersionRecord(plain, rec.digest, rec.created, (plain,), False, rec.published, rec.heads[:1])
    storage.put(key, undone.pack())
    storage.put(paths.pending_key("durable", "release"), _pending(v3))
    _drop_a_chunk_only(storage, world.key, "durable", v3)
    world.origin.start()
    eventually(lambda: world.ref("durable", "beta") is not None, 60, "beta moved at start")
    assert world.ref("durable", "beta").manifest.hex() == world.manifest("durable", v2)
    eventually(lambda: world.ref("durable", "release").version == v3, 60, f"release on {v3}")
    assert world.ref("durable", "release").manifest == plain  # enrichment failed: the plain manifest
    assert app_info(world.origin.url, "durable")["pending"] == {}
    assert metric(world.origin.url, "minicdn_origin_unenriched_moves_total") == 1
    assert "moved release to its plain manifest" in world.origin.output()


def _pending(version: str) -> bytes:
    from origin.channels import Pending

    return Pending(version, None, 0).pack()


def _drop_a_chunk_only(storage: FileStorage, key: PublicKey, app: str, version: str) -> None:
    from common.manifest import open_manifest

    def chunks(v: str) -> set[bytes]:
        rec = VersionRecord.unpack(storage.get(paths.version_key(app, v)))
        m = open_manifest(storage.get(paths.manifest_key(rec.all_manifests[0].hex())), [key])
        return {c.id for p in m.packages for c in p.chunks}

    others = set().union(*(chunks(k.rsplit("/", 1)[1]) for k in storage.list(paths.versions_prefix(app))
                           if not k.endswith("/" + version)))  # fmt: skip
    victim = sorted(chunks(version) - others)[0]
    assert storage.exists(paths.chunk_key(victim.hex()))
    storage.delete(paths.chunk_key(victim.hex()))
