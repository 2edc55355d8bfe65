"""Sending a sealed body (edge.objects ``Sealed``) without copying it: ``sendfile`` from
its memfd to the connection's own socket, borrowed from the transport."""

from __future__ import annotations

import asyncio
import os
import socket

from edge.objects import Sealed

__all__ = ["Sender"]


class _Borrowed(socket.socket):
    """The connection's own socket, wrapped to ``send`` with MSG_MORE and to ``sendfile``
    from: the descriptor stays the transport's, so this never closes it (the sender gives
    it back when the connection is lost or handed over; if it is ever dropped undetached,
    its finalizer detaches instead of closing)."""

    def __del__(self) -> None:
        self.detach()


class Sender:
    """One connection's way to send sealed bodies."""

    __slots__ = ("_no_sock", "_sock")

    def __init__(self) -> None:
        self._sock: _Borrowed | None = None
        self._no_sock = False

    def sealed(self, transport: asyncio.Transport, head: bytes, sealed: Sealed) -> None:
        """``head`` and then a sealed body: ``send`` with MSG_MORE (head and body leave in
        full segments) and ``sendfile`` straight to the socket, which is in order only while
        the transport's buffer is empty.  What the socket does not take now goes to the
        transport, which sends it after, in order; so does everything when the socket
        cannot be borrowed (TLS, not TCP)."""
        sock = self._sock
        if sock is None and not self._no_sock:
            sock = self._sock = self._borrow(transport)
        # Once the transport is closing (an abort closes the descriptor at once, and its
        # number may be reused before connection_lost), only the transport may write.
        if sock is None or transport.get_write_buffer_size() or transport.is_closing():
            transport.writelines((head, sealed.read()))
            return
        try:
            n = sock.send(head, socket.MSG_MORE)
        except OSError:  # full (EAGAIN) or broken: the transport finds out and tells us
            n = 0
        if n < len(head):
            transport.writelines((head[n:], sealed.read()))
            return
        try:
            m = os.sendfile(sock.fileno(), sealed.fd, 0, sealed.size)
        except OSError:
            m = 0
        if m < sealed.size:
            transport.write(sealed.read(m))

    def _borrow(self, transport: asyncio.Transport) -> _Borrowed | None:
        raw = transport.get_extra_info("socket")
        if (
            raw is None
            or transport.get_extra_info("sslcontext") is not None
            or raw.family not in (socket.AF_INET, socket.AF_INET6)
        ):
            self._no_sock = True
            return None
        sock = _Borrowed(raw.family, raw.type, fileno=raw.fileno())
        sock.settimeout(0)
        return sock

    def give_back(self) -> None:
        """The socket is the transport's alone from now on."""
        if self._sock is not None:
            self._sock.detach()
            self._sock = None
        self._no_sock = True
