"""The format 2 test vectors (tests/vectors/README.md) check out with this project's own
reader: every signature, id and content digest, and every way to the files — bundle,
delta from the version held, chunks — gives the files the vectors expect.  A client in
another language runs the same steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from client.opened import verify
from common import codec
from common.errors import IntegrityError, SignatureError
from common.ids import sha256
from common.opening import parse_request
from common.pkgmeta import PackageMeta
from common.signing import PublicKey

HERE = Path(__file__).resolve().parent / "vectors"
DOC = json.loads((HERE / "vectors.json").read_text())
OBJECTS = {bytes.fromhex(p.name): p.read_bytes() for p in (HERE / "objects").iterdir()}
KEYS = [PublicKey.load(HERE / "public.key")]


def _opened(case: dict[str, Any], answer: bytes | None = None) -> Any:
    req = parse_request((HERE / case["request"]).read_bytes())
    return verify(
        answer if answer is not None else (HERE / case["answer"]).read_bytes(),
        KEYS,
        app=DOC["app"],
        channel=DOC["channel"],
        now=case["now"],
        highest=None,
        bucket=req.bucket,
        have=req.have or {},
        held=OBJECTS.get,
        dictionary=req.dictionary,
    )


def _files(meta: PackageMeta, stream: bytes) -> dict[str, dict[str, Any]]:
    out, pos = {}, 0
    for path, size in meta.files:
        body = stream[pos : pos + size]
        out[path] = {"size": size, "sha256": hashlib.sha256(body).hexdigest()}
        pos += size
    assert pos == len(stream)
    return out


def test_every_object_is_named_by_its_hash() -> None:
    for oid, body in OBJECTS.items():
        if body[:4] == b"\x28\xb5\x2f\xfd" and len(body) > 4:  # a zstd frame: a chunk is named by its raw bytes
            try:
                if sha256(codec.decompress(body, 1 << 24)) == oid:
                    continue
            except Exception:
                pass
        assert sha256(body) == oid, oid.hex()


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["answer"] for c in DOC["cases"]])
def test_a_case_verifies_and_every_way_gives_the_expected_files(case: dict[str, Any]) -> None:
    opened = _opened(case)
    assert opened.version == case["version"] and opened.mid.hex() == case["manifest"]
    held = parse_request((HERE / case["request"]).read_bytes()).have or {}
    for name, meta in opened.metas.items():
        raw = sum(size for _, size in meta.files)
        assert meta.bundle is not None
        stream = codec.decompress_stream(OBJECTS[meta.bundle[0]], raw)
        chunks = b"".join(codec.decode_chunk(c.id, OBJECTS[c.id], c.raw_size) for c in meta.chunks)
        assert chunks == stream
        assert _files(meta, stream) == case["packages"][name]
        if name in held and held[name][0] != opened.heads[name].content:  # changed: a delta from what is held
            old = _opened_meta(held[name][1])
            base = b"".join(codec.decode_chunk(c.id, OBJECTS[c.id], c.raw_size) for c in old.chunks)
            [(delta, _size)] = [(d, s) for f, d, s in meta.deltas if f == held[name][0]]
            assert codec.decompress_stream(OBJECTS[delta], raw, base=base) == stream


def _opened_meta(mid: bytes) -> PackageMeta:
    from common.pkgmeta import open_package

    return open_package(OBJECTS[mid], mid)


def test_the_update_vector_sends_only_what_changed() -> None:
    case = DOC["cases"][1]
    answer = msgpack.unpackb((HERE / case["answer"]).read_bytes(), raw=False)
    opened = _opened(case)
    assert set(opened.heads) == {"__APP__", "sub"} and len(answer["manifests"]) == 1  # only sub changed


def test_a_vector_altered_anywhere_is_refused() -> None:
    case = DOC["cases"][0]
    data = (HERE / case["answer"]).read_bytes()
    refused = 0
    for at in range(0, len(data), max(1, len(data) // 97)):
        bad = bytearray(data)
        bad[at] ^= 0x20
        try:
            _opened(case, bytes(bad))
        except (IntegrityError, SignatureError):
            refused += 1
            continue
        # what survived a flipped bit must be a byte no check covers: msgpack framing that
        # decodes to the same values, which it cannot; so nothing may pass
        pytest.fail(f"a flip at byte {at} was accepted")
    assert refused > 50
