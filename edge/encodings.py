"""Encoded forms of cached manifests, kept beside the memory tier's entries rather than on
them (an ``Entry`` is what is stored; how HTTP encodes it is the serving paths' business):
the zstd encoding, made on first demand, and dcz encodings (RFC 9842) by dictionary id.

Only an entry the memory tier holds has its encodings kept, and they are forgotten when
the tier lets it go; an entry read from disk and not admitted is encoded per request, as
its copy lives only as long as that request.
"""

from __future__ import annotations

import asyncio

from common import codec
from edge.memory import MemoryTier
from edge.objects import Entry

__all__ = ["MAX_DICTIONARIES", "Encodings"]

MAX_DICTIONARIES = 8  # dcz encodings kept per manifest (clients name their installed one)


class Encodings:
    def __init__(self, memory: MemoryTier) -> None:
        self.memory = memory
        self.zstd: dict[Entry, bytes] = {}
        self.dcz: dict[Entry, dict[bytes, bytes | None]] = {}
        memory.on_forget.append(self.forget)

    def held(self, key: str, entry: Entry) -> bool:
        return self.memory.peek(key) is entry

    async def zstd_of(self, key: str, entry: Entry) -> bytes:
        """The manifest's zstd encoding (level 19, made off the loop once while held)."""
        encoded = self.zstd.get(entry)
        if encoded is None:
            encoded = await asyncio.get_running_loop().run_in_executor(None, codec.compress, entry.body, 19)
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

    def forget(self, entry: Entry) -> None:
        self.zstd.pop(entry, None)
        self.dcz.pop(entry, None)
