"""origin.ingest on real files: what publishers' tools write is unpacked exactly; anything
else is refused with one of minicdn's errors, never another exception."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.errors import BadArchive, MinicdnError, TooLarge, UnsafeArchive
from origin.ingest import Limits, extract
from origin.tarreader import pax_records
from tests import hostile

REPO = Path(__file__).resolve().parent.parent
DEFAULT = Limits()


def unpack(tmp: Path, archive: bytes, limits: Limits = DEFAULT) -> dict[str, bytes]:
    src = tmp / "archive"
    src.write_bytes(archive)
    out = tmp / "out"
    out.mkdir()
    return {p: f.read_bytes() for p, f in extract(src, out, limits).items()}


def refused(tmp: Path, archive: bytes, limits: Limits = DEFAULT) -> MinicdnError:
    with pytest.raises(MinicdnError) as info:
        unpack(tmp, archive, limits)
    assert not [p for p in (tmp / "out").rglob("*") if p.is_file() and p.name == "evil.js"]
    return info.value


FILES = {**hostile.ok_files(), "pages/" + "d" * 120 + "/" + "f" * 150 + ".js": b"long\n", "a/b/c.js": b"c"}


# -- what publishers write ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("gz", [True, False])
def test_tarfile_formats_with_long_names_unpack_exactly(tmp_path: Path, fmt: int, gz: bool) -> None:
    tar = hostile.tar_of(FILES, fmt)
    assert unpack(tmp_path, hostile.gzip_of(tar) if gz else tar) == FILES


def test_ustar_prefix_field_is_joined(tmp_path: Path) -> None:
    files = {"p" * 90 + "/" + "q" * 90 + ".js": b"1", "app.json": b"{}"}  # name too long for 100 bytes
    assert unpack(tmp_path, hostile.tar_of(files, tarfile.USTAR_FORMAT)) == files


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix"])
def test_gnu_tar_of_a_folder_with_its_dot_entry_unpacks(tmp_path: Path, fmt: str) -> None:
    """``tar czf app.tgz -C dir .`` names "./" first; that was refused as a '.' path."""
    src = tmp_path / "src"
    for name, data in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / "empty-dir").mkdir()
    out = tmp_path / "app.tgz"
    subprocess.run(["tar", "czf", str(out), f"--format={fmt}", "-C", str(src), "."], check=True)
    assert unpack(tmp_path, out.read_bytes()) == FILES


def test_npm_packages_unpack(tmp_path: Path) -> None:
    tgzs = sorted((REPO / "data" / "npm").glob("*.tgz"))
    if not tgzs:
        pytest.skip("run `make data` first")
    for i, tgz in enumerate(tgzs[:3]):
        with tarfile.open(tgz) as tf:
            expected = {m.name.split("/", 1)[1] for m in tf if m.isreg()}
        (tmp_path / str(i)).mkdir()
        assert set(unpack(tmp_path / str(i), tgz.read_bytes())) == expected


def test_several_gzip_members_are_one_stream(tmp_path: Path) -> None:
    """RFC 1952 §2.2: a gzip file is a series of members (``cat a.gz b.gz``, ``gzip -d``)."""
    tar = hostile.tar_of(FILES)
    half = len(tar) // 2 + 7
    assert unpack(tmp_path, hostile.gzip_of(tar[:half]) + hostile.gzip_of(tar[half:])) == FILES


def test_nul_padding_after_the_gzip_stream_is_ignored(tmp_path: Path) -> None:
    """As gzip(1) and Python's gzip do (tape and block devices pad files)."""
    assert unpack(tmp_path, hostile.gzip_of(hostile.tar_of(FILES)) + bytes(10240)) == FILES


def test_zip_unpacks_with_its_directory_entries(tmp_path: Path) -> None:
    archive = hostile.zip_with({**FILES, "empty/": b"", "a/": b""})
    assert unpack(tmp_path, archive) == FILES
    assert (tmp_path / "out" / "empty").is_dir()


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "archive",
    [
        hostile.crc_corrupt_tar_gz(),
        hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -8),
        hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -5),
        hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -4),
        hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -1),
        hostile.ok_tar_gz()[:-8],
        hostile.ok_tar_gz()[:-1],
        hostile.ok_tar_gz() + b"\x1f\x8b",  # a second member that never comes
        hostile.ok_tar_gz() + b"garbage",
        hostile.ok_tar_gz() + bytes(100) + b"x",
        hostile.gzip_of(hostile.tar_of(hostile.ok_files()) + b"x" * 512),  # data after the end marker
        hostile.gzip_of(hostile.tar_of(hostile.ok_files()).rstrip(b"\0")),  # no end marker
    ],
    ids=["deflate-crc", "crc", "crc-high", "isize", "isize-high", "no-trailer", "half-trailer",
         "member-header-only", "garbage", "garbage-after-zeros", "after-end-marker", "no-end-marker"],
)
def test_corrupt_or_truncated_tar_gz_is_a_bad_archive(tmp_path: Path, archive: bytes) -> None:
    assert isinstance(refused(tmp_path, archive), BadArchive)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE])
def test_metadata_records_are_bounded_before_they_are_read(tmp_path: Path, kind: bytes) -> None:
    err = refused(tmp_path, hostile.tar_gz_raw(hostile.header("meta", kind, (64 << 10) + 1)))
    assert isinstance(err, TooLarge) and "metadata" in err.message


def test_metadata_at_the_bound_is_read(tmp_path: Path) -> None:
    records = hostile.pax_record("comment", "c" * ((64 << 10) - 20))
    records += b"\0" * ((64 << 10) - len(records))
    archive = hostile.tar_gz_raw(hostile.header("pax", tarfile.XHDTYPE, len(records)), records)
    assert unpack(tmp_path, archive) == hostile.ok_files()


@pytest.mark.parametrize(
    "blocks",
    [
        [hostile.header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 2), hostile.block_padded(b"a\0")] * 2,
        [hostile.header("pax", tarfile.XHDTYPE, 3), hostile.block_padded(b"3 x")],
        [hostile.header("pax", tarfile.XHDTYPE, 12), hostile.block_padded(b"99 path=a.j\n")],
        [hostile.header("pax", tarfile.XHDTYPE, 11), hostile.block_padded(b"11 pathaaa\n")],
        [hostile.header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 2), hostile.block_padded(b"a\0")],
    ],
    ids=["two-long-names", "pax-no-newline", "pax-length-past-end", "pax-no-equals", "long-name-then-end"],
)
def test_malformed_metadata_is_a_bad_archive(tmp_path: Path, blocks: list[bytes]) -> None:
    archive = hostile.gzip_of(b"".join(blocks) + bytes(1024))
    assert isinstance(refused(tmp_path, archive), BadArchive)


def test_global_pax_record_may_not_name_every_entry(tmp_path: Path) -> None:
    records = hostile.pax_record("path", "evil.js")
    archive = hostile.tar_gz_raw(hostile.header("g", tarfile.XGLTYPE, len(records)), hostile.block_padded(records))
    assert isinstance(refused(tmp_path, archive), UnsafeArchive)


def test_global_pax_comment_is_fine(tmp_path: Path) -> None:
    """``git archive`` writes one (the commit id)."""
    records = hostile.pax_record("comment", "4b825dc642cb6eb9a060e54bf8d69288fbee4904")
    archive = hostile.tar_gz_raw(hostile.header("g", tarfile.XGLTYPE, len(records)), hostile.block_padded(records))
    assert unpack(tmp_path, archive) == hostile.ok_files()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                                  tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE, b"V", b"D", b"Z"])
def test_every_entry_type_but_file_and_directory_is_refused(tmp_path: Path, kind: bytes) -> None:
    err = refused(tmp_path, hostile.tar_gz_raw(hostile.header("evil.js", kind, 0)))
    assert isinstance(err, UnsafeArchive) and "'evil.js'" in err.message


def test_name_with_a_nul_in_the_header_field_is_refused(tmp_path: Path) -> None:
    block = bytearray(hostile.header("pages/a.jsXevil.js", tarfile.REGTYPE, 0))
    block[len("pages/a.js")] = 0
    block[148:156] = b"%06o\0 " % (sum(block[:148]) + 8 * 32 + sum(block[156:]))
    err = refused(tmp_path, hostile.tar_gz_raw(bytes(block)))
    assert isinstance(err, UnsafeArchive) and "NUL" in err.message


def test_many_deep_directories_are_bounded(tmp_path: Path) -> None:
    """Every file 500 directories deep, each chain new: counted like files, not stored."""
    deep = "/".join(["d"] * 500)
    archive = hostile.gzip_of(hostile.tar_of({f"{i}/{deep}/f.js": b"" for i in range(50)}))
    err = refused(tmp_path, archive, Limits(max_files=1000))
    assert isinstance(err, TooLarge) and "directories" in err.message


def test_tar_stream_is_bounded_beyond_file_data(tmp_path: Path) -> None:
    """Metadata that is not file data still counts (so it cannot keep the origin reading,
    or decompressing, for long): 40 PAX comments of 60 KB against a 1.8 MB stream bound."""
    records = hostile.pax_record("comment", "c" * 60_000)
    blocks = [hostile.header("pax", tarfile.XHDTYPE, len(records)), hostile.block_padded(records)]
    archive = b"".join(b"".join(blocks) + hostile.header(f"f{i}.js", tarfile.REGTYPE, 0) for i in range(40))
    err = refused(tmp_path, archive + hostile.tar_of(hostile.ok_files()), Limits(max_unpacked=1 << 20, max_files=100))
    assert isinstance(err, TooLarge) and "tar stream" in err.message


# -- anything at all is refused with a minicdn error or unpacked ----------------------------------


def _mutations() -> st.SearchStrategy[tuple[str, int, bytes]]:
    return st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 1 << 20), st.binary(max_size=8))


BASES = {
    "tar": hostile.tar_of(FILES),
    "gnu": hostile.tar_of(FILES, tarfile.GNU_FORMAT),
    "tar.gz": hostile.gzip_of(hostile.tar_of(FILES), level=1),
    "zip": hostile.zip_with(FILES),
}


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), edits=st.lists(_mutations(), min_size=1, max_size=4))
@example(base="zip", edits=[("flip", 999, b"")])  # a local header offset < 0: OSError, not a refusal
def test_mutated_archives_unpack_or_are_refused(tmp_path_factory: pytest.TempPathFactory, base: str,
                                                edits: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(BASES[base])
    for op, at, extra in edits:
        at %= len(data)
        if op == "flip":
            data[at] ^= 1 << (at % 8)
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = extra
        if not data:
            data = bytearray(b"\0")
    tmp = tmp_path_factory.mktemp("fuzz")
    with contextlib.suppress(MinicdnError):  # refused: fine; anything else fails the test
        unpack(tmp, bytes(data))


PAX_RECORDS = st.lists(st.tuples(st.text(min_size=1, max_size=10).filter(lambda k: "=" not in k),
                                  st.text(max_size=20)))


@settings(max_examples=500, deadline=None)
@given(PAX_RECORDS)
def test_pax_records_round_trip(kv: list[tuple[str, str]]) -> None:
    data = b"".join(hostile.pax_record(k, v) for k, v in kv)
    assert pax_records(data) == {k.encode(): v.encode() for k, v in kv}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_pax_bytes_parse_or_are_a_bad_archive(data: bytes) -> None:
    try:
        records = pax_records(data)
    except BadArchive:
        return
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in records.items())


def test_zip_names_are_checked_as_stored(tmp_path: Path) -> None:
    err = refused(tmp_path, hostile.zip_with_raw_name(b"evil.js\0.png"))
    assert isinstance(err, UnsafeArchive) and "'evil.js\\x00.png'" in err.message


def test_the_whole_tar_stream_is_read_to_its_end(tmp_path: Path) -> None:
    """The gzip trailer lies after the tar end marker and the record padding: a tar.gz
    cut anywhere in there, even inside the zeros, is refused."""
    gz = hostile.gzip_of(hostile.tar_of(FILES))
    for cut in (len(gz) - 9, len(gz) - 20, len(gz) - 30):
        (tmp_path / str(cut)).mkdir()
        assert isinstance(refused(tmp_path / str(cut), gz[:cut]), BadArchive)
    assert unpack(tmp_path, gz) == FILES


def test_gzip_reader_reads_in_bounded_pieces() -> None:
    from origin.entry import PIECE
    from origin.gunzip import Gunzip

    reader = Gunzip(io.BytesIO(hostile.gzip_of(bytes(10 << 20))))
    sizes = []
    while piece := reader.read(PIECE):
        sizes.append(len(piece))
    assert max(sizes) <= PIECE and sum(sizes) == 10 << 20


def test_zip_directory_is_counted_before_zipfile_reads_it(tmp_path: Path) -> None:
    """Records past the bound are never parsed: here the 150th is garbage, which zipfile
    would report; the count stops at 101 first (zipfile made an object of every record:
    800,000 empty entries in 64 MiB took 390 MiB)."""
    archive = bytearray(hostile.zip_many(200))
    records = [i for i in range(len(archive)) if archive[i : i + 4] == b"PK\x01\x02"]
    archive[records[149] : records[149] + 4] = b"XXXX"
    err = refused(tmp_path, bytes(archive), Limits(max_files=50))
    assert isinstance(err, TooLarge) and "entries" in err.message


@pytest.mark.parametrize("zip64", [False, True])
def test_zip_directory_count_matches_zipfile_with_a_comment_and_zip64(tmp_path: Path, zip64: bool) -> None:
    files = {"app.json": b"{}"} | {f"f/{i}.js": b"" for i in range(19)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the repeated directory entry
        zf.comment = b"a comment after the end record" * 10
        for name, data in files.items():
            zf.writestr(name, data)
        for _ in range(40):  # the same directory again and again: entries, but no new paths
            zf.writestr("f/", b"")
    archive = hostile.with_zip64_end(buf.getvalue()) if zip64 else buf.getvalue()
    assert unpack(tmp_path, archive, Limits(max_files=30)) == files  # 60 entries: 2 x 30 allowed
    (tmp_path / "again").mkdir()
    assert isinstance(refused(tmp_path / "again", archive, Limits(max_files=29)), TooLarge)
