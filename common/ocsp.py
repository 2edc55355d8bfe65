"""OCSP stapling from a file: ``--tls-ocsp FILE``, a DER OCSP response for the server's
certificate that a job of the operator's fetches from the CA's responder and refreshes
(as nginx's ``ssl_stapling_file``; the server itself never calls out to a responder).

A response is checked before it is stapled: it must parse, say ``successful``, be about
the certificate served (its serial and its issuer, whose certificate ``--tls-cert`` must
hold), be signed by that issuer or by a responder certificate the issuer issued for OCSP
signing, say ``good``, not begin more than five minutes ahead of our clock, and not be
past its ``nextUpdate``.  A bad file is refused at
start (a ConfigError naming ``--tls-ocsp``) and on SIGHUP (one error line; the response
in use goes on being stapled while it is fresh).  One past its ``nextUpdate`` is no longer
stapled (clients then ask the responder themselves, or soft-fail, as without stapling).

OpenSSL asks for the response through its status callback (``SSL_CTX_set_tlsext_status_cb``,
set through common.openssl), only for clients that ask (``status_request``): the callback
copies the DER into memory OpenSSL owns and hands it over.  Where the callback cannot be
set (another Python or TLS library) ``--tls-ocsp`` is refused at start.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.errors import ConfigError
from common.openssl import context_pointer, libssl

__all__ = ["MAX_RESPONSE", "Staple", "check"]

log = logging.getLogger("minicdn.tls")

MAX_RESPONSE = 64 << 10  # an OCSP response is a few KiB; a larger file is not one
_SET_STATUS_CB = 63  # SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB (ssl.h)
_SET_OCSP_RESP = 71  # SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP
_OK, _NOACK = 0, 3  # SSL_TLSEXT_ERR_OK, SSL_TLSEXT_ERR_NOACK
_StatusCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


SKEW = datetime.timedelta(minutes=5)  # a thisUpdate this far ahead of our clock is still taken


def check(
    der: bytes, chain: list[x509.Certificate], now: datetime.datetime | None = None
) -> datetime.datetime:
    """Until when the OCSP response ``der`` may be stapled for ``chain`` (leaf first, its
    issuer among the rest); ValueError saying why it may not."""
    if len(der) > MAX_RESPONSE:
        raise ValueError(f"{len(der)} bytes is not an OCSP response (at most {MAX_RESPONSE})")
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise ValueError(f"not a DER OCSP response: {exc}") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError(f"the responder answered {resp.response_status.name.lower()}")
    leaf = chain[0]
    if resp.serial_number != leaf.serial_number:
        raise ValueError(
            f"it is about serial {resp.serial_number:x}, not {leaf.serial_number:x} (the certificate served)"
        )
    issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
    if issuer is None:
        raise ValueError(
            "--tls-cert must hold the certificate's issuer (the intermediate) to check the response"
        )
    expected = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, resp.hash_algorithm).build()
    if resp.issuer_key_hash != expected.issuer_key_hash or resp.issuer_name_hash != expected.issuer_name_hash:
        raise ValueError("it is for a certificate of another issuer")
    _check_signature(resp, issuer)
    if resp.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise ValueError(f"the certificate's status is {resp.certificate_status.name.lower()}")
    now = now or datetime.datetime.now(datetime.UTC)
    if resp.this_update_utc > now + SKEW:
        raise ValueError(f"it is not valid before {resp.this_update_utc:%Y-%m-%d %H:%M:%SZ} (thisUpdate)")
    until = resp.next_update_utc
    if until is None:  # no nextUpdate: newer information is always available (RFC 6960)
        until = resp.this_update_utc + datetime.timedelta(days=1)
    if until <= now:
        raise ValueError(f"it expired at {until:%Y-%m-%d %H:%M:%SZ} (nextUpdate)")
    return until


def _check_signature(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The response is signed by the issuer, or by a responder certificate the issuer
    issued for OCSP signing (RFC 6960 section 4.2.2.2); ValueError otherwise."""
    signer = None
    if _names(resp, issuer):
        signer = issuer
    else:
        for cert in resp.certificates:
            if not _names(resp, cert):
                continue
            try:
                cert.verify_directly_issued_by(issuer)
                usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
                continue
            if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
                signer = cert
                break
    if signer is None:
        raise ValueError("it is not signed by the certificate's issuer nor by a responder the issuer named")
    algorithm = resp.signature_hash_algorithm
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes)
        else:
            raise ValueError(f"its signature algorithm is not one we check ({type(key).__name__})")
    except InvalidSignature:
        raise ValueError("its signature does not verify") from None


def _names(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the response's responder id names ``cert`` (by name or by key hash)."""
    if resp.responder_name is not None:
        return bool(resp.responder_name == cert.subject)
    return bool(
        resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    )


class Staple:
    """The OCSP response stapled by the contexts it is ``attach``-ed to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.der = b""
        self.until = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        lib = libssl()
        if lib is None:
            raise ConfigError("--tls-ocsp: OCSP stapling is not available with this Python and OpenSSL")
        self.lib = lib
        lib.SSL_CTX_callback_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_callback_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, _StatusCallback]
        lib.SSL_ctrl.restype = ctypes.c_long
        lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.CRYPTO_malloc.restype = ctypes.c_void_p
        lib.CRYPTO_malloc.argtypes = [ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int]
        lib.CRYPTO_free.restype = None
        lib.CRYPTO_free.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self._callback = _StatusCallback(self._status)  # kept: OpenSSL holds only its address

    def load(self, chain: list[x509.Certificate]) -> None:
        """Read and check the file for ``chain``; ConfigError naming the flag if refused
        (the response in use, if any, stays)."""
        try:
            der = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"--tls-ocsp: cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            until = check(der, chain)
        except ValueError as exc:
            raise ConfigError(f"--tls-ocsp: {self.path}: {exc}") from exc
        self.der, self.until = der, until
        log.info("OCSP response %s stapled until %s", self.path, f"{until:%Y-%m-%d %H:%M:%SZ}")

    def attach(self, ctx: ssl.SSLContext) -> None:
        pointer = context_pointer(self.lib, ctx)
        if pointer is None or self.lib.SSL_CTX_callback_ctrl(pointer, _SET_STATUS_CB, self._callback) != 1:
            raise ConfigError("--tls-ocsp: OpenSSL's status callback cannot be set in this context")

    def fresh(self) -> bool:
        return bool(self.der) and datetime.datetime.now(datetime.UTC) < self.until

    def _status(self, ssl_pointer: int | None, _arg: int | None) -> int:
        """OpenSSL's status callback, in a handshake whose client asked for a staple."""
        try:
            der = self.der
            if not self.fresh():
                return _NOACK
            buf = self.lib.CRYPTO_malloc(len(der), b"minicdn-ocsp", 0)
            if not buf:
                return _NOACK
            ctypes.memmove(buf, der, len(der))
            if self.lib.SSL_ctrl(ssl_pointer, _SET_OCSP_RESP, len(der), buf) != 1:
                self.lib.CRYPTO_free(buf, b"minicdn-ocsp", 0)
                return _NOACK
            return _OK  # OpenSSL owns buf now
        except Exception:  # never into OpenSSL's handshake: no staple this time
            log.exception("OCSP stapling failed in a handshake")
            return _NOACK
