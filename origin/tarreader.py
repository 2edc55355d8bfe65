"""A strict tar reader for publishers' archives (origin/ingest.py says what is refused).

Tar is read by the small strict reader below rather than by ``tarfile``: in stream mode
``tarfile`` never checks the gzip CRC-32 and length and stops reading at the tar end
marker (a corrupt or truncated tar.gz was published), it reads a GNU long name or a PAX
header of any declared size into memory at once (1 GiB declared in a 1 MB upload took
2.6 GB), and it follows GNU sparse maps, which are further such loops.  Overriding its
private ``_proc_*`` methods would pin us to one Python's internals; the subset publishers
actually write (ustar and GNU headers, GNU long names, PAX records) is small enough to
read whole, every field checked and every record bounded.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import BadArchive, TooLarge, UnsafeArchive
from origin.entry import PIECE, copy_entry, entry_path, is_root
from origin.gunzip import Gunzip
from origin.limits import Budget

__all__ = ["MAX_META", "extract_tar", "pax_records"]

BLOCK = 512
MAX_META = 64 << 10  # one GNU long name or PAX record set: paths are at most 1 KiB


class _TarStream:
    """The tar stream (decompressed for tar.gz), read exactly; every byte — headers,
    metadata, padding, data — counts against the stream bound and, for tar.gz, the ratio."""

    def __init__(
        self, read: Callable[[int], bytes], budget: Budget, consumed: Callable[[], int] | None
    ) -> None:
        self._read = read
        self._budget = budget
        self._consumed = consumed
        self.produced = 0

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self.produced += len(data)
        cap = self._budget.limits.max_tar_stream
        if self.produced > cap:
            raise TooLarge(f"archive's tar stream (data, headers and metadata) is larger than {cap} bytes")
        if self._consumed is not None:  # a tar.gz has no per-entry sizes: bound the whole stream's ratio
            self._budget.check_ratio(self.produced, self._consumed(), "archive")
        return data

    def exact(self, n: int, what: str) -> bytes:
        parts = []
        while n:
            piece = self.read(min(n, PIECE))
            if not piece:
                raise BadArchive(f"corrupt tar: truncated in {what}")
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def skip(self, n: int, what: str) -> None:
        while n:
            n -= len(self.exact(min(n, PIECE), what))


class _EntryData:
    """One entry's data: ``size`` bytes of the stream, then whatever the reader left is skipped."""

    def __init__(self, stream: _TarStream, size: int) -> None:
        self._stream = stream
        self.left = size

    def read(self, n: int = PIECE) -> bytes:
        data = self._stream.exact(min(n, self.left), "an entry's data") if self.left else b""
        self.left -= len(data)
        return data


@dataclass(frozen=True)
class _Entry:
    name: str  # as the archive spells it (long names and PAX paths applied)
    kind: bytes  # the ustar typeflag
    size: int
    data: _EntryData


@dataclass(frozen=True)
class _Header:
    name: bytes
    kind: bytes
    size: int


_FILE_KINDS = (b"0", b"\0", b"7")  # regular; '7' is a contiguous file, regular for everyone else
_DIR_KIND = b"5"
_META_KINDS = (b"L", b"K", b"x", b"g")  # GNU long name/link name, PAX entry/global records
_ZERO_BLOCK = bytes(BLOCK)
_OCTAL = re.compile(rb" *([0-7]*) *")
_DECIMAL = re.compile(rb"[0-9]{1,20}")
_PAX_PER_ENTRY = (b"path", b"linkpath", b"size")


def _entries(stream: _TarStream) -> Iterator[_Entry]:
    """Each entry of a tar stream up to its end-of-archive marker, and then the check that
    only zeros (tar's record padding) follow.  Metadata records apply to the entry after
    them, at most one of each kind; a global PAX record may not change what entries are."""
    meta: dict[bytes, bytes] = {}
    while True:
        block = stream.exact(BLOCK, "a header")
        if block == _ZERO_BLOCK:
            if meta:
                raise BadArchive("corrupt tar: a long-name or PAX record without an entry")
            _zeros_to_end(stream)
            return
        h = _parse_header(block)
        if h.kind in _META_KINDS:
            payload = _read_meta(stream, h)
            if h.kind == b"g":
                _check_global(pax_records(payload))
            elif h.kind in meta:
                raise BadArchive(f"corrupt tar: two {h.kind.decode()!r} records for one entry")
            else:
                meta[h.kind] = payload
            continue
        name, kind, size = _name_and_size(h, meta)
        meta = {}
        data = _EntryData(stream, size)
        yield _Entry(name, kind, size, data)
        stream.skip(data.left + (-size % BLOCK), "an entry's data")


def _parse_header(block: bytes) -> _Header:
    posix = block[257:263] == b"ustar\0"
    if not posix and block[257:265] != b"ustar  \0":
        raise BadArchive("corrupt tar: a header without the ustar magic")
    stored = _octal(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = sum(struct.unpack("148b8x356b", block)) + 8 * 0x20  # what some old tars wrote
    if stored not in (unsigned, signed):
        raise BadArchive("corrupt tar: a header's checksum does not match")
    kind = block[156:157]
    size_field = block[124:136]
    if size_field[0] & 0x80:  # GNU base-256: only needed past 8 GiB
        raise TooLarge("archive holds an entry of 8 GiB or more")
    name = _cstring(block[0:100])
    prefix = _cstring(block[345:500]) if posix else b""
    return _Header(prefix + b"/" + name if prefix else name, kind, _octal(size_field, "size"))


def _octal(field: bytes, what: str) -> int:
    m = _OCTAL.fullmatch(field.split(b"\0", 1)[0])
    if m is None:
        raise BadArchive(f"corrupt tar: {what} field {field!r} is not an octal number")
    return int(m.group(1) or b"0", 8)


def _cstring(field: bytes) -> bytes:
    """A NUL-terminated name; a NUL followed by more name is refused (C would cut it there)."""
    value, _, rest = field.partition(b"\0")
    if rest.strip(b"\0"):
        raise UnsafeArchive(f"entry name {field.rstrip(bytes(1))!r} holds a NUL")
    return value


def _read_meta(stream: _TarStream, h: _Header) -> bytes:
    if h.size > MAX_META:
        raise TooLarge(f"a tar {h.kind.decode()!r} metadata record of {h.size} bytes (at most {MAX_META})")
    payload = stream.exact(h.size, "a metadata record")
    stream.skip(-h.size % BLOCK, "a metadata record")
    return payload


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records, ``"%d %s=%s\\n" % (length, key, value)``, strictly."""
    out: dict[bytes, bytes] = {}
    data = data.rstrip(b"\0")  # some writers pad the record set with NULs
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space]
        if space < 0 or not _DECIMAL.fullmatch(length):
            raise BadArchive("corrupt tar: a malformed PAX record")
        end = pos + int(length)
        if end > len(data) or end <= space + 1 or data[end - 1 : end] != b"\n":
            raise BadArchive("corrupt tar: a malformed PAX record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise BadArchive("corrupt tar: a malformed PAX record")
        out[key] = value  # a key given twice: the last one counts (POSIX pax)
        pos = end
    return out


def _check_global(records: dict[bytes, bytes]) -> None:
    bad = [k for k in records if k in _PAX_PER_ENTRY or k.startswith(b"GNU.sparse.")]
    if bad:
        raise UnsafeArchive(f"a global PAX record sets {bad[0].decode(errors='replace')!r} for every entry")


def _name_and_size(h: _Header, meta: dict[bytes, bytes]) -> tuple[str, bytes, int]:
    name, size = h.name, h.size
    if b"L" in meta:
        name = _cstring(meta[b"L"])
    pax = pax_records(meta[b"x"]) if b"x" in meta else {}
    name = pax.get(b"path") or name
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeArchive(f"entry name {name[:80]!r} is not valid UTF-8") from exc
    if any(k.startswith(b"GNU.sparse.") for k in pax):
        raise UnsafeArchive(f"entry {text[:80]!r} is a sparse file")
    if pax.get(b"size"):
        if not _DECIMAL.fullmatch(pax[b"size"]):
            raise BadArchive(f"corrupt tar: entry {text[:80]!r} has a bad PAX size")
        size = int(pax[b"size"])
    kind = _DIR_KIND if h.kind == b"\0" and text.endswith("/") else h.kind  # pre-POSIX directories
    return text, kind, size


def _zeros_to_end(stream: _TarStream) -> None:
    while piece := stream.read(PIECE):
        if piece.strip(b"\0"):
            raise BadArchive("corrupt tar: data after the end-of-archive marker")


def extract_tar(archive: Path, dest: Path, budget: Budget, gz: bool) -> None:
    with open(archive, "rb") as raw:
        if gz:
            gunzip = Gunzip(raw)
            stream = _TarStream(gunzip.read, budget, lambda: gunzip.consumed)
        else:
            stream = _TarStream(raw.read, budget, None)
        try:
            for count, entry in enumerate(_entries(stream), 1):
                if count > budget.limits.max_entries:
                    raise TooLarge(f"archive holds more than {budget.limits.max_files} files")
                _extract_entry(entry, dest, budget)
        except zlib.error as exc:
            raise BadArchive(f"corrupt tar.gz: {exc}") from exc


def _extract_entry(entry: _Entry, dest: Path, budget: Budget) -> None:
    if entry.kind == _DIR_KIND and is_root(entry.name):
        return
    path = entry_path(entry.name)
    if entry.kind == _DIR_KIND:
        if entry.size:
            raise BadArchive(f"corrupt tar: directory entry {path!r} carries data")
        budget.add_dir(path)
        (dest / path).mkdir(parents=True, exist_ok=True)
        return
    if entry.kind not in _FILE_KINDS:
        raise UnsafeArchive(
            f"entry {path!r} is a link, device or other special file (tar type {entry.kind!r})"
        )
    if budget.unpacked + entry.size > budget.limits.max_unpacked:
        raise TooLarge(f"archive unpacks to more than {budget.limits.max_unpacked} bytes")
    budget.add_file(path)
    copy_entry(entry.data, dest, path, budget)
