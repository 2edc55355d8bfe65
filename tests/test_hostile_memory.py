"""Publishing any archive within the upload limit keeps the origin under 512 MiB of RSS.

A real origin is sent metadata bombs (a GNU long name or PAX record declaring 1 GiB in
~1 MB: tarfile read them whole, 2.6 GB), sparse files, decompression bombs, archive
directories far larger than their limits, and a legitimate archive near the 64 MiB upload
limit, one after the other. A thread samples the RSS of the origin and of its compression
processes all along; the origin's own high-water mark (VmHWM, kept by the kernel) catches
whatever falls between two samples.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtests.procmem import PeakRss
from tests import hostile
from tests.conftest import TOKEN, auth, http
from tests.procs import Service, origin_service

LIMIT_KIB = 512 * 1024


def _status_kib(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # a worker that has just exited
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")), 0)


def _app_json_of_objects() -> bytes:
    """The app.json that costs most to parse within its 2 MiB bound: all empty objects."""
    n = (2 << 20) // 3 - 10
    # A plain tar: gzipped, it would be refused as a decompression bomb before it is parsed.
    return hostile.tar_of({**hostile.ok_files(), "app.json": b'{"x": [' + b"{}," * n + b"{}]}"})


# Built when the test runs, one at a time: together they would be a lot to hold.
ARCHIVES: list[tuple[str, Callable[[], bytes], int]] = [
    ("gnu-long-name-1gib", lambda: hostile.metadata_bomb(tarfile.GNUTYPE_LONGNAME, 1 << 30), 413),
    ("pax-1gib", lambda: hostile.metadata_bomb(tarfile.XHDTYPE, 1 << 30), 413),
    ("gnu-sparse", hostile.gnu_sparse, 400),
    ("pax-sparse", hostile.pax_sparse, 400),
    ("tar-gz-bomb-1gib", lambda: hostile.tar_gz_bomb(1 << 30), 413),
    ("zip-bomb-256mib", lambda: hostile.zip_bomb(256 << 20), 413),
    ("zip-760k-entries", lambda: hostile.zip_many_raw(760_000), 413),
    ("deep-directories", lambda: hostile.deep_directories(20_000, 500), 413),
    ("app-json-of-objects", _app_json_of_objects, 201),
    ("legit-60mib", lambda: hostile.random_files(60 << 20), 201),
]


def test_every_archive_within_the_upload_limit_keeps_the_origin_under_512_mib(origin: Service) -> None:
    assert origin.proc is not None
    pid = origin.proc.pid
    for n, (name, build, status) in enumerate(ARCHIVES):
        archive = build()
        assert len(archive) <= 64 << 20, name
        with PeakRss(pid, period=0.005) as rss:
            r = http("POST", f"{origin.url}/v1/apps/mem/versions/1.0.{n}", archive, auth(), timeout=600)
        del archive
        print(f"{name}: peak RSS {rss.peak >> 20} MiB (origin and workers)")
        assert rss.peak < LIMIT_KIB << 10, f"{name}: {rss.peak >> 20} MiB"
        assert _status_kib(pid, "VmHWM") < LIMIT_KIB, f"{name}: origin high-water mark"
        assert r.status == status, (name, r.body[:300])


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """This module's own origin, killed at the end rather than stopped: it is left enriching
    the versions the test published, and a graceful stop would wait ~10 s for that (the
    graceful stop is tested elsewhere: tests/test_release.py, tests/test_changes_feed.py)."""
    svc = origin_service(tmp_path_factory.mktemp("origin"), TOKEN).start()
    try:
        yield svc
    finally:
        svc.kill()


@pytest.fixture(scope="module", autouse=True)
def _only_on_linux() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads /proc")
