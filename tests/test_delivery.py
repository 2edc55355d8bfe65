"""Bundles, deltas and dcz manifests end to end: a real origin (which enriches versions in
the background) and a real edge, the real client, installs compared byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from client.client import Client, ClientConfig, FetchSummary
from common import dcz
from common.errors import IntegrityError
from common.manifest import MAIN_PACKAGE
from common.opening import OpenRequest, pack_request
from common.pkgmeta import open_package
from common.signing import PublicKey
from tests.conftest import (
    DEMO,
    INDEPENDENT,
    NORMAL,
    TOKEN,
    app_info,
    http,
    publish,
    set_channel,
    source_files,
    tar_gz_of,
    tree,
)
from tests.procs import Service, edge_service, metric, origin_service
from tests.tamper import TamperProxy
from tests.waiting import eventually

ALL = (MAIN_PACKAGE, NORMAL, INDEPENDENT)


@dataclass
class Cdn:
    origin: Service
    edge: Service
    key_path: Path
    src: dict[str, Path]  # version → its files

    @property
    def key(self) -> PublicKey:
        return PublicKey.load(self.key_path)

    def config(self, store: Path, plan: str = "auto", edge: str | None = None, retry_for: float = 10.0) -> ClientConfig:
        return ClientConfig(edges=(edge or self.edge.url,), public_keys=(self.key,), store_dir=store,
                            timeout=10.0, plan=plan, retry_for=retry_for)

    def manifest_id(self, version: str) -> str:
        return str(next(v["manifest"] for v in app_info(self.origin.url, "demo")["versions"] if v["version"] == version))


def _build(tmp: Path, version: str, edit: int) -> Path:
    """DEMO with a one-line change in the main and the normal subpackage; the independent
    subpackage is the same in every version."""
    out = tmp / version
    shutil.copytree(DEMO, out)
    for rel in ("app.js", f"{NORMAL}/pages/checkout/checkout.js"):
        (out / rel).write_bytes((out / rel).read_bytes().replace(b"\n", f"\n// build {edit}\n".encode(), 1))
    return out


def wait_enriched(url: str, count: int, timeout: float = 60) -> None:
    def done() -> bool:
        return sum(1 for v in app_info(url, "demo")["versions"] if v["enriched"]) >= count

    eventually(done, timeout, f"{count} versions enriched")


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cdn]:
    tmp = tmp_path_factory.mktemp("delivery")
    src = {"1.0.0": _build(tmp / "src", "1.0.0", 1), "1.1.0": _build(tmp / "src", "1.1.0", 2)}
    origin = origin_service(tmp, TOKEN, "--ref-max-age", "0").start()
    edge: Service | None = None
    try:
        edge = edge_service(tmp, origin.url).start()
        for version, folder in src.items():
            assert publish(origin.url, "demo", version, tar_gz_of(folder)).status == 201
        wait_enriched(origin.url, 2)
        for channel, version in (("v1", "1.0.0"), ("v2", "1.1.0")):
            assert set_channel(origin.url, "demo", channel, {"version": version}).status == 200
        yield Cdn(origin, edge, tmp / "keys" / "public.key", src)
    finally:
        if edge is not None:
            edge.stop()
        origin.stop()


async def install(cdn: Cdn, config: ClientConfig, out: Path, channel: str,
                  packages: tuple[str, ...] = (NORMAL, INDEPENDENT)) -> FetchSummary:
    async with Client(config) as c:
        return await c.install("demo", out, channel=channel, packages=[p for p in packages if p != MAIN_PACKAGE])


# -- every plan installs the same bytes ------------------------------------------------------


@pytest.mark.parametrize("plan", ["auto", "chunks", "bundle", "delta"])
async def test_every_plan_yields_byte_identical_installs(cdn: Cdn, tmp_path: Path, plan: str) -> None:
    config, out = cdn.config(tmp_path / "store", plan), tmp_path / "app"
    sent = metric(cdn.edge.url, "minicdn_edge_sent_bytes_total")
    cold = await install(cdn, config, out, "v1")
    assert tree(out) == source_files(cdn.src["1.0.0"], ALL)
    assert cold.bytes_downloaded == metric(cdn.edge.url, "minicdn_edge_sent_bytes_total") - sent
    expected_cold = {"chunks": "chunks", "bundle": "bundle"}.get(plan)
    if expected_cold:  # no base yet: a forced delta falls back to the cheapest
        assert set(cold.plans.values()) == {expected_cold}
    assert cold.chunks_downloaded == cold.chunks and cold.requests <= 2 + 3

    update = await install(cdn, config, out, "v2")
    assert tree(out) == source_files(cdn.src["1.1.0"], ALL)
    changed = {"chunks": "chunks", "bundle": "bundle"}.get(plan, "delta")  # auto: the delta is cheapest
    assert update.plans == {MAIN_PACKAGE: changed, NORMAL: changed, INDEPENDENT: "none"}
    assert update.plan == changed and update.version == "1.1.0"
    if changed == "delta":
        assert update.by_kind["bundles"] < 2000 and update.requests == 3  # open, two deltas


# -- tampering ----------------------------------------------------------------------------------


class FlipBundles(TamperProxy):
    """Flips one byte of every bundle or delta passing through."""

    @staticmethod
    def _flip_chunks(path: str, body: bytes) -> bytes:
        if path.startswith("/v1/bundles/"):
            b = bytearray(body)
            b[len(b) // 2] ^= 0x01
            return bytes(b)
        return body


@pytest.fixture
async def flipper(cdn: Cdn) -> AsyncIterator[FlipBundles]:
    p = await FlipBundles(cdn.edge.url, mode="flip-chunk").start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.mark.parametrize("plan", ["bundle", "delta"])
async def test_a_bundle_or_delta_with_a_flipped_byte_is_refused(
        cdn: Cdn, flipper: FlipBundles, tmp_path: Path, plan: str) -> None:
    store, out = tmp_path / "store", tmp_path / "app"
    await install(cdn, cdn.config(store), out, "v1")
    before = tree(out)
    with pytest.raises(IntegrityError):  # retried for a second, not 10 s: every copy is flipped
        await install(cdn, cdn.config(store, plan, edge=flipper.url, retry_for=1.0), out, "v2")
    assert tree(out) == before
    assert not list(tmp_path.glob(".app.*"))  # no staging or old trees left behind
    # a cold install of a flipped bundle is refused too, and installs nothing
    with pytest.raises(IntegrityError):
        await install(cdn, cdn.config(tmp_path / "cold", "bundle", edge=flipper.url, retry_for=1.0),
                      tmp_path / "cold-app", "v1")
    assert not (tmp_path / "cold-app").exists()


# -- a delta needs its base ---------------------------------------------------------------------


async def test_a_delta_whose_base_the_client_lacks_is_never_chosen(cdn: Cdn, tmp_path: Path) -> None:
    # 1. the normal subpackage was not installed: its delta has no base, even when asked for
    store, out = tmp_path / "s1", tmp_path / "a1"
    await install(cdn, cdn.config(store), out, "v1", packages=(MAIN_PACKAGE,))
    s = await install(cdn, cdn.config(store, "delta"), out, "v2", packages=(MAIN_PACKAGE, NORMAL))
    assert s.plans[MAIN_PACKAGE] == "delta" and s.plans[NORMAL] in ("chunks", "bundle")
    assert tree(out) == source_files(cdn.src["1.1.0"], (MAIN_PACKAGE, NORMAL))

    # 2. the store lost the chunks, but the installed files are intact: they are the base
    store, out = tmp_path / "s2", tmp_path / "a2"
    await install(cdn, cdn.config(store), out, "v1", packages=(MAIN_PACKAGE,))
    shutil.rmtree(store / "chunks")
    s = await install(cdn, cdn.config(store, "delta"), out, "v2", packages=(MAIN_PACKAGE,))
    assert s.plans == {MAIN_PACKAGE: "delta"}
    assert tree(out) == source_files(cdn.src["1.1.0"], (MAIN_PACKAGE,))

    # 3. the store lost the chunks and an installed file was edited: no base, no delta
    store, out = tmp_path / "s3", tmp_path / "a3"
    await install(cdn, cdn.config(store), out, "v1", packages=(MAIN_PACKAGE,))
    shutil.rmtree(store / "chunks")
    (out / "app.wxss").write_bytes(b"/* edited on the phone */\n")
    s = await install(cdn, cdn.config(store, "delta"), out, "v2", packages=(MAIN_PACKAGE,))
    assert s.plans[MAIN_PACKAGE] in ("chunks", "bundle")
    assert tree(out) == source_files(cdn.src["1.1.0"], (MAIN_PACKAGE,))


# -- manifests travel as dcz --------------------------------------------------------------------


def _envelope(cdn: Cdn, mid: str) -> bytes:
    return http("GET", f"{cdn.origin.url}/v1/manifests/{mid}").body


@pytest.mark.parametrize("server", ["origin", "edge"])
def test_a_manifest_is_served_as_dcz_against_an_earlier_one(cdn: Cdn, server: str) -> None:
    """The origin and the edge (which fills the dictionary manifest like any other) both."""
    old, new = cdn.manifest_id("1.0.0"), cdn.manifest_id("1.1.0")
    base = cdn.origin.url if server == "origin" else cdn.edge.url
    url = f"{base}/v1/manifests/{new}"
    ask = {"Accept-Encoding": "dcz, zstd", dcz.AVAILABLE_DICTIONARY: dcz.available_dictionary(bytes.fromhex(old))}
    r = http("GET", url, headers=ask)
    assert r.status == 200 and r.headers["content-encoding"] == "dcz"
    assert {v.strip().lower() for v in r.headers["vary"].split(",")} == {"accept-encoding", "available-dictionary"}
    assert r.headers["etag"] == f'"{new}"'
    envelope = dcz.decode(r.body, _envelope(cdn, old), 1 << 20)
    assert hashlib.sha256(envelope).hexdigest() == new
    zstd = http("GET", url, headers={"Accept-Encoding": "zstd"})
    assert zstd.headers["content-encoding"] == "zstd" and len(r.body) < len(zstd.body) / 3
    # an unknown dictionary, dcz not accepted, or the manifest itself as dictionary: plain zstd
    for headers in ({**ask, dcz.AVAILABLE_DICTIONARY: ":" + base64.b64encode(b"\0" * 32).decode() + ":"},
                    {**ask, "Accept-Encoding": "zstd"},
                    {**ask, dcz.AVAILABLE_DICTIONARY: dcz.available_dictionary(bytes.fromhex(new))}):
        other = http("GET", url, headers=headers)
        assert other.headers["content-encoding"] == "zstd" and other.body == zstd.body
    assert http("GET", url, headers={**ask, "If-None-Match": f'"{new}"'}).status == 304


@pytest.mark.parametrize("server", ["origin", "edge"])
async def test_an_update_brings_changed_package_manifests_as_dcz_against_the_held_ones(
    cdn: Cdn, tmp_path: Path, server: str
) -> None:
    """Through the edge or from the origin directly (the same read API), the open answer of
    an update carries only the package manifests that changed, each as dcz against the one
    the phone holds; the client decodes them, checks each against its head, and keeps them."""
    base = cdn.origin.url if server == "origin" else cdn.edge.url
    config = cdn.config(tmp_path / "store", edge=base)
    out = tmp_path / "app"
    await install(cdn, config, out, "v1")
    [rec] = json.loads((tmp_path / "store" / "state.json").read_text())["installs"].values()
    have = {n: (bytes.fromhex(c), bytes.fromhex(m)) for n, (c, m) in rec["metas"].items()}
    assert set(have) == {MAIN_PACKAGE, NORMAL, INDEPENDENT}
    ask = pack_request(OpenRequest(have=have))
    reply = http("POST", f"{base}/v1/apps/demo/channels/v2/open", ask, {"Content-Type": "application/x-msgpack"})
    assert reply.status == 200 and reply.headers["cache-control"] == "no-store"
    answer = msgpack.unpackb(reply.body, raw=False)
    assert len(answer["heads"]) == 3  # one per package held, each signed
    # the independent subpackage did not change: its head, and no manifest
    assert [coding for _, coding, _ in answer["manifests"]] == ["dcz", "dcz"]
    s = await install(cdn, config, out, "v2")
    assert s.manifest == cdn.manifest_id("1.1.0") and s.by_kind["open"] == len(reply.body)
    assert tree(out) == source_files(cdn.src["1.1.0"], ALL)
    for pid, _, _ in answer["manifests"]:
        stored = (tmp_path / "store" / "manifests" / pid.hex()).read_bytes()
        assert open_package(stored, pid).name in (MAIN_PACKAGE, NORMAL)


def test_fetch_cli_reports_the_plan_of_each_package(cdn: Cdn, tmp_path: Path) -> None:
    def fetch(channel: str, *extra: str) -> dict[str, object]:
        r = subprocess.run(
            [sys.executable, "-m", "common", "fetch", "demo", "--edge", cdn.edge.url,
             "--public-key", str(cdn.key_path), "--out", str(tmp_path / "app"), "--store", str(tmp_path / "store"), "--channel", channel,
             "--package", NORMAL, "--json", *extra],
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    cold = fetch("v1", "--plan", "chunks")
    assert cold["plan"] == "chunks" and cold["plans"] == {MAIN_PACKAGE: "chunks", NORMAL: "chunks"}
    update = fetch("v2")
    assert update["plan"] == "delta" and update["plans"] == {MAIN_PACKAGE: "delta", NORMAL: "delta"}
    assert fetch("v2")["plan"] == "none"



@pytest.mark.parametrize("server", ["origin", "edge"])
def test_a_bad_open_request_gets_a_json_error_never_a_500(cdn: Cdn, server: str) -> None:
    """The open endpoint's hostile input, on both servers: each answer a JSON error with a
    fitting 4xx, and the server still answers a good request afterwards."""
    base = cdn.origin.url if server == "origin" else cdn.edge.url
    url = f"{base}/v1/apps/demo/channels/v1/open"
    msgpack_type = {"Content-Type": "application/x-msgpack"}
    cases = [
        (url, b"\xc1", 400, "bad_request"),  # not msgpack
        (url, msgpack.packb([1, 2]), 400, "bad_request"),  # not a map
        (url, msgpack.packb({"packages": ["../../etc"]}), 400, "bad_request"),
        (url, msgpack.packb({"bucket": 100}), 400, "bad_request"),
        (url, msgpack.packb({"have": [["x", b"short", b"y" * 32]]}, use_bin_type=True), 400, "bad_request"),
        (url, b"\x90" * (300 << 10), 413, "too_large"),
        (url, msgpack.packb({"packages": ["nope"]}), 404, "unknown_package"),
        (f"{base}/v1/apps/demo/channels/nowhere/open", b"\x80", 404, "not_found"),
        (f"{base}/v1/apps/NOT-AN-APP/channels/v1/open", b"\x80", 400, None),
    ]
    for target, body, status, code in cases:
        r = http("POST", target, body, msgpack_type)
        assert r.status == status, (body[:40], r.status, r.body[:200])
        error = json.loads(r.body)
        assert code is None or error["error"] == code, error
    r = http("GET", url)
    assert r.status == 405 and "POST" in r.headers["allow"]
    good = http("POST", url, pack_request(OpenRequest()), msgpack_type)
    assert good.status == 200 and len(msgpack.unpackb(good.body, raw=False)["heads"]) == 1


async def test_a_phone_whose_store_lost_a_held_manifest_still_updates(cdn: Cdn, tmp_path: Path) -> None:
    """The state says a package is held, the store no longer has its manifest: the phone
    does not offer it (the edge could neither skip it nor use it as a dictionary), and the
    update goes through (it failed on every edge: the review of issue 16 found it)."""
    config, out = cdn.config(tmp_path / "store"), tmp_path / "app"
    await install(cdn, config, out, "v1")
    for held in (tmp_path / "store" / "manifests").iterdir():
        held.write_bytes(b"corrupt")  # lost or damaged: get_manifest refuses it either way
    s = await install(cdn, config, out, "v2")
    assert s.version == "1.1.0" and tree(out) == source_files(cdn.src["1.1.0"], ALL)


async def test_the_store_keeps_only_the_package_manifests_its_installs_hold(cdn: Cdn, tmp_path: Path) -> None:
    """Each update brings the manifests of the packages that changed; those they replace
    are dropped when the store is collected (they piled up for good before)."""
    config, out = cdn.config(tmp_path / "store"), tmp_path / "app"
    await install(cdn, config, out, "v1")
    await install(cdn, config, out, "v2")
    [rec] = json.loads((tmp_path / "store" / "state.json").read_text())["installs"].values()
    held = {m for _, m in rec["metas"].values()}
    assert {p.name for p in (tmp_path / "store" / "manifests").iterdir()} == held
    assert len(held) == 3
