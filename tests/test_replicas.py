"""Issue 18 item 4: several origin replicas on one bucket, with edges in front of them.

Real processes on loopback: two origins (``--storage`` the same s3:// URL on moto's server
mode, each its own ``--data``; the storage contract itself also runs on Ceph RGW:
tests/test_storage_contract.py), and edges that list both with ``--upstream``.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.manifest import open_manifest, open_ref
from common.signing import PublicKey, generate_keypair
from tests.conftest import DEMO, TOKEN, app_info, http, publish, set_channel, tar_gz_of, wait_enriched
from tests.procs import Service, edge_service, free_port, metric, origin_service, start_all
from tests.s3_servers import S3Server
from tests.test_propagation import DEADLINE, ref_serial, served_serial, warm
from tests.waiting import eventually

APP, CHANNEL = "prop", "release"  # tests.test_propagation's helpers read these


@dataclass
class Shared:
    url: str  # --storage
    env: dict[str, str]  # what the origins need to reach it (AWS_* for S3)


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Shared:
    """A fresh bucket on the S3 server.  (The file driver passes the same storage contract,
    tests/test_storage_contract.py, and every other origin test runs on it; moto is the
    slow one, ~10 ms a request, hence small apps here.)"""
    server: S3Server = request.getfixturevalue("moto_server")
    return Shared(server.new_bucket(), server.env())


def replica(tmp: Path, shared: Shared, name: str, *extra: str) -> Service:
    """An origin on ``shared``, working in tmp/``name``, one key for all (tmp/keys)."""
    return origin_service(tmp, TOKEN, "--storage", shared.url, "--workers", "1", "--feed-poll", "200ms", *extra,
                          name=name, env=shared.env)


@pytest.fixture
def pair(tmp_path: Path, shared: Shared) -> Iterator[list[Service]]:
    nodes = start_all(replica(tmp_path, shared, "a"), replica(tmp_path, shared, "b"))
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def public(tmp: Path) -> PublicKey:
    return PublicKey.load(tmp / "keys" / "public.key")


def move(url: str, version: str, channel: str = CHANNEL) -> int:
    """``channel set`` through one replica: the new serial."""
    r = set_channel(url, APP, channel, {"version": version})
    assert r.status == 200, r.body
    return ref_serial(r.body)


def published(url: str, version: str, folder: Path = DEMO) -> None:
    r = publish(url, APP, version, tar_gz_of(folder))
    assert r.status in (200, 201), r.body
    wait_enriched(url, APP, version)


def test_published_through_one_replica_served_signed_by_the_other(
    tmp_path: Path, pair: list[Service]
) -> None:
    a, b = pair
    published(a.url, "1.0.0")
    move(a.url, "1.0.0")
    key = public(tmp_path)
    ref = open_ref(http("GET", f"{b.url}/v1/apps/{APP}/channels/{CHANNEL}").body, [key])
    assert ref.version == "1.0.0"
    m = open_manifest(http("GET", f"{b.url}/v1/manifests/{ref.manifest.hex()}").body, [key], ref.manifest)
    for chunk in (c for p in m.packages for c in p.chunks):
        assert http("GET", f"{b.url}/v1/chunks/{chunk.id.hex()}").status == 200
    assert [v["version"] for v in app_info(b.url, APP)["versions"]] == ["1.0.0"]


def test_concurrent_moves_through_two_replicas_lose_no_update(pair: list[Service]) -> None:
    a, b = pair
    published(a.url, "1.0.0")
    published(b.url, "1.1.0", _changed(pair[0].log.parent, "1.1.0"))
    start = move(a.url, "1.0.0")
    serials: list[int] = []
    lock = threading.Lock()

    def mover(url: str, version: str) -> None:
        for _ in range(MOVES):
            got = move(url, version)
            with lock:
                serials.append(got)

    threads = [threading.Thread(target=mover, args=(n.url, v)) for n in pair for v in ("1.0.0", "1.1.0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = MOVES * len(threads)
    assert sorted(serials) == list(range(start + 1, start + total + 1))  # each move its own serial
    r = http("GET", f"{b.url}/v1/apps/{APP}/channels/{CHANNEL}/history")
    entries = r.json()["entries"]  # type: ignore[index]
    moved = [e["serial"] for e in entries if e["serial"] > start]
    assert moved == list(range(start + 1, start + total + 1))  # every move in the history, in order


MOVES = 5  # per thread: 4 threads, two per replica


def _changed(tmp: Path, version: str) -> Path:
    """The demo app with one file changed (another version's content)."""
    folder = tmp / f"app-{version}"
    if not folder.exists():
        shutil.copytree(DEMO, folder)
        (folder / "app.js").write_bytes((folder / "app.js").read_bytes() + f"\n// {version}\n".encode())
    return folder


def test_enrichment_happens_once_per_version_across_replicas(tmp_path: Path, shared: Shared, pair: list[Service]) -> None:
    """A replica starting while another enriches a version leaves it to that one (the
    lease), and the version is enriched once, its publish move made once."""
    a, b = pair
    r = publish(a.url, APP, "4.0.0", tar_gz_of(_big(tmp_path, "4.0.0", 8)), )
    assert r.status == 201, r.body  # enrichment starts in the background
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)  # frozen mid-enrichment, its lease held
    try:
        c = replica(tmp_path, shared, "c").start()  # scans for versions not yet enriched
        try:
            eventually(lambda: "being enriched by another replica" in c.output(), 20, "c leaving 4.0.0 to a")
        finally:
            c.stop()
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_enriched(b.url, APP, "4.0.0")
    # the record says enriched a moment before a's loop counts the enrichment it finished
    eventually(lambda: metric(a.url, "minicdn_origin_enrich_seconds_count") == 1, 10, "a's enrichment counted")
    assert metric(b.url, "minicdn_origin_enrich_seconds_count") == 0


def _big(tmp: Path, version: str, blobs: int) -> Path:
    """The demo app and ``blobs`` x 256 KiB that do not compress: slow to publish and enrich."""
    folder = tmp / f"big-{version}"
    shutil.copytree(DEMO, folder)
    (folder / "assets").mkdir(exist_ok=True)
    for i in range(blobs):
        (folder / "assets" / f"blob{i}.bin").write_bytes(os.urandom(256 << 10))
    return folder


def test_a_replica_gone_for_good_leaves_its_queued_enrichment_and_pending_move_to_another(
    tmp_path: Path, shared: Shared
) -> None:
    """Replica a takes two publishes, the second with a channel (its move waits for the
    version's enrichment, queued behind the first's), and dies for good.  b never saw them:
    its ``--rescan`` finds the version not enriched and not being enriched, enriches it and
    makes the pending move (the review of issue 18 found it would wait for a restart)."""
    a, b = start_all(*(replica(tmp_path, shared, n, "--rescan", "2s") for n in ("a", "b")))
    try:
        assert publish(a.url, APP, "5.0.0", tar_gz_of(_big(tmp_path, "5.0.0", 24))).status == 201
        r = http("POST", f"{a.url}/v1/apps/{APP}/versions/5.1.0?channel={CHANNEL}", tar_gz_of(DEMO),
                 {"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 201 and r.json()["channel"]["state"] == "pending", r.body  # type: ignore[index]
        a.kill()  # mid-way through 5.0.0's enrichment; 5.1.0 still queued behind it
        assert app_info(b.url, APP)["pending"][CHANNEL]["version"] == "5.1.0"
        eventually(lambda: app_info(b.url, APP)["channels"].get(CHANNEL, {}).get("version") == "5.1.0", 40,
                   "b made the pending move")
        assert app_info(b.url, APP)["pending"] == {}
        assert metric(b.url, "minicdn_origin_enrich_seconds_count") >= 1  # b enriched 5.1.0
    finally:
        a.stop()
        b.stop()


def test_a_replica_killed_mid_publish_leaves_nothing_the_other_trips_over(
    tmp_path: Path, pair: list[Service]
) -> None:
    a, b = pair
    archive = tar_gz_of(_big(tmp_path, "3.0.0", 8))
    done = threading.Event()
    first: list[int] = []

    def upload() -> None:
        try:
            first.append(publish(a.url, APP, "3.0.0", archive).status)
        except OSError:  # cut short by the SIGKILL: the connection reset
            first.append(-1)
        finally:
            done.set()

    threading.Thread(target=upload, daemon=True).start()
    eventually(lambda: metric(a.url, "minicdn_origin_storage_operations_total", 'op="create",outcome="ok"') > 20,
               60, "the publish under way (chunks stored)")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    a.proc = None
    assert done.wait(10) and first != [201]  # killed mid-publish, not after it
    r = publish(b.url, APP, "3.0.0", archive)
    assert r.status == 201, r.body  # the version did not exist: nothing half-made in the way
    move(b.url, "3.0.0")
    a.start()  # the killed replica comes back and serves it too
    key = public(tmp_path)
    ref = open_ref(http("GET", f"{a.url}/v1/apps/{APP}/channels/{CHANNEL}").body, [key])
    m = open_manifest(http("GET", f"{a.url}/v1/manifests/{ref.manifest.hex()}").body, [key], ref.manifest)
    assert ref.version == "3.0.0"
    assert all(http("GET", f"{a.url}/v1/chunks/{c.id.hex()}").status == 200 for p in m.packages for c in p.chunks)


def test_edges_fail_over_and_a_move_through_either_replica_reaches_every_edge(
    tmp_path: Path, pair: list[Service]
) -> None:
    a, b = pair
    published(a.url, "1.0.0")
    published(a.url, "1.1.0", _changed(tmp_path, "1.1.0"))
    move(a.url, "1.0.0")
    edges = start_all(edge_service(tmp_path, a.url, b.url, name="ea"), edge_service(tmp_path, b.url, a.url, name="eb"))
    try:
        warm(*edges)
        for origin, version in ((a, "1.1.0"), (b, "1.0.0")):  # each edge hears the other replica's move
            serial = move(origin.url, version)
            reach(edges, serial, DEADLINE)
        a.kill()  # the first upstream of one edge dies: it goes on through the other
        serial = move(b.url, "1.1.0")
        reach(edges, serial, 30)
        key = public(tmp_path)
        for e in edges:
            ref = open_ref(http("GET", f"{e.url}/v1/apps/{APP}/channels/{CHANNEL}").body, [key])
            body = http("GET", f"{e.url}/v1/manifests/{ref.manifest.hex()}").body
            m = open_manifest(body, [key], ref.manifest)
            chunk = m.packages[0].chunks[0].id.hex()
            assert http("GET", f"{e.url}/v1/chunks/{chunk}").status == 200
    finally:
        for e in edges:
            e.stop()


def reach(edges: list[Service], serial: int, timeout: float) -> None:
    eventually(
        lambda: all(served_serial(e) == serial for e in edges),
        timeout,
        lambda: f"serial {serial} on every edge (now {[served_serial(e) for e in edges]})",
    )


# -- the same, in one process: two Channels (two replicas' worth of locks) on one bucket --


def test_refs_are_resigned_once_per_ref_and_pending_moves_made_once_across_replicas(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from common.ids import sha256
    from origin import paths
    from origin.channels import Channels
    from origin.publish import VersionRecord

    server: S3Server = request.getfixturevalue("moto_server")
    store = server.store(server.new_bucket())
    key = generate_keypair(tmp_path / "k")
    now = [1_800_000_000.0]
    moves: list[tuple[str, int, str]] = []
    replicas = [
        Channels(store, key, ttl=7 * 86400, clock=lambda: now[0], on_move=lambda a, c, s, k: moves.append((c, s, k)))
        for _ in range(2)
    ]
    for v in ("1.0.0", "1.1.0"):
        store.put(paths.version_key(APP, v), VersionRecord(sha256(v.encode()), b"d", 0, enriched=True, heads=(sha256(b"heads " + v.encode()),)).pack())
    channels = [f"c{i}" for i in range(6)]
    for c in channels:
        replicas[0].move(APP, c, "1.0.0", None)
    now[0] += 4 * 86400  # past half the refs' lifetime: both replicas find every ref due

    def both(fn: Callable[[Channels], object]) -> list[object]:
        out: list[object] = [None, None]
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            barrier.wait()
            out[i] = fn(replicas[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out

    done = both(lambda ch: ch.resign_due().resigned)
    assert sum(done) == len(channels)  # type: ignore[arg-type]  # each ref once, by one replica or the other
    refs = [open_ref(store.get(paths.channel_key(APP, c)), [key.public]) for c in channels]
    assert all(r.serial == 1 and r.expires == int(now[0]) + 7 * 86400 for r in refs)

    # a publish's pending move, applied by both replicas at once: one move
    from origin.channels import Pending

    store.put(paths.pending_key(APP, "c0"), Pending("1.1.0", None, 0).pack())
    moves.clear()
    both(lambda ch: ch.apply_pending(APP, "1.1.0"))
    assert moves == [("c0", 2, "publish")]
    assert replicas[1].pending(APP) == {} and replicas[0].current(APP, "c0").version == "1.1.0"  # type: ignore[union-attr]


def test_an_origin_whose_store_is_out_of_reach_answers_503_json_and_stays_up(tmp_path: Path) -> None:
    """Every request that needs the store is a 503 ``storage_unavailable`` with Retry-After
    (never a 500, never a dropped connection); the process stays up and healthy."""
    dead = free_port()  # nothing listens there
    shared = Shared("s3://nowhere/p", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}", "AWS_ACCESS_KEY_ID": "k",
                                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"})
    svc = replica(tmp_path, shared, "lost").start()
    try:
        for method, path, body in (("GET", "/v1/apps", None), ("GET", f"/v1/apps/{APP}/channels/{CHANNEL}", None),
                                   ("POST", f"/v1/apps/{APP}/versions/1.0.0", tar_gz_of(DEMO))):
            r = http(method, svc.url + path, body, {"Authorization": f"Bearer {TOKEN}"})
            assert r.status == 503 and r.json()["error"] == "storage_unavailable", (path, r.body)  # type: ignore[index]
            assert r.headers["retry-after"] == "1"
        assert http("GET", svc.url + "/healthz").status == 200
        assert metric(svc.url, "minicdn_origin_storage_operations_total", 'outcome="error"') >= 3
    finally:
        svc.stop()
