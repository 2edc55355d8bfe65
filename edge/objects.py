"""What the edge caches: immutable objects named by their SHA-256 (chunks, manifests,
bundles and deltas) and channel refs, each under one string key, and what a cached copy
holds (``Entry``).

Keys are the tiers' and the single-flight's currency: ``chunks/<hex>``,
``manifests/<hex>``, ``bundles/<hex>``, ``refs/<app>/<channel>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import codec
from common.errors import IntegrityError
from common.ids import sha256

__all__ = ["KINDS", "Entry", "Obj", "ref_key"]

# kind → (key prefix and URL segment, whether the client may get it zstd-encoded)
KINDS = {"chunk": "chunks", "manifest": "manifests", "bundle": "bundles"}


@dataclass(slots=True)
class Entry:
    """A cached copy, ready to send.  ``body`` is what is stored: a chunk's zstd frame, a
    manifest's envelope, a bundle's bytes, a ref's envelope."""

    body: bytes
    etag: str
    validated: float = 0.0  # refs: wall-clock time of the last upstream 200 or 304
    max_age: float = 0.0  # refs: seconds the ref stays fresh after ``validated``
    encoded: bytes | None = None  # manifests: the zstd encoding, made on first demand
    # manifests: dcz encodings (RFC 9842) by dictionary id, None where dcz does not help
    dcz: dict[bytes, bytes | None] | None = None
    # response heads prebuilt by the data plane (edge.dataplane), one per variant
    heads: dict[object, bytes] | None = None

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True, slots=True)
class Obj:
    """An immutable object: its kind and id fix its key, its URL and how it is verified."""

    kind: str
    id: bytes

    @property
    def hex(self) -> str:
        return self.id.hex()

    @property
    def key(self) -> str:
        return f"{KINDS[self.kind]}/{self.id.hex()}"

    @property
    def path(self) -> str:
        return f"/v1/{KINDS[self.kind]}/{self.id.hex()}"

    @property
    def etag(self) -> str:
        return f'"{self.id.hex()}"'

    def verify(self, body: bytes) -> None:
        """IntegrityError unless ``body`` is this object: a chunk's frame decodes to bytes
        whose SHA-256 is the id; anything else hashes to the id as stored."""
        if self.kind == "chunk":
            codec.decode_chunk(self.id, body)
        elif sha256(body) != self.id:
            raise IntegrityError(f"{self.kind} {self.id.hex()}: bytes do not match the id")

    @classmethod
    def from_key(cls, key: str) -> Obj | None:
        prefix, _, hexid = key.partition("/")
        for kind, p in KINDS.items():
            if p == prefix and len(hexid) == 64:
                try:
                    return cls(kind, bytes.fromhex(hexid))
                except ValueError:
                    return None
        return None


def ref_key(app: str, channel: str) -> str:
    return f"refs/{app}/{channel}"
