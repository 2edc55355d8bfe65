"""Encoded forms of cached manifests, kept beside the memory tier's entries rather than on
them (an ``Entry`` is what is stored; how HTTP encodes it is the serving paths' business):
the zstd encoding, made on first demand, and dcz encodings (RFC 9842) by dictionary id.

Only an entry the memory tier holds has its encodings kept, and they are forgotten when
the tier lets it go; an entry read from disk and not admitted is encoded per request, as
its copy lives only as long as that request.

Encoding runs on one thread of its own, not on the loop's shared pool, with a zstd
context made for each encode and freed after it.  A level-19 context sized for a manifest
of a few hundred KiB holds 3-5 MiB; common.codec's ``compress`` keeps one per thread, so
on the shared pool every thread that ever encoded grew the worker by that much for good,
as load spread to more threads (the soak saw an edge worker grow 10% in a minute,
docs/soak.md); and an encode, tens of milliseconds, held a thread that a miss's disk
read or check was waiting for.  Now encodes queue behind each other, not behind misses,
and hold their memory only while they run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from common import codec, dcz
from edge.memory import MemoryTier
from edge.objects import Entry

__all__ = ["MAX_DICTIONARIES", "Encodings"]

MAX_DICTIONARIES = 8  # dcz encodings kept per manifest (clients name their installed one)

T = TypeVar("T")


class Encodings:
    def __init__(self, memory: MemoryTier) -> None:
        self.memory = memory
        self.zstd: dict[Entry, bytes] = {}
        self.dcz: dict[Entry, dict[bytes, bytes | None]] = {}
        memory.on_forget.append(self.forget)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minicdn-encode")

    async def _encode(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._encoder, fn, *args)

    def close(self) -> None:
        """Stop the encoder thread (encodes still queued are dropped: nobody waits for them)."""
        self._encoder.shutdown(wait=False, cancel_futures=True)

    def held(self, key: str, entry: Entry) -> bool:
        return self.memory.peek(key) is entry

    async def zstd_of(self, key: str, entry: Entry) -> bytes:
        """The manifest's zstd encoding (level 19, made off the loop once while held)."""
        encoded = self.zstd.get(entry)
        if encoded is None:
            # A compressor of its own, sized to this body and freed with it (common.codec's
            # per-thread one would keep a level-19 context sized to the largest manifest).
            encoded = await self._encode(codec.compress_stream, entry.body, 19)
            if self.held(key, entry):
                self.zstd[entry] = encoded
        return encoded

    def dcz_known(self, key: str, entry: Entry) -> dict[bytes, bytes | None]:
        """The dcz encodings made of this manifest so far, by dictionary id (None: dcz does
        not help), at most MAX_DICTIONARIES, oldest dropped first; a throwaway for an entry
        the tier does not hold."""
        known = self.dcz.get(entry)
        if known is None:
            known = {}
            if self.held(key, entry):
                self.dcz[entry] = known
        return known

    async def dcz_of(self, body: bytes, dictionary: bytes) -> bytes:
        """``body`` dcz-encoded against ``dictionary`` (RFC 9842), on the encoder thread."""
        return await self._encode(dcz.encode, body, dictionary)

    def forget(self, entry: Entry) -> None:
        self.zstd.pop(entry, None)
        self.dcz.pop(entry, None)
