"""Every error the origin and the edge send is DESIGN.md's JSON body with a fitting status,
whoever makes it (a handler, aiohttp's router, aiohttp's request parser, the edge's data
plane), and none of them writes a traceback: a wrong method on any known route (405 with
``Allow``), heads aiohttp's parser refuses, ``Expect`` it does not know, and the rules of
RFC 9112 §3.2 (Host) and §2.3 (the version).  Real processes, raw sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgpack
import pytest

from tests.edge_support import App, batch_items, edge, publish_app
from tests.procs import Service
from tests.test_edge_conformance import Raw, Response

HEX = "0" * 64
READS = {"GET", "HEAD"}
COMMON = {
    f"/v1/chunks/{HEX}": READS,
    "/v1/chunks:batch": {"POST"},
    f"/v1/bundles/{HEX}": READS,
    f"/v1/manifests/{HEX}": READS,
    "/v1/apps": READS,
    "/v1/apps/errs": READS,
    "/metrics": READS,
    "/healthz": READS,
    "/readyz": READS,
}
ORIGIN_ROUTES = {
    **COMMON,
    "/v1/apps/errs/channels/release": {*READS, "PUT"},
    "/v1/apps/errs/versions/1.0.0": {*READS, "POST"},
    "/v1/apps/errs/compare": READS,
    "/v1/apps/errs/qr.svg": READS,
    "/v1/apps/errs/qr.png": READS,
    "/v1/apps/errs/link": READS,
    "/v1/token": READS,
    "/console": READS,
    "/console/": READS,
    "/console/console.js": READS,
}
EDGE_ROUTES = {
    **COMMON,
    "/v1/apps/errs/channels/release": READS,
    "/v1/admin/prefetch": {"POST"},
    "/v1/admin/purge": {"POST"},
}
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@pytest.fixture(scope="module")
def app(origin: Service) -> App:
    from tests.conftest import DEMO

    return publish_app(origin.url, "errs", DEMO)


@pytest.fixture(scope="module")
def node(origin: Service, app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = edge(tmp_path_factory.mktemp("errors-edge"), origin.url).start()
    try:
        yield svc
    finally:
        svc.stop()


def ask(port: int, data: bytes, head_only: bool = False) -> Response:
    c = Raw(port)
    try:
        c.send(data)
        return c.response(head_only=head_only)
    finally:
        c.close()


def request(method: str, path: str, *fields: str, version: str = "HTTP/1.1", host: str | None = "t") -> bytes:
    lines = [f"{method} {path} {version}".rstrip(), *([f"Host: {host}"] if host is not None else []), *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_error(r: Response, status: int, code: str | None = None) -> dict[str, str]:
    assert r.status == status, (r.status, r.raw_head, r.body[:300])
    assert r.headers["content-type"].startswith("application/json"), r.raw_head
    body = json.loads(r.body)
    assert set(body) == {"error", "message"} and isinstance(body["message"], str), body
    if code is not None:
        assert body["error"] == code, body
    return body  # type: ignore[no-any-return]


def no_traceback(svc: Service) -> None:
    out = svc.output()
    assert "Traceback" not in out and " ERROR " not in out, out[-3000:]


# -- 405 with Allow on every known route --------------------------------------------------------


def wrong_methods(routes: dict[str, set[str]]) -> list[tuple[str, str, set[str]]]:
    return [(path, m, allowed) for path, allowed in routes.items() for m in METHODS if m not in allowed]


def allow(r: Response) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


@pytest.mark.parametrize(("path", "method", "allowed"), wrong_methods(ORIGIN_ROUTES))
def test_a_wrong_method_on_an_origin_route_is_405_with_allow(
    origin: Service, app: App, path: str, method: str, allowed: set[str]
) -> None:
    r = ask(origin.port, request(method, path, "Content-Length: 0"))
    json_error(r, 405, "method_not_allowed")
    assert allow(r) == allowed


@pytest.mark.parametrize(("path", "method", "allowed"), wrong_methods(EDGE_ROUTES))
def test_a_wrong_method_on_an_edge_route_is_405_with_allow(
    node: Service, path: str, method: str, allowed: set[str]
) -> None:
    r = ask(node.port, request(method, path, "Content-Length: 0"))
    json_error(r, 405, "method_not_allowed")
    assert allow(r) == allowed


def test_a_wrong_method_keeps_the_connection_and_writes_no_traceback(
    origin: Service, node: Service, app: App
) -> None:
    for svc in (origin, node):
        c = Raw(svc.port)
        try:
            c.send(request("DELETE", f"/v1/chunks/{app.chunks[0]}"))
            json_error(c.response(), 405)
            c.send(request("GET", f"/v1/chunks/{app.chunks[0]}", "Accept-Encoding: zstd"))
            assert c.response().status == 200
        finally:
            c.close()
        no_traceback(svc)


# -- what aiohttp's parser and dispatcher refuse is JSON too -----------------------------------


def test_heads_aiohttp_refuses_are_json_errors(origin: Service, node: Service) -> None:
    # A request line past aiohttp's 8190 bytes (the edge's own limit answers 414 first).
    json_error(ask(origin.port, request("GET", "/v1/apps/" + "a" * 9000)), 400, "bad_request")
    json_error(ask(node.port, request("GET", "/v1/apps/" + "a" * 9000)), 414, "too_large")
    # A field past aiohttp's 8190 bytes, in a head within the edge's 16 KiB: the edge takes
    # it (aiohttp is given the data plane's limits), the origin keeps aiohttp's.
    json_error(ask(origin.port, request("GET", "/healthz", "X-Big: " + "b" * 9000)), 400, "bad_request")
    assert ask(node.port, request("GET", "/healthz", "X-Big: " + "b" * 9000)).status == 200
    for svc in (origin, node):
        json_error(ask(svc.port, request("GET", "/healthz", "Expect: telepathy")), 417)
        # aiohttp's own 417 cannot be built for a value that is not UTF-8 (it was a 500).
        json_error(ask(svc.port, request("GET", "/healthz", "Expect: \x80")), 417, "expectation_failed")
        json_error(ask(svc.port, request("GET", "/nowhere", "Expect: \xff")), 417, "expectation_failed")
        no_traceback(svc)


# -- Host (RFC 9112 §3.2) and the version ---------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        request("GET", "/healthz", host=None),
        request("GET", "/healthz", "Host: u"),
        request("GET", "/healthz", host="a b"),
        request("GET", "/healthz", host="user@host"),
        request("GET", "/healthz", host="host/path"),
        request("GET", "/healthz", host="h\x7f"),
        request("GET", "/healthz", host="[::1"),
        request("GET", "/healthz", host="h:8o"),
        request("GET", "/healthz", "Host: u", version="HTTP/1.0"),
    ],
    ids=["none", "two", "space", "userinfo", "path", "control", "bracket", "port", "two-1.0"],
)
@pytest.mark.parametrize("target", ["aiohttp", "fast-path"])
def test_a_missing_duplicate_or_invalid_host_is_400(
    origin: Service, node: Service, app: App, head: bytes, target: str
) -> None:
    if target == "fast-path":
        head = head.replace(b"/healthz", f"/v1/chunks/{app.chunks[0]}".encode())
    for svc in (origin, node):
        c = Raw(svc.port)
        try:
            c.send(head)
            json_error(c.response(), 400, "bad_request")
            assert c.closed()
        finally:
            c.close()
        no_traceback(svc)


@pytest.mark.parametrize("host", ["", "edge", "edge:8081", "127.0.0.1:1", "[::1]:8081", "xn--bcher-kva.example"])
def test_a_valid_host_is_served(origin: Service, node: Service, app: App, host: str) -> None:
    for svc in (origin, node):
        assert ask(svc.port, request("GET", "/healthz", host=host)).status == 200
        r = ask(svc.port, request("GET", f"/v1/chunks/{app.chunks[0]}", "Accept-Encoding: zstd", host=host))
        assert r.status == 200
    for svc in (origin, node):  # HTTP/1.0 may leave Host out
        assert ask(svc.port, request("GET", "/healthz", version="HTTP/1.0", host=None)).status == 200


@pytest.mark.parametrize(
    ("version", "status"), [("", 400), ("HTTP/0.9", 400), ("HTTP/2.0", 505)], ids=["none", "0.9", "2.0"]
)
@pytest.mark.parametrize("path", ["/healthz", "/v1/chunks/{id}"])
def test_a_request_line_without_a_1x_version_is_refused(
    origin: Service, node: Service, app: App, version: str, status: int, path: str
) -> None:
    head = request("GET", path.format(id=app.chunks[0]), version=version)
    for svc in (origin, node):
        c = Raw(svc.port)
        try:
            c.send(head)
            json_error(c.response(), status)
            assert c.closed()
        finally:
            c.close()
        no_traceback(svc)


# RFC 9112 §2.3, RFC 9110 §6.2: a server answers with the highest minor version it
# supports.  aiohttp writes the request's version (1.0, or the 0.9 or 2.0 it refuses, or its
# stand-in's 1.0 for a head its parser refuses); common.http.JsonErrors prepares answers of
# known length against a request reading 1.1 (Http11).  This fails if aiohttp stops
# reading the version where Http11 gives it, or lets it decide more than it does.
@pytest.mark.parametrize(
    ("head", "status", "connection"),
    [
        (request("GET", "/healthz", version="HTTP/1.0"), 200, "close"),
        (request("GET", "/healthz", "Connection: keep-alive", version="HTTP/1.0"), 200, "keep-alive"),
        (request("HEAD", "/healthz", "Connection: keep-alive", version="HTTP/1.0"), 200, "keep-alive"),
        (request("GET", "/nowhere", "Connection: keep-alive", version="HTTP/1.0"), 404, "keep-alive"),
        (request("GET", "/healthz", version="HTTP/1.0", host=None), 200, "close"),
        (request("GET", "/healthz", "Host: u", version="HTTP/1.0"), 400, "close"),
        (request("GET", "/healthz", host=None), 400, "close"),  # aiohttp's parser refuses it
        (request("GET", "/healthz", version="HTTP/2.0"), 505, "close"),
        (request("GET", "/healthz", version=""), 400, "close"),
        (request("GET", "/healthz", "Connection: close"), 200, "close"),
    ],
    ids=["1.0", "1.0-keep-alive", "1.0-HEAD", "1.0-404", "1.0-no-host", "1.0-two-hosts", "no-host", "2.0", "0.9", "close"],
)
def test_answers_are_http11(origin: Service, node: Service, head: bytes, status: int, connection: str) -> None:
    for svc in (origin, node):
        c = Raw(svc.port)
        try:
            c.send(head)
            r = c.response(head_only=head.startswith(b"HEAD "))
            assert r.raw_head.startswith(f"HTTP/1.1 {status} ".encode()), r.raw_head
            assert r.headers.get("connection") == connection and "transfer-encoding" not in r.headers, r.raw_head
            if connection == "keep-alive":
                c.send(request("GET", "/healthz"))
                assert c.response().status == 200
            else:
                assert c.closed()
        finally:
            c.close()
        no_traceback(svc)


def test_a_stream_to_http10_is_not_chunked(origin: Service, app: App) -> None:
    """A streamed answer (no length) to HTTP/1.0 keeps aiohttp's: its version, no chunking,
    ended by closing (Http11 is for answers of known length only)."""
    body = msgpack.packb([app.chunks[0]])
    c = Raw(origin.port)
    try:
        c.send(request("POST", "/v1/chunks:batch", f"Content-Length: {len(body)}", version="HTTP/1.0") + body)
        while c._fill():
            pass
        head, _, items = c.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 ") and b"chunked" not in head.lower(), head
        assert [i[0] for i in batch_items(items)] == [app.chunks[0]]
    finally:
        c.close()


# Found by tests/test_dataplane_fuzz.py: edge/hops.py's from_peer HMACed the field's text
# encoded as UTF-8, which a byte outside ASCII (decoded by aiohttp as a lone surrogate)
# cannot be: UnicodeEncodeError, a 500.  Such a mark is now a client's request.
@pytest.mark.parametrize("fields", ["X-Minicdn-Peer: \x80", "X-Minicdn-Peer: edge-1\r\nX-Minicdn-Peer-Proof: \x80"])
def test_a_peer_mark_that_is_not_ascii_is_no_500(node: Service, app: App, fields: str) -> None:
    r = ask(node.port, request("GET", f"/v1/chunks/{'0' * 64}", fields))
    assert r.status < 500, (r.status, r.body)
