"""OCSP stapling (``--tls-ocsp FILE``, common.ocsp): responses made by the test's own CA
with ``cryptography``, checked before they are stapled, and stapled by a real edge and a
real origin to ``openssl s_client -status`` (a client that asks for the staple); SIGHUP
rereads the file, a bad one is refused and the good one stays."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.ocsp import check
from loadtests.net import wait_http
from tests.conftest import TOKEN
from tests.procs import MINICDN, Service, free_port, origin_service
from tests.sysdeps import OPENSSL, require
from tests.test_tls_edge import client_context, connect, get, serving, tls_edge
from tests.test_tls_pki import Pair, Pki
from tests.waiting import eventually

NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("ocsp-pki"))


def leaf(pair: Pair) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pair.cert.read_bytes())[0]


def response(
    pki: Pki,
    cert: x509.Certificate,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime.datetime = NOW - HOUR,
    next_update: datetime.datetime | None = NOW + 24 * HOUR,
) -> bytes:
    """A DER OCSP response about ``cert``, signed by the CA (as its responder would)."""
    revoked = (NOW - HOUR, None) if status == ocsp.OCSPCertStatus.REVOKED else (None, None)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(cert, pki.cert, hashes.SHA1(), status, this_update, next_update, *revoked)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.cert)
    )
    return builder.sign(pki.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def delegated(pki: Pki, cert: x509.Certificate, ocsp_signing: bool) -> bytes:
    """A response signed by a responder certificate the CA issued (for OCSP signing, or not)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing else ExtendedKeyUsageOID.SERVER_AUTH]
    responder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "responder")]))
        .issuer_name(pki.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + 24 * HOUR)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(pki.key, hashes.SHA256())
    )
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(cert, pki.cert, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, NOW - HOUR, NOW + HOUR, None, None)
        .responder_id(ocsp.OCSPResponderEncoding.NAME, responder)
        .certificates([responder])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_what_may_be_stapled(pki: Pki) -> None:
    pair = pki.issue("checked")
    chain = [leaf(pair), pki.cert]
    until = check(response(pki, chain[0]), chain)
    assert until > NOW
    refusals = {
        "another serial": response(pki, leaf(pki.issue("other"))),
        "revoked": response(pki, chain[0], ocsp.OCSPCertStatus.REVOKED),
        "unknown": response(pki, chain[0], ocsp.OCSPCertStatus.UNKNOWN),
        "expired": response(pki, chain[0], this_update=NOW - 3 * HOUR, next_update=NOW - HOUR),
        "unsuccessful": ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(
            serialization.Encoding.DER
        ),
        "garbage": os.urandom(300),
        "too large": b"\x30" * (65 << 10),
    }
    # Its signature altered (the last bytes of a response without certificates).
    good = response(pki, chain[0])
    refusals["a signature that does not verify"] = good[:-1] + bytes([good[-1] ^ 1])
    refusals["not valid yet"] = response(pki, chain[0], this_update=NOW + HOUR, next_update=NOW + 2 * HOUR)
    refusals["by a responder without OCSP signing"] = delegated(pki, chain[0], ocsp_signing=False)
    for what, der in refusals.items():
        with pytest.raises(ValueError):
            check(der, chain)
            pytest.fail(f"{what} was accepted")
    # A responder the issuer named for OCSP signing is taken; a chain without the issuer is not.
    assert check(delegated(pki, chain[0], ocsp_signing=True), chain) > NOW
    with pytest.raises(ValueError, match="issuer"):
        check(response(pki, chain[0]), chain[:1])
    # A response about the same serial from another CA: refused when the chain holds the issuer.
    other_ca = Pki(pki.root / "other-ca", "another CA")
    twin = (
        x509.CertificateBuilder()
        .subject_name(chain[0].subject)
        .issuer_name(other_ca.cert.subject)
        .public_key(chain[0].public_key())
        .serial_number(chain[0].serial_number)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + 24 * HOUR)
        .sign(other_ca.key, hashes.SHA256())
    )
    forged = response(other_ca, twin)
    with pytest.raises(ValueError, match="another issuer"):
        check(forged, chain)
    assert check(forged, [twin, other_ca.cert]) > NOW


def stapled(port: int, ca: Path) -> str:
    """What ``openssl s_client -status`` says of the staple it got."""
    (openssl,) = require(OPENSSL)
    done = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-status", "-CAfile", str(ca), "-tls1_3"],
        input=b"", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    out = done.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out[-2000:]
    return out


def test_an_edge_staples_the_response_and_rereads_it_on_sighup(
    pki: Pki, origin: Service, tmp_path: Path
) -> None:
    pair = pki.issue("stapling")
    cert = leaf(pair)
    staple = tmp_path / "edge.ocsp"
    first_update = NOW - 2 * HOUR
    staple.write_bytes(response(pki, cert, this_update=first_update))
    e = tls_edge(tmp_path, pair, origin.url, extra=("--tls-ocsp", str(staple)))
    with serving(e):
        out = stapled(e.port, pki.ca_file)
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out
        assert f"This Update: {first_update:%b %e %H:%M:%S %Y}" in out
        with connect(client_context(pki), e.port) as s:  # a client that does not ask: served
            assert get(s, "/healthz", "")[0] == 200
        # A revoked response: refused, the good one still stapled.
        staple.write_bytes(response(pki, cert, ocsp.OCSPCertStatus.REVOKED))
        assert e.svc.proc is not None
        e.svc.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "OCSP reload refused" in e.svc.output(), what="the refusal logged")
        assert "Cert Status: good" in stapled(e.port, pki.ca_file)
        # A fresh one: stapled from now on.
        second_update = NOW - HOUR
        staple.write_bytes(response(pki, cert, this_update=second_update))
        e.svc.proc.send_signal(signal.SIGHUP)
        eventually(
            lambda: f"This Update: {second_update:%b %e %H:%M:%S %Y}" in stapled(e.port, pki.ca_file),
            what="the new response stapled",
        )


def test_without_the_flag_nothing_is_stapled_and_a_bad_file_stops_the_start(
    pki: Pki, origin: Service, tmp_path: Path
) -> None:
    pair = pki.issue("plain")
    e = tls_edge(tmp_path, pair, origin.url)
    with serving(e):
        assert "OCSP response: no response sent" in stapled(e.port, pki.ca_file)
    revoked = tmp_path / "revoked.ocsp"
    revoked.write_bytes(response(pki, leaf(pair), ocsp.OCSPCertStatus.REVOKED))
    args = ["edge", "--cache-dir", str(tmp_path / "c"), "--listen", f"127.0.0.1:{free_port()}",
            "--upstream", origin.url, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
            "--tls-ocsp", str(revoked)]  # fmt: skip
    done = subprocess.run([*MINICDN, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--tls-ocsp" in done.stderr and "revoked" in done.stderr, done.stderr
    done = subprocess.run(
        [*MINICDN, "edge", "--cache-dir", str(tmp_path / "c"), "--upstream", origin.url, "--tls-ocsp", str(revoked)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--tls-ocsp" in done.stderr, done.stderr


def test_a_response_past_its_next_update_is_no_longer_stapled(
    pki: Pki, origin: Service, tmp_path: Path
) -> None:
    pair = pki.issue("stale")
    staple = tmp_path / "stale.ocsp"
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
    staple.write_bytes(response(pki, leaf(pair), next_update=soon))
    e = tls_edge(tmp_path, pair, origin.url, extra=("--tls-ocsp", str(staple)))
    with serving(e):
        assert "Cert Status: good" in stapled(e.port, pki.ca_file)
        time.sleep(max(0.0, (soon - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.5)
        assert "OCSP response: no response sent" in stapled(e.port, pki.ca_file)


def test_the_origin_staples_too(pki: Pki, tmp_path: Path) -> None:
    pair = pki.issue("origin-stapling")
    staple = tmp_path / "origin.ocsp"
    staple.write_bytes(response(pki, leaf(pair)))
    svc = origin_service(
        tmp_path, TOKEN, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-ocsp", str(staple)
    ).launch()
    try:
        wait_http(f"https://127.0.0.1:{svc.port}/healthz", 30, svc.proc, context=client_context(pki))
        out = stapled(svc.port, pki.ca_file)
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out
    finally:
        svc.stop()
