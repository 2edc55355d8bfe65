"""The client library and ``minicdn fetch`` against real origin and edge processes."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client.client import Client, ClientConfig
from common.errors import ExpiredRef, IntegrityError, RollbackRef, SignatureError
from common.manifest import Ref, in_rollout, open_ref
from common.pkgmeta import decode_heads
from common.signing import PublicKey, SigningKey
from tests.conftest import (
    DEMO,
    DEMO_APP_JSON,
    INDEPENDENT,
    NORMAL,
    SUBS,
    TOKEN,
    http,
    publish,
    set_channel,
    source_files,
    tar_gz_of,
    tree,
    wait_enriched,
)
from tests.procs import Service, edge_service, metric, origin_service
from tests.tamper import TamperProxy


@dataclass
class Cdn:
    origin: Service
    edges: list[Service]
    key_dir: Path

    @property
    def public_key(self) -> Path:
        return self.key_dir / "public.key"

    def signing_key(self) -> SigningKey:
        return SigningKey.load(self.key_dir / "signing.key")


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cdn]:
    tmp = tmp_path_factory.mktemp("cdn")
    origin = origin_service(tmp, TOKEN).start()
    edges: list[Service] = []
    try:
        for i in range(2):
            edges.append(edge_service(tmp, origin.url, name=f"edge{i}").start())
        r = publish(origin.url, "demo", "1.0.0", tar_gz_of(DEMO))
        assert r.status == 201, r.body
        wait_enriched(origin.url, "demo", "1.0.0")  # so refs to it never move under a test
        assert set_channel(origin.url, "demo", "release", {"version": "1.0.0"}).status == 200
        yield Cdn(origin, edges, tmp / "keys")
    finally:
        for e in edges:
            e.stop()
        origin.stop()


def config(cdn: Cdn, store: Path, edges: list[str] | None = None, **kw: object) -> ClientConfig:
    return ClientConfig(
        edges=tuple(edges or [cdn.edges[0].url]),
        public_keys=(PublicKey.load(cdn.public_key),),
        store_dir=store,
        timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )


def fetch_cli(cdn: Cdn, tmp: Path, *args: str, edge: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "common",
            "fetch",
            "demo",
            "--edge",
            edge or cdn.edges[0].url,
            "--public-key",
            str(cdn.public_key),
            "--store",
            str(tmp / "store"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 1. installs ---------------------------------------------------------------------------


def test_fresh_install_equals_the_source_and_packages_add_on_demand(cdn: Cdn, tmp_path: Path) -> None:
    out = tmp_path / "app"
    r = fetch_cli(cdn, tmp_path, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    # a cold install: the bundle costs less than the chunks, each compressed alone
    assert summary["packages"] == ["__APP__"] and summary["plan"] == "bundle"
    assert summary["plans"] == {"__APP__": "bundle"} and summary["requests"] == 2  # open, bundle
    assert tree(out) == source_files(DEMO, {"__APP__"})
    r = fetch_cli(cdn, tmp_path, "--out", str(out), "--package", NORMAL, "--json")
    assert r.returncode == 0, r.stderr
    assert tree(out) == source_files(DEMO, {"__APP__", NORMAL})
    # the main package's chunks were in the store already: only the subpackage's came
    assert json.loads(r.stdout)["chunks_downloaded"] < json.loads(r.stdout)["chunks"]


def test_independent_subpackage_installs_alone(cdn: Cdn, tmp_path: Path) -> None:
    out = tmp_path / "ind"
    r = fetch_cli(cdn, tmp_path, "--out", str(out), "--package", INDEPENDENT, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["packages"] == [INDEPENDENT]
    assert tree(out) == source_files(DEMO, {INDEPENDENT})


def test_open_page_installs_its_package_and_preloads(cdn: Cdn, tmp_path: Path) -> None:
    page, names = next(iter(DEMO_APP_JSON["preloadRule"].items()))
    out = tmp_path / "open"
    r = fetch_cli(cdn, tmp_path, "--out", str(out), "--open", page, "--json")
    assert r.returncode == 0, r.stderr
    installed = set(json.loads(r.stdout)["packages"])
    by_name = {s.get("name", r): r for r, s in SUBS.items()} | {r: r for r in SUBS}
    assert {by_name.get(n.strip("/"), n) for n in names["packages"]} <= installed


def test_unknown_package_is_a_clear_error(cdn: Cdn, tmp_path: Path) -> None:
    r = fetch_cli(cdn, tmp_path, "--out", str(tmp_path / "x"), "--package", "nope")
    assert r.returncode != 0 and "no package 'nope'" in r.stderr and "Traceback" not in r.stderr


# -- 2. updates download only what changed ---------------------------------------------------


def test_update_downloads_only_changed_chunks(cdn: Cdn, tmp_path: Path) -> None:
    out = tmp_path / "app"
    assert fetch_cli(cdn, tmp_path, "--out", str(out)).returncode == 0
    v2 = tmp_path / "v2"
    shutil.copytree(DEMO, v2)
    target = v2 / "app.js"
    target.write_bytes(target.read_bytes().replace(b"\n", b"\n// 1.0.1\n", 1))
    assert publish(cdn.origin.url, "demo", "1.0.1", tar_gz_of(v2)).status == 201
    assert set_channel(cdn.origin.url, "demo", "update", {"version": "1.0.1"}).status == 200
    edge = cdn.edges[0].url
    sent_before = metric(edge, "minicdn_edge_sent_bytes_total")
    # the chunks plan (a delta would be cheaper once 1.0.1 is enriched: tests/test_delivery.py)
    r = fetch_cli(cdn, tmp_path, "--out", str(out), "--channel", "update", "--plan", "chunks", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    sent = metric(edge, "minicdn_edge_sent_bytes_total") - sent_before
    assert s["version"] == "1.0.1" and tree(out) == source_files(v2, {"__APP__"})
    assert 1 <= s["chunks_downloaded"] <= 2 < s["chunks"]
    assert s["bytes_downloaded"] == sent  # what fetch reports is what the edge sent
    assert s["by_kind"]["chunks"] < s["stored_bytes"] / 2


# -- 3. a lying edge is refused, the previous install stays ----------------------------------


@pytest.fixture
async def proxy(cdn: Cdn) -> AsyncIterator[TamperProxy]:
    p = await TamperProxy(cdn.edges[0].url).start()
    try:
        yield p
    finally:
        await p.stop()


async def _install(
    cdn: Cdn,
    store: Path,
    out: Path,
    edges: list[str],
    channel: str = "release",
    plan: str = "auto",
    retry_for: float = 10.0,
) -> object:
    async with Client(config(cdn, store, edges, plan=plan, retry_for=retry_for)) as c:
        return await c.install("demo", out, channel=channel)


@pytest.mark.parametrize(
    "mode", ["flip-chunk", "bad-ref-signature", "expired-ref", "replayed-ref", "foreign-heads", "endless-open"]
)
async def test_tampering_is_refused_and_the_previous_install_is_intact(
    cdn: Cdn, proxy: TamperProxy, tmp_path: Path, mode: str
) -> None:
    store, out = tmp_path / "store", tmp_path / "app"
    await _install(cdn, store, out, [cdn.edges[0].url])
    before = tree(out)
    expected: type[Exception]
    if mode == "flip-chunk":
        shutil.rmtree(store / "chunks")  # so the chunks must come (tampered) from the proxy
        (store / "chunks").mkdir()
        proxy.mode, expected = "flip-chunk", IntegrityError
        # a new version to install, so chunks are fetched through the proxy
        v = tmp_path / "v"
        shutil.copytree(DEMO, v)
        (v / "app.js").write_bytes((v / "app.js").read_bytes() + b"\n// tamper\n")
        publish(cdn.origin.url, "demo", "2.0.0-flip", tar_gz_of(v))
        assert set_channel(cdn.origin.url, "demo", "flip", {"version": "2.0.0-flip"}).status == 200
        channel = "flip"
    elif mode == "bad-ref-signature":
        proxy.mode, expected, channel = "bad-ref-signature", SignatureError, "release"
    elif mode == "foreign-heads":  # mix-and-match: release's heads under another version's ref
        release = open_ref(http("GET", f"{cdn.origin.url}/v1/apps/demo/channels/release").body,
                           [PublicKey.load(cdn.public_key)])
        heads = decode_heads(http("GET", f"{cdn.origin.url}/v1/manifests/{release.heads.hex()}").body)
        v = tmp_path / "v"
        shutil.copytree(DEMO, v)
        (v / "app.js").write_bytes((v / "app.js").read_bytes() + b"\n// mix\n")
        publish(cdn.origin.url, "demo", "2.0.0-mix", tar_gz_of(v))
        assert set_channel(cdn.origin.url, "demo", "mix", {"version": "2.0.0-mix"}).status == 200
        proxy.mode, expected, channel = "edit-open", IntegrityError, "mix"
        proxy.edit = lambda answer: {**answer, "heads": heads, "manifests": []}
    elif mode == "endless-open":  # an answer past any bound: refused, never held whole
        proxy.mode, expected, channel = "edit-open", IntegrityError, "release"
        proxy.edit = lambda answer: {**answer, "padding": b"\0" * (65 << 20)}
    elif mode == "expired-ref":
        old = open_ref(
            http("GET", f"{cdn.edges[0].url}/v1/apps/demo/channels/release").body,
            [PublicKey.load(cdn.public_key)],
        )
        now = int(time.time())
        stale = Ref(
            old.app, old.channel, old.serial + 100, now - 7200, now - 3600, old.version, old.manifest, heads=old.heads
        )
        proxy.mode, proxy.ref_body, expected, channel = (
            "serve-ref",
            stale.seal(cdn.signing_key()),
            ExpiredRef,
            "release",
        )
    else:
        old_body = (
            http("GET", f"{cdn.origin.url}/v1/apps/demo/channels/replay").body
            if http("GET", f"{cdn.origin.url}/v1/apps/demo/channels/replay").status == 200
            else None
        )
        assert set_channel(cdn.origin.url, "demo", "replay", {"version": "1.0.0"}).status == 200
        first = http("GET", f"{cdn.origin.url}/v1/apps/demo/channels/replay").body
        assert set_channel(cdn.origin.url, "demo", "replay", {"version": "1.0.0"}).status == 200
        await _install(cdn, store, out, [cdn.origin.url], channel="replay")  # the client sees serial n+1
        before = tree(out)
        proxy.mode, proxy.ref_body, expected, channel = "serve-ref", first, RollbackRef, "replay"
        assert old_body is None or old_body != first
    # flip-chunk tampers with chunks: use the chunks plan (bundles and deltas: tests/test_delivery.py)
    with pytest.raises(expected):  # retried for a second, not the default 10 s: the lie is constant
        await _install(cdn, store, out, [proxy.url], channel=channel, plan="chunks", retry_for=1.0)
    assert tree(out) == before
    assert not list(tmp_path.glob(".app.*"))  # no staging or old trees left behind


def _cli_error(r: subprocess.CompletedProcess[str], status: int, what: str) -> str:
    """The failed fetch's one line: exit ``status``, ``Error: <what>: ...``, nothing else."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status, r.stderr
    assert len(lines) == 1, r.stderr  # no traceback, no "Unclosed client session"
    assert lines[0].startswith(f"Error: {what}: ") and f"{what}: {what}:" not in lines[0], lines[0]
    assert lines[0].endswith("the previous install, if any, is untouched"), lines[0]
    return lines[0]


def _state(tmp: Path, text: str) -> None:
    (tmp / "store").mkdir(exist_ok=True)
    (tmp / "store" / "state.json").write_text(text)


@pytest.mark.parametrize(
    ("case", "status", "what"),
    [
        ("corrupt-state", 7, "store"),
        ("state-of-wrong-shape", 7, "store"),
        ("store-in-use", 7, "store"),
        ("out-under-a-file", 7, "store"),
        ("no-edge", 3, "network"),
        ("wrong-key", 4, "signature"),
        ("rolled-back", 5, "rollback"),
        ("no-such-app", 6, "not_found"),
        ("bad-app-id", 2, "usage"),
        ("unknown-package", 2, "usage"),
        ("key-not-hex", 2, "usage"),
    ],
)
def test_cli_failure_is_one_line_with_the_exit_status_of_its_class(
    cdn: Cdn, tmp_path: Path, case: str, status: int, what: str
) -> None:
    """docs/client.md's table: one line naming the class, and that class's exit status."""
    out, args, app = tmp_path / "app", [], "demo"
    key, edge = cdn.public_key, cdn.edges[0].url
    if case == "corrupt-state":
        _state(tmp_path, "{bad")
    elif case == "state-of-wrong-shape":
        _state(tmp_path, '{"serials": {"demo/release": "high"}}')
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "app"
    elif case == "no-edge":
        edge, args = "http://127.0.0.1:9", ["--timeout", "2", "--retry-for", "1s"]
    elif case == "wrong-key":
        key = tmp_path / "wrong.key"
        key.write_text("ab" * 32 + "\n")
        args = ["--retry-for", "1s"]  # a refused signature is retried (another edge may be honest)
    elif case == "rolled-back":
        _state(tmp_path, json.dumps({"serials": {"demo/release": 10**9}, "installs": {}}))
        args = ["--retry-for", "1s"]
    elif case == "no-such-app":
        app = "nosuchapp"
    elif case == "bad-app-id":
        app = "Bad App"
    elif case == "unknown-package":
        args = ["--package", "nope"]
    elif case == "key-not-hex":
        key = tmp_path / "k.key"
        key.write_text("not a key")
    cmd = [
        sys.executable,
        "-m",
        "common",
        "fetch",
        app,
        "--edge",
        edge,
        "--public-key",
        str(key),
        "--out",
        str(out),
        "--store",
        str(tmp_path / "store"),
        *args,
    ]
    if case == "store-in-use":
        (tmp_path / "store").mkdir()
        with open(tmp_path / "store" / ".lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    else:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    line = _cli_error(r, status, what)
    if case == "corrupt-state":
        assert "state.json is corrupt" in line and "not reset" in line
        assert (tmp_path / "store" / "state.json").read_text() == "{bad"  # never silently reset


async def test_an_install_rides_out_an_origin_restart(tmp_path: Path) -> None:
    """Nothing cached on the edge and the origin down (a restart): the install keeps
    retrying for --retry-for (10 s by default) and completes, byte-exact.  (It used to give
    up after max(3, 2 x edges) tries, 0.3 s of backoff with one edge: the origin comes back
    only once the client has begun a try past that.)"""
    origin = origin_service(tmp_path, TOKEN).start()
    edge = edge_service(tmp_path, origin.url)
    try:
        edge.start()
        assert publish(origin.url, "demo", "1.0.0", tar_gz_of(DEMO)).status == 201
        assert set_channel(origin.url, "demo", "release", {"version": "1.0.0"}).status == 200
        origin.stop()

        async def restart(c: Client) -> None:
            # Synchronised on the client's own count of tries, not on a guess of how long
            # they take (a fixed 4 s wait could end before the client had even begun).
            deadline = time.monotonic() + 60
            while c.edges.traffic.requests <= c.edges.attempts:
                assert time.monotonic() < deadline, "the client stopped trying"
                await asyncio.sleep(0.02)
            await asyncio.to_thread(origin.start)

        cfg = ClientConfig(
            edges=(edge.url,),
            public_keys=(PublicKey.load(tmp_path / "keys" / "public.key"),),
            store_dir=tmp_path / "store",
            timeout=5.0,
        )
        async with Client(cfg) as c:
            summary, _ = await asyncio.gather(c.install("demo", tmp_path / "app"), restart(c))
        assert summary.version == "1.0.0"
        assert tree(tmp_path / "app") == source_files(DEMO, ["__APP__"])
    finally:
        edge.stop()
        origin.stop()


# -- 4. rollout ------------------------------------------------------------------------------


async def test_rollout_places_each_user_by_the_formula(cdn: Cdn, tmp_path: Path) -> None:
    v = tmp_path / "v"
    shutil.copytree(DEMO, v)
    (v / "app.js").write_bytes((v / "app.js").read_bytes() + b"\n// canary\n")
    publish(cdn.origin.url, "demo", "3.0.0-canary", tar_gz_of(v))
    r = set_channel(
        cdn.origin.url,
        "demo",
        "canary",
        {"version": "1.0.0", "rollout": {"version": "3.0.0-canary", "percent": 30}},
    )
    assert r.status == 200
    out = tmp_path / "app"
    counts = {"1.0.0": 0, "3.0.0-canary": 0}
    async with Client(config(cdn, tmp_path / "store")) as c:
        for i in range(100):
            user = f"user-{i:03d}"
            expected = (
                "3.0.0-canary"
                if int(hashlib.sha256(f"demo:{user}".encode()).hexdigest()[:8], 16) % 100 < 30
                else "1.0.0"
            )
            assert in_rollout("demo", user, 30) == (expected != "1.0.0")
            s = await c.install("demo", out, channel="canary", user=user)
            assert s.version == expected, user
            counts[expected] += 1
    assert counts["1.0.0"] > 0 and counts["3.0.0-canary"] > 0
    assert tree(out) == source_files(v if expected != "1.0.0" else DEMO, {"__APP__"})


# -- 5. an edge dies mid-download --------------------------------------------------------------


async def test_edge_killed_mid_download_client_finishes_through_another(tmp_path: Path) -> None:
    origin = origin_service(tmp_path, TOKEN).start()
    edges = [edge_service(tmp_path, origin.url, name=f"e{i}").start() for i in range(2)]
    try:
        big = tmp_path / "big"
        shutil.copytree(DEMO, big)
        import random

        rnd = random.Random(7)
        (big / "assets").mkdir()
        for i in range(8):  # ~2 MB of incompressible assets: many chunks, several batches
            (big / "assets" / f"blob{i}.bin").write_bytes(rnd.randbytes(256 * 1024))
        assert publish(origin.url, "big", "1.0.0", tar_gz_of(big)).status == 201
        assert set_channel(origin.url, "big", "release", {"version": "1.0.0"}).status == 200
        killed = False

        def on_progress(_b: int, chunks: int, _eb: int, _ec: int) -> None:
            nonlocal killed
            if chunks >= 3 and not killed:
                edges[0].kill()  # SIGKILL while batches are in flight
                killed = True

        cfg = ClientConfig(
            edges=(edges[0].url, edges[1].url),
            public_keys=(PublicKey.load(tmp_path / "keys" / "public.key"),),
            store_dir=tmp_path / "store",
            timeout=5.0,
            batch_size=8,
            batches_in_flight=2,
            plan="chunks",
        )  # batches are what this test kills an edge under
        async with Client(cfg, progress=on_progress) as c:
            s = await c.install("big", tmp_path / "out")
        assert killed and s.chunks_downloaded == s.chunks
        # the default install is the main package, which holds assets/ (outside every subpackage root)
        assert tree(tmp_path / "out") == source_files(big, {"__APP__"})
        assert "assets/blob7.bin" in tree(tmp_path / "out")
    finally:
        for e in edges:
            e.stop()
        origin.stop()


# -- the store stays bounded -------------------------------------------------------------------


async def test_store_is_bounded_and_collects_unreferenced_chunks(cdn: Cdn, tmp_path: Path) -> None:
    """Two installs share one store; after one of them moves to a new version with a store
    limit of 1 byte, exactly the chunks that no install references any more are gone."""
    store = tmp_path / "store"
    await _install(cdn, store, tmp_path / "a", [cdn.edges[0].url])
    async with Client(config(cdn, store)) as c:
        kept = await c.install("demo", tmp_path / "b", packages=[INDEPENDENT])
    v = tmp_path / "v"
    shutil.copytree(DEMO, v)
    (v / "app.js").write_bytes(b"// store test\n" + (v / "app.js").read_bytes())
    assert publish(cdn.origin.url, "demo", "4.0.0-store", tar_gz_of(v)).status == 201
    assert set_channel(cdn.origin.url, "demo", "store", {"version": "4.0.0-store"}).status == 200
    before = {p.name for p in (store / "chunks").glob("*/*")}
    async with Client(config(cdn, store, store_size=1)) as c:  # everything unreferenced must go
        moved = await c.install("demo", tmp_path / "a", channel="store")
        referenced: set[str] = set()
        for s in (moved, kept):
            m = await c.manifest(bytes.fromhex(s.manifest))
            referenced |= {ch.id.hex() for p in m.packages if p.name in s.packages for ch in p.chunks}
    remaining = {p.name for p in (store / "chunks").glob("*/*")}
    assert moved.freed_bytes > 0 and before - remaining  # the old app.js chunk was collected
    assert remaining == referenced
    assert tree(tmp_path / "a") == source_files(v, {"__APP__"})
    assert tree(tmp_path / "b") == source_files(DEMO, {INDEPENDENT})


# -- no file work on the event loop -------------------------------------------------------------


class FileCalls:
    """File system calls under ``root``, by thread, as the interpreter reports them to audit
    hooks (PEP 578: open, mkdir, rename, scandir, flock, ...; a plain stat has no event)."""

    EVENTS = frozenset(
        {
            "open",
            "os.mkdir",
            "os.rename",
            "os.remove",
            "os.rmdir",
            "os.listdir",
            "os.scandir",
            "os.utime",
            "os.chmod",
            "os.truncate",
            "shutil.rmtree",
            "fcntl.flock",
        }
    )
    watching: FileCalls | None = None
    _hooked = False

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.calls: list[tuple[str, str, int]] = []  # (event, path, thread id)

    def __enter__(self) -> FileCalls:
        if not FileCalls._hooked:  # an audit hook cannot be removed: one for the session
            sys.addaudithook(FileCalls._hook)
            FileCalls._hooked = True
        FileCalls.watching = self
        return self

    def __exit__(self, *exc: object) -> None:
        FileCalls.watching = None

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        w = FileCalls.watching  # never raise here: the audited call would fail
        if w is None or event not in FileCalls.EVENTS or not args:
            return
        where = args[0]
        if isinstance(where, str | bytes | os.PathLike):
            if not os.fsdecode(where).startswith(w.root):
                return
        elif event != "fcntl.flock":
            return  # an open() of a descriptor: its file was opened, and seen, by path
        w.calls.append((event, str(where), threading.get_ident()))


async def test_no_file_work_runs_on_the_event_loop(cdn: Cdn, tmp_path: Path) -> None:
    """A cold install by chunks, a subpackage added by bundle, the same again (nothing to do):
    the lock, the state saves, store reads and writes, the planning, the tree and the
    collection all touch files, and none of it may block the loop (issue 14)."""
    loop_thread = threading.get_ident()
    out = tmp_path / "app"
    with FileCalls(tmp_path) as seen:
        async with Client(config(cdn, tmp_path / "store", plan="chunks")) as c:
            assert (await c.install("demo", out)).plan == "chunks"
        async with Client(config(cdn, tmp_path / "store", plan="bundle")) as c:
            assert (await c.install("demo", out, packages=[NORMAL])).plans[NORMAL] == "bundle"
            assert (await c.install("demo", out, packages=[NORMAL])).plan == "none"
    assert tree(out) == source_files(DEMO, {"__APP__", NORMAL})
    on_loop = [(event, path) for event, path, thread in seen.calls if thread == loop_thread]
    assert on_loop == []
    events = {event for event, _, _ in seen.calls}
    assert {"open", "os.rename", "os.scandir", "fcntl.flock"} <= events  # the watch saw the work


async def test_each_installs_summary_counts_its_own_traffic_on_a_shared_client(cdn: Cdn, tmp_path: Path) -> None:
    """A client that installs twice (a phone opening an app, then opening it again): the
    second summary counts the second install's requests and bytes, not the client's total
    (loadtests.phones records them per open)."""
    out = tmp_path / "app"
    async with Client(config(cdn, tmp_path / "store")) as c:
        first = await c.install("demo", out)
        again = await c.install("demo", out)
        total = c.edges.traffic
    assert first.plan == "bundle" and again.plan == "none"
    assert first.bytes_downloaded > 0 and again.requests >= 1  # the ref, at least
    assert again.bytes_downloaded < first.bytes_downloaded  # nothing but the ref (and manifest)
    assert again.requests + first.requests == total.requests
    assert again.bytes_downloaded + first.bytes_downloaded == total.bytes
    assert sum(again.by_kind.values()) == again.bytes_downloaded
