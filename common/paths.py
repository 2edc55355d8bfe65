"""Paths inside a package: the one check every archive entry and manifest path passes."""

from __future__ import annotations

import re

from common.errors import UnsafeArchive

__all__ = ["MAX_COMPONENT", "MAX_PATH", "check_relpath"]

MAX_PATH = 1024
MAX_COMPONENT = 255  # bytes: NAME_MAX of Linux, macOS and Windows file systems alike
# C0 controls, DEL and C1 controls: a newline or CR forges lines in logs and listings, a NUL
# cuts the name short in C (zip readers, the kernel), and none names a file anyone meant.
# The backslash is a separator on Windows: a client there would write outside its folder.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def check_relpath(path: str) -> str:
    """A normalised relative POSIX path that cannot escape its root, else UnsafeArchive."""
    shown = repr(path[:80])  # repr: a control character is shown escaped, never acted on
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8
        raise UnsafeArchive(f"path {shown} is not valid UTF-8") from exc
    if not path or size > MAX_PATH:
        raise UnsafeArchive(f"path {shown} is empty or longer than {MAX_PATH} bytes")
    bad = _FORBIDDEN.search(path)
    if bad:
        raise UnsafeArchive(f"path {shown} contains the control character or backslash {bad.group()!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafeArchive(f"path {shown} is absolute")
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise UnsafeArchive(f"path {shown} has an empty, '.' or '..' component")
    if any(len(part.encode("utf-8")) > MAX_COMPONENT for part in parts):
        raise UnsafeArchive(f"path {shown} has a component longer than {MAX_COMPONENT} bytes")
    return path
