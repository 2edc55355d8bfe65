"""Paths inside a package: the one check every archive entry and manifest path passes."""

from __future__ import annotations

from common.errors import UnsafeArchive

__all__ = ["MAX_PATH", "check_relpath"]

MAX_PATH = 1024


def check_relpath(path: str) -> str:
    """A normalised relative POSIX path that cannot escape its root, else UnsafeArchive."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise UnsafeArchive(f"path {path[:80]!r} is empty or longer than {MAX_PATH} bytes")
    if "\x00" in path or "\\" in path:
        raise UnsafeArchive(f"path {path[:80]!r} contains NUL or a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafeArchive(f"path {path[:80]!r} is absolute")
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise UnsafeArchive(f"path {path[:80]!r} has an empty, '.' or '..' component")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafeArchive(f"path {path[:80]!r} is not valid UTF-8") from exc
    return path
