"""Unpacking a zip: its central directory checked and counted before anything is inflated."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from common.errors import BadArchive, TooLarge, UnsafeArchive
from origin.entry import copy_entry, entry_path, is_root
from origin.limits import Budget

__all__ = ["extract_zip"]


_CENTRAL_RECORD = struct.Struct("<4s4B4HL2L5H2L")  # zipfile.structCentralDir
_ZIP64_END = 56 + 20  # the zip64 end record and its locator, between directory and end record


def _count_zip_entries(archive: Path, limit: int) -> None:
    """Refuse a zip whose central directory holds more than ``limit`` records, counted
    before zipfile makes an object of each: 800,000 empty entries fit in a 64 MiB upload
    and took zipfile 390 MiB.  The directory is located by zipfile's own ``_EndRecData``
    (private, unchanged since Python 2.6) so that what is counted here is exactly what
    zipfile goes on to read; anything malformed is left for zipfile to refuse."""
    with open(archive, "rb") as f:
        end = getattr(zipfile, "_EndRecData")(f)  # noqa: B009  (private: keep mypy from vouching for it)
        if end is None:
            return
        left = end[5]  # _ECD_SIZE
        f.seek(max(0, end[9] - left - (_ZIP64_END if end[0] == b"PK\x06\x06" else 0)))  # _ECD_LOCATION
        size = _CENTRAL_RECORD.size
        for _ in range(limit + 1):
            record = f.read(size)
            if left < size or len(record) < size or record[:4] != b"PK\x01\x02":
                return
            name, extra, comment = _CENTRAL_RECORD.unpack(record)[12:15]
            f.seek(name + extra + comment, 1)
            left -= size + name + extra + comment
        raise TooLarge(f"archive holds more than {limit} entries")


def extract_zip(archive: Path, dest: Path, budget: Budget) -> None:
    _count_zip_entries(archive, budget.limits.max_entries)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadArchive(f"corrupt zip: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > budget.limits.max_entries:
            raise TooLarge(f"archive holds more than {budget.limits.max_files} files")
        files = []
        declared = 0
        size = archive.stat().st_size
        for info in infos:  # refuse on the central directory before inflating anything
            path = _zip_path(info, budget)
            if path is None:
                continue
            # A corrupt central directory can point before the archive's start (zipfile then
            # seeks to a negative offset: EINVAL) or past its end.
            if not 0 <= info.header_offset < size:
                raise BadArchive(f"corrupt zip entry {path!r}: its local header lies outside the archive")
            declared += info.file_size
            if declared > budget.limits.max_unpacked:
                raise TooLarge(f"archive unpacks to more than {budget.limits.max_unpacked} bytes")
            budget.check_ratio(info.file_size, info.compress_size, f"entry {path!r}")
            files.append((path, info))
        for d in budget.dirs:
            (dest / d).mkdir(parents=True, exist_ok=True)
        for path, info in files:
            try:
                with zf.open(info) as src:
                    copy_entry(src, dest, path, budget, _entry_ratio(budget, path, info.compress_size))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
                raise BadArchive(f"corrupt zip entry {path!r}: {exc}") from exc


def _zip_path(info: zipfile.ZipInfo, budget: Budget) -> str | None:
    """Check one central-directory entry and claim its path in the budget; the path of a
    file, None for a directory."""
    # orig_filename is the name as stored: ``filename`` is cut at the first NUL.
    name = info.orig_filename
    is_dir = name.endswith("/")
    if is_dir and is_root(name):
        return None
    path = entry_path(name)
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"entry {path!r} is a link or special file")
    if info.flag_bits & 0x1:
        raise BadArchive(f"entry {path!r} is encrypted")
    if is_dir:
        budget.add_dir(path)
        return None
    budget.add_file(path)
    return path


def _entry_ratio(budget: Budget, path: str, compressed: int) -> Callable[[int], None]:
    return lambda produced: budget.check_ratio(produced, compressed, f"entry {path!r}")
