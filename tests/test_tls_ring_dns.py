"""A TLS edge whose ring comes from DNS (``--peers-dns``) asks its members over HTTPS:
before, the resolved addresses were always ``http://`` members, which a TLS listener
cannot answer, so such an edge never found itself among them."""

from __future__ import annotations

from pathlib import Path

from tests.procs import Service, edge_service, free_port
from tests.test_tls_pki import Pki
from tests.waiting import eventually


def test_a_tls_edge_finds_itself_among_its_dns_members_over_https(origin: Service, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pair = pki.issue("edge")  # names 127.0.0.1 and localhost
    port = free_port()
    extra = (
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-ca", str(pki.ca_file),
        "--peers-dns", f"localhost:{port}", "--peer-check-interval", "200ms",
        "--metrics-listen", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    node = edge_service(tmp_path, origin.url, extra=extra, name="dns-tls", port=port).launch()
    try:
        # localhost is 127.0.0.1 (this node, found by its /healthz over TLS) and maybe ::1
        # (nobody listens there): the ring is this node alone, named https://.
        eventually(
            lambda: f"this node is https://127.0.0.1:{port}" in node.output(), 30, "self found over https"
        )
        assert f"this node is http://127.0.0.1:{port}" not in node.output()
    finally:
        node.stop()
