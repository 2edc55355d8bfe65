"""JSON bodies nested tens of thousands deep to the origin's channel PUT and the edge's admin calls:
a 400 with the JSON error body, never a RecursionError turned 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import auth, http
from tests.procs import Service, edge_service, running

DEEP = ("[" * 30_000 + "]" * 30_000).encode()  # under the 64 KiB body bound
DEEP_OBJECT = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()


@pytest.fixture(scope="module")
def edge(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running(edge_service(tmp_path_factory.mktemp("edge"), origin.url)) as svc:
        yield svc


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_deep_channel_body_is_a_400(origin: Service, body: bytes) -> None:
    r = http("PUT", f"{origin.url}/v1/apps/demo/channels/release", body,
             {**auth(), "Content-Type": "application/json"})
    assert r.status == 400, r.body
    assert r.json() == {"error": "bad_request", "message": "channel body nests deeper than 32 levels"}


@pytest.mark.parametrize("call", ["prefetch", "purge"])
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_deep_admin_body_is_a_400(edge: Service, call: str, body: bytes) -> None:
    r = http("POST", f"{edge.url}/v1/admin/{call}", body, {**auth(), "Content-Type": "application/json"})
    assert r.status == 400, r.body
    assert r.json() == {"error": "bad_request", "message": "admin body nests deeper than 32 levels"}


def test_the_servers_are_still_healthy_after(origin: Service, edge: Service, tmp_path: Path) -> None:
    assert http("GET", f"{origin.url}/healthz").status == 200
    assert http("GET", f"{edge.url}/healthz").status == 200
