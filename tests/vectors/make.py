"""Regenerate the format 2 test vectors (tests/vectors/README.md) from a real origin and
edge: ``python -m tests.vectors.make``.  The committed files are what tests/test_vectors.py
and third-party clients check; regenerating changes every signature and timestamp (the key
is new), so do it only when the format changes."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack

from common import wire
from common.opening import OpenRequest, pack_request
from loadtests.bench_delivery import cdn, move, publish, wait_enriched

HERE = Path(__file__).resolve().parent
APP = "vectors"

APP_JSON = {
    "pages": ["pages/index/index"],
    "subpackages": [{"root": "sub", "pages": ["p/index"]}],
    "preloadRule": {"pages/index/index": {"packages": ["sub"]}},
}


def _app(folder: Path, revision: int) -> dict[str, bytes]:
    files = {
        "app.json": json.dumps(APP_JSON, indent=2).encode() + b"\n",
        "app.js": b"App({ onLaunch() { console.log('vectors'); } });\n",
        "pages/index/index.js": b"Page({ data: { title: 'index' } });\n" * 40,
        "pages/index/index.wxml": b"<view class='title'>{{title}}</view>\n" * 30,
        "sub/p/index.js": (f"// revision {revision}\n".encode() + b"Page({ data: { n: 1 } });\n" * 60),
        "sub/p/index.wxml": b"<text>sub page</text>\n" * 25,
    }
    for path, body in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(body)
    return files


def _get(url: str, zstd: bool = False) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "zstd"} if zstd else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def _post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/x-msgpack"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def _expected(files: dict[str, bytes], package: str) -> dict[str, dict[str, Any]]:
    keep = {p: b for p, b in files.items() if (p.startswith("sub/") == (package == "sub"))}
    return {p: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in sorted(keep.items())}


def main() -> int:
    out = HERE
    objects = out / "objects"
    shutil.rmtree(objects, ignore_errors=True)
    objects.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="minicdn-vectors-") as tmp:
        work = Path(tmp)
        v1, v2 = _app(work / "v1", 0), _app(work / "v2", 1)
        with cdn(work / "cdn") as (origin, edge):
            shutil.copy(work / "cdn" / "keys" / "public.key", out / "public.key")
            publish(origin.url, APP, "1.0.0", work / "v1")
            wait_enriched(origin.url, APP, 1)
            move(origin.url, APP, "release", "1.0.0")
            base = f"{edge.url}/v1/apps/{APP}/channels/release/open"
            cold_req = OpenRequest(page="pages/index/index")  # the main package, and sub by preloadRule
            cold = _post(base, pack_request(cold_req))
            publish(origin.url, APP, "1.0.1", work / "v2")
            wait_enriched(origin.url, APP, 2)
            move(origin.url, APP, "release", "1.0.1")
            _until_edge_serves(edge.url, "1.0.1")
            held = _held(cold)
            update_req = OpenRequest(have=held)
            update = _post(base, pack_request(update_req))
            for answer in (cold, update):
                _save_objects(edge.url, answer, objects)
        (out / "open-cold.msgpack").write_bytes(cold)
        (out / "open-update.msgpack").write_bytes(update)
        (out / "request-cold.msgpack").write_bytes(pack_request(cold_req))
        (out / "request-update.msgpack").write_bytes(pack_request(update_req))
        cases = [
            _case("cold open of the main page (its preloadRule brings sub)", "cold", None, v1),
            _case("update of both packages from 1.0.0 (only sub changed)", "update", "cold", v2),
        ]
        doc = {"format": 2, "app": APP, "channel": "release", "cases": cases}
        (out / "vectors.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def _until_edge_serves(edge: str, version: str) -> None:
    for _ in range(200):
        ref = wire.unpack(wire.unpack(_get(f"{edge}/v1/apps/{APP}/channels/release"))["payload"])
        if ref["version"] == version:
            return
        time.sleep(0.05)
    raise SystemExit(f"the edge did not serve {version} within 10 s")


def _held(answer: bytes) -> dict[str, tuple[bytes, bytes]]:
    """What a phone holds after installing ``answer``: every package, by content and manifest."""
    a = msgpack.unpackb(answer, raw=False)
    out = {}
    for envelope in a["heads"]:
        head = wire.unpack(wire.unpack(envelope)["payload"])
        out[head["name"]] = (head["content"], head["manifest"])
    return out


def _save_objects(edge: str, answer: bytes, objects: Path) -> None:
    """Every object the answer's packages name: package manifests, bundles, deltas, chunks."""
    a = msgpack.unpackb(answer, raw=False)
    ref = wire.unpack(wire.unpack(a["ref"])["payload"])
    for mid in (ref["manifest"], ref["heads"]):
        (objects / mid.hex()).write_bytes(_get(f"{edge}/v1/manifests/{mid.hex()}"))
    heads = msgpack.unpackb(_get(f"{edge}/v1/manifests/{ref['heads'].hex()}"), raw=False)
    for envelope in heads:
        head = wire.unpack(wire.unpack(envelope)["payload"])
        body = _get(f"{edge}/v1/manifests/{head['manifest'].hex()}")
        (objects / head["manifest"].hex()).write_bytes(body)
        meta = wire.unpack(body)
        for cid, _raw, _stored in meta["chunks"]:
            (objects / cid.hex()).write_bytes(_get(f"{edge}/v1/chunks/{cid.hex()}", zstd=True))
        for oid in [meta["bundle"][0]] + [d[1] for d in meta.get("deltas", [])]:
            (objects / oid.hex()).write_bytes(_get(f"{edge}/v1/bundles/{oid.hex()}"))


def _case(name: str, step: str, holds: str | None, files: dict[str, bytes]) -> dict[str, Any]:
    answer = msgpack.unpackb((HERE / f"open-{step}.msgpack").read_bytes(), raw=False)
    ref = wire.unpack(wire.unpack(answer["ref"])["payload"])
    return {
        "name": name,
        "request": f"request-{step}.msgpack",
        "answer": f"open-{step}.msgpack",
        "holds": holds,  # the case whose installed packages the phone holds
        "now": ref["issued"],  # check the ref's expiry as of this time
        "version": ref["version"],
        "manifest": ref["manifest"].hex(),
        "packages": {p: _expected(files, p) for p in ("__APP__", "sub")},
    }


if __name__ == "__main__":
    raise SystemExit(main())
