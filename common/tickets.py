"""Session ticket keys a server rotates: every worker derives the same key for the same
period, so a client resumes on any worker, and a key never outlives its period.

OpenSSL seals TLS session tickets with a key it draws at random when a context is made and
never changes.  Python's ``ssl`` cannot set it, so this sets it with OpenSSL's own
``SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS)`` (common.openssl).  Where that cannot be
done (another Python, another TLS library) nothing is written, ``Tickets.supported`` is
False and the keys stay OpenSSL's (never rotated), with one warning in the log.

The key of period ``n`` (``n = floor(unix time / period)``) is HKDF-SHA256 of a secret drawn
once per server (before workers are forked, so they all share it) with ``n`` in the info:
a 16-byte key name, a 32-byte HMAC key and a 32-byte AES key, OpenSSL's 80-byte layout.
OpenSSL holds one key at a time: a ticket issued in one period does not resume in the next
(the client makes one full handshake and gets new tickets), which bounds how long a stolen
key can decrypt recorded sessions to one period.
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import ssl
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.openssl import context_pointer, libssl

__all__ = ["KEY_BYTES", "Tickets", "key_for"]

log = logging.getLogger("minicdn.tls")

KEY_BYTES = 80  # key name (16) + HMAC-SHA256 key (32) + AES-256 key (32)
_SET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS (ssl.h)
_GET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS


def key_for(secret: bytes, period: int) -> bytes:
    """The ticket key of period number ``period``."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"minicdn tls tickets %d" % period
    )
    return hkdf.derive(secret)


class Tickets:
    """The ticket keys of one server's contexts, rotated every ``period`` seconds (0: never:
    OpenSSL's own random key, for the life of the process)."""

    def __init__(self, period: float, secret: bytes | None = None) -> None:
        self.period = period
        self.secret = secret or secrets.token_bytes(32)
        self.lib = libssl() if period > 0 else None
        self.supported = self.lib is not None
        if period > 0 and not self.supported:
            log.warning("TLS session ticket keys cannot be set with this Python and OpenSSL: not rotated")
        self.current = -1  # the period whose key the contexts hold

    def number(self, now: float | None = None) -> int:
        return int((time.time() if now is None else now) // self.period)

    def apply(self, ctx: ssl.SSLContext, now: float | None = None) -> bool:
        """Give ``ctx`` the key of the period ``now`` is in (True if it holds it)."""
        if self.lib is None:
            return False
        pointer = context_pointer(self.lib, ctx)
        if pointer is None:
            self.lib = None
            self.supported = False
            log.warning("TLS session ticket keys cannot be set in this context (unknown layout): not rotated")
            return False
        n = self.number(now)
        key = key_for(self.secret, n)
        buf = ctypes.create_string_buffer(key, KEY_BYTES)
        if self.lib.SSL_CTX_ctrl(pointer, _SET_KEYS, KEY_BYTES, buf) != 1:
            log.warning("OpenSSL refused the TLS session ticket key: not rotated")
            return False
        self.current = n
        return True

    def held(self, ctx: ssl.SSLContext) -> bytes | None:
        """The key ``ctx`` holds now (None where it cannot be read)."""
        lib = self.lib or libssl()
        pointer = context_pointer(lib, ctx) if lib is not None else None
        if lib is None or pointer is None:
            return None
        buf = ctypes.create_string_buffer(KEY_BYTES)
        lib.SSL_CTX_ctrl(pointer, _GET_KEYS, KEY_BYTES, buf)
        return buf.raw

    def until_next(self, now: float | None = None) -> float:
        """Seconds until the next period starts."""
        t = time.time() if now is None else now
        return (self.number(t) + 1) * self.period - t
