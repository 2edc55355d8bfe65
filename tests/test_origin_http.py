"""The origin's HTTP API against a real origin process, using only DESIGN.md's wire format."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import msgpack
import pytest
import zstandard

from common import wire
from common.manifest import open_manifest, open_ref
from common.signing import PublicKey, open_envelope
from tests.conftest import DEMO, Reply, auth, batch, enriched, http, publish, set_channel, tar_gz_of
from tests.procs import Service


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(origin: Service) -> Reply:
    r = publish(origin.url, "demo", "1.0.0", tar_gz_of(DEMO))
    assert r.status == 201, r.body
    enriched(origin.url, "demo", "1.0.0")  # so no ref to it moves under a test
    r2 = set_channel(origin.url, "demo", "release", {"version": "1.0.0"})
    assert r2.status == 200, r2.body
    return r


def test_publish_answer_counts_chunks_and_bytes(demo: Reply) -> None:
    body = demo.json()
    assert isinstance(body, dict)
    assert set(body) >= {"manifest", "chunks", "new_chunks", "raw_bytes", "stored_bytes"}
    assert body["chunks"] >= 3 and body["new_chunks"] == body["chunks"]
    assert body["raw_bytes"] == sum(len(b) for b in _files(DEMO).values())
    assert 0 < body["stored_bytes"] < body["raw_bytes"]


def test_rebuild_every_file_from_chunks_over_http(origin: Service, origin_key: PublicKey, demo: Reply) -> None:
    """Ref → manifest → chunks, each verified, reassembled into files equal to the source."""
    ref_r = http("GET", f"{origin.url}/v1/apps/demo/channels/release")
    assert ref_r.status == 200
    ref = open_ref(ref_r.body, [origin_key])
    assert ref.version == "1.0.0" and ref.expires > time.time()
    man_r = http("GET", f"{origin.url}/v1/manifests/{ref.manifest.hex()}")
    assert hashlib.sha256(man_r.body).digest() == ref.manifest
    manifest = open_manifest(man_r.body, [origin_key], ref.manifest)
    source = _files(DEMO)
    rebuilt: dict[str, bytes] = {}
    dctx = zstandard.ZstdDecompressor()
    for pkg in manifest.packages:
        ids = [c.id.hex() for c in pkg.chunks]
        answers = batch(origin.url, ids)
        assert [a[0] for a in answers] == ids  # request order
        stream = b""
        for (hexid, frame), entry in zip(answers, pkg.chunks, strict=True):
            assert isinstance(frame, bytes) and len(frame) == entry.stored_size
            raw = dctx.decompress(frame)
            assert hashlib.sha256(raw).hexdigest() == hexid and len(raw) == entry.raw_size
            stream += raw
        offset = 0
        for path, size in pkg.files:
            rebuilt[path] = stream[offset : offset + size]
            offset += size
        assert offset == len(stream)
    assert rebuilt == source
    app_json = json.loads(source["app.json"])
    roots = {s["root"].strip("/") for s in app_json.get("subPackages", app_json.get("subpackages", []))}
    assert {p.name for p in manifest.packages} == {"__APP__", *roots}
    assert len(roots) >= 2 and any(p.independent for p in manifest.packages)
    for pkg in manifest.packages:
        if pkg.name != "__APP__":
            assert all(path.startswith(pkg.name + "/") for path, _ in pkg.files)


def test_single_chunk_get_negotiates_zstd_and_honours_conditionals(origin: Service, origin_key: PublicKey,
                                                                    demo: Reply) -> None:
    mid = demo.json()["manifest"]  # type: ignore[index]
    manifest = open_manifest(http("GET", f"{origin.url}/v1/manifests/{mid}").body, [origin_key])
    entry = manifest.packages[0].chunks[0]
    url = f"{origin.url}/v1/chunks/{entry.id.hex()}"
    z = http("GET", url, headers={"Accept-Encoding": "zstd"})
    assert z.status == 200 and z.headers["content-encoding"] == "zstd"
    assert z.headers["etag"] == f'"{entry.id.hex()}"'
    assert z.headers["cache-control"] == "public, max-age=31536000, immutable"
    raw = http("GET", url, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in raw.headers
    assert hashlib.sha256(raw.body).digest() == entry.id
    assert zstandard.ZstdDecompressor().decompress(z.body) == raw.body
    assert http("GET", url, headers={"If-None-Match": f'"{entry.id.hex()}"'}).status == 304
    part = http("GET", url, headers={"Range": "bytes=10-19", "Accept-Encoding": "identity"})
    assert part.status == 206 and part.body == raw.body[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(raw.body)}"
    bad = http("GET", url, headers={"Range": f"bytes={len(raw.body)}-"})
    assert bad.status == 416 and bad.headers["content-range"] == f"bytes */{len(raw.body)}"
    head = http("HEAD", url, headers={"Accept-Encoding": "zstd"})
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == len(z.body)


def test_manifest_is_served_zstd_when_accepted(origin: Service, demo: Reply) -> None:
    mid = demo.json()["manifest"]  # type: ignore[index]
    plain = http("GET", f"{origin.url}/v1/manifests/{mid}")
    z = http("GET", f"{origin.url}/v1/manifests/{mid}", headers={"Accept-Encoding": "zstd"})
    assert z.headers["content-encoding"] == "zstd" and len(z.body) < len(plain.body)
    assert zstandard.ZstdDecompressor().decompress(z.body) == plain.body
    assert "Accept-Encoding" in z.headers["vary"]


def test_same_content_is_200_other_content_is_409(origin: Service, demo: Reply, tmp_path: Path) -> None:
    again = publish(origin.url, "demo", "1.0.0", tar_gz_of(DEMO))
    assert again.status == 200
    # the answer names the version's manifest now: the enriched one, after the first publish's
    entry = enriched(origin.url, "demo", "1.0.0")
    assert again.json()["manifest"] == entry["manifest"]  # type: ignore[index]
    assert entry["manifests"] == [demo.json()["manifest"], entry["manifest"]]  # type: ignore[index]
    assert again.json()["new_chunks"] == 0  # type: ignore[index]
    changed = tmp_path / "demo"
    shutil.copytree(DEMO, changed)
    (changed / "app.js").write_bytes((changed / "app.js").read_bytes() + b"\n// v2\n")
    conflict = publish(origin.url, "demo", "1.0.0", tar_gz_of(changed))
    assert conflict.status == 409 and conflict.json()["error"] == "conflict"  # type: ignore[index]


def test_channel_moves_raise_serial_and_rollout_is_signed(origin: Service, origin_key: PublicKey,
                                                          demo: Reply, tmp_path: Path) -> None:
    changed = tmp_path / "demo"
    shutil.copytree(DEMO, changed)
    (changed / "app.js").write_bytes((changed / "app.js").read_bytes() + b"\n// 1.1\n")
    r = publish(origin.url, "demo", "1.1.0", tar_gz_of(changed))
    assert r.status == 201
    assert r.json()["new_chunks"] < r.json()["chunks"]  # type: ignore[index]
    entry = enriched(origin.url, "demo", "1.1.0")  # channel moves name the enriched manifest
    assert entry["manifests"][0] == r.json()["manifest"]  # type: ignore[index]
    before = open_ref(http("GET", f"{origin.url}/v1/apps/demo/channels/beta").body, [origin_key]) \
        if http("GET", f"{origin.url}/v1/apps/demo/channels/beta").status == 200 else None
    a = set_channel(origin.url, "demo", "beta", {"version": "1.0.0"})
    b = set_channel(origin.url, "demo", "beta", {"version": "1.0.0", "rollout": {"version": "1.1.0", "percent": 25}})
    ra, rb = open_ref(a.body, [origin_key]), open_ref(b.body, [origin_key])
    assert rb.serial == ra.serial + 1 == (before.serial + 2 if before else 2)
    assert rb.rollout is not None and rb.rollout.version == "1.1.0" and rb.rollout.percent == 25
    assert rb.rollout.manifest.hex() == entry["manifest"]
    served = http("GET", f"{origin.url}/v1/apps/demo/channels/beta")
    assert served.body == b.body
    assert http("GET", f"{origin.url}/v1/apps/demo/channels/beta",
                headers={"If-None-Match": served.headers["etag"]}).status == 304
    assert "max-age=" in served.headers["cache-control"]
    info = http("GET", f"{origin.url}/v1/apps/demo").json()
    assert isinstance(info, dict)
    assert [v["version"] for v in info["versions"]] == ["1.0.0", "1.1.0"]
    rollout = info["channels"]["beta"]["rollout"]
    assert {k: rollout[k] for k in ("version", "percent")} == {"version": "1.1.0", "percent": 25}
    assert "demo" in http("GET", f"{origin.url}/v1/apps").json()["apps"]  # type: ignore[index]


def test_ref_envelope_key_id_matches_public_key(origin: Service, origin_key: PublicKey, demo: Reply) -> None:
    env = wire.unpack(http("GET", f"{origin.url}/v1/apps/demo/channels/release").body)
    assert env["key_id"] == hashlib.sha256(origin_key.raw).hexdigest()[:16]
    assert open_envelope(wire.pack(env), [origin_key])


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/chunks/abc", 400, "invalid_id"),
        ("GET", "/v1/chunks/" + "A" * 64, 400, "invalid_id"),
        ("GET", "/v1/chunks/" + "0" * 64, 404, "not_found"),
        ("GET", "/v1/bundles/xyz", 400, "invalid_id"),
        ("GET", "/v1/bundles/" + "0" * 64, 404, "not_found"),
        ("GET", "/v1/manifests/" + "0" * 63 + "g", 400, "invalid_id"),
        ("GET", "/v1/manifests/" + "0" * 64, 404, "not_found"),
        ("GET", "/v1/apps/Bad_App/channels/release", 400, "invalid_name"),
        ("GET", "/v1/apps/demo/channels/nope", 404, "not_found"),
        ("GET", "/v1/apps/nope", 404, "not_found"),
    ],
)
def test_bad_reads_are_json_errors(origin: Service, method: str, path: str, status: int, code: str) -> None:
    r = http(method, origin.url + path)
    assert r.status == status
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code  # type: ignore[index]


def test_writes_need_the_token(origin: Service, demo: Reply) -> None:
    archive = tar_gz_of(DEMO)
    assert publish(origin.url, "demo", "9.9.9", archive, token="wrong").status == 401
    r = http("POST", f"{origin.url}/v1/apps/demo/versions/9.9.9", archive)
    assert r.status == 401 and r.json()["error"] == "unauthorized"  # type: ignore[index]
    assert set_channel(origin.url, "demo", "release", {"version": "1.0.0"}, token="").status == 401
    assert http("GET", f"{origin.url}/v1/apps/demo").json()["versions"][-1]["version"] != "9.9.9"  # type: ignore[index]


def test_bad_writes(origin: Service, demo: Reply) -> None:
    archive = tar_gz_of(DEMO)
    assert publish(origin.url, "Not-Valid", "1.0.0", archive).status == 400
    assert publish(origin.url, "demo", "..", archive).status in (400, 404)
    assert publish(origin.url, "demo", "bad%20version!", archive).status == 400
    r = set_channel(origin.url, "demo", "release", {"version": "7.7.7"})
    assert r.status == 404
    r = set_channel(origin.url, "demo", "release", {"version": "1.0.0", "rollout": {"version": "1.0.0", "percent": 101}})
    assert r.status == 400
    r = http("PUT", f"{origin.url}/v1/apps/demo/channels/release", b"not json", auth())
    assert r.status == 400


def test_batch_answers_in_order_with_nil_for_unknown(origin: Service, origin_key: PublicKey, demo: Reply) -> None:
    mid = demo.json()["manifest"]  # type: ignore[index]
    manifest = open_manifest(http("GET", f"{origin.url}/v1/manifests/{mid}").body, [origin_key])
    known = [c.id.hex() for c in manifest.packages[0].chunks][:3]
    unknown = "f" * 64
    answers = batch(origin.url, [known[0], unknown, *known[1:]])
    assert [a[0] for a in answers] == [known[0], unknown, *known[1:]]
    assert answers[1][1] is None and all(isinstance(a[1], bytes) for i, a in enumerate(answers) if i != 1)


def test_batch_limits(origin: Service) -> None:
    too_many = http("POST", f"{origin.url}/v1/chunks:batch", msgpack.packb(["0" * 64] * 1025))
    assert too_many.status == 413
    assert http("POST", f"{origin.url}/v1/chunks:batch", msgpack.packb(["zz"])).status == 400
    assert http("POST", f"{origin.url}/v1/chunks:batch", b"\xc1garbage").status == 400
    assert http("POST", f"{origin.url}/v1/chunks:batch", msgpack.packb({"a": 1})).status == 400


def test_metrics_count_chunks_and_publishes(origin: Service, demo: Reply) -> None:
    text = http("GET", f"{origin.url}/metrics").body.decode()
    for name in ("minicdn_origin_chunk_requests_total", "minicdn_origin_published_bytes_total",
                 "minicdn_origin_publish_seconds_bucket"):
        assert name in text
    published = next(float(line.split()[1]) for line in text.splitlines()
                     if line.startswith("minicdn_origin_published_bytes_total"))
    assert published >= demo.json()["raw_bytes"]  # type: ignore[index]
