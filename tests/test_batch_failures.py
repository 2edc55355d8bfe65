"""A batch whose upstream fails: a 502 JSON answer when nothing could be answered yet, a
broken stream (the client re-asks) once answers have left, and never a traceback in the
edge's log — an upstream going down is not a bug."""

from __future__ import annotations

import io
import os
from http.client import HTTPConnection, IncompleteRead
from pathlib import Path

import msgpack

from tests.conftest import DEMO, http
from tests.edge_support import publish_app
from tests.procs import edge_service, origin_service, running


def _post_batch(port: int, ids: list[str]) -> tuple[int, str, bytes]:
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chunks:batch", msgpack.packb(ids), {"Content-Type": "application/x-msgpack"})
        resp = conn.getresponse()
        try:
            body = resp.read()
        except IncompleteRead as exc:  # the stream was broken on purpose
            body = exc.partial
        return resp.status, resp.getheader("Content-Type", ""), body
    finally:
        conn.close()


def test_a_batch_with_every_upstream_down_is_an_error_answer_then_a_broken_stream(tmp_path: Path) -> None:
    origin = origin_service(tmp_path).start()
    try:
        app = publish_app(origin.url, "demo", DEMO)
        edge = edge_service(tmp_path, origin.url)
        with running(edge):
            cached = app.chunks[0]
            assert http("GET", f"{edge.url}/v1/chunks/{cached}").status == 200
            origin.stop()
            unknown = os.urandom(32).hex()

            status, ctype, body = _post_batch(edge.port, [unknown])
            assert status == 502 and ctype.startswith("application/json"), body
            assert b'"error": "upstream"' in body

            # The first answer leaves (a hit), then the upstream fails: the stream breaks
            # after it, which is all a client can be told once a 200 has left.
            status, _, body = _post_batch(edge.port, [cached, unknown])
            assert status == 200
            first = next(iter(msgpack.Unpacker(io.BytesIO(body), raw=False)))
            assert first[0] == cached and isinstance(first[1], bytes)
            assert http("GET", f"{edge.url}/healthz").status == 200
        log = edge.output()
        assert "Traceback" not in log, log[-3000:]
        assert "batch aborted after 1 answers" in log
    finally:
        origin.stop()
