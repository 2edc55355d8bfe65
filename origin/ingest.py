"""Unpack a publisher's archive (zip, tar, tar.gz) onto disk, treating it as hostile.

Refused with UnsafeArchive (400): entries whose path is unsafe (``..``, absolute, control
characters, a component over 255 bytes: ``common.paths``), symlinks, hardlinks, devices,
FIFOs, sparse files and unknown entry types, duplicate paths, and a path that is both a
file and a directory.  Refused with TooLarge (413), as soon as the limit is crossed and
with bounded memory: more unpacked bytes, files or directories than allowed, a tar
metadata record over ``MAX_META``, and entries that inflate more than ``max_ratio`` times
(checked once an entry — for a compressed tar, the whole stream — has produced
``ratio_floor`` bytes, so that a small, very regular file such as a JSON of spaces is not
mistaken for a bomb).  Anything that is not an archive, or is corrupt (a checksum, CRC or
length that does not match, a truncated stream, data after the end): BadArchive (400).

The pieces: ``limits`` (Limits and the Budget that enforces them while unpacking), ``entry``
(one entry's path checked and bytes written), ``zipreader``, ``gunzip`` and ``tarreader``
(the strict tar reader: why not ``tarfile`` is said there).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import BadArchive
from common.package import MAX_APP_JSON, layout
from origin.limits import Budget, Limits
from origin.tarreader import MAX_META, extract_tar
from origin.zipreader import extract_zip

__all__ = ["MAX_META", "Limits", "extract", "read_app_json"]


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


def read_app_json(files: dict[str, Path]) -> bytes | None:
    """The package's app.json, refused before it is read whole when it is larger than
    ``MAX_APP_JSON`` (it may be any size up to the unpack limit)."""
    path = files.get("app.json")
    if path is None:
        return None
    with open(path, "rb") as f:
        data = f.read(MAX_APP_JSON + 1)
    if len(data) > MAX_APP_JSON:
        raise BadArchive(f"app.json is larger than {MAX_APP_JSON} bytes")
    return data


def extract(archive: Path, dest: Path, limits: Limits = Limits()) -> dict[str, Path]:
    """Unpack ``archive`` into the empty directory ``dest``.

    Returns {package path: file on disk}.  When every file lies under one top-level folder
    and there is no app.json at the root (a zip of a project folder, npm's ``package/``),
    that folder is the package root.
    """
    budget = Budget(limits)
    kind = _kind(archive)
    if kind == "zip":
        extract_zip(archive, dest, budget)
    else:
        extract_tar(archive, dest, budget, gz=kind == "tar.gz")
    if not budget.paths:
        raise BadArchive("archive holds no files")
    files = {p: dest / p for p in budget.paths}
    tops = {p.split("/", 1)[0] for p in files}
    if "app.json" not in files and len(tops) == 1 and all("/" in p for p in files):
        top = tops.pop()
        files = {p[len(top) + 1 :]: f for p, f in files.items()}
    # Here rather than at publishing: a bad app.json is refused before the publish lock.
    layout(list(files), read_app_json(files), max_subpackages=limits.max_subpackages)
    return files
