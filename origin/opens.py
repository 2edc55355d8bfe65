"""The origin's answer to ``POST /v1/apps/{app}/channels/{channel}/open`` (common/opening.py):
composed from the ref, the heads object and the package manifests in its store, each read
in a thread and checked against its id."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from common import opening
from common.errors import NotFound
from common.ids import sha256
from origin import paths
from origin.storage import Store
from origin.views import remember

__all__ = ["ENCODINGS_HELD", "HEADS_HELD", "Opener"]

HEADS_HELD = 8  # heads objects kept indexed: one of 10,000 packages is ~3 MiB
ENCODINGS_HELD = 256  # encoded package manifests kept, by (manifest, dictionary)

Run = Callable[..., Awaitable[Any]]


class Opener:
    def __init__(self, storage: Store, run: Run) -> None:
        self.storage = storage
        self.run = run  # the origin's way to call blocking code (its thread pool)
        self._heads: OrderedDict[bytes, opening.HeadsIndex] = OrderedDict()
        self._encoded: OrderedDict[tuple[bytes, bytes | None], tuple[str, bytes]] = OrderedDict()

    async def load(self, oid: bytes) -> bytes | None:
        blob = await self.run(self.storage.read, paths.manifest_key(oid.hex()))
        return blob.data if blob is not None and sha256(blob.data) == oid else None

    async def heads_of(self, hid: bytes) -> opening.HeadsIndex:
        found = self._heads.get(hid)
        if found is not None:
            self._heads.move_to_end(hid)
        else:
            data = await self.load(hid)
            if data is None:
                raise NotFound(f"heads {hid.hex()} are not stored")
            found = await self.run(opening.index_heads, data)
            remember(self._heads, hid, found, HEADS_HELD)
        return found

    async def encode(
        self, mid: bytes, body: bytes, base_id: bytes | None, base: bytes | None
    ) -> tuple[str, bytes]:
        """The smallest encoding, made once per (manifest, dictionary) pair (bounded LRU)."""
        found = self._encoded.get((mid, base_id))
        if found is not None:
            self._encoded.move_to_end((mid, base_id))
            return found
        result: tuple[str, bytes] = await self.run(opening.encode_sync, body, base)
        remember(self._encoded, (mid, base_id), result, ENCODINGS_HELD)
        return result

    async def answer(self, req: opening.OpenRequest, ref_envelope: bytes) -> bytes:
        return await opening.compose(req, ref_envelope, self.heads_of, self.load, self.encode)
