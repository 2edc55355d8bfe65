"""TLS for minicdn's servers and clients: contexts made from PEM files (every refusal a
ConfigError naming the flag), a server's pair reloaded in place (SIGHUP), and a listener's
protocol factory that counts handshakes.

Server contexts: TLS 1.3 (1.2 when asked), ALPN ``http/1.1``, OpenSSL's TLS 1.3 suites
(AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM) and, for TLS 1.2, ECDHE with an AEAD only
(Mozilla's "intermediate" list less DHE, which needs parameters Python does not load).
Resumption: stateless tickets (two per full TLS 1.3 handshake) sealed with a key that
common.tickets sets and rotates every ``--tls-ticket-rotate`` (each period's key derived
from one secret drawn before workers are forked, so every worker holds the same key and a
client resumes on whichever worker the kernel gives it, as with nginx's workers).  A
reload keeps the context, and its key, and only replaces the pair in it: tickets issued
before a SIGHUP still resume after it.  ``--tls-ocsp`` staples a checked OCSP response
(common.ocsp), reread on SIGHUP with the pair.

Why reload into the live context rather than swap in a new one: OpenSSL copies the pair
into each connection when it is made (SSL_new), so connections already open keep theirs
and new handshakes take the new one, and the ticket keys stay.  But ``load_cert_chain``
on a live context that fails half-way leaves it broken (the new certificate without its
key), so a new pair is first loaded into a context of its own; only a pair that loads
there is loaded into the live one (and should the files change between the two loads and
the second fail, the checked context is swapped in, and given the period's ticket key).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.errors import ConfigError
from common.ocsp import Staple, check
from common.tickets import Tickets

__all__ = [
    "ALPN",
    "MIN_VERSIONS",
    "TLS12_CIPHERS",
    "OnHandshake",
    "ServerTls",
    "TlsFiles",
    "client_context",
    "from_flags",
    "server_context",
]

log = logging.getLogger("minicdn.tls")

ALPN = ["http/1.1"]
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # (TLS 1.3's suites are not set by this)
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Told of each handshake a listener saw end: whether it succeeded, whether it resumed a session.
OnHandshake = Callable[[bool, bool], None]


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate chain and key (PEM files: ``--tls-cert``, ``--tls-key``)."""

    cert: Path
    key: Path
    min_version: str = "1.3"  # --tls-min-version
    ocsp: Path | None = None  # --tls-ocsp: a DER OCSP response to staple (common.ocsp)

    def __post_init__(self) -> None:
        if self.min_version not in MIN_VERSIONS:
            raise ConfigError(f"--tls-min-version: {self.min_version!r} is not one of {sorted(MIN_VERSIONS)}")


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from exc


def _checked_pair(files: TlsFiles) -> list[x509.Certificate]:
    """The certificates of ``files``, leaf first, once the chain and the key parse and match."""
    try:
        chain = x509.load_pem_x509_certificates(_read("--tls-cert", files.cert))
    except ValueError as exc:
        raise ConfigError(f"--tls-cert: {files.cert} holds no PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(_read("--tls-key", files.key), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: an encrypted key (no password is taken)
        raise ConfigError(f"--tls-key: {files.key} holds no unencrypted PEM private key: {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(
            f"--tls-key: {files.key} is not the key of the certificate in --tls-cert {files.cert}"
            " (the first certificate of the file must be the server's own)"
        )
    return chain


def describe(cert: x509.Certificate) -> str:
    return (
        f"serial {cert.serial_number:x}, {cert.subject.rfc4514_string()},"
        f" valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
    )


def server_context(files: TlsFiles) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A server context holding ``files``' pair, and its leaf certificate."""
    ctx, chain = _server_context(files)
    return ctx, chain[0]


def _server_context(files: TlsFiles) -> tuple[ssl.SSLContext, list[x509.Certificate]]:
    chain = _checked_pair(files)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[files.min_version]
    ctx.set_alpn_protocols(ALPN)
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # (TLS 1.2) a write never waits on a read
    _load(ctx, files)
    return ctx, chain


def _load(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:  # the files changed since they were checked
        raise ConfigError(f"--tls-cert/--tls-key: {files.cert}, {files.key}: {exc}") from exc


class ServerTls:
    """A listener's TLS: the context every new handshake uses, reloaded from the same files
    by ``reload`` (SIGHUP)."""

    def __init__(self, files: TlsFiles, tickets: Tickets | None = None) -> None:
        self.files = files
        self.context, chain = _server_context(files)
        self.chain = chain
        self.serving = describe(chain[0])
        self.tickets = tickets or Tickets(0.0)
        self.tickets.apply(self.context)
        self.staple = Staple(files.ocsp) if files.ocsp is not None else None
        if self.staple is not None:
            self.staple.load(chain)
            self.staple.attach(self.context)
        log.info("TLS certificate %s (%s)", files.cert, self.serving)

    async def rotate_tickets(self) -> None:
        """Give the context the next period's ticket key as each period starts, forever
        (common.tickets; nothing when the period is 0 or keys cannot be set here)."""
        tickets = self.tickets
        while tickets.supported:
            # At once too: a worker started again inherits the key its supervisor set at start.
            if tickets.number() != tickets.current and tickets.apply(self.context):
                log.info("TLS session ticket key rotated (period %d)", tickets.current)
            await asyncio.sleep(tickets.until_next() + 0.005)

    def reload(self) -> bool:
        """Load the pair again: True if new handshakes now use the files' pair; False, with
        one error line, if it was refused (the pair in use goes on serving)."""
        try:
            checked, chain = _server_context(self.files)
        except ConfigError as exc:
            log.error("TLS reload refused, still serving %s: %s", self.serving, exc.message)
            if self.staple is not None:
                self._reload_staple(self.chain)  # the OCSP file may be new for the pair served
            return False
        try:
            _load(self.context, self.files)
        except ConfigError as exc:
            if self.tickets.supported:
                self.tickets.apply(checked)
            else:
                self.tickets.copy(self.context, checked)  # OpenSSL's own key, kept
            if self.staple is not None:
                try:
                    self.staple.attach(checked)
                except ConfigError as error:
                    log.error("OCSP stapling lost with the swapped context: %s", error.message)
            self.context = checked
            log.warning("TLS pair changed while it was reloaded (%s): serving the checked one", exc.message)
        self.serving = describe(chain[0])
        self.chain = chain
        log.info("TLS certificate reloaded from %s (%s)", self.files.cert, self.serving)
        if self.staple is not None:
            self._reload_staple(chain)
        return True

    def _reload_staple(self, chain: list[x509.Certificate]) -> None:
        """The OCSP file again, for the pair now served: a refused one leaves the response
        in use stapled only if it is still about this certificate and fresh."""
        staple = self.staple
        assert staple is not None
        try:
            staple.load(chain)
        except ConfigError as exc:
            try:
                check(staple.der, chain)
                log.error("OCSP reload refused, still stapling the previous response: %s", exc.message)
            except ValueError:
                staple.der = b""
                log.error(
                    "OCSP reload refused, and the previous response is not for this pair: none stapled: %s",
                    exc.message,
                )

    def accepting(
        self, factory: Callable[[], asyncio.BaseProtocol], handshake_timeout: float, on_handshake: OnHandshake
    ) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for a plain TCP listener that runs TLS in front of what
        ``factory`` makes: the loop's own TLS protocol (uvloop's when the loop is uvloop's),
        as ``create_server(ssl=...)`` would make, but told each handshake's outcome, and
        always with the context in force at accept time."""
        loop = asyncio.get_running_loop()
        tls_protocol = _tls_protocol_class(loop)

        def accept() -> asyncio.BaseProtocol:
            app = factory()
            waiter = loop.create_future()
            waiter.add_done_callback(functools.partial(_handshaken, app, on_handshake))
            protocol: asyncio.BaseProtocol = tls_protocol(
                loop, app, self.context, waiter, server_side=True, ssl_handshake_timeout=handshake_timeout
            )
            return protocol

        return accept


def from_flags(
    cert: str | None, key: str | None, min_version: str, ticket_rotate: float = 0.0, ocsp: str | None = None
) -> ServerTls | None:
    """A server's TLS from ``--tls-cert``, ``--tls-key``, ``--tls-min-version``,
    ``--tls-ticket-rotate`` and ``--tls-ocsp`` (None: plain HTTP); ConfigError naming the
    flags when only one of the pair is given, or an OCSP response without them."""
    if cert is None and key is None:
        if ocsp is not None:
            raise ConfigError("--tls-ocsp: staples a response to --tls-cert, which is not given")
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key: give both or neither")
    if 0 < ticket_rotate < 1:
        raise ConfigError(f"--tls-ticket-rotate: {ticket_rotate:g}s is too short (at least 1s, or 0: never)")
    files = TlsFiles(Path(cert), Path(key), min_version, Path(ocsp) if ocsp is not None else None)
    return ServerTls(files, Tickets(ticket_rotate))


def _tls_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        return getattr(uvloop.loop, "SSLProtocol")  # noqa: B009  (not in its stubs); uvloop's streams read into it without a copy
    from asyncio import sslproto

    return sslproto.SSLProtocol


def _handshaken(app: asyncio.BaseProtocol, on_handshake: OnHandshake, waiter: asyncio.Future[None]) -> None:
    if waiter.cancelled() or waiter.exception() is not None:  # (retrieved: nothing is logged)
        on_handshake(False, False)
        return
    # The TLS protocol gave its transport to the app protocol's connection_made before it
    # woke the waiter; both the data plane's connections and aiohttp's handlers keep it.
    transport = getattr(app, "transport", None)
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    on_handshake(True, bool(sslobj is not None and sslobj.session_reused))


def client_context(ca: Path | None = None, flag: str = "--tls-ca") -> ssl.SSLContext:
    """A client context that verifies certificates and host names against the system's
    trust store, and also ``ca`` (PEM) when given: a private CA."""
    ctx = ssl.create_default_context()
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{flag}: cannot load CA certificates from {ca}: {message}") from exc
    return ctx
