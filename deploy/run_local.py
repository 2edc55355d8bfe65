"""``make run``: a local origin (and edges, when the edge command exists) with the sample
app published as ``demo`` on channel ``release``.  Ctrl-C stops everything it started.

State lives under ``var/``: the signing key (``var/keys``, made on first start), the
publish token (``var/token``), the origin's storage and each edge's cache.

``make run TLS=1`` (``MINICDN_RUN_TLS=1``): every server on HTTPS with a certificate from a
local CA made under ``var/tls`` on first start (common.devca: ``ca.pem``, ``server.pem``,
``server.key``); the edges trust it for their upstream with ``--tls-ca``, and so must any
client (``minicdn fetch --ca var/tls/ca.pem``, ``curl --cacert var/tls/ca.pem``).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import devca
from common.manifest import open_manifest, open_ref
from common.signing import PublicKey, generate_keypair

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("MINICDN_RUN_VAR", ROOT / "var"))  # tests run it elsewhere
HOST = "127.0.0.1"
ORIGIN_PORT = int(os.environ.get("MINICDN_RUN_ORIGIN_PORT", "8080"))
EDGE_PORTS = [int(p) for p in os.environ.get("MINICDN_RUN_EDGE_PORTS", "8081,8082").split(",") if p]
CLI = [sys.executable, "-m", "common"]
TLS = os.environ.get("MINICDN_RUN_TLS", "") not in ("", "0")
CONTEXT: ssl.SSLContext | None = None  # with TLS: trusts the local CA


def _tls() -> list[str]:
    """The TLS flags of every server (the local CA and its certificate made on first use)."""
    global CONTEXT
    folder = VAR / "tls"
    certs = devca.Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    if not all(p.exists() for p in (certs.ca, certs.cert, certs.key)):
        certs = devca.make(folder, days=365)
        print(f"made a local CA and a certificate for 127.0.0.1 in {folder}")
    CONTEXT = ssl.create_default_context(cafile=str(certs.ca))
    return ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}; see its log under var/")
        try:
            with urllib.request.urlopen(url, timeout=2, context=CONTEXT):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def _token() -> str:
    if os.environ.get("MINICDN_TOKEN"):
        return os.environ["MINICDN_TOKEN"]
    path = VAR / "token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _edge_available() -> bool:
    return importlib.util.find_spec("edge.cli") is not None


def main() -> int:
    VAR.mkdir(exist_ok=True)
    keys = VAR / "keys"
    if not (keys / "signing.key").exists():
        key = generate_keypair(keys)
        print(f"generated signing key {key.key_id} in {keys}")
    env = {**os.environ, "MINICDN_TOKEN": _token()}
    tls = _tls() if TLS else []
    scheme = "https" if TLS else "http"
    if TLS:  # the publish command below talks to the origin over HTTPS: it must trust the CA
        env["SSL_CERT_FILE"] = str(VAR / "tls" / "ca.pem")
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], port: int) -> None:
        log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        # A session of its own: the terminal's Ctrl-C reaches only this script, which then
        # drains every child with SIGTERM (a child that saw SIGINT too would die mid-drain).
        proc = subprocess.Popen(
            [*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(proc)
        _wait(f"{scheme}://{HOST}:{port}/healthz", proc)
        print(f"{name:8} {scheme}://{HOST}:{port}  (pid {proc.pid}, log var/{name}.log)")

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    origin = f"{scheme}://{HOST}:{ORIGIN_PORT}"
    try:
        start(
            "origin",
            [
                "origin",
                "--data",
                str(VAR / "origin"),
                "--listen",
                f"{HOST}:{ORIGIN_PORT}",
                "--signing-key",
                str(keys / "signing.key"),
                *tls,
            ],
            ORIGIN_PORT,
        )
        subprocess.run(
            [
                *CLI,
                "publish",
                str(ROOT / "examples" / "demo"),
                "--origin",
                origin,
                "--app",
                "demo",
                "--version",
                "1.0.0",
                "--channel",
                "release",
                "--quiet",
            ],
            env=env,
            check=True,
        )
        _verify(origin, PublicKey.load(keys / "public.key"))
        edges = []
        if _edge_available():
            for i, port in enumerate(EDGE_PORTS, 1):
                start(
                    f"edge{i}",
                    [
                        "edge",
                        "--upstream",
                        origin,
                        "--cache-dir",
                        str(VAR / f"edge{i}"),
                        "--listen",
                        f"{HOST}:{port}",
                        *tls,
                        *(["--tls-ca", str(VAR / "tls" / "ca.pem")] if TLS else []),
                    ],
                    port,
                )
                edges.append(f"{scheme}://{HOST}:{port}")
        print(f"\npublic key: {keys / 'public.key'}   token: var/token (MINICDN_TOKEN)")
        ca = f" --cacert {VAR / 'tls' / 'ca.pem'}" if TLS else ""
        print(f"try: curl -s{ca} {origin}/v1/apps/demo")
        if edges:
            print(
                f"     minicdn fetch demo --edge {edges[0]} --public-key {keys / 'public.key'} "
                "--out /tmp/demo" + (f" --ca {VAR / 'tls' / 'ca.pem'}" if TLS else "")
            )
        print("Ctrl-C stops everything.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a service exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything just like Ctrl-C


def _verify(origin: str, key: PublicKey) -> None:
    """The demo's ref and manifest, as served, verify with the key under var/keys."""
    with urllib.request.urlopen(f"{origin}/v1/apps/demo/channels/release", context=CONTEXT) as r:
        ref = open_ref(r.read(), [key])
    with urllib.request.urlopen(f"{origin}/v1/manifests/{ref.manifest.hex()}", context=CONTEXT) as r:
        manifest = open_manifest(r.read(), [key], ref.manifest)
    files = sum(len(p.files) for p in manifest.packages)
    print(
        f"demo@{ref.version} on channel release (serial {ref.serial}): manifest {ref.manifest.hex()[:16]}… "
        f"verified, {len(manifest.packages)} packages, {files} files"
    )


if __name__ == "__main__":
    sys.exit(main())
