"""What the console's tests share: two versions of the demo app that differ in known ways,
published to a real origin, and a QR decoder (zbarimg, Debian's zbar-tools)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import DEMO, publish, tar_gz_of, wait_enriched
from tests.sysdeps import ZBAR, require

__all__ = ["CHANGED", "Demo", "decode_qr", "demo_versions", "publish_demo"]

CHANGED = "app.js"  # same size in both versions, one byte differs
ADDED = "pages/added.js"
REMOVED = "sitemap.json"


@dataclass(frozen=True)
class Demo:
    app: str
    old: str
    new: str


def demo_versions(tmp: Path) -> tuple[Path, Path]:
    """The demo app, and a copy with one file changed (same size), one added, one removed."""
    old, new = tmp / "demo-old", tmp / "demo-new"
    shutil.copytree(DEMO, old)
    shutil.copytree(DEMO, new)
    data = bytearray((new / CHANGED).read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")
    (new / CHANGED).write_bytes(bytes(data))
    (new / ADDED).write_text("// a page the new version adds\nconsole.log('added')\n")
    (new / REMOVED).unlink()
    return old, new


def publish_demo(
    url: str, tmp: Path, app: str = "demo", old: str = "1.0.0", new: str = "1.1.0", *later: str
) -> Demo:
    """Both versions of the demo published as ``app`` (and each of ``later``: the new one
    plus a file of its own), all enriched (bundles and deltas made)."""
    a, b = demo_versions(tmp)
    folders = [(old, a), (new, b)]
    for version in later:
        c = tmp / f"demo-{version}"
        shutil.copytree(b, c)
        (c / "pages" / f"v{version}.js").write_text(f"// only in {version}\n")
        folders.append((version, c))
    for version, folder in folders:
        r = publish(url, app, version, tar_gz_of(folder))
        assert r.status in (200, 201), r.body
    for version, _folder in folders:
        wait_enriched(url, app, version)
    return Demo(app, old, new)


def decode_qr(picture: Path) -> str:
    """The text of the one QR code in ``picture`` (PNG), read by zbarimg."""
    (zbarimg,) = require(ZBAR)
    done = subprocess.run([zbarimg, "--quiet", "--raw", str(picture)], capture_output=True, timeout=60)
    assert done.returncode == 0, f"zbarimg found no QR code in {picture}: {done.stderr.decode()[-500:]}"
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
