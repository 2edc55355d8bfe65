"""Phones opening mini-programs through a ring of edges (run by ``make loadtest``, which
sets everything up: see loadtests/cluster.py).

Each simulated phone is attached to one edge (its nearest PoP) and keeps a chunk store,
as the client SDK does.  Opening an app (its main package): ``POST .../open`` naming the
main package the phone holds, if any; when the answer carries a package manifest (the
channel serves other content), ask for the chunks the phone lacks with ``POST
/v1/chunks:batch`` (at most 1024 ids a batch): every chunk on a cold install, only the
changed ones on an update.  Apps are chosen by
Zipf popularity; now and then a phone is replaced by a new one (an empty store), so cold
installs go on all run long.

Environment: ``MINICDN_LOAD_EDGES`` (space-separated base URLs), ``MINICDN_LOAD_APPS``
(app ids, most popular first), ``MINICDN_LOAD_ORIGIN`` (for the closing report),
``MINICDN_LOAD_ZIPF`` (exponent, default 1.0).

At the end it prints, for each edge, its hit ratio (hits / (hits + misses) of every object
it served, to phones and to its peers) and where its misses were filled from, then the
origin's request counts and the share of the chunks phones asked for that the origin served.
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
import random
from collections.abc import Callable
from typing import Any

import msgpack
from locust import HttpUser, between, events, task

from loadtests.net import scrape, total

EDGES = os.environ.get("MINICDN_LOAD_EDGES", "http://127.0.0.1:8081").split()
APPS = os.environ.get("MINICDN_LOAD_APPS", "demo").split()
ORIGIN = os.environ.get("MINICDN_LOAD_ORIGIN", "")
ZIPF = float(os.environ.get("MINICDN_LOAD_ZIPF", "1.0"))
MAIN = "__APP__"
NEW_PHONE = 0.05  # chance, per app opened, that this user becomes a new phone
MAX_BATCH = 1024

_weights = list(itertools.accumulate(1 / (rank**ZIPF) for rank in range(1, len(APPS) + 1)))
_phone_ids = itertools.count()
asked = {"chunks": 0, "installs": 0, "updates": 0, "launches": 0}


def zipf_app(rnd: random.Random) -> str:
    return APPS[bisect.bisect_left(_weights, rnd.random() * _weights[-1])]


def payload(envelope: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(msgpack.unpackb(envelope, raw=False)["payload"], raw=False)
    assert isinstance(body, dict)
    return body


class Phone(HttpUser):
    wait_time = between(0.05, 0.5)
    host = EDGES[0]

    def on_start(self) -> None:
        n = next(_phone_ids)
        self.rnd = random.Random(n)
        self.edge = EDGES[n % len(EDGES)]
        self.new_phone()

    def new_phone(self) -> None:
        self.store: set[bytes] = set()  # chunk ids held, shared by every app (as the SDK's store)
        # app → (content digest, package manifest id, its bytes) of the main package held
        self.held: dict[str, tuple[bytes, bytes, bytes]] = {}

    @task
    def open_app(self) -> None:
        if self.rnd.random() < NEW_PHONE:
            self.new_phone()
        app = zipf_app(self.rnd)
        held = self.held.get(app)
        have = [[MAIN, held[0], held[1]]] if held else []
        with self.client.post(
            f"{self.edge}/v1/apps/{app}/channels/release/open",
            data=msgpack.packb({"have": have}, use_bin_type=True),
            headers={"Content-Type": "application/x-msgpack"},
            name="open",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"open {r.status_code}")
                return
            answer = msgpack.unpackb(r.content, raw=False)
        if not answer["manifests"]:  # what it holds is what the channel serves
            asked["launches"] += 1
            return
        kind = "update" if held else "install"
        [(pid, coding, data)] = answer["manifests"]
        raw = _decode(coding, data, held[2] if held else None)
        meta = msgpack.unpackb(raw, raw=False)
        wanted = [c[0] for c in meta["chunks"]]
        missing = list(dict.fromkeys(c for c in wanted if c not in self.store))
        for i in range(0, len(missing), MAX_BATCH):
            self.batch(missing[i : i + MAX_BATCH], kind)
        content = payload(answer["heads"][0])["content"]
        self.held[app] = (content, pid, raw)
        asked[f"{kind}s"] += 1

    def batch(self, ids: list[bytes], kind: str) -> None:
        body = msgpack.packb([c.hex() for c in ids])
        with self.client.post(
            f"{self.edge}/v1/chunks:batch", data=body, name=f"batch ({kind})", catch_response=True
        ) as r:
            got = 0
            if r.status_code == 200:
                for hexid, frame in msgpack.Unpacker(io.BytesIO(r.content), raw=False):
                    if frame is not None:
                        self.store.add(bytes.fromhex(hexid))
                        got += 1
            if got != len(ids):
                r.failure(f"{got} of {len(ids)} chunks")
        asked["chunks"] += len(ids)


def _decode(coding: str, data: bytes, base: bytes | None) -> bytes:
    """A package manifest of an open answer (no checks: the load test measures edges; the
    SDK verifies, client/opened.py)."""
    import zstandard

    if coding == "identity":
        return data
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    assert base is not None  # dcz: a 40-byte header, then a frame against the held manifest
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=d).decompress(data[40:])


# -- the closing report ---------------------------------------------------------------------------


def report(environment: Any = None, **_kw: Any) -> None:
    if environment is not None and environment.stats is not None:
        t = environment.stats.total
        print(
            f"\nthroughput {t.total_rps:.0f} req/s, p50 {t.get_response_time_percentile(0.5):.0f} ms, "
            f"p99 {t.get_response_time_percentile(0.99):.0f} ms "
            f"({t.num_requests} requests, {t.num_failures} failed)"
        )
    print(
        "\nedge                     hit ratio   hits     misses   from peers  from upstream  peer errors ring"
    )
    peer, upstream = 'kind="peer"', 'kind="upstream"'
    for base in EDGES:
        m = scrape(base)
        hits, misses = total(m, "minicdn_edge_hits_total"), total(m, "minicdn_edge_misses_total")
        ratio = hits / (hits + misses) if hits + misses else 0.0
        print(
            f"{base:24} {ratio:9.3f}  {hits:8.0f} {misses:8.0f} "
            f"{total(m, 'minicdn_edge_upstream_requests_total', peer):10.0f} "
            f"{total(m, 'minicdn_edge_upstream_requests_total', upstream):14.0f} "
            f"{total(m, 'minicdn_edge_peer_errors_total'):11.0f} "
            f"{total(m, 'minicdn_edge_ring_size'):4.0f}"
        )
    print(
        f"phones: {asked['installs']} installs, {asked['updates']} updates, {asked['launches']} launches "
        f"(nothing new); {asked['chunks']} chunks asked for"
    )
    if ORIGIN:
        o = scrape(ORIGIN)
        chunks = total(o, "minicdn_origin_chunk_requests_total")
        print(
            f"origin: {total(o, 'minicdn_origin_requests_total'):.0f} requests, {chunks:.0f} chunk requests"
            + (f" ({chunks / asked['chunks']:.2%} of the chunks phones asked for)" if asked["chunks"] else "")
        )


# locust's add_listener is untyped: typed here, so that report keeps its type under mypy --strict
_on_test_stop: Callable[[Callable[..., None]], object] = events.test_stop.add_listener
_on_test_stop(report)
