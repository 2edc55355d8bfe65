"""Builders for hostile archives (each made in memory or streamed, never from disk data)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from typing import Literal


def tar_with(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None and info.isreg():
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
        tf.addfile(info, _Zeros(size))  # full reads: readinto fills what it is given
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


# -- gzip framing: members, trailers ----------------------------------------------------------


def gzip_of(data: bytes, level: int = 9) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def tar_of(files: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar of ``files`` (regular, 0644), in the given tarfile format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, payload in files.items():
            info = member(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def crc_corrupt_tar_gz() -> bytes:
    """A tar.gz whose deflate data is valid but whose content no longer matches its CRC-32
    (what ``gzip -t`` reports as a crc error): stored blocks, one content byte flipped."""
    tar = tar_of({**ok_files(), "pages/data.js": b"A" * 4096})
    gz = bytearray(gzip_of(tar, level=0))
    at = bytes(gz).index(b"A" * 4096) + 100
    gz[at] ^= 0x01
    return bytes(gz)


def ok_tar_gz() -> bytes:
    return gzip_of(tar_of(ok_files()))


def with_trailer_byte_flipped(gz: bytes, offset: int) -> bytes:
    """``offset`` -8..-5 is the CRC-32, -4..-1 the ISIZE of the last member."""
    out = bytearray(gz)
    out[offset] ^= 0x01
    return bytes(out)


# -- raw tar headers: what tarfile will not write ------------------------------------------------


def header(name: str, kind: bytes, size: int, fmt: Literal[0, 1, 2] = tarfile.GNU_FORMAT) -> bytes:
    """One 512-byte tar header (checksum included) declaring ``size`` bytes of ``kind``."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=fmt)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def block_padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def tar_gz_stream(parts: Iterable[bytes]) -> bytes:
    """gzip of the concatenated ``parts`` (which may be generated, never held whole)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for part in parts:
            gz.write(part)
    return buf.getvalue()


def metadata_bomb(kind: bytes, size: int) -> bytes:
    """A tar.gz whose first header is a GNU long name ('L') or PAX ('x') record declaring
    ``size`` bytes (of zeros, ~1000x smaller once gzipped), then an ordinary entry."""

    def parts() -> Iterator[bytes]:
        yield header("././@LongLink" if kind == b"L" else "pax", kind, size)
        piece = bytes(1 << 20)
        left = size
        while left:
            yield piece[: min(left, len(piece))]
            left -= min(left, len(piece))
        yield bytes(-size % 512)
        yield tar_of(ok_files())

    return tar_gz_stream(parts())


def tar_gz_raw(*blocks: bytes) -> bytes:
    """A tar.gz of hand-made blocks, the ok files after them, and the end marker."""
    return gzip_of(b"".join(blocks) + tar_of(ok_files()))


def gnu_sparse() -> bytes:
    return tar_gz_raw(header("sparse.js", tarfile.GNUTYPE_SPARSE, 0))


def pax_sparse() -> bytes:
    """PAX sparse 1.0: the entry's data starts with a map of number lines that tarfile
    reads in a loop, as many as the map claims."""
    records = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
    records += pax_record("GNU.sparse.name", "sparse.js") + pax_record("GNU.sparse.realsize", str(1 << 40))
    sparse_map = b"999999999999\n" + b"0\n" * 200
    return tar_gz_raw(
        header("pax", tarfile.XHDTYPE, len(records), tarfile.USTAR_FORMAT),
        block_padded(records),
        header("sparse.js", tarfile.REGTYPE, len(sparse_map), tarfile.USTAR_FORMAT),
        block_padded(sparse_map),
    )


def pax_named(path: str) -> bytes:
    """A tar.gz whose entry gets its name from a PAX ``path`` record (any bytes tarfile's
    header fields could not hold: newlines, NUL)."""
    records = pax_record("path", path)
    return tar_gz_raw(
        header("pax", tarfile.XHDTYPE, len(records), tarfile.USTAR_FORMAT),
        block_padded(records),
        header("placeholder.js", tarfile.REGTYPE, 1, tarfile.USTAR_FORMAT),
        block_padded(b"x"),
    )


def zip_with_raw_name(name: bytes, payload: bytes = b"1") -> bytes:
    """A zip (with the ok files) holding an entry whose stored name is ``name`` exactly:
    zipfile itself cuts names at NUL when writing, so the bytes are patched in after."""
    placeholder = b"Q" * len(name)
    raw = zip_with({**ok_files(), placeholder.decode(): payload})
    assert raw.count(placeholder) == 2  # the local header and the central directory
    return raw.replace(placeholder, name)


# -- app.json ---------------------------------------------------------------------------------------


def with_app_json(doc: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    files = {**ok_files(), "app.json": doc, **(extra or {})}
    return gzip_of(tar_of(files))


def many_subpackages(n: int, with_files: int | None = None) -> bytes:
    """An app with ``n`` subpackages, the first ``with_files`` (default: all) holding one
    small file each (the rest are empty: cheap to unpack, as costly to lay out)."""
    subs = [{"root": f"sub/p{i}", "pages": ["index"]} for i in range(n)]
    files = {f"sub/p{i}/index.js": f"Page({{n: {i}}})\n".encode() for i in range(min(n, with_files or n))}
    doc = json.dumps({"pages": ["pages/index/index"], "subPackages": subs}).encode()
    return with_app_json(doc, files)


def with_zip64_end(raw: bytes) -> bytes:
    """The same zip with a zip64 end record and locator before its end record (what
    writers add past 65,535 entries or 4 GiB), the classic fields set to "see zip64"."""
    at = raw.rindex(b"PK\x05\x06")
    sig, _, _, on_disk, total, cd_size, cd_offset, comment = struct.unpack_from("<4s4H2LH", raw, at)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, on_disk, total, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", sig, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, comment)
    return raw[:at] + record + locator + end + raw[at + 22 :]


def zip_many_raw(n: int) -> bytes:
    """A zip of ``n`` empty stored entries, packed directly (zipfile takes ~10 s for
    800,000): 78 bytes an entry, so 800,000 fit in 64 MiB."""
    local, central = [], []
    offset = 0
    for i in range(n):
        name = b"%x" % i
        head = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0, 0, len(name),
                                   0, 0, 0, 0, 0, offset) + name)
        local.append(head)
        offset += len(head)
    directory = b"".join(central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), len(directory), offset, 0)
    return b"".join(local) + directory + end


def deep_directories(files: int, depth: int) -> bytes:
    """A tar.gz of ``files`` empty files, each ``depth`` directories deep in a chain of its
    own: every prefix is a new directory (files x depth of them, ~depth/2 KiB each)."""
    chain = "/".join(["d"] * depth)
    return tar_gz_stream(hostile_tar_entries(f"{i}/{chain}/f.js" for i in range(files)))


def hostile_tar_entries(names: Iterable[str]) -> Iterator[bytes]:
    """Uncompressed tar blocks of empty regular files (PAX for long names), then the end."""
    for name in names:
        info = member(name)
        yield info.tobuf(format=tarfile.PAX_FORMAT)
    yield bytes(1024)


def random_files(total: int, size: int = 1 << 20) -> bytes:
    """A legitimate tar.gz of ``total`` bytes of incompressible files (about as large)."""
    files = {"app.json": b'{"pages": ["pages/index/index"]}'}
    files |= {f"assets/{i}.bin": os.urandom(size) for i in range(total // size)}
    return gzip_of(tar_of(files), level=1)
