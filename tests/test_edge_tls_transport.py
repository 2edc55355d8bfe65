"""edge.plane.tls.TlsTransport's state machine on a real TLS connection in this process:
the server end of a socket pair with a 4 KiB send buffer, so OpenSSL's writes stop half-way
(SSLWantWriteError) and must be given again; the client end read slowly by a thread.
Everything written must arrive, in order, and the session end with close_notify."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import threading
import time
import weakref
from pathlib import Path

import pytest

from common.tls import TlsFiles, server_context
from edge.plane import tls
from edge.plane.tls import TlsTransport
from tests.test_tls_edge import client_context
from tests.test_tls_pki import Pki

PIECE = 48 << 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("transport-pki"))


class Reading(threading.Thread):
    """The client: reads everything, slowly, until the session ends; keeps what came."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.got = bytearray()
        self.ending: BaseException | None = None

    def run(self) -> None:
        try:
            while piece := self.sock.recv(16 << 10):
                self.got += piece
                time.sleep(0.001)
        except (OSError, ssl.SSLError) as exc:  # a FIN without close_notify: SSLEOFError
            self.ending = exc


class Writer(asyncio.Protocol):
    """Writes pieces until told to pause; on the last resume, one more piece and a close."""

    def __init__(self, pieces: int) -> None:
        self.transport: TlsTransport | None = None
        self.sent = hashlib.sha256()
        self.size = 0
        self.left = pieces
        self.paused = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsTransport)
        self.transport = transport
        self._write_some()

    def _write_some(self) -> None:
        assert self.transport is not None
        while self.left and not self.transport.get_write_buffer_size() > 64 << 10:
            self.left -= 1
            piece = os.urandom(PIECE)
            self.sent.update(piece)
            self.size += len(piece)
            self.transport.write(piece)
            if not self.left:
                self.transport.close()  # with the last piece still unsent, often

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self._write_some()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _serve(pki: Pki, tmp: Path, pieces: int) -> tuple[Writer, Reading]:
    pair = pki.issue("transport")
    server_ctx, _ = server_context(TlsFiles(pair.cert, pair.key))
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setblocking(False)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    shook: list[tuple[bool, bool]] = []
    client_ready = threading.Event()
    holder: list[ssl.SSLSocket] = []

    def handshake() -> None:
        holder.append(client_context(pki).wrap_socket(b, server_hostname="127.0.0.1", suppress_ragged_eofs=False))
        client_ready.set()

    threading.Thread(target=handshake, daemon=True).start()
    writer = Writer(pieces)
    TlsTransport(asyncio.get_running_loop(), server, "peer", writer, 10.0, lambda ok, resumed: shook.append((ok, resumed)))
    while not client_ready.is_set():
        await asyncio.sleep(0.01)
    reading = Reading(holder[0])
    reading.start()
    try:
        assert await asyncio.wait_for(writer.lost, 30) is None
        await asyncio.to_thread(reading.join, 30)
    finally:
        holder[0].close()
    assert shook == [(True, False)]
    return writer, reading


@pytest.mark.parametrize("pieces", [1, 3, 40])
def test_every_byte_written_arrives_before_close_notify(pki: Pki, tmp_path: Path, pieces: int) -> None:
    writer, reading = asyncio.run(_serve(pki, tmp_path, pieces))
    assert reading.ending is None, f"the session did not end with close_notify: {reading.ending!r}"
    assert len(reading.got) == writer.size
    assert hashlib.sha256(reading.got).hexdigest() == writer.sent.hexdigest()
    if pieces == 40:
        assert writer.paused > 0  # the socket pushed back: the transport paused the writer


class Closer(asyncio.Protocol):
    """Answers at once and closes (a request with ``Connection: close``)."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsTransport)
        transport.write(b"the last answer")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_a_lingering_connection_holds_no_tls_state(pki: Pki) -> None:
    """After close_notify a connection lingers (up to 2 s) dropping what the client still
    sends; it does so on the bare socket: OpenSSL's buffers and session (tens of KiB a
    connection) are freed when the linger begins, not after it.  With a new connection per
    request, lingering TLS state had pushed the edge's peak RSS ~60 MiB up (bench-edge)."""
    pair = pki.issue("linger")
    server_ctx, _ = server_context(TlsFiles(pair.cert, pair.key))
    a, b = socket.socketpair()
    a.setblocking(False)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    tls_state = weakref.ref(server)
    client: list[ssl.SSLSocket] = []
    got = bytearray()
    ended = threading.Event()

    def read_to_close_notify() -> None:
        client.append(client_context(pki).wrap_socket(b, server_hostname="127.0.0.1", suppress_ragged_eofs=False))
        while piece := client[0].recv(1024):
            got.extend(piece)
        ended.set()  # b"": close_notify came

    threading.Thread(target=read_to_close_notify, daemon=True).start()
    closer = Closer()
    transport = TlsTransport(asyncio.get_running_loop(), server, "peer", closer, 10.0, lambda ok, resumed: None)
    del server
    assert await asyncio.wait_for(closer.lost, 10) is None
    assert await asyncio.to_thread(ended.wait, 10) and bytes(got) == b"the last answer"
    assert transport._state == tls._LINGER
    assert not isinstance(transport._sock, ssl.SSLSocket) and transport.get_extra_info("ssl_object") is None
    gc.collect()
    assert tls_state() is None  # the SSL object is gone while the connection lingers
    socket.socket.send(client[0], b"GET /pipelined HTTP/1.1\r\n\r\n")  # dropped, unread
    await asyncio.sleep(0.05)
    client[0].close()
    for _ in range(200):
        if transport._state == tls._CLOSED:
            break
        await asyncio.sleep(0.01)
    assert transport._state == tls._CLOSED
