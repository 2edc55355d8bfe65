"""Session ticket keys a server rotates: every worker derives the same key for the same
period, so a client resumes on any worker, and a key never outlives its period.

OpenSSL seals TLS session tickets with a key it draws at random when a context is made and
never changes.  Python's ``ssl`` cannot set it, so this sets it with OpenSSL's own
``SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS)`` (common.openssl).  Where that cannot be
done (another Python, another TLS library) nothing is written, ``Tickets.supported`` is
False and the keys stay OpenSSL's (never rotated), with one warning in the log.

Periods are numbered ``n = floor(unix time / period)``.  The keys come from a ratchet: a
32-byte state drawn once per server (before workers are forked, so they all share it),
stepped forward once a period with HKDF-SHA256; the key of a period is HKDF-SHA256 of that
period's state: a 16-byte key name, a 32-byte HMAC key and a 32-byte AES key, OpenSSL's
80-byte layout.  OpenSSL holds one key at a time: a ticket issued in one period does not
resume in the next (the client makes one full handshake and gets new tickets), so a key
read from a process's memory decrypts the tickets of its period and later ones until the
server restarts, never earlier ones.  The supervisor steps its own copy every period too
(``advance``, on edge.workers.supervise's tick), so a worker it starts again inherits the
current state.
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

__all__ = ["KEY_BYTES", "Tickets", "key_of", "next_state"]

log = logging.getLogger("minicdn.tls")

KEY_BYTES = 80  # key name (16) + HMAC-SHA256 key (32) + AES-256 key (32)
_SET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS (ssl.h)
_GET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS


STEP = b"minicdn tls tickets: next period"


def _derive(state: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(state)


def next_state(state: bytes) -> bytes:
    """The ratchet's state one period on (the earlier one cannot be had back from it)."""
    return _derive(state, STEP, 32)


def key_of(state: bytes) -> bytes:
    """The ticket key of a period, from the ratchet's state in that period."""
    return _derive(state, b"minicdn tls tickets: key", KEY_BYTES)


class Tickets:
    """The ticket keys of one server's contexts, rotated every ``period`` seconds (0: never:
    OpenSSL's own random key, for the life of the process).

    A ratchet: ``state`` is that of period ``at``; the key of a later period is found by
    stepping the state forward (``next_state``), which forgets the earlier states, so a
    process's memory holds no key of a period before its current one.  Every worker starts
    from the state its supervisor holds, inherited through fork, and steps alike, so all
    hold the same key in the same period."""

    def __init__(self, period: float, secret: bytes | None = None, start: float | None = None) -> None:
        self.period = period
        # (period, state) in one attribute: a signal handler (the supervisor's tick) may
        # step it between any two bytecodes, and must never see a half-made pair.
        self._ratchet = (self.number(start) if period > 0 else 0, secret or secrets.token_bytes(32))
        self.supported = period > 0 and libssl() is not None  # rotating (libssl() is memoized)
        if period > 0 and not self.supported:
            log.warning("TLS session ticket keys cannot be set with this Python and OpenSSL: not rotated")
        self.current = -1  # the period whose key the contexts hold

    def number(self, now: float | None = None) -> int:
        return int((time.time() if now is None else now) // self.period)

    @property
    def at(self) -> int:
        """The period whose state the ratchet holds."""
        return self._ratchet[0]

    @property
    def state(self) -> bytes:
        return self._ratchet[1]

    def key(self, n: int) -> bytes | None:
        """The key of period ``n`` (None for a period before the state's: the clock went back)."""
        at, state = self._ratchet
        if n < at:
            return None
        for _ in range(n - at):
            state = next_state(state)
        self._ratchet = (n, state)
        return key_of(state)

    def advance(self) -> None:
        """Step the ratchet to the period now is in, setting nothing: the supervisor's tick,
        so that its memory too holds no earlier state and a worker it starts again inherits
        a state that is current (not one to step forward from the server's start)."""
        if self.period > 0:
            self.key(self.number())

    def apply(self, ctx: ssl.SSLContext, now: float | None = None) -> bool:
        """Give ``ctx`` the key of the period ``now`` is in (True if it holds it)."""
        if not self.supported:
            return False
        n = self.number(now)
        key = self.key(n)
        if key is None:
            log.warning("the clock is before the ticket key's period: the key stays")
            return False
        if not self._set(ctx, key):
            return False
        self.current = n
        return True

    def copy(self, old: ssl.SSLContext, new: ssl.SSLContext) -> None:
        """Give ``new`` the key ``old`` holds (a context swapped in keeps resumption)."""
        key = self.held(old)
        if key is not None:
            self._set(new, key)

    def _set(self, ctx: ssl.SSLContext, key: bytes) -> bool:
        found = _context(ctx)
        if found is None:
            self.supported = False
            log.warning("TLS session ticket keys cannot be set in this context (unknown layout): not rotated")
            return False
        lib, pointer = found
        buf = ctypes.create_string_buffer(key, KEY_BYTES)
        if lib.SSL_CTX_ctrl(pointer, _SET_KEYS, KEY_BYTES, buf) != 1:
            log.warning("OpenSSL refused the TLS session ticket key: not rotated")
            return False
        return True

    def held(self, ctx: ssl.SSLContext) -> bytes | None:
        """The key ``ctx`` holds now (None where it cannot be read)."""
        found = _context(ctx)
        if found is None:
            return None
        lib, pointer = found
        buf = ctypes.create_string_buffer(KEY_BYTES)
        lib.SSL_CTX_ctrl(pointer, _GET_KEYS, KEY_BYTES, buf)
        return buf.raw

    def until_next(self, now: float | None = None) -> float:
        """Seconds until the next period starts."""
        t = time.time() if now is None else now
        return (self.number(t) + 1) * self.period - t


def _context(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | None:
    """libssl and the SSL_CTX pointer of ``ctx`` (common.openssl's checked bridge), or None."""
    lib = libssl()
    pointer = context_pointer(lib, ctx) if lib is not None else None
    return None if lib is None or pointer is None else (lib, pointer)
