"""A private CA made in the test (the other TLS tests use it: ``Pki``), and common.tls's
refusals: every bad pair or CA file is a ConfigError naming the flag, and a refused
reload leaves the pair in force serving."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.errors import ConfigError
from common.tls import ServerTls, TlsFiles, client_context, server_context

HOSTS = ("127.0.0.1", "localhost")
DAY = datetime.timedelta(days=1)


@dataclass
class Pair:
    cert: Path
    key: Path
    serial: int


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A CA (ECDSA P-256) under ``root``, issuing server certificates for loopback."""

    def __init__(self, root: Path, name: str = "minicdn test CA") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = root / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, stem: str, hosts: tuple[str, ...] = HOSTS, expired: bool = False, chain: bool = True
    ) -> Pair:
        """A key and a certificate for ``hosts`` (files ``stem``.crt/.key; the chain file
        ends with the CA's certificate when ``chain``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 10 * DAY)
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if chain:
            pem += self.cert.public_bytes(serialization.Encoding.PEM)
        pair = Pair(self.root / f"{stem}.crt", self.root / f"{stem}.key", serial)
        pair.cert.write_bytes(pem)
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return pair


def peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- common.tls's refusals --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_a_good_pair_makes_a_tls13_context_with_alpn(pki: Pki) -> None:
    pair = pki.issue("good")
    ctx, cert = server_context(TlsFiles(pair.cert, pair.key))
    assert cert.serial_number == pair.serial
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    ctx12, _ = server_context(TlsFiles(pair.cert, pair.key, "1.2"))
    assert ctx12.minimum_version is ssl.TLSVersion.TLSv1_2
    names = [c["name"] for c in ctx12.get_ciphers()]
    assert "TLS_AES_128_GCM_SHA256" in names and "ECDHE-ECDSA-AES128-GCM-SHA256" in names
    # TLS 1.2: forward-secret AEAD suites only (no CBC, no static RSA, no DHE).
    tls12 = [n for n in names if not n.startswith("TLS_")]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12), tls12


def _refusal(files: TlsFiles) -> str:
    with pytest.raises(ConfigError) as err:
        server_context(files)
    return err.value.message


def test_bad_pairs_are_refused_naming_the_flag(pki: Pki, tmp_path: Path) -> None:
    good, other = pki.issue("a"), pki.issue("b")
    missing = tmp_path / "nope.pem"
    assert _refusal(TlsFiles(missing, good.key)).startswith("--tls-cert: cannot read")
    assert _refusal(TlsFiles(good.cert, missing)).startswith("--tls-key: cannot read")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    assert _refusal(TlsFiles(garbage, good.key)).startswith("--tls-cert:")
    assert _refusal(TlsFiles(good.cert, garbage)).startswith("--tls-key:")
    # The key of another certificate: named as not the certificate's key.
    assert "is not the key of the certificate" in _refusal(TlsFiles(good.cert, other.key))
    # A key file handed as the certificate, and the reverse.
    assert _refusal(TlsFiles(good.key, good.key)).startswith("--tls-cert:")
    assert _refusal(TlsFiles(good.cert, good.cert)).startswith("--tls-key:")
    with pytest.raises(ConfigError, match="--tls-min-version"):
        TlsFiles(good.cert, good.key, "1.1")


def test_an_encrypted_key_is_refused_naming_the_flag(pki: Pki, tmp_path: Path) -> None:
    good = pki.issue("enc")
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert _refusal(TlsFiles(good.cert, locked)).startswith("--tls-key:")


def test_a_refused_reload_keeps_the_pair_in_force(pki: Pki, tmp_path: Path) -> None:
    first, second, stray = pki.issue("r1"), pki.issue("r2"), pki.issue("r3")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    tls = ServerTls(TlsFiles(cert, key))
    live = tls.context
    assert f"{first.serial:x}" in tls.serving
    key.write_bytes(stray.key.read_bytes())  # a half-done rotation: the old cert, another key
    assert not tls.reload()
    assert tls.context is live and f"{first.serial:x}" in tls.serving
    cert.write_bytes(second.cert.read_bytes())
    key.write_bytes(second.key.read_bytes())
    assert tls.reload()
    # The same context (its session ticket keys kept), now with the new pair.
    assert tls.context is live and f"{second.serial:x}" in tls.serving


def test_a_ca_file_that_cannot_be_loaded_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--tls-ca: cannot load"):
        client_context(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"^--ca: cannot load"):
        client_context(bad, "--ca")
