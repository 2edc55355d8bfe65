"""Unpack a publisher's archive (zip, tar, tar.gz) onto disk, treating it as hostile.

Refused with UnsafeArchive (400): entries with ``..`` or absolute paths, symlinks,
hardlinks, devices and FIFOs, duplicate paths.  Refused with TooLarge (413), as soon as
the limit is crossed and with bounded memory: more unpacked bytes or files than allowed,
and entries that inflate more than ``max_ratio`` times (checked once an entry — for a
compressed tar, the whole stream — has produced ``ratio_floor`` bytes, so that a small,
very regular file such as a JSON of spaces is not mistaken for a bomb).  Anything that is
not an archive, or is corrupt: BadArchive (400).
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from common.errors import BadArchive, TooLarge, UnsafeArchive
from common.paths import check_relpath

__all__ = ["Limits", "extract"]

PIECE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload: int = 64 << 20
    max_unpacked: int = 256 << 20
    max_files: int = 20_000
    max_ratio: float = 200.0
    ratio_floor: int = 1 << 20


class _Budget:
    """Counts what an archive has produced so far and raises the moment a limit is crossed."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.unpacked = 0
        self.files = 0
        self.paths: set[str] = set()
        self.dirs: set[str] = set()

    def add_file(self, path: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise TooLarge(f"archive holds more than {self.limits.max_files} files")
        if path in self.paths or path in self.dirs:
            raise UnsafeArchive(f"archive holds {path!r} twice")
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.paths:
                raise UnsafeArchive(f"{path!r} lies under the file {prefix!r}")
            self.dirs.add(prefix)
        self.paths.add(path)

    def add_bytes(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.max_unpacked:
            raise TooLarge(f"archive unpacks to more than {self.limits.max_unpacked} bytes")

    def check_ratio(self, produced: int, consumed: int, what: str) -> None:
        lim = self.limits
        if produced > lim.ratio_floor and produced > lim.max_ratio * max(consumed, 1):
            raise TooLarge(f"{what} inflates more than {lim.max_ratio:g} times (a decompression bomb?)")


def _entry_path(name: str) -> str:
    name = name.rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return check_relpath(name)


def _copy(src: IO[bytes], dest_root: Path, path: str, budget: _Budget, check: Callable[[int], None]) -> None:
    """Stream one entry to dest_root/path, counting every byte against the budget;
    ``check(produced)`` runs after every piece, so a bomb stops within one piece."""
    target = dest_root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    produced = 0
    with open(target, "xb") as out:
        while piece := src.read(PIECE):
            produced += len(piece)
            budget.add_bytes(len(piece))
            check(produced)
            out.write(piece)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadArchive(f"corrupt zip: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > 2 * budget.limits.max_files:
            raise TooLarge(f"archive holds more than {budget.limits.max_files} files")
        declared = 0
        for info in infos:  # refuse on the central directory before inflating anything
            mode = info.external_attr >> 16
            path = _entry_path(info.filename)
            kind = stat.S_IFMT(mode)  # 0 when the zip tool stored permissions without a type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchive(f"entry {path!r} is a link or special file")
            if info.flag_bits & 0x1:
                raise BadArchive(f"entry {path!r} is encrypted")
            declared += info.file_size
            if declared > budget.limits.max_unpacked:
                raise TooLarge(f"archive unpacks to more than {budget.limits.max_unpacked} bytes")
            budget.check_ratio(info.file_size, info.compress_size, f"entry {path!r}")
        for info in infos:
            path = _entry_path(info.filename)
            if info.is_dir():
                (dest / path).mkdir(parents=True, exist_ok=True)
                continue
            budget.add_file(path)
            try:
                with zf.open(info) as src:
                    _copy(src, dest, path, budget, _entry_ratio(budget, path, info.compress_size))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise BadArchive(f"corrupt zip entry {path!r}: {exc}") from exc


def _entry_ratio(budget: _Budget, path: str, compressed: int) -> Callable[[int], None]:
    return lambda produced: budget.check_ratio(produced, compressed, f"entry {path!r}")


class _CountingReader:
    """A file wrapper that counts compressed bytes, for the stream-wide ratio of tar.gz."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        return data


def _extract_tar(archive: Path, dest: Path, budget: _Budget, gz: bool) -> None:
    with open(archive, "rb") as raw:
        counting = _CountingReader(raw)

        def check(_produced: int) -> None:
            if gz:  # a tar.gz has no per-entry sizes: bound the whole stream's ratio
                budget.check_ratio(budget.unpacked, counting.count, "archive")

        try:
            # Stream mode ("r|"): no seeking, members are read once, memory stays bounded.
            with tarfile.open(fileobj=counting, mode="r|gz" if gz else "r|") as tf:  # type: ignore[call-overload]
                for members, m in enumerate(tf, 1):
                    if members > 2 * budget.limits.max_files:
                        raise TooLarge(f"archive holds more than {budget.limits.max_files} files")
                    path = _entry_path(m.name)
                    if m.isdir():
                        (dest / path).mkdir(parents=True, exist_ok=True)
                        continue
                    if not m.isreg():
                        raise UnsafeArchive(f"entry {path!r} is a link, device or other special file")
                    if budget.unpacked + m.size > budget.limits.max_unpacked:
                        raise TooLarge(f"archive unpacks to more than {budget.limits.max_unpacked} bytes")
                    budget.add_file(path)
                    src = tf.extractfile(m)
                    assert src is not None
                    _copy(src, dest, path, budget, check)
        except (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
            raise BadArchive(f"corrupt tar: {exc}") from exc


def _kind(archive: Path) -> str:
    with open(archive, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise BadArchive("not a zip, tar or tar.gz archive")


def extract(archive: Path, dest: Path, limits: Limits = Limits()) -> dict[str, Path]:
    """Unpack ``archive`` into the empty directory ``dest``.

    Returns {package path: file on disk}.  When every file lies under one top-level folder
    and there is no app.json at the root (a zip of a project folder, npm's ``package/``),
    that folder is the package root.
    """
    budget = _Budget(limits)
    kind = _kind(archive)
    if kind == "zip":
        _extract_zip(archive, dest, budget)
    else:
        _extract_tar(archive, dest, budget, gz=kind == "tar.gz")
    if not budget.paths:
        raise BadArchive("archive holds no files")
    files = {p: dest / p for p in budget.paths}
    tops = {p.split("/", 1)[0] for p in files}
    if "app.json" not in files and len(tops) == 1 and all("/" in p for p in files):
        top = tops.pop()
        files = {p[len(top) + 1 :]: f for p, f in files.items()}
    return files
