"""The data plane's last resort (edge.plane.connection.Connection._failed): a bug met while
answering costs its connection a 500 and one log line, not a dropped connection and a
traceback per request.  In process, with a stand-in transport and a memory tier that
fails, since no real request is meant to reach it (tests/test_dataplane_fuzz.py holds
that)."""

from __future__ import annotations

import asyncio
import json
import logging
import types

import pytest

from edge.encodings import Encodings
from edge.metrics import EdgeMetrics
from edge.plane import connection as dp
from edge.plane.failures import FAILURES
from edge.plane.plane import Limits, Plane

HEX = "ab" * 32


class Transport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        self.out += b"".join(parts)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def broken_connection() -> tuple[dp.Connection, Transport]:
    def get(key: str) -> None:
        raise RuntimeError("a bug in the memory tier")

    memory = types.SimpleNamespace(
        entries={}, get=get, policy=types.SimpleNamespace(touch=lambda k: None), on_forget=[]
    )
    node = types.SimpleNamespace(memory=memory, access_log=None, metrics=EdgeMetrics.create())
    plane = Plane(node, Encodings(memory), lambda: None, Limits())  # type: ignore[arg-type, return-value]
    conn = dp.Connection(plane)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode()


def test_a_bug_is_answered_500_closes_its_connection_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    FAILURES.next = 0.0
    caplog.set_level(logging.ERROR, "minicdn.edge.dataplane")
    conn, transport = broken_connection()
    # The first is answered without the memory tier (the id is its ETag: 304), the second
    # meets the bug: its 500 follows the 304.
    not_modified = f'GET /v1/chunks/{HEX} HTTP/1.1\r\nHost: edge\r\nIf-None-Match: "{HEX}"\r\n\r\n'.encode()
    conn.data_received(not_modified + request(f"/v1/chunks/{HEX}"))
    first, _, rest = transport.out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 304 ")
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ") and b"\r\nConnection: close" in head
    assert json.loads(body) == {"error": "internal", "message": "internal error"}
    assert transport.closed
    [record] = caplog.records
    assert "RuntimeError: a bug in the memory tier" in record.getMessage() and record.exc_info is None
    conn.data_received(request(f"/v1/chunks/{HEX}"))  # a closing connection reads no more
    assert transport.out.count(b"HTTP/1.1 ") == 2


def test_a_bug_while_lending_to_aiohttp_is_answered_500(caplog: pytest.LogCaptureFixture) -> None:
    FAILURES.next = 0.0
    conn, transport = broken_connection()  # its fallback makes no handler at all
    conn.data_received(request("/metrics"))
    assert transport.out.startswith(b"HTTP/1.1 500 ") and transport.closed


def test_more_bugs_within_the_interval_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    FAILURES.next = 0.0
    FAILURES.missed = 0
    caplog.set_level(logging.ERROR, "minicdn.edge.dataplane")
    for _ in range(5):
        conn, transport = broken_connection()
        conn.data_received(request(f"/v1/chunks/{HEX}"))
        assert transport.out.startswith(b"HTTP/1.1 500 ") and transport.closed
    assert len(caplog.records) == 1 and FAILURES.missed == 4


async def test_a_bug_in_the_callback_miss_falls_back_to_the_task_for_that_request_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug raised while a plain miss is begun (edge.fill's ``begin``) is logged, and that
    request is filled the other way (``load``, in a task): a 200, the connection kept."""
    from common import codec
    from common.ids import sha256
    from edge.objects import Entry

    raw = b"chunk bytes" * 100
    hexid = sha256(raw).hex()
    frame = codec.compress(raw, 3)

    def begin(obj: object) -> None:
        raise RuntimeError("a bug in begin")

    async def load(obj: object) -> Entry:
        return Entry(frame, f'"{hexid}"')

    memory = types.SimpleNamespace(
        entries={}, get=lambda k: None, peek=lambda k: None, policy=types.SimpleNamespace(touch=lambda k: None),
        on_forget=[],
    )  # fmt: skip
    objects = types.SimpleNamespace(begin=begin, load=load)
    node = types.SimpleNamespace(memory=memory, access_log=None, metrics=EdgeMetrics.create(), objects=objects)
    plane = Plane(node, Encodings(memory), lambda: None, Limits())  # type: ignore[arg-type, return-value]
    conn = dp.Connection(plane)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, "minicdn.edge.dataplane")
    conn.data_received(f"GET /v1/chunks/{hexid} HTTP/1.1\r\nHost: edge\r\nAccept-Encoding: zstd\r\n\r\n".encode())
    for _ in range(10):
        await asyncio.sleep(0)
    head, _, body = transport.out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == frame and not transport.closed
    assert any("a bug in begin" in (r.exc_text or "") + r.getMessage() for r in caplog.records)
