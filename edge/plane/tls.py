"""TLS for the data plane: OpenSSL reads and writes each connection's socket itself.

The loop's own TLS (``create_server(ssl=...)``: uvloop's SSLProtocol) runs OpenSSL over
memory BIOs: every record is copied into a BIO and out of one, and every read asks OpenSSL
for up to 256 KiB in a new bytes object, which under the edge's fixed mmap threshold
(common.malloc) is an mmap, an mremap and a munmap per read.  On the real chunk mix that
cost a memory hit ~50 µs of CPU over TLS against ~12 µs in plain HTTP; nginx pays ~9 µs
for TLS.  Here each accepted socket becomes a non-blocking ``ssl.SSLSocket`` watched with
the loop's ``add_reader``/``add_writer``: a request is one SSL_read (one read(2) per
record), a response one SSL_write (one write(2) per record), as in nginx.

``TlsListener`` accepts on its own listening sockets (SO_REUSEPORT with workers) and wraps
each connection with the context in force at accept time (a SIGHUP reloads it: common.tls).
``TlsTransport`` is an ``asyncio.Transport`` for the data plane's ``Connection``: the
handshake (bounded by a timeout; its outcome and resumption told to ``on_handshake``) comes
before ``connection_made``; then reads, writes with flow control (OpenSSL must be given a
write it could not finish again, whole), pause/resume of reading, and a close that sends
close_notify once what was written has left, then lingers (reads and drops what the client
still sends, for at most ``LINGER`` seconds) so that a client's unread request does not
turn the close into a reset that destroys the last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from common.tls import OnHandshake, ServerTls

__all__ = ["LINGER", "TlsListener", "TlsTransport", "listening_sockets"]

log = logging.getLogger("minicdn.edge.tls")

MAX_READ = 64 << 10  # per SSL_read: more than a record (16 KiB), below malloc's mmap threshold
LINGER = 2.0  # seconds a closed connection still drops what its client sends
ACCEPTS = 64  # connections accepted per wake-up of a listening socket

_HANDSHAKE, _OPEN, _LINGER, _CLOSED = range(4)


def listening_sockets(host: str | None, port: int, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to, as create_server
    binds them; all interfaces when empty) and ``port``: non-blocking, SO_REUSEADDR, and
    SO_REUSEPORT when several workers share the port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    made: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {addr!r}: {exc.strerror}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


class TlsListener:
    """Accepts TLS connections on ``socks`` for the data plane, until ``close``."""

    def __init__(
        self,
        socks: list[socket.socket],
        tls: ServerTls,
        factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        on_handshake: OnHandshake,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.socks = socks
        self.tls = tls
        self.factory = factory
        self.handshake_timeout = handshake_timeout
        self.on_handshake = on_handshake
        self.closed = False
        for sock in socks:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS):
            try:
                conn, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM...: try again in a second
                log.error("accept on %s failed, pausing it for 1s: %s", listening.getsockname(), exc)
                self.loop.remove_reader(listening.fileno())
                self.loop.call_later(1.0, self._resume, listening)
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = self.tls.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:  # the client is already gone
                log.debug("dropped an accepted connection: %s", exc)
                conn.close()
                self.on_handshake(False, False)
                continue
            TlsTransport(self.loop, sock, peer, self.factory(), self.handshake_timeout, self.on_handshake)

    def _resume(self, listening: socket.socket) -> None:
        if not self.closed:
            self.loop.add_reader(listening.fileno(), self._accept, listening)

    def close(self) -> None:
        """Stop accepting (connections already accepted go on)."""
        if self.closed:
            return
        self.closed = True
        for sock in self.socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()


class TlsTransport(asyncio.Transport):
    """One TLS connection (see the module's docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        peer: Any,
        protocol: asyncio.Protocol,
        handshake_timeout: float,
        on_handshake: OnHandshake,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._on_handshake = on_handshake
        self._extra: dict[str, Any] = {
            "peername": peer,
            "socket": sock,
            "sslcontext": sock.context,
            "ssl_object": sock,
        }
        self._state = _HANDSHAKE
        self._out: list[bytes] = []  # written, not yet given to OpenSSL
        self._retry: bytes | None = None  # given to OpenSSL, which must be given it again
        self._size = 0  # bytes in both
        self._high = 64 << 10
        self._low = 16 << 10
        self._paused = False  # the protocol was told to pause writing
        self._reading = True  # the protocol wants to read
        self._read_wants_write = False  # an SSL_read that must wait for the socket to take data
        self._closing = False
        self._lost = False
        self._reader = self._writer = False  # what the loop watches
        self._timer: asyncio.TimerHandle | None = loop.call_later(handshake_timeout, self._timed_out)
        self._handshake()

    # -- the loop's watches ---------------------------------------------------------------------

    def _watch(self, read: bool, write: bool) -> None:
        if read != self._reader:
            self._reader = read
            if read:
                self._loop.add_reader(self._fd, self._readable)
            else:
                self._loop.remove_reader(self._fd)
        if write != self._writer:
            self._writer = write
            if write:
                self._loop.add_writer(self._fd, self._writable)
            else:
                self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        if self._state == _OPEN:
            if self._reading and not self._closing:
                self._read()
        elif self._state == _HANDSHAKE:
            self._handshake()
        elif self._state == _LINGER:
            self._drop()

    def _writable(self) -> None:
        if self._state == _OPEN:
            if self._read_wants_write:
                self._read_wants_write = False
                self._watch(self._reading and not self._closing, self._writer)
                if self._reading and not self._closing:
                    self._read()
            if self._state == _OPEN:
                self._flush()
        elif self._state == _HANDSHAKE:
            self._handshake()

    # -- the handshake ---------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(True, False)
            return
        except ssl.SSLWantWriteError:
            self._watch(False, True)
            return
        except (OSError, ValueError) as exc:  # SSLError is an OSError: no TLS, a refused version
            log.debug("TLS handshake with %s failed: %s", self._extra["peername"], exc)
            self._refused(linger=True)  # OpenSSL has written its alert: let it arrive
            return
        self._cancel_timer()
        self._state = _OPEN
        self._on_handshake(True, bool(self._sock.session_reused))
        self._watch(True, False)
        self._protocol.connection_made(self)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            log.debug("TLS handshake with %s timed out", self._extra["peername"])
            self._refused()
        elif self._state == _LINGER:
            self._finish()

    def _refused(self, linger: bool = False) -> None:
        """A handshake that failed: counted, closed; the protocol never heard of it."""
        self._on_handshake(False, False)
        self._closing = self._lost = True
        self._cancel_timer()
        if linger:
            self._linger()
        else:
            self._finish()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- reading ---------------------------------------------------------------------------------

    def _read(self) -> None:
        sock = self._sock
        try:
            data = sock.recv(MAX_READ)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:  # e.g. answering a KeyUpdate while the socket is full
            self._read_wants_write = True
            self._watch(False, True)  # the writer's watch retries the read
            return
        except ssl.SSLError as exc:  # a bad record: OpenSSL has written its alert, let it arrive
            self._fatal(exc, linger=True)
            return
        except (OSError, ValueError) as exc:  # a reset
            self._fatal(exc)
            return
        if not data:  # close_notify, or the TCP stream ended
            self._watch(False, self._writer)
            self._reading = False
            if not self._protocol.eof_received():
                self.close()
            return
        while sock.pending():  # the rest of a record (a read stops at MAX_READ)
            try:
                data += sock.recv(MAX_READ)
            except (OSError, ValueError):
                break  # the next read finds out
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._watch(False, self._writer)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._watch(not self._read_wants_write, self._writer)
            if self._sock.pending():  # decrypted already: the socket may never wake us for it
                self._loop.call_soon(self._readable)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._size:
            self._out.append(bytes(data))
            self._size += len(data)
            self._pause_protocol()
            return
        try:
            self._sock.send(data)
        except ssl.SSLWantWriteError:
            self._retry = data if isinstance(data, bytes) else bytes(data)
            self._size = len(data)
            self._watch(self._reader, True)
            self._pause_protocol()
        except (OSError, ValueError) as exc:  # SSLWantReadError too: renegotiation is off
            self._fatal(exc)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))  # one SSL_write: a small answer is one record, one write(2)

    def _pause_protocol(self) -> None:
        if not self._paused and self._size > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def _flush(self) -> None:
        while True:
            data = self._retry
            if data is None:
                if not self._out:
                    break
                data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
            try:
                self._sock.send(data)
            except ssl.SSLWantWriteError:
                self._retry = data
                return
            except (OSError, ValueError) as exc:
                self._fatal(exc)
                return
            self._retry = None
            self._size -= len(data)
        self._watch(self._reader, self._read_wants_write)
        if self._paused and self._size <= self._low:
            self._paused = False
            self._protocol.resume_writing()  # which may write more, and close
        if self._closing and not self._size and self._state == _OPEN:
            self._shutdown()

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 << 10 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._pause_protocol()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    # -- closing ---------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what was written, then close_notify, then close (lingering)."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        self._watch(False, self._writer)
        if not self._size:
            self._shutdown()

    def abort(self) -> None:
        self._fatal(None)

    def _shutdown(self) -> None:
        """Everything written has left: close_notify (if the socket takes it now), the write
        side shut, and the connection lost for the protocol; the socket lingers."""
        with contextlib.suppress(OSError, ValueError):  # WantRead: the client's is not awaited
            self._sock.unwrap()
        self._lose(None)
        self._linger()

    def _linger(self) -> None:
        """Shut the write side; drop what the client still sends until it closes too, or
        for LINGER seconds; then close."""
        try:
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        except OSError:
            self._finish()
            return
        # Dropping bytes needs no TLS state: linger on the bare socket, so OpenSSL's buffers
        # and the session (tens of KiB a connection) are freed now, not after the linger.
        bare = socket.socket(fileno=self._sock.detach())
        self._sock = self._extra["socket"] = bare  # type: ignore[assignment]
        self._extra.pop("ssl_object", None)
        self._state = _LINGER
        self._watch(True, False)
        self._timer = self._loop.call_later(LINGER, self._timed_out)

    def _drop(self) -> None:
        try:
            data = socket.socket.recv(self._sock, MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish()

    def _fatal(self, exc: BaseException | None, linger: bool = False) -> None:
        """The connection is over: what was not written is dropped, the protocol told;
        the socket closed now, or (``linger``) once the client's bytes are drained."""
        if exc is not None:
            log.debug("TLS connection with %s failed: %s", self._extra["peername"], exc)
        self._closing = True
        self._out.clear()
        self._retry = None
        self._size = 0
        self._lose(exc if isinstance(exc, Exception) else None)
        if linger:
            self._linger()
        else:
            self._finish()

    def _lose(self, exc: Exception | None) -> None:
        if not self._lost and self._state != _HANDSHAKE:
            self._lost = True
            self._loop.call_soon(self._protocol.connection_lost, exc)

    def _finish(self) -> None:
        """The socket closed for good."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._cancel_timer()
        self._watch(False, False)
        self._sock.close()

    # -- the rest of a transport -------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._sock.getpeercert() if self._state == _OPEN else default
        if name == "cipher":
            return self._sock.cipher() if self._state == _OPEN else default
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol
