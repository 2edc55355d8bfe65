"""The one module that knows the cache directory's layout::

    CACHE_DIR/
    ├── chunks/ab/abcdef…(64 hex)     a chunk's zstd frame, exactly as served (verified)
    ├── manifests/ab/abcdef…          a manifest envelope (SHA-256 = its name)
    ├── bundles/ab/abcdef…            a bundle or delta (SHA-256 = its name)
    ├── refs/<app>/<channel>          a channel ref envelope; its mtime is when an upstream
    │                                 last confirmed it (200 or 304)
    └── **/.tmp-*                     a write in progress, or a crash's leftover (swept)

Keys (edge.objects) map one-to-one to these paths; the fan-out directory keeps any one
directory at a few thousand entries for a 10 GiB cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from common.fsutil import TEMP_PREFIX
from common.ids import APP_RE, CHANNEL_RE, ID_RE

__all__ = ["file_of", "key_of", "path_of", "walk"]

_CONTENT = ("chunks", "manifests", "bundles")


def path_of(root: Path, key: str) -> Path:
    return Path(file_of(str(root), key))


def file_of(root: str, key: str) -> str:
    """``path_of`` as a string (the writer thread's: pathlib's joins cost it ~3 us a file)."""
    prefix, _, rest = key.partition("/")
    if prefix in _CONTENT:
        return f"{root}/{prefix}/{rest[:2]}/{rest}"
    return f"{root}/{key}"  # refs/<app>/<channel>: both names are checked against their grammar


def key_of(rel: str) -> str | None:
    """The key of a file found under the root (relative POSIX path), or None for a
    stranger (temp files, anything the edge did not write)."""
    parts = rel.split("/")
    if parts[-1].startswith(TEMP_PREFIX):
        return None
    if len(parts) == 3 and parts[0] in _CONTENT and ID_RE.fullmatch(parts[2]) and parts[1] == parts[2][:2]:
        return f"{parts[0]}/{parts[2]}"
    if (
        len(parts) == 3
        and parts[0] == "refs"
        and APP_RE.fullmatch(parts[1])
        and CHANNEL_RE.fullmatch(parts[2])
    ):
        return rel
    return None


def walk(root: Path) -> Iterator[tuple[str, int, float]]:
    """(key, size, last use) of every cache file, from directory entries and one stat each
    — never a file's content.  Last use is the later of atime and mtime."""
    for top in (*_CONTENT, "refs"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                key = key_of(os.path.relpath(full, root).replace(os.sep, "/"))
                if key is None:
                    continue
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                yield key, st.st_size, max(st.st_atime, st.st_mtime)
