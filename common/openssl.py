"""OpenSSL calls Python's ``ssl`` module does not offer, made on the ``SSL_CTX`` inside an
``ssl.SSLContext`` through the very libssl that module uses (common.tickets sets session
ticket keys with it, common.ocsp staples OCSP responses).

The ``SSL_CTX`` pointer is read at a fixed place: the first field after the object header
of CPython's ``PySSLContext`` (every CPython since 3.7; only CPython is supported).  It is
trusted only once OpenSSL, asked through it, reports the context's options as Python does
and answers a harmless query; otherwise ``context_pointer`` returns None and callers do
without, saying so in the log.  These checks catch a libssl other than the ``ssl``
module's; an interpreter whose object layout differs would make the first of them read
arbitrary memory, which is why ``libssl`` also insists on the very OpenSSL version the
``ssl`` module reports.
"""

from __future__ import annotations

import ctypes
import ssl

__all__ = ["context_pointer", "libssl"]

_GET_TICKET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS (ssl.h): a query every context answers
_loaded: list[ctypes.CDLL | None] = []


def libssl() -> ctypes.CDLL | None:
    """The libssl (and through it libcrypto) the ``ssl`` module is linked with, or None."""
    if _loaded:
        return _loaded[0]
    found = None
    for name in ("libssl.so.3", "libssl.so.1.1", "libssl.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.OpenSSL_version.restype = ctypes.c_char_p
            lib.OpenSSL_version.argtypes = [ctypes.c_int]
            version = lib.OpenSSL_version(0).decode()
        except (OSError, AttributeError):
            continue
        if version == ssl.OPENSSL_VERSION:
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
            found = lib
            break
    _loaded.append(found)
    return found


def context_pointer(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int | None:
    """The SSL_CTX pointer of ``ctx``, once OpenSSL agrees it is one (else None)."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != ctx.options:
        return None
    keys = ctypes.create_string_buffer(80)
    if lib.SSL_CTX_ctrl(pointer, _GET_TICKET_KEYS, 80, keys) != 1:
        return None
    return int(pointer)
