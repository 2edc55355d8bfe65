"""edge.encodings: the zstd and dcz encodings of manifests are made on one encoder thread
of their own.  Each thread keeps its own level-19 zstd context (about 5 MiB for a manifest
of a few hundred KiB), so encodes spread over the loop's shared pool grew an edge worker
by that much for every pool thread that ever encoded (the 60 s soak caught one growing
10%), and held pool threads that misses were waiting for."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from common import codec, dcz
from edge.encodings import Encodings
from edge.memory import MemoryTier
from edge.objects import Entry
from edge.policy import make_policy


def manifest_like(i: int) -> bytes:
    return os.urandom(2000) + bytes(range(256)) * 40 + str(i).encode()


async def test_every_encode_runs_on_one_thread_that_is_not_the_shared_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: set[int] = set()
    calls: list[str] = []
    real_compress, real_dcz = codec.compress_stream, dcz.encode

    def compress(body: bytes, level: int = codec.DEFAULT_LEVEL, **kw: Any) -> bytes:
        threads.add(threading.get_ident())
        if kw.get("base") is None:  # dcz.encode's are counted as dcz
            calls.append("zstd")
            time.sleep(0.02)  # encodes asked for at once overlap: a pool would start more threads
        return real_compress(body, level, **kw)

    def encode(body: bytes, dictionary: bytes, level: int = codec.DEFAULT_LEVEL) -> bytes:
        threads.add(threading.get_ident())
        calls.append("dcz")
        time.sleep(0.02)
        return real_dcz(body, dictionary, level)

    monkeypatch.setattr(codec, "compress_stream", compress)
    monkeypatch.setattr(dcz, "encode", encode)
    memory = MemoryTier(make_policy("lru", 1 << 20))
    encodings = Encodings(memory)
    try:
        held = {f"manifest/{i}": Entry(manifest_like(i), f'"{i}"') for i in range(6)}
        for key, entry in held.items():
            assert memory.put(key, entry)
        base = manifest_like(99)
        zstd = await asyncio.gather(*(encodings.zstd_of(k, e) for k, e in held.items()))
        deltas = await asyncio.gather(*(encodings.dcz_of(e.body, base) for e in held.values()))
        for entry, z, d in zip(held.values(), zstd, deltas, strict=True):
            assert codec.decompress(z, 1 << 20) == entry.body
            assert dcz.decode(d, base, 1 << 20) == entry.body
        assert len(threads) == 1, f"encoded on {len(threads)} threads"
        assert threading.get_ident() not in threads
        # The zstd encoding of a held manifest is kept: asking again encodes nothing.
        assert calls.count("zstd") == len(held)
        key, entry = next(iter(held.items()))
        assert await encodings.zstd_of(key, entry) == zstd[0]
        assert calls.count("zstd") == len(held)
    finally:
        encodings.close()
