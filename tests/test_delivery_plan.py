"""The client's plan rule and stream checks (client/plan.py, client/streams.py), synchronously."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from client import streams
from client.plan import CHUNK_OVERHEAD, choose, options
from client.store import LocalStore
from common import codec
from common.errors import ConfigError, IntegrityError
from common.manifest import ChunkEntry, PackageEntry

BASE = hashlib.sha256(b"installed manifest").digest()
OTHER = hashlib.sha256(b"another manifest").digest()


def _package(raw: list[bytes], bundle: int | None = 5000, deltas: tuple[tuple[bytes, int], ...] = ()) -> PackageEntry:
    chunks = tuple(ChunkEntry(hashlib.sha256(r).digest(), len(r), len(r) // 2) for r in raw)
    files = (("a.js", sum(len(r) for r in raw)),)
    return PackageEntry(
        "__APP__", False, files, chunks,
        bundle=None if bundle is None else (hashlib.sha256(b"bundle").digest(), bundle),
        deltas=tuple((m, hashlib.sha256(m).digest(), size) for m, size in deltas),
    )


RAW = [bytes([i]) * 4000 for i in range(4)]  # 4 chunks, stored at 2000 B each


def test_nothing_missing_is_none() -> None:
    assert choose(_package(RAW), [], BASE).kind == "none"


def test_the_cheapest_plan_wins() -> None:
    pkg = _package(RAW, bundle=5000, deltas=((BASE, 300), (OTHER, 100)))
    one = pkg.chunks[:1]
    assert choose(pkg, one, BASE).kind == "delta"  # 300 < 2000 + overhead
    assert choose(pkg, one, BASE).object == (hashlib.sha256(BASE).digest(), 300)
    assert choose(pkg, one, None).kind == "chunks"  # no base: 2072 < 5000
    assert choose(pkg, pkg.chunks, None).kind == "bundle"  # 4 x 2072 > 5000
    assert choose(pkg, pkg.chunks, None).cost == 5000
    assert choose(pkg, one, None).cost == 2000 + CHUNK_OVERHEAD


def test_a_delta_from_another_manifest_is_never_offered() -> None:
    pkg = _package(RAW, deltas=((OTHER, 10),))
    assert [p.kind for p in options(pkg, pkg.chunks, BASE)] == ["chunks", "bundle"]
    assert [p.kind for p in options(pkg, pkg.chunks, None)] == ["chunks", "bundle"]


def test_ties_prefer_delta_then_chunks_then_bundle() -> None:
    pkg = _package(RAW, bundle=2000 + CHUNK_OVERHEAD, deltas=((BASE, 2000 + CHUNK_OVERHEAD),))
    assert choose(pkg, pkg.chunks[:1], BASE).kind == "delta"
    assert choose(pkg, pkg.chunks[:1], None).kind == "chunks"


def test_a_forced_plan_applies_where_offered() -> None:
    pkg = _package(RAW, bundle=None, deltas=((BASE, 300),))
    assert choose(pkg, pkg.chunks[:1], BASE, "chunks").kind == "chunks"
    assert choose(pkg, pkg.chunks[:1], BASE, "bundle").kind == "delta"  # no bundle: the cheapest
    assert choose(pkg, pkg.chunks[:1], None, "delta").kind == "chunks"  # no base: the cheapest
    with pytest.raises(ConfigError):
        from client.client import ClientConfig

        ClientConfig(edges=("http://x",), public_keys=(), store_dir=Path("."), plan="fastest")


def _real_package(seed: int) -> tuple[PackageEntry, bytes]:
    rnd = random.Random(seed)
    raw = [rnd.randbytes(rnd.randint(100, 3000)) for _ in range(5)]
    return _package(raw), b"".join(raw)


def test_decode_checks_the_stream_chunk_by_chunk() -> None:
    pkg, stream = _real_package(1)
    pieces = streams.decode(pkg, codec.compress_stream(stream))
    assert [cid for cid, _ in pieces] == [c.id for c in pkg.chunks]
    assert b"".join(raw for _, raw in pieces) == stream
    wrong = bytearray(stream)
    wrong[len(wrong) // 2] ^= 1
    with pytest.raises(IntegrityError, match="does not match chunk"):
        streams.decode(pkg, codec.compress_stream(bytes(wrong)))
    with pytest.raises(IntegrityError, match="declares"):  # longer than the manifest says
        streams.decode(pkg, codec.compress_stream(stream + b"extra"))


def test_base_stream_comes_from_the_store_or_verified_installed_files(tmp_path: Path) -> None:
    pkg, stream = _real_package(2)
    store = LocalStore(tmp_path / "store", 1 << 30)
    install = tmp_path / "app"
    install.mkdir()
    (install / "a.js").write_bytes(stream)
    assert streams.base_stream(store, pkg, install) == stream  # from the files
    assert streams.base_stream(store, pkg, None) is None  # neither
    (install / "a.js").write_bytes(stream[:-1] + bytes([stream[-1] ^ 1]))  # edited after install
    assert streams.base_stream(store, pkg, install) is None
    for cid, raw in streams.split(pkg, stream):
        store.put(cid, raw)
    assert streams.base_stream(store, pkg, install) == stream  # from the store
