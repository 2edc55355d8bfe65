"""Hostile publisher input: every case is a JSON 4xx and leaves nothing stored."""

from __future__ import annotations

import contextlib
import http.client
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.fsutil import TEMP_PREFIX
from origin.limits import Limits
from tests import hostile
from tests.conftest import auth, publish
from tests.procs import Service
from tests.waiting import eventually


def _stored(origin: Service) -> list[str]:
    """The files under the origin's data, once no write is half-way (a ``.tmp-`` file: the
    change feed creates its epoch in the background just after start-up, and CI once
    listed it mid-rename)."""
    data = Path(origin.args[origin.args.index("--data") + 1])

    def listing() -> list[str]:
        return sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.name != "signing.key")

    eventually(lambda: not any(Path(name).name.startswith(TEMP_PREFIX) for name in listing()), 10, "writes settled")
    return listing()


def _peak_rss_kib(origin: Service) -> int:
    assert origin.proc is not None
    status = Path(f"/proc/{origin.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


CASES = {
    "dotdot": (hostile.tar_ok_plus(hostile.member("../evil.js")), 400, "unsafe_archive"),
    "dotdot-inside": (hostile.tar_ok_plus(hostile.member("pages/../../evil.js")), 400, "unsafe_archive"),
    "absolute": (hostile.tar_ok_plus(hostile.member("/etc/evil.js")), 400, "unsafe_archive"),
    "symlink": (hostile.tar_ok_plus(hostile.member("link.js", tarfile.SYMTYPE, "/etc/passwd"), None), 400,
                "unsafe_archive"),
    "hardlink": (hostile.tar_ok_plus(hostile.member("hard.js", tarfile.LNKTYPE, "app.json"), None), 400,
                 "unsafe_archive"),
    "chardev": (hostile.tar_ok_plus(hostile.member("dev.js", tarfile.CHRTYPE), None), 400, "unsafe_archive"),
    "fifo": (hostile.tar_ok_plus(hostile.member("fifo.js", tarfile.FIFOTYPE), None), 400, "unsafe_archive"),
    "zip-dotdot": (hostile.zip_with({**hostile.ok_files(), "../x.js": b"1"}), 400, "unsafe_archive"),
    "zip-absolute": (hostile.zip_with({**hostile.ok_files(), "/x.js": b"1"}), 400, "unsafe_archive"),
    "zip-symlink": (hostile.zip_with(hostile.ok_files(), {"link.js": "/etc/passwd"}), 400, "unsafe_archive"),
    "duplicate": (hostile.tar_with([hostile.member("a.js"), hostile.member("a.js")], {"a.js": b"1"}), 400,
                  "unsafe_archive"),
    "not-an-archive": (b"hello, this is not an archive" * 40, 400, "bad_archive"),
    "truncated-tar-gz": (hostile.tar_with([hostile.member("a.js")], {"a.js": os.urandom(50000)})[:3000], 400,
                         "bad_archive"),
    "corrupt-zip": (b"PK\x03\x04" + os.urandom(2000), 400, "bad_archive"),
    "empty": (hostile.tar_with([]), 400, "bad_archive"),
    "tar-gz-ratio-bomb": (hostile.tar_gz_bomb(64 << 20), 413, "too_large"),
    "zip-ratio-bomb": (hostile.zip_bomb(64 << 20), 413, "too_large"),
    "too-many-files": (hostile.zip_many_raw(Limits().max_files + 1), 413, "too_large"),
    # gzip integrity: the CRC-32 and ISIZE of the trailer, and the trailer itself
    "tar-gz-crc": (hostile.crc_corrupt_tar_gz(), 400, "bad_archive"),
    "tar-gz-trailer-crc": (hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -8), 400, "bad_archive"),
    "tar-gz-trailer-isize": (hostile.with_trailer_byte_flipped(hostile.ok_tar_gz(), -4), 400, "bad_archive"),
    "tar-gz-no-trailer": (hostile.ok_tar_gz()[:-8], 400, "bad_archive"),
    "tar-gz-trailing-garbage": (hostile.ok_tar_gz() + b"garbage", 400, "bad_archive"),
    # tar metadata: bounded, sparse and unknown types refused
    "gnu-long-name-1gib": (hostile.tar_gz_raw(hostile.header("././@LongLink", tarfile.GNUTYPE_LONGNAME,
                                                             1 << 30)), 413, "too_large"),
    "pax-1gib": (hostile.tar_gz_raw(hostile.header("pax", tarfile.XHDTYPE, 1 << 30)), 413, "too_large"),
    "gnu-sparse": (hostile.gnu_sparse(), 400, "unsafe_archive"),
    "pax-sparse": (hostile.pax_sparse(), 400, "unsafe_archive"),
    "unknown-type": (hostile.tar_gz_raw(hostile.header("vol.js", b"V", 0)), 400, "unsafe_archive"),
    "bad-header-checksum": (hostile.tar_gz_raw(hostile.header("a.js", tarfile.REGTYPE, 0)[:148] + b"0000000\0"
                                               + hostile.header("a.js", tarfile.REGTYPE, 0)[156:]), 400,
                            "bad_archive"),
    "no-end-marker": (hostile.gzip_of(hostile.tar_of(hostile.ok_files()).rstrip(b"\0")), 400, "bad_archive"),
    # a file and a directory of one name, in either order, in tar and zip
    "file-then-dir": (hostile.tar_with([hostile.member("a.js"), hostile.member("a.js", tarfile.DIRTYPE)],
                                       {"a.js": b"1"}), 400, "unsafe_archive"),
    "dir-then-file": (hostile.tar_with([hostile.member("a.js", tarfile.DIRTYPE), hostile.member("a.js")]), 400,
                      "unsafe_archive"),
    "zip-file-then-dir": (hostile.zip_with({**hostile.ok_files(), "a.js": b"1", "a.js/": b""}), 400,
                          "unsafe_archive"),
    "zip-dir-then-file": (hostile.zip_with({**hostile.ok_files(), "a.js/": b"", "a.js": b"1"}), 400,
                          "unsafe_archive"),
    "long-component": (hostile.tar_ok_plus(hostile.member("pages/" + "x" * 256 + ".js")), 400, "unsafe_archive"),
    # app.json
    "app-json-deep": (hostile.with_app_json(b"[" * 100_000 + b"]" * 100_000), 400, "bad_archive"),
    "app-json-large": (hostile.with_app_json(b'{"x": "%s"}' % os.urandom(4 << 20).hex().encode()), 400, "bad_archive"),
    "preload-rule-list": (hostile.with_app_json(b'{"preloadRule": [[1]]}'), 400, "bad_archive"),
    "preload-packages-list": (hostile.with_app_json(b'{"preloadRule": {"p": {"packages": [[1]]}}}'), 400,
                              "bad_archive"),
    "subpackage-root-type": (hostile.with_app_json(b'{"subPackages": [{"root": ["a"]}]}'), 400, "bad_archive"),
}

# Refused, and the message names the entry (as Python's repr writes it: controls escaped).
NAMED = {
    "tar-newline": (hostile.tar_ok_plus(hostile.member("pages/a\nb.js")), "'pages/a\\nb.js'"),
    "tar-cr": (hostile.tar_ok_plus(hostile.member("pages/a\rb.js")), "'pages/a\\rb.js'"),
    "tar-del": (hostile.tar_ok_plus(hostile.member("pages/a\x7fb.js")), "'pages/a\\x7fb.js'"),
    "tar-c1": (hostile.tar_ok_plus(hostile.member("pages/a\x85b.js")), "'pages/a\\x85b.js'"),
    "pax-nul": (hostile.pax_named("pages/a.js\x00evil"), "'pages/a.js\\x00evil'"),
    "zip-nul": (hostile.zip_with_raw_name(b"pages/a.js\x00evil"), "'pages/a.js\\x00evil'"),
    "zip-newline": (hostile.zip_with_raw_name(b"pages/a\nb.js"), "'pages/a\\nb.js'"),
    "root-absolute": (hostile.with_app_json(b'{"subPackages": [{"root": "/etc"}]}'), "subPackages[0].root '/etc'"),
    "root-spaces": (hostile.with_app_json(b'{"subPackages": [{"root": " pkg"}]}'), "subPackages[0].root ' pkg'"),
    "root-dotdot": (hostile.with_app_json(b'{"subPackages": [{"root": "a/../b"}]}'),
                    "subPackages[0].root 'a/../b'"),
    "root-newline": (hostile.with_app_json(b'{"subPackages": [{"root": "pkg\\n"}]}'),
                     "subPackages[0].root 'pkg\\n'"),
    "too-many-subpackages": (hostile.many_subpackages(10_001, with_files=10), "at most 10000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_is_refused_and_nothing_is_stored(origin: Service, case: str) -> None:
    archive, status, code = CASES[case]
    before = _stored(origin)
    r = publish(origin.url, "evil", "1.0.0", archive)
    assert r.status == status, r.body
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code  # type: ignore[index]
    assert _stored(origin) == before


@pytest.mark.parametrize("case", list(NAMED))
def test_bad_name_is_refused_naming_the_entry(origin: Service, case: str) -> None:
    archive, shown = NAMED[case]
    before = _stored(origin)
    r = publish(origin.url, "evil", "1.0.0", archive)
    assert r.status == 400, r.body
    assert shown in r.json()["message"], r.json()  # type: ignore[index]
    assert _stored(origin) == before


def test_bomb_is_refused_with_bounded_memory(origin: Service) -> None:
    """A 1 GiB bomb (~1 MiB of gzip): refused, and the origin's peak RSS barely moves."""
    archive = hostile.tar_gz_bomb(1 << 30)
    assert len(archive) < 2 << 20
    peak = _peak_rss_kib(origin)
    r = publish(origin.url, "evil", "1.0.0", archive)
    assert r.status == 413
    assert _peak_rss_kib(origin) - peak < 64 * 1024


def test_oversized_upload_is_refused_before_it_is_read(origin: Service) -> None:
    """Content-Length past the 64 MiB limit: 413 after sending only a few bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/apps/evil/versions/1.0.0")
        for k, v in {**auth(), "Content-Length": str(65 << 20)}.items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(b"\x1f\x8b" + bytes(1000))
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"too_large" in resp.read()
    finally:
        conn.close()


def test_chunked_upload_past_the_limit_is_refused(origin: Service) -> None:
    """Without a Content-Length the origin counts while streaming and stops at the limit."""
    before = _stored(origin)

    def body() -> Iterator[bytes]:  # 65 MiB in 1 MiB pieces, generated, never held whole
        for _ in range(65):
            yield bytes(1 << 20)

    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=60)
    try:
        # the origin may close as soon as it has answered
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/v1/apps/evil/versions/1.0.0", body=body(), headers=auth(),
                         encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()
    assert _stored(origin) == before
