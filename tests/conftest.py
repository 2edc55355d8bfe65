"""Shared fixtures: a real origin process per test module, its public key, and helpers to
talk to it over HTTP using only the wire format of DESIGN.md."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import settings

from common.manifest import MAIN_PACKAGE
from common.signing import PublicKey
from tests.procs import Service, origin_service
from tests.s3_servers import moto_server, rgw_server

# The real S3 servers (tests/s3_servers.py), registered here once: a fixture imported into
# several test modules is a fixture of each, and a session-scoped one then starts once per
# module (RGW takes ~14 s).  Started only when a test asks for them.
__all__ = ["moto_server", "rgw_server"]
from tests.waiting import eventually

# make test must pass or fail the same way on every run: its property tests draw the same
# examples each time (derandomized).  make bench-slow explores new ones
# (HYPOTHESIS_PROFILE=explore); what it finds becomes an @example here.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# pytester: tests/test_leftovers.py runs whole pytest sessions; leftovers: no test run leaves
# a process behind (checked after the last test).
pytest_plugins = ["pytester", "tests.leftovers"]

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo"
TOKEN = "test-token"

# The demo app's subpackages (root → app.json entry) and one of each kind.
DEMO_APP_JSON = json.loads((DEMO / "app.json").read_text())
SUBS = {s["root"].strip("/"): s for s in DEMO_APP_JSON["subPackages"]}
NORMAL = next(r for r, s in SUBS.items() if not s.get("independent"))
INDEPENDENT = next(r for r, s in SUBS.items() if s.get("independent"))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def source_files(root: Path, packages: Iterable[str]) -> dict[str, bytes]:
    """The files of a demo-shaped app under ``root`` that belong to ``packages`` (subpackage
    roots, or "__APP__" for the main package): what an install of them must hold."""
    wanted = set(packages)
    return {
        rel: data
        for rel, data in tree(root).items()
        if next((r for r in SUBS if rel.startswith(r + "/")), MAIN_PACKAGE) in wanted
    }


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def packages_of(origin: str, app: str) -> int:
    """How many packages the version ``app``'s release serves has (its heads object's length)."""
    from common import wire
    from common.pkgmeta import decode_heads

    ref = wire.unpack(wire.unpack(http("GET", f"{origin}/v1/apps/{app}/channels/release").body)["payload"])
    return len(decode_heads(http("GET", f"{origin}/v1/manifests/{ref['heads'].hex()}").body))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tar_gz_of(folder: Path) -> bytes:
    from origin.cli import pack_folder

    buf = io.BytesIO()
    pack_folder(folder, buf)  # type: ignore[arg-type]
    return buf.getvalue()


def publish(base: str, app: str, version: str, archive: bytes, token: str = TOKEN) -> Reply:
    return http("POST", f"{base}/v1/apps/{app}/versions/{version}", archive, auth(token))


def set_channel(base: str, app: str, channel: str, body: dict[str, object], token: str = TOKEN) -> Reply:
    return http("PUT", f"{base}/v1/apps/{app}/channels/{channel}", json.dumps(body).encode(),
                {**auth(token), "Content-Type": "application/json"})


def wait_enriched(url: str, app: str, version: str, timeout: float = 60) -> None:
    """Poll until the origin has made the version's bundles and deltas (in the background)."""
    enriched(url, app, version, timeout)


def enriched(url: str, app: str, version: str, timeout: float = 60) -> dict[str, Any]:
    """The version's entry in the app listing once the origin has made its bundles and
    deltas (in the background, after publishing); polled."""

    def entry() -> dict[str, Any] | None:
        found: dict[str, Any] = next(v for v in app_info(url, app)["versions"] if v["version"] == version)
        return found if found["enriched"] else None

    return eventually(entry, timeout, f"{app}@{version} enriched")


def app_info(url: str, app: str) -> dict[str, Any]:
    """The origin's JSON listing of an app: its versions and channels."""
    info = http("GET", f"{url}/v1/apps/{app}").json()
    assert isinstance(info, dict), info
    return info


def batch(base: str, ids: list[str]) -> list[list[object]]:
    r = http("POST", f"{base}/v1/chunks:batch", msgpack.packb(ids))
    assert r.status == 200, r.body
    return list(msgpack.Unpacker(io.BytesIO(r.body), raw=False))


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("origin")
    svc = origin_service(tmp, TOKEN)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def origin_key(origin: Service) -> PublicKey:
    return PublicKey.load(Path(origin.args[origin.args.index("--signing-key") + 1]).parent / "public.key")


# -- slow runs: `make test` runs bounded versions; `make bench` (pytest --run-slow -m slow) the full ones


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (full load/soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: full-length run, see `make bench` (pytest --run-slow -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
