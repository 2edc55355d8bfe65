"""Package streams on the client: decoding a bundle or delta into verified chunks, and
finding the base stream a delta applies to.

A decoded stream is trusted only piece by piece: it is cut at the chunk sizes the signed
manifest gives, and each piece must hash to its chunk id.  A base stream comes from the
local chunk store or, failing that, from the files of the install it was installed into;
either way it is checked the same way, so a store that lost chunks or an install someone
edited yields no base (and so no delta), never a wrong one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from client.store import LocalStore
from common import codec
from common.errors import IntegrityError
from common.ids import sha256
from common.manifest import PackageEntry

__all__ = ["base_stream", "decode", "split"]


def split(pkg: PackageEntry, stream: bytes) -> list[tuple[bytes, bytes]]:
    """(chunk id, raw bytes) for every chunk of ``pkg``, cut from ``stream`` and checked."""
    out = []
    view = memoryview(stream)
    pos = 0
    for c in pkg.chunks:
        piece = bytes(view[pos : pos + c.raw_size])
        if len(piece) != c.raw_size or sha256(piece) != c.id:
            raise IntegrityError(f"package {pkg.name}: decoded stream does not match chunk {c.id.hex()}")
        out.append((c.id, piece))
        pos += c.raw_size
    if pos != len(stream):
        raise IntegrityError(f"package {pkg.name}: decoded stream is longer than its chunks")
    return out


def decode(pkg: PackageEntry, frame: bytes, base: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """A bundle (or, with ``base``, a delta) of ``pkg`` → its verified chunks.  The frame
    must declare exactly the stream size the manifest gives (the sum of the chunk sizes)."""
    size = sum(c.raw_size for c in pkg.chunks)
    return split(pkg, codec.decompress_stream(frame, size, base))


def base_stream(store: LocalStore, base: PackageEntry, install_dir: Path | None) -> bytes | None:
    """The stream of ``base`` (the package as installed), or None if the client cannot
    produce it exactly: from the chunk store when it holds every chunk, else from the
    package's files under ``install_dir``."""
    if all(store.has(c.id) for c in base.chunks):
        try:
            return b"".join(store.get(c.id) for c in base.chunks)
        except (IntegrityError, OSError):
            pass  # a chunk went missing or bad on disk: try the installed files
    if install_dir is None:
        return None
    try:
        stream = b"".join(_read_exact(install_dir / path, size) for path, size in base.files)
        split(base, stream)
    except (IntegrityError, OSError):
        return None
    return stream


def _read_exact(path: Path, size: int) -> bytes:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        raise IntegrityError(f"{path} is not the installed file")
    with open(path, "rb") as f:
        return f.read(size + 1)
