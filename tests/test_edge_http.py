"""The edge as a process on loopback, in front of a real origin: the read API's HTTP
semantics, single-flight across 64 clients, hits by tier, a lying upstream, streaming
batches, timeouts, failover, draining and the access log."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import msgpack
import pytest

from tests.conftest import TOKEN, auth, http, packages_of
from tests.edge_support import (
    App,
    batch_items,
    chunk_files,
    edge,
    eventually,
    get_chunk,
    publish_app,
    random_app,
    scripted,
    verify_chunk,
)
from tests.procs import Service, free_port, metric, origin_chunks


@pytest.fixture(scope="module")
def apps(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, App]:
    tmp = tmp_path_factory.mktemp("apps")
    from tests.conftest import DEMO

    return {
        "demo": publish_app(origin.url, "demo", DEMO),
        "big": publish_app(origin.url, "big", random_app(tmp / "big", 1.0)),
    }


@pytest.fixture(scope="module")
def node(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = edge(tmp_path_factory.mktemp("edge"), origin.url).start()
    try:
        yield svc
    finally:
        svc.stop()


# -- must show 1: 64 concurrent requests for one cold chunk -----------------------------------


def test_64_concurrent_requests_for_a_cold_chunk_make_one_upstream_fetch(
    origin: Service, apps: dict[str, App], node: Service
) -> None:
    cid = apps["big"].chunks[0]
    before = origin_chunks(origin)
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda i: get_chunk(node.url, cid, zstd=i % 2 == 0), range(64)))
    for r in replies:
        verify_chunk(cid, r)
    assert origin_chunks(origin) - before == 1
    assert metric(node.url, "minicdn_edge_coalesced_total") + metric(
        node.url, "minicdn_edge_hits_total") >= 63


# -- must show 2: a second pass is all hits, by tier --------------------------------------------


def test_a_second_pass_is_all_hits_by_tier_and_bytes_are_counted(
    origin: Service, apps: dict[str, App], tmp_path: Path
) -> None:
    ids = list(dict.fromkeys(apps["demo"].chunks + apps["big"].chunks[1:20]))
    svc = edge(tmp_path, origin.url).start()
    try:
        for cid in ids:
            verify_chunk(cid, get_chunk(svc.url, cid, zstd=True))
        eventually(lambda: len(chunk_files(svc)) == len(ids), what="every fill committed to disk")
        misses = metric(svc.url, "minicdn_edge_misses_total")
        fetched = origin_chunks(origin)
        for tier in ("memory", "disk"):
            hits = metric(svc.url, "minicdn_edge_hits_total", f'tier="{tier}"')
            sent = metric(svc.url, "minicdn_edge_sent_bytes_total")
            replies = [get_chunk(svc.url, cid, zstd=True) for cid in ids]
            for cid, r in zip(ids, replies, strict=True):
                verify_chunk(cid, r)
            assert metric(svc.url, "minicdn_edge_hits_total", f'tier="{tier}"') - hits == len(ids)
            assert metric(svc.url, "minicdn_edge_misses_total") == misses
            assert metric(svc.url, "minicdn_edge_sent_bytes_total") - sent == sum(len(r.body) for r in replies)
            assert origin_chunks(origin) == fetched
            if tier == "memory":  # a restart empties memory: the next pass is all disk hits
                svc.stop()
                svc.start()
                misses = 0.0
    finally:
        svc.stop()


# -- must show 6: an upstream that sends wrong bytes ------------------------------------------


def test_wrong_bytes_from_upstream_give_502_are_not_cached_and_are_refetched(
    origin: Service, apps: dict[str, App], tmp_path: Path
) -> None:
    cid = apps["big"].chunks[30]
    with scripted(origin.url) as liar:
        liar.corrupt_all = True
        svc = edge(tmp_path, liar.url).start()
        try:
            for attempt in (1, 2):
                r = get_chunk(svc.url, cid, zstd=True)
                assert r.status == 502 and json.loads(r.body)["error"] == "upstream"
                assert liar.requests.count(f"/v1/chunks/{cid}") == attempt  # nothing cached
            assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="integrity"') == 2
            assert metric(svc.url, "minicdn_edge_cache_bytes") == 0 and not chunk_files(svc)
            liar.corrupt_all = False
            verify_chunk(cid, get_chunk(svc.url, cid))
        finally:
            svc.stop()


# -- HTTP semantics --------------------------------------------------------------------------


def test_bad_ids_and_oversize_batches_are_refused(node: Service) -> None:
    for bad in ("ABC", "0" * 63, "G" * 64, "A" * 64):
        r = get_chunk(node.url, bad)
        assert r.status == 400 and json.loads(r.body)["error"] == "invalid_id"
    r = http("POST", f"{node.url}/v1/chunks:batch", msgpack.packb(["0" * 64] * 1025))
    assert r.status == 413
    assert http("POST", f"{node.url}/v1/chunks:batch", b"\xc1").status == 400
    assert http("POST", f"{node.url}/v1/chunks:batch", msgpack.packb(["xyz"])).status == 400
    assert http("GET", f"{node.url}/v1/apps/Bad!App/channels/release").status == 400
    assert get_chunk(node.url, "0" * 64).status == 404


def test_conditionals_ranges_head_and_encodings(apps: dict[str, App], node: Service) -> None:
    cid = apps["demo"].chunks[0]
    raw = get_chunk(node.url, cid)
    verify_chunk(cid, raw)
    assert raw.headers["etag"] == f'"{cid}"' and "content-encoding" not in raw.headers
    assert raw.headers["cache-control"] == "public, max-age=31536000, immutable"
    z = get_chunk(node.url, cid, zstd=True)
    assert z.headers["content-encoding"] == "zstd" and len(z.body) < len(raw.body)
    assert http("GET", f"{node.url}/v1/chunks/{cid}", headers={"If-None-Match": f'"{cid}"'}).status == 304
    part = get_chunk(node.url, cid, Range="bytes=10-19")
    assert part.status == 206 and part.body == raw.body[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(raw.body)}"
    assert get_chunk(node.url, cid, Range=f"bytes={len(raw.body)}-").status == 416
    head = http("HEAD", f"{node.url}/v1/chunks/{cid}")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == len(raw.body)

    m = http("GET", f"{node.url}/v1/manifests/{apps['demo'].manifest}")
    assert m.status == 200 and m.headers["etag"] == f'"{apps["demo"].manifest}"'
    mz = http("GET", f"{node.url}/v1/manifests/{apps['demo'].manifest}", headers={"Accept-Encoding": "zstd"})
    from common import codec

    assert mz.headers["content-encoding"] == "zstd" and codec.decompress(mz.body, 1 << 24) == m.body

    ref = http("GET", f"{node.url}/v1/apps/demo/channels/release")
    assert ref.status == 200 and ref.headers["cache-control"].startswith("public, max-age=")
    assert http("GET", f"{node.url}/v1/apps/demo/channels/release",
                headers={"If-None-Match": ref.headers["etag"]}).status == 304
    assert http("GET", f"{node.url}/v1/apps/demo/channels/nope").status == 404
    listing = http("GET", f"{node.url}/v1/apps/demo")
    assert listing.status == 200 and json.loads(listing.body)["app"] == "demo"


def test_metrics_has_every_edge_metric_of_the_design(node: Service) -> None:
    text = http("GET", f"{node.url}/metrics").body.decode()
    for name in ("minicdn_edge_requests_total", "minicdn_edge_hits_total", "minicdn_edge_misses_total",
                 "minicdn_edge_sent_bytes_total", "minicdn_edge_upstream_requests_total",
                 "minicdn_edge_coalesced_total", "minicdn_edge_cache_bytes", "minicdn_edge_cache_limit_bytes",
                 "minicdn_edge_evicted_bytes_total", "minicdn_edge_request_seconds_bucket"):
        assert f"\n{name}" in text, name
    assert 'minicdn_edge_cache_limit_bytes{tier="memory"} 2.68435456e+08' in text
    assert http("GET", f"{node.url}/readyz").status == 200


def test_admin_calls_need_the_token_prefetch_warms_and_purge_drops_refs(
    apps: dict[str, App], origin: Service, tmp_path: Path
) -> None:
    svc = edge(tmp_path, origin.url).start()
    try:
        body = json.dumps({"app": "demo", "channel": "release"}).encode()
        assert http("POST", f"{svc.url}/v1/admin/prefetch", body).status == 401
        assert http("POST", f"{svc.url}/v1/admin/prefetch", body, auth("wrong")).status == 401
        r = http("POST", f"{svc.url}/v1/admin/prefetch", body, auth(TOKEN))
        warmed = {"manifests": 1, "chunks": len(apps["demo"].chunks), "cached": 0, "packages": packages_of(origin.url, "demo")}
        assert r.status == 200 and json.loads(r.body) == warmed
        misses = metric(svc.url, "minicdn_edge_misses_total")
        for cid in apps["demo"].chunks:
            verify_chunk(cid, get_chunk(svc.url, cid))
        assert metric(svc.url, "minicdn_edge_misses_total") == misses
        r = http("POST", f"{svc.url}/v1/admin/purge", json.dumps({"app": "demo"}).encode(), auth(TOKEN))
        assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    finally:
        svc.stop()


def test_a_batch_streams_each_answer_as_soon_as_it_is_ready(
    origin: Service, apps: dict[str, App], tmp_path: Path
) -> None:
    first, held = apps["big"].chunks[40], apps["big"].chunks[41]
    with scripted(origin.url) as up:
        up.hold.add(held)
        svc = edge(tmp_path, up.url).start()
        try:
            conn = HTTPConnection("127.0.0.1", svc.port, timeout=20)
            try:
                conn.request("POST", "/v1/chunks:batch", msgpack.packb([first, held]))
                resp = conn.getresponse()
                assert resp.status == 200
                unpacker = msgpack.Unpacker(raw=False)
                items: list[object] = []
                while not items:
                    piece = resp.read1(65536)
                    assert piece, "stream ended early"
                    unpacker.feed(piece)
                    items += list(unpacker)
                assert items[0][0] == first  # type: ignore[index]
                # The upstream counts a hold only after it wrote the item before it, so the edge may
                # pass that item on first: the second is still held (nothing released it yet).
                eventually(lambda: up.held() == 1, 10, "the upstream holding the second id")
                up.release()
                rest = resp.read()
                unpacker.feed(rest)
                items += list(unpacker)
                assert [i[0] for i in items] == [first, held]  # type: ignore[index]
            finally:
                conn.close()  # also when an assertion failed: a leaked socket fails a later test
        finally:
            up.release()
            svc.stop()


def test_a_batch_answers_nil_for_a_missing_id_and_fills_misses(apps: dict[str, App], node: Service) -> None:
    ids = [apps["demo"].chunks[0], "f" * 64, apps["big"].chunks[50]]
    r = http("POST", f"{node.url}/v1/chunks:batch", msgpack.packb(ids))
    items = batch_items(r.body)
    assert [i[0] for i in items] == ids and items[1][1] is None
    from common import codec

    for hexid, frame in (items[0], items[2]):
        codec.decode_chunk(bytes.fromhex(hexid), frame)  # type: ignore[arg-type]


def test_a_slow_upstream_times_out_into_502_and_a_dead_one_fails_over(
    origin: Service, apps: dict[str, App], tmp_path: Path
) -> None:
    slow_id = apps["big"].chunks[60]
    with scripted(origin.url) as up:
        up.hold.add(slow_id)
        svc = edge(tmp_path, up.url, extra=("--upstream-timeout", "300ms")).start()
        try:
            assert get_chunk(svc.url, slow_id).status == 502
            assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="timeout"') == 1
        finally:
            up.release()
            svc.stop()
    dead = f"http://127.0.0.1:{free_port()}"
    svc = edge(tmp_path, dead, origin.url, name="failover").start()
    try:
        verify_chunk(apps["big"].chunks[61], get_chunk(svc.url, apps["big"].chunks[61]))
        assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="connect"') == 1
    finally:
        svc.stop()


def test_sigterm_drains_not_ready_finishes_in_flight_and_exits(
    origin: Service, apps: dict[str, App], tmp_path: Path
) -> None:
    held = apps["big"].chunks[62]
    log = tmp_path / "access.jsonl"
    with scripted(origin.url) as up:
        up.hold.add(held)
        svc = edge(tmp_path, up.url, extra=("--drain-delay", "3s", "--access-log", str(log))).start()
        try:
            result: list[object] = []
            t = threading.Thread(target=lambda: result.append(get_chunk(svc.url, held)))
            t.start()
            eventually(lambda: up.held() == 1, what="the request reached the upstream")
            assert svc.proc is not None
            svc.proc.send_signal(signal.SIGTERM)
            eventually(lambda: http("GET", f"{svc.url}/readyz", timeout=2).status == 503, timeout=3,
                       what="not ready while draining")
            up.release()
            t.join(20)
            verify_chunk(held, result[0])  # type: ignore[arg-type]
            assert svc.proc.wait(20) == 0
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert any(line["path"] == f"/v1/chunks/{held}" and line["status"] == 200 for line in lines)
        finally:
            up.release()
            svc.kill()


def test_the_edge_raises_its_open_files_limit_to_the_hard_one(origin: Service, tmp_path: Path) -> None:
    """Started with a shell's soft limit (256 here), the edge serves with the hard one:
    each connection and each sealed body is a descriptor."""
    import resource
    import subprocess

    from tests.procs import MINICDN

    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    assert hard > 256, f"this machine's hard limit on open files is {hard}"
    svc = edge(tmp_path, origin.url)
    with open(svc.log, "ab") as log:
        svc.proc = subprocess.Popen(
            ["prlimit", f"--nofile=256:{hard}", "--", *MINICDN, *svc.args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **svc.env},
        )
    try:
        svc.wait_ready()
        limits = Path(f"/proc/{svc.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
        assert f"open-files limit raised from 256 to {hard}" in svc.output()
    finally:
        svc.stop()


def test_the_app_list_pages_through_an_edge_as_at_the_origin(apps: dict[str, App], node: Service) -> None:
    """The edge forwards a page request (checked as the origin checks it), not the bare
    list: before, ``?limit=1`` through an edge gave every app and ``next: null``."""
    whole = json.loads(http("GET", node.url + "/v1/apps").body)["apps"]
    assert {"big", "demo"} <= set(whole)
    seen: list[str] = []
    cursor = ""
    while True:
        r = http("GET", node.url + f"/v1/apps?limit=1{cursor}")
        assert r.status == 200
        body = json.loads(r.body)
        assert len(body["apps"]) == 1
        seen += body["apps"]
        if body["next"] is None:
            break
        cursor = f"&cursor={body['next']}"
    assert seen == sorted(whole)
    r = http("GET", node.url + "/v1/apps?prefix=de&limit=5")
    assert json.loads(r.body)["apps"] == [a for a in sorted(whole) if a.startswith("de")]
    for bad in ("limit=0", "limit=x", "limit=1&limit=2", "cursor=..%2F", "prefix=%0A"):
        r = http("GET", node.url + f"/v1/apps?{bad}")
        assert r.status == 400, (bad, r.status, r.body)
        assert json.loads(r.body)["error"] == "bad_request"
