"""An app of 10,000 subpackages publishes through a real origin (the cap), and its signed
manifest names every one; the layout step is linear (76 s for 20,000 roots before)."""

from __future__ import annotations

import time

import pytest

from common.manifest import MAIN_PACKAGE, open_manifest
from common.signing import PublicKey
from tests import hostile
from tests.conftest import auth, http
from tests.procs import Service


def _publish_and_check(origin: Service, key: PublicKey, version: str, archive: bytes, with_files: int) -> None:
    t0 = time.perf_counter()
    r = http("POST", f"{origin.url}/v1/apps/many/versions/{version}", archive, auth(), timeout=900)
    print(f"10,000 subpackages ({with_files} with files): {r.status} in {time.perf_counter() - t0:.1f}s")
    assert r.status == 201, r.body[:300]
    mid = r.json()["manifest"]  # type: ignore[index]
    manifest = open_manifest(http("GET", f"{origin.url}/v1/manifests/{mid}").body, [key], bytes.fromhex(mid))
    names = [p.name for p in manifest.packages]
    assert names == [MAIN_PACKAGE] + [f"sub/p{i}" for i in range(10_000)]
    assert [len(p.files) for p in manifest.packages[1:]] == [1] * with_files + [0] * (10_000 - with_files)


def test_ten_thousand_subpackages_publish(origin: Service, origin_key: PublicKey) -> None:
    """Bounded for `make test`: every root declared, 300 of them holding a file (unpacking
    10,000 directories is file-system work that says nothing of the layout)."""
    _publish_and_check(origin, origin_key, "1.0.0", hostile.many_subpackages(10_000, with_files=300), 300)


@pytest.mark.slow
def test_ten_thousand_subpackages_each_with_a_file_publish(origin: Service, origin_key: PublicKey) -> None:
    _publish_and_check(origin, origin_key, "2.0.0", hostile.many_subpackages(10_000), 10_000)
