"""The origin over HTTPS (issue 20): ``minicdn origin --tls-cert --tls-key`` serves the
whole API over TLS 1.3 with the edge's context (common.tls), reloads its pair on SIGHUP
(a bad pair refused, the old one serving on), counts handshakes, and an edge fetches from
it as an ``https://`` upstream that it verifies with ``--tls-ca``.  Real processes and real
TLS on loopback, each process stopped by its PID."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.manifest import open_ref
from common.signing import PublicKey
from loadtests.net import wait_http
from tests.conftest import DEMO, TOKEN, http, tar_gz_of
from tests.procs import MINICDN, Service, edge_service, free_port, origin_service
from tests.test_tls_edge import client_context, connect, install
from tests.test_tls_pki import Pki, peer_serial
from tests.waiting import eventually


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class TlsOrigin:
    def __init__(self, service: Service, cert: Path, key: Path, ctx: ssl.SSLContext, mport: int) -> None:
        self.service, self.cert, self.key, self.ctx = service, cert, key, ctx
        self.metrics_url = f"http://127.0.0.1:{mport}"  # --metrics-listen
        self.url = f"https://127.0.0.1:{service.port}"

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30, context=self.ctx) as r:
            return bytes(r.read())

    def metric(self, name: str, labels: str) -> float:
        text = self.call("GET", "/metrics").decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and labels in line
        )


@pytest.fixture(scope="module")
def origin_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsOrigin]:
    tmp = tmp_path_factory.mktemp("origin-tls")
    pair = pki.issue("origin-1")
    cert, key = tmp / "origin.pem", tmp / "origin.key"
    install(pair, cert, key)
    mport = free_port()
    svc = origin_service(
        tmp, TOKEN, "--tls-cert", str(cert), "--tls-key", str(key), "--metrics-listen", f"127.0.0.1:{mport}"
    ).launch()
    ctx = client_context(pki)
    try:
        wait_http(f"https://127.0.0.1:{svc.port}/healthz", 30, svc.proc, context=ctx)
        yield TlsOrigin(svc, cert, key, ctx, mport)
    finally:
        svc.stop()


def test_the_origin_serves_its_api_over_https_only(origin_tls: TlsOrigin) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    origin_tls.call("POST", "/v1/apps/tlsdemo/versions/1.0.0", tar_gz_of(DEMO), auth)
    body = json.dumps({"version": "1.0.0"}).encode()
    origin_tls.call(
        "PUT", "/v1/apps/tlsdemo/channels/release", body, {**auth, "Content-Type": "application/json"}
    )
    assert origin_tls.call("GET", "/v1/apps/tlsdemo/channels/release")  # a signed ref, over TLS
    with connect(origin_tls.ctx, origin_tls.service.port) as s:
        assert s.version() == "TLSv1.3" and s.selected_alpn_protocol() == "http/1.1"
    # Plain HTTP to the TLS port is no request: the handshake fails and the bytes are dropped.
    with socket.create_connection(("127.0.0.1", origin_tls.service.port), timeout=10) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/1.1 200")
    # TLS 1.2 is refused by default, and counted.
    before = origin_tls.metric("minicdn_origin_tls_handshakes_total", 'outcome="failed"')
    old = client_context_max12(origin_tls.ctx)
    with pytest.raises(ssl.SSLError):
        connect(old, origin_tls.service.port).close()
    eventually(
        lambda: origin_tls.metric("minicdn_origin_tls_handshakes_total", 'outcome="failed"') > before,
        what="the refused handshake counted",
    )
    assert origin_tls.metric("minicdn_origin_tls_handshakes_total", 'outcome="ok"') > 0


def test_the_metrics_listener_is_plain_and_serves_only_metrics_and_probes(origin_tls: TlsOrigin) -> None:
    origin_tls.call("GET", "/healthz")  # at least one handshake to count
    r = http("GET", origin_tls.metrics_url + "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    assert b'minicdn_origin_tls_handshakes_total{outcome="ok"' in r.body
    for probe in ("/healthz", "/readyz"):
        r = http("GET", origin_tls.metrics_url + probe)
        assert r.status == 200 and json.loads(r.body) == {"ok": True}
    # Not the API: no apps, no publishing, no console, on the plain listener.
    for method, path in (("GET", "/v1/apps"), ("POST", "/v1/apps/x/versions/1.0.0"), ("GET", "/console/")):
        r = http(method, origin_tls.metrics_url + path)
        assert r.status in (404, 405) and "error" in json.loads(r.body), (path, r.status)
    # The TLS listener still serves the metrics too.
    assert b"minicdn_origin_tls_handshakes_total" in origin_tls.call("GET", "/metrics")


def client_context_max12(ctx: ssl.SSLContext) -> ssl.SSLContext:
    old = ssl.create_default_context()
    old.load_verify_locations(cadata=ctx.get_ca_certs(binary_form=True)[0])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    return old


def test_sighup_loads_a_new_pair_and_refuses_a_bad_one(origin_tls: TlsOrigin, pki: Pki) -> None:
    port = origin_tls.service.port
    with connect(origin_tls.ctx, port) as s:
        first = peer_serial(s)
    kept = connect(origin_tls.ctx, port)  # a connection opened before the rotation
    try:
        new = pki.issue("origin-2")
        install(new, origin_tls.cert, origin_tls.key)
        assert origin_tls.service.proc is not None
        origin_tls.service.proc.send_signal(signal.SIGHUP)

        def serial_now() -> int:
            with connect(origin_tls.ctx, port) as s:
                return peer_serial(s)

        eventually(lambda: serial_now() == new.serial, what="new connections see the new pair")
        assert first != new.serial
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(200).startswith(b"HTTP/1.1 200")  # the old connection goes on
        # A key that is not the certificate's: refused, the pair in use serves on.
        other = pki.issue("origin-3")
        install(new, origin_tls.cert, origin_tls.key)
        origin_tls.key.write_bytes(other.key.read_bytes())
        origin_tls.service.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "TLS reload refused" in origin_tls.service.output(), what="the refusal logged")
        assert serial_now() == new.serial
        assert origin_tls.service.proc.poll() is None
    finally:
        kept.close()
        install(pki.issue("origin-4"), origin_tls.cert, origin_tls.key)


def test_an_edge_fetches_from_an_https_origin_it_verifies(
    origin_tls: TlsOrigin, pki: Pki, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    origin_tls.call("POST", "/v1/apps/tlsdemo2/versions/1.0.0", tar_gz_of(DEMO), auth)
    body = json.dumps({"version": "1.0.0"}).encode()
    origin_tls.call(
        "PUT", "/v1/apps/tlsdemo2/channels/release", body, {**auth, "Content-Type": "application/json"}
    )
    key = PublicKey.load(origin_tls.service.log.parent / "keys" / "public.key")
    trusting = edge_service(tmp_path, origin_tls.url, extra=("--tls-ca", str(pki.ca_file)), name="trusting")
    blind = edge_service(tmp_path, origin_tls.url, name="blind")  # the system store: no such CA
    for svc in (trusting, blind):
        svc.start()
    try:
        with urllib.request.urlopen(trusting.url + "/v1/apps/tlsdemo2/channels/release", timeout=30) as r:
            ref = open_ref(r.read(), [key])  # signed by this origin, relayed over its TLS
        assert (ref.app, ref.channel, ref.version) == ("tlsdemo2", "release", "1.0.0")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(blind.url + "/v1/apps/tlsdemo2/channels/release", timeout=30)
        assert refused.value.code == 502
        refused.value.close()
    finally:
        for svc in (trusting, blind):
            svc.stop()


def test_one_half_of_the_pair_is_refused_naming_the_flags(tmp_path: Path, pki: Pki) -> None:
    from common.signing import generate_keypair

    generate_keypair(tmp_path / "keys")
    pair = pki.issue("lonely")
    args = ["origin", "--data", str(tmp_path / "o"), "--listen", "127.0.0.1:1", "--tls-cert", str(pair.cert)]
    args += ["--signing-key", str(tmp_path / "keys" / "signing.key")]
    done = subprocess.run([*MINICDN, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--tls-cert and --tls-key: give both or neither" in done.stderr
