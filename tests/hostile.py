"""Builders for hostile archives (each made in memory or streamed, never from disk data)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile


def tar_with(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def ok_files() -> dict[str, bytes]:
    return {"app.json": b'{"pages": ["pages/index/index"]}', "pages/index/index.js": b"Page({})\n"}


def tar_ok_plus(extra: tarfile.TarInfo, payload: bytes | None = b"x") -> bytes:
    files = ok_files()
    entries = [member(n) for n in files]
    if payload is not None:
        files[extra.name] = payload
    return tar_with([*entries, extra], files)


def zip_with(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def tar_gz_bomb(size: int) -> bytes:
    """A tar.gz whose one entry is ``size`` zero bytes (gzip shrinks it ~1000x)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tf:
        info = member("app.json")
        info.size = size
        tf.addfile(info, io.BufferedReader(_Zeros(size)))
    return buf.getvalue()


def zip_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf, zf.open("big.js", "w") as f:
        piece = bytes(1 << 20)
        for _ in range(size >> 20):
            f.write(piece)
    return buf.getvalue()


def zip_many(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"f/{i}.js", b"")
    return buf.getvalue()
