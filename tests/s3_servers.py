"""Real S3 servers for tests, one of each per test session, started on free loopback ports
and stopped by PID when the session ends:

- ``moto_server``: moto in server mode (``python -m moto.server``; its in-process
  ``mock_aws`` is not used: it does not behave like a server under concurrency);
- ``rgw_server``: a one-node Ceph RGW (deploy/rgw.py), about 12 s to start; needs Debian's
  Ceph packages, installed by tests/sysdeps.py (skipped where that cannot be done, failed
  under ``CI=true``).

Each yields an ``S3Server``:

- ``endpoint``, ``access_key``, ``secret_key``, ``region``;
- ``env()``: the AWS_* variables for a subprocess (``minicdn origin --storage s3://...``
  reads them: boto3's standard chain);
- ``new_bucket()`` → ``"s3://<fresh bucket>/<prefix>"``: a bucket of its own for one test;
- ``driver(url)`` / ``store(url)``: an ``S3Driver`` / ``Store`` on ``url`` with this
  server's endpoint and credentials, without touching ``os.environ``.

tests/conftest.py registers the fixtures, once for the whole session (a fixture imported
into a test module would be that module's own, and start again for it)::

    from tests.s3_servers import S3Server

    def test_x(moto_server: S3Server) -> None:
        store = moto_server.store(moto_server.new_bucket())
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from deploy import rgw
from loadtests.net import free_port, wait_http
from origin.storage import Store
from origin.storage.s3 import S3Driver, ensure_bucket
from tests.sysdeps import CEPH, require

__all__ = ["S3Server", "moto_server", "rgw_server", "start_moto", "stop_process"]

REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION
    _session: boto3.session.Session | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def session(self) -> boto3.session.Session:
        """One boto3 session per server: its clients share the loaded service model."""
        if self._session is None:
            self._session = boto3.session.Session(
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
            )
        return self._session

    def driver(self, url: str, config: Config | None = None, **options: Any) -> S3Driver:
        return S3Driver.from_url(url, session=self.session(), endpoint_url=self.endpoint, config=config, **options)

    def store(self, url: str) -> Store:
        return Store(self.driver(url))

    def new_bucket(self, prefix: str = "t") -> str:
        url = f"s3://minicdn-{uuid.uuid4().hex[:16]}/{prefix}"
        ensure_bucket(url, session=self.session(), endpoint_url=self.endpoint)
        return url


def start_moto(log: Path, timeout: float = 30.0) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """A moto server on a free loopback port (chosen again if another process took it)."""
    for attempt in range(3):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout, proc)
        except RuntimeError:  # it exited: the port was taken between free_port and its bind?
            if attempt == 2:
                raise RuntimeError(f"moto server did not start; its log:\n{log.read_text()[-2000:]}") from None
            continue
        except BaseException:
            stop_process(proc)
            raise
        return S3Server(f"http://127.0.0.1:{port}", "testing", "testing"), proc
    raise AssertionError("unreachable")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server, proc = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require(*CEPH)
    cluster = rgw.start(tmp_path_factory.mktemp("rgw") / "cluster")
    try:
        yield S3Server(cluster.endpoint, cluster.access_key, cluster.secret_key, rgw.REGION)
    finally:
        cluster.stop()
