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
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from common.errors import BadArchive, TooLarge, UnsafeArchive
from common.package import MAX_APP_JSON, layout
from common.paths import check_relpath

__all__ = ["MAX_META", "Limits", "extract", "read_app_json"]

PIECE = 64 * 1024
BLOCK = 512
MAX_META = 64 << 10  # one GNU long name or PAX record set: paths are at most 1 KiB
# A tar stream may exceed its file data by this much per entry allowed: the header block,
# the data's padding, and typically one PAX or long-name record (about 1 KiB each).
ENTRY_OVERHEAD = 4 << 10


@dataclass(frozen=True)
class Limits:
    max_upload: int = 64 << 20
    max_unpacked: int = 256 << 20
    max_files: int = 20_000  # files in an archive, and directories too
    max_ratio: float = 200.0
    ratio_floor: int = 1 << 20
    max_subpackages: int = 10_000  # subPackages entries of app.json

    @property
    def max_entries(self) -> int:
        """Archive entries (files, directories) read before giving up."""
        return 2 * self.max_files

    @property
    def max_tar_stream(self) -> int:
        """Bytes a tar stream may hold in all: file data plus the headers, metadata and
        padding around it, so that metadata cannot keep the origin decompressing either."""
        return self.max_unpacked + self.max_entries * ENTRY_OVERHEAD


class _Budget:
    """Counts what an archive has produced so far and raises the moment a limit is crossed.

    ``dirs`` holds every directory an entry lies in or names; it is closed under prefixes
    and never holds a file, so a path's parents are walked from the deepest and the walk
    stops at the first known directory: the work (and the memory, since directories are
    bounded like files) stays linear in what the archive holds."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.unpacked = 0
        self.paths: set[str] = set()
        self.dirs: set[str] = set()

    def add_file(self, path: str) -> None:
        if path in self.paths:
            raise UnsafeArchive(f"archive holds {path!r} twice")
        if path in self.dirs:
            raise UnsafeArchive(f"archive holds {path!r} both as a file and as a directory")
        if len(self.paths) >= self.limits.max_files:
            raise TooLarge(f"archive holds more than {self.limits.max_files} files")
        self._add_parents(path)
        self.paths.add(path)

    def add_dir(self, path: str) -> None:
        if path in self.paths:
            raise UnsafeArchive(f"archive holds {path!r} both as a file and as a directory")
        self._add_parents(path + "/")

    def _add_parents(self, path: str) -> None:
        end = path.rfind("/")
        while end > 0:
            parent = path[:end]
            if parent in self.dirs:
                return
            if parent in self.paths:
                raise UnsafeArchive(f"{path.rstrip('/')!r} lies under the file {parent!r}")
            if len(self.dirs) >= self.limits.max_files:
                raise TooLarge(f"archive holds more than {self.limits.max_files} directories")
            self.dirs.add(parent)
            end = path.rfind("/", 0, end)

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


def _is_root(name: str) -> bool:
    """``tar -C dir .`` names the folder itself first: nothing to make."""
    return name in (".", "./")


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _copy(
    src: _Readable, dest_root: Path, path: str, budget: _Budget, check: Callable[[int], None] | None = None
) -> None:
    """Stream one entry to dest_root/path, counting every byte against the budget;
    ``check(produced)`` runs after every piece, so a bomb stops within one piece."""
    target = dest_root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    produced = 0
    with open(target, "xb") as out:
        while piece := src.read(PIECE):
            produced += len(piece)
            budget.add_bytes(len(piece))
            if check is not None:
                check(produced)
            out.write(piece)


# -- zip ---------------------------------------------------------------------------------------


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


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
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
                    _copy(src, dest, path, budget, _entry_ratio(budget, path, info.compress_size))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
                raise BadArchive(f"corrupt zip entry {path!r}: {exc}") from exc


def _zip_path(info: zipfile.ZipInfo, budget: _Budget) -> str | None:
    """Check one central-directory entry and claim its path in the budget; the path of a
    file, None for a directory."""
    # orig_filename is the name as stored: ``filename`` is cut at the first NUL.
    name = info.orig_filename
    is_dir = name.endswith("/")
    if is_dir and _is_root(name):
        return None
    path = _entry_path(name)
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


def _entry_ratio(budget: _Budget, path: str, compressed: int) -> Callable[[int], None]:
    return lambda produced: budget.check_ratio(produced, compressed, f"entry {path!r}")


# -- tar.gz: gzip, every member's CRC-32 and length checked ---------------------------------------


class _Gunzip:
    """A gzip file's decompressed bytes, in bounded pieces.

    zlib (``wbits=31``) checks each member's trailer, CRC-32 and ISIZE, when it reaches it;
    a stream that ends before its trailer is refused here.  Several members are one stream
    (RFC 1952 §2.2; what ``gzip -d`` does); NUL bytes after the last member are padding,
    ignored like gzip(1) and Python's gzip do; anything else after it is refused, as is a
    next member that is not gzip (zlib's header check)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.consumed = 0  # compressed bytes read, for the ratio check
        self._z = zlib.decompressobj(wbits=31)
        self._input = b""
        self._done = False

    def _fill(self) -> bool:
        if not self._input:
            self._input = self.raw.read(PIECE)
            self.consumed += len(self._input)
        return bool(self._input)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" only once the file has ended where its last member does."""
        while not self._done:
            if self._z.eof:
                self._next_member()
                continue
            more = self._fill()
            out = self._z.decompress(self._input, n)
            self._input = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if out:
                return out
            if not more and not self._z.eof:
                raise BadArchive("corrupt tar.gz: the gzip stream is truncated (its trailer is missing)")
        return b""

    def _next_member(self) -> None:
        if not self._fill():
            self._done = True
        elif self._input[0] == 0:
            while self._input:
                if self._input.strip(b"\0"):
                    raise BadArchive("corrupt tar.gz: data after the gzip stream")
                self._input = b""
                self._fill()
            self._done = True
        else:
            self._z = zlib.decompressobj(wbits=31)


# -- tar: a strict reader ---------------------------------------------------------------------


class _TarStream:
    """The tar stream (decompressed for tar.gz), read exactly; every byte — headers,
    metadata, padding, data — counts against the stream bound and, for tar.gz, the ratio."""

    def __init__(
        self, read: Callable[[int], bytes], budget: _Budget, consumed: Callable[[], int] | None
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
                _check_global(_pax_records(payload))
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


def _pax_records(data: bytes) -> dict[bytes, bytes]:
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
    pax = _pax_records(meta[b"x"]) if b"x" in meta else {}
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


def _extract_tar(archive: Path, dest: Path, budget: _Budget, gz: bool) -> None:
    with open(archive, "rb") as raw:
        if gz:
            gunzip = _Gunzip(raw)
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


def _extract_entry(entry: _Entry, dest: Path, budget: _Budget) -> None:
    if entry.kind == _DIR_KIND and _is_root(entry.name):
        return
    path = _entry_path(entry.name)
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
    _copy(entry.data, dest, path, budget)


# -- the whole -----------------------------------------------------------------------------------


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
    # Here rather than at publishing: a bad app.json is refused before the publish lock.
    layout(list(files), read_app_json(files), max_subpackages=limits.max_subpackages)
    return files
