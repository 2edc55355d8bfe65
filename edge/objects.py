"""What the edge caches: immutable objects named by their SHA-256 (chunks, manifests,
bundles and deltas) and channel refs, each under one string key, and what a cached copy
holds (``Entry``).

Keys are the tiers' and the single-flight's currency: ``chunks/<hex>``,
``manifests/<hex>``, ``bundles/<hex>``, ``refs/<app>/<channel>``.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import cast

from common import codec
from common.errors import IntegrityError
from common.ids import sha256

__all__ = ["KINDS", "Entry", "Obj", "Sealed", "ref_key"]

# kind → (key prefix and URL segment, whether the client may get it zstd-encoded)
KINDS = {"chunk": "chunks", "manifest": "manifests", "bundle": "bundles"}


class Sealed:
    """A body held in a sealed memfd: immutable by the kernel's word (no write, grow or
    shrink), and a file, so the data plane can hand it to the socket with ``sendfile``
    instead of copying it out of a bytes object.  The descriptor closes when the last
    reference goes (a send in progress holds one)."""

    __slots__ = ("fd", "size")

    SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL

    def __init__(self, body: bytes) -> None:
        self.fd = -1
        fd = os.memfd_create("minicdn-body", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view, done = memoryview(body), 0
            while done < len(body):
                done += os.write(fd, view[done:])
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, self.SEALS)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = len(body)

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.size if end is None else min(end, self.size)
        parts, at = [], start
        while at < end:
            piece = os.pread(self.fd, end - at, at)
            if not piece:  # cannot shrink (sealed); a short read would be a kernel bug
                raise OSError(f"memfd ended at {at} of {end}")
            parts.append(piece)
            at += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Entry:
    """A cached copy, ready to send.  ``body`` is what is stored: a chunk's zstd frame, a
    manifest's envelope, a bundle's bytes, a ref's envelope.  The memory tier may move a
    large body into a ``Sealed`` memfd (``seal``): ``body`` then reads it back (a copy, for
    the paths that need bytes) while the data plane sends it from the file."""

    __slots__ = ("data", "etag", "max_age", "sealed", "size", "validated")

    def __init__(self, body: bytes, etag: str, validated: float = 0.0, max_age: float = 0.0) -> None:
        self.data: bytes | None = body  # the body, until it is sealed
        self.sealed: Sealed | None = None
        self.size = len(body)
        self.etag = etag
        self.validated = validated  # refs: wall-clock time of the last upstream 200 or 304
        self.max_age = max_age  # refs: seconds the ref stays fresh after ``validated``
        # (How HTTP encodes it, and the heads it is sent with, are kept beside the memory
        # tier's entries by the serving paths: edge.encodings, edge.plane.answers.)

    @property
    def body(self) -> bytes:
        body = self.data
        if body is not None:
            return body
        assert self.sealed is not None
        return self.sealed.read()

    @property
    def stored(self) -> bytes | Sealed:
        """The body as held: bytes, or the memfd once sealed."""
        return self.data if self.data is not None else cast(Sealed, self.sealed)

    def seal(self) -> None:
        """Move the body into a sealed memfd (OSError, and nothing changed, when the
        system refuses one: out of descriptors or memory)."""
        if self.data is not None:
            self.sealed = Sealed(self.data)
            self.data = None


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
