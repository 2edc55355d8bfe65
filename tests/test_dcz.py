"""RFC 9842 dcz (common/dcz.py) and the stream codec (bundles, deltas), synchronously."""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from common import codec, dcz
from common.errors import IntegrityError


def _pair(seed: int = 1, size: int = 200_000) -> tuple[bytes, bytes]:
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(3, 12)) for _ in range(400)]
    old = b" ".join(rnd.choice(words) for _ in range(size // 8))
    new = old[: len(old) // 2] + b"a small edit" + old[len(old) // 2 :]
    return old, new


def test_round_trip_and_wire_format() -> None:
    old, new = _pair()
    body = dcz.encode(new, old)
    assert body[:8] == bytes([0x5E, 0x2A, 0x4D, 0x18, 0x20, 0, 0, 0])  # skippable frame, 32 bytes long
    assert body[8:40] == hashlib.sha256(old).digest() == dcz.dictionary_hash(body)
    assert dcz.decode(body, old, len(new)) == new
    assert len(body) < len(codec.compress(new)) // 20  # the point of a dictionary


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs Debian's zstd")
def test_the_zstd_cli_decodes_a_dcz_body_with_the_dictionary(tmp_path: Path) -> None:
    old, new = _pair(2, 50_000)
    (tmp_path / "dict").write_bytes(old)
    (tmp_path / "body").write_bytes(dcz.encode(new, old))
    r = subprocess.run(["zstd", "-d", "-q", "-c", "-D", str(tmp_path / "dict"), str(tmp_path / "body")],
                       capture_output=True, check=True)
    assert r.stdout == new


def test_available_dictionary_is_an_sf_byte_sequence() -> None:
    digest = hashlib.sha256(b"manifest").digest()
    header = dcz.available_dictionary(digest)
    assert header == ":" + base64.b64encode(digest).decode() + ":"
    assert dcz.parse_available_dictionary(header) == digest
    assert dcz.parse_available_dictionary(f"  {header} ") == digest
    for bad in (None, "", "::", header[1:], ":" + base64.b64encode(b"short").decode() + ":", ":not base64!:"):
        assert dcz.parse_available_dictionary(bad) is None


@pytest.mark.parametrize(("header", "ok"), [
    ("dcz", True), ("gzip, dcz, zstd", True), ("DCZ;q=0.5", True), ("dcz;q=0", False),
    ("zstd", False), ("*", False), ("", False), (None, False),
])
def test_accepts_dcz(header: str | None, ok: bool) -> None:
    assert dcz.accepts_dcz(header) is ok


def test_decode_refuses_the_wrong_dictionary_corruption_and_bombs() -> None:
    old, new = _pair(3)
    body = dcz.encode(new, old)
    with pytest.raises(IntegrityError, match="another dictionary"):
        dcz.decode(body, old + b"x", len(new))
    with pytest.raises(IntegrityError, match="header"):
        dcz.decode(body[8:], old, len(new))
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(IntegrityError):
        dcz.decode(bytes(flipped), old, len(new))
    with pytest.raises(IntegrityError, match="more than"):
        dcz.decode(body, old, len(new) - 1)


def test_decode_bounds_memory_by_the_declared_size_and_encode_keeps_the_rfc_window() -> None:
    dictionary = b"0123456789abcdef" * 64
    body = b"x" * 100_000
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(body)  # size not declared
    with pytest.raises(IntegrityError, match="declare"):
        dcz.decode(dcz.MAGIC + hashlib.sha256(dictionary).digest() + frame, dictionary, 1 << 20)
    big = random.Random(4).randbytes(9 << 20)
    encoded = dcz.encode(big, dictionary, level=1)
    assert zstandard.get_frame_parameters(encoded[dcz.HEADER_SIZE:]).window_size <= dcz.max_window(len(dictionary))
    assert dcz.decode(encoded, dictionary, len(big)) == big
    assert dcz.max_window(1 << 20) == 8 << 20 and dcz.max_window(100 << 20) == 125 << 20
    assert dcz.max_window(1 << 30) == 128 << 20


def test_streams_bundle_and_delta_decode_only_to_the_stated_size() -> None:
    old, new = _pair(5)
    bundle = codec.compress_stream(new)
    delta = codec.compress_stream(new, base=old)
    assert len(delta) < len(bundle) // 20
    assert codec.decompress_stream(bundle, len(new)) == new
    assert codec.decompress_stream(delta, len(new), old) == new
    for size in (len(new) - 1, len(new) + 1):  # a frame that declares anything else is refused
        with pytest.raises(IntegrityError, match="declares"):
            codec.decompress_stream(bundle, size)
    with pytest.raises(IntegrityError):
        codec.decompress_stream(b"not a frame", 10)


def test_a_delta_reaches_the_whole_base_past_the_default_window() -> None:
    """The window covers base and stream: with a 9 MiB base (more than the level's
    default window) the edit near its start is still found; a default window would
    re-send about 7 MiB."""
    rnd = random.Random(6)
    old = rnd.randbytes(9 << 20)
    new = old[:1000] + b"edit" + old[1000:]
    delta = codec.compress_stream(new, level=12, base=old)
    assert len(delta) < 4096
    assert codec.decompress_stream(delta, len(new), old) == new
