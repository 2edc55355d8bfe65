"""Debian packages some tests need (a real browser, a QR decoder, Ceph's S3 gateway),
installed by the tests themselves so that ``make test`` on a clean clone runs them:
``apt-get install`` of what is missing, as root (loadtests/bench_edge.py does the same for
nginx and wrk).

Where that cannot be done (not root, no apt-get, the install fails) the test is skipped
with the reason; under ``CI=true`` it fails instead, since CI must run every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["BROWSER", "CEPH", "CHROMIUM", "FONT", "OPENSSL", "STRACE", "ZBAR", "Need", "require"]

INSTALL_TIMEOUT = 900.0  # seconds: a fresh machine downloads chromium (~100 MB) first
_updated: list[bool] = []  # not empty once apt-get update has run in this process


@dataclass(frozen=True)
class Need:
    """``package`` provides ``path`` (absolute) or the command ``path`` (on PATH)."""

    path: str
    package: str

    def found(self) -> str | None:
        if os.path.isabs(self.path):
            return self.path if Path(self.path).exists() else None
        return shutil.which(self.path)


CHROMIUM = Need("/usr/bin/chromium", "chromium")
FONT = Need("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core")  # or text is boxes
ZBAR = Need("zbarimg", "zbar-tools")
OPENSSL = Need("openssl", "openssl")  # s_client: a client that asks for an OCSP staple
STRACE = Need("strace", "strace")  # counts a server's system calls
BROWSER = (CHROMIUM, FONT)
# A one-node Ceph RGW (deploy/rgw.py): monitor, OSD, S3 gateway, and the tools that set them up
# (ceph, ceph-authtool and radosgw-admin come with ceph-common, monmaptool with ceph-base).
CEPH = (
    Need("ceph-mon", "ceph-mon"),
    Need("ceph-osd", "ceph-osd"),
    Need("radosgw", "radosgw"),
    Need("radosgw-admin", "ceph-common"),
    Need("ceph", "ceph-common"),
    Need("ceph-authtool", "ceph-common"),
    Need("monmaptool", "ceph-base"),
)


def require(*needs: Need) -> list[str]:
    """The path of each need, installing the missing ones; skips (fails under CI) when it cannot."""
    try:
        return install(*needs)
    except Unavailable as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI must run this test: {exc}", pytrace=False)
        pytest.skip(str(exc))


class Unavailable(Exception):
    """A need cannot be met on this machine; the message says why and what to run."""


def install(*needs: Need) -> list[str]:
    missing = sorted({n.package for n in needs if n.found() is None})
    if missing:
        hint = f"apt-get install {' '.join(missing)}"
        if os.geteuid() != 0:
            raise Unavailable(f"needs Debian's {', '.join(missing)} (not root here: run sudo {hint})")
        if shutil.which("apt-get") is None:
            raise Unavailable(f"needs {', '.join(missing)} and this system has no apt-get")
        if not _updated:  # once a run: the package lists stay fresh for minutes
            _apt("update", "-qq")
            _updated.append(True)
        _apt("install", "-y", "-qq", "--no-install-recommends", *missing)
    paths = [n.found() for n in needs]
    lost = [n.package for n, p in zip(needs, paths, strict=True) if p is None]
    if lost:
        raise Unavailable(f"installed {', '.join(lost)} but {[n.path for n in needs]} is still missing")
    return [p for p in paths if p is not None]


def _apt(*args: str) -> None:
    cmd = ["apt-get", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{' '.join(cmd)} took over {INSTALL_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-800:]}")
