"""``make run``: a local origin (and edges, when the edge command exists) with the sample
app published as ``demo`` on channel ``release``.  Ctrl-C stops everything it started.

State lives under ``var/``: the signing key (``var/keys``, made on first start), the
publish token (``var/token``), the origin's storage and each edge's cache.

``make run TLS=1`` (``MINICDN_RUN_TLS=1``): every server on HTTPS with a certificate from a
local CA made under ``var/tls`` on first start (common.devca: ``ca.pem``, ``server.pem``,
``server.key``); the edges trust it for their upstream with ``--tls-ca``, and so must any
client (``minicdn fetch --ca var/tls/ca.pem``, ``curl --cacert var/tls/ca.pem``).

``make run-s3`` (``MINICDN_RUN_S3=1``): the origin on object storage, as replicas.  A
one-node Ceph RGW (deploy/rgw.py) under ``var/rgw`` on port 7480 (``MINICDN_RUN_RGW_PORT``),
the bucket ``minicdn``, two origin replicas on ``s3://minicdn/run`` (ports 8080 and 8090,
``MINICDN_RUN_ORIGIN_PORTS``; each its own scratch ``--data``: ``var/origin-a``,
``var/origin-b``; one signing key), and two edges that list both origins with
``--upstream``, each in a different order.  The RGW keeps objects in memory: every run
starts from an empty bucket (a cluster a killed run left behind is stopped by its PIDs
from ``var/rgw/rgw.json`` and its folder removed).  TLS=1 combines with it.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from common import devca
from common.manifest import open_manifest, open_ref
from common.signing import PublicKey, generate_keypair

if TYPE_CHECKING:
    from deploy.rgw import Rgw

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("MINICDN_RUN_VAR", ROOT / "var"))  # tests run it elsewhere
HOST = "127.0.0.1"
ORIGIN_PORT = int(os.environ.get("MINICDN_RUN_ORIGIN_PORT", "8080"))
EDGE_PORTS = [int(p) for p in os.environ.get("MINICDN_RUN_EDGE_PORTS", "8081,8082").split(",") if p]
CLI = [sys.executable, "-m", "common"]
TLS = os.environ.get("MINICDN_RUN_TLS", "") not in ("", "0")
S3 = os.environ.get("MINICDN_RUN_S3", "") not in ("", "0")
ORIGIN_PORTS = [
    int(p) for p in os.environ.get("MINICDN_RUN_ORIGIN_PORTS", f"{ORIGIN_PORT},{ORIGIN_PORT + 10}").split(",")
]
RGW_PORT = int(os.environ.get("MINICDN_RUN_RGW_PORT", "7480"))  # radosgw's usual port
BUCKET_URL = "s3://minicdn/run"
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
    clusters: list[Rgw] = []  # the RGW once started: stopped last

    def launch(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        # A session of its own: the terminal's Ctrl-C reaches only this script, which then
        # drains every child with SIGTERM (a child that saw SIGINT too would die mid-drain).
        proc = subprocess.Popen(
            [*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(proc)
        return proc

    def ready(name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        _wait(f"{scheme}://{HOST}:{port}/healthz", proc)
        print(f"{name:8} {scheme}://{HOST}:{port}  (pid {proc.pid}, log var/{name}.log)")

    def start_all(services: list[tuple[str, list[str], int]]) -> None:
        """Start several at once (their start-ups overlap), then wait for each."""
        started = [(name, launch(name, args), port) for name, args, port in services]
        for name, proc, port in started:
            ready(name, proc, port)

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
        for cluster in clusters:  # after the origins: they drain against it
            pids = dict(cluster.pids)
            cluster.stop()
            print(f"stopped the RGW (pids {pids})")

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        if S3:
            env.update(_object_store(clusters))
            names = ["origin-a", "origin-b"]
            ports = ORIGIN_PORTS[:2]
            storage = ["--storage", BUCKET_URL]
        else:
            names, ports, storage = ["origin"], [ORIGIN_PORT], []
        start_all(
            [
                (
                    name,
                    [
                        "origin",
                        "--data",
                        str(VAR / name),
                        *storage,
                        "--listen",
                        f"{HOST}:{port}",
                        "--signing-key",
                        str(keys / "signing.key"),
                        *tls,
                    ],
                    port,
                )
                for name, port in zip(names, ports, strict=True)
            ]
        )
        origins = [f"{scheme}://{HOST}:{port}" for port in ports]
        origin = origins[0]
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
        for url in origins:  # with replicas: published through one, served signed by every one
            _verify(url, PublicKey.load(keys / "public.key"))
        edges = []
        if _edge_available():
            services = []
            for i, port in enumerate(EDGE_PORTS, 1):
                # Each edge lists every origin, each in another order: the first is the one
                # it asks, the rest its failover.
                turn = (i - 1) % len(origins)
                upstreams = [u for o in origins[turn:] + origins[:turn] for u in ("--upstream", o)]
                services.append(
                    (
                        f"edge{i}",
                        [
                            "edge",
                            *upstreams,
                            "--cache-dir",
                            str(VAR / f"edge{i}"),
                            "--listen",
                            f"{HOST}:{port}",
                            *tls,
                            *(["--tls-ca", str(VAR / "tls" / "ca.pem")] if TLS else []),
                        ],
                        port,
                    )
                )
                edges.append(f"{scheme}://{HOST}:{port}")
            start_all(services)
        print(f"\npublic key: {keys / 'public.key'}   token: var/token (MINICDN_TOKEN)")
        ca = f" --cacert {VAR / 'tls' / 'ca.pem'}" if TLS else ""
        print(f"try: curl -s{ca} {origin}/v1/apps/demo")
        if edges:
            print(
                f"     minicdn fetch demo --edge {edges[0]} --public-key {keys / 'public.key'} "
                "--out /tmp/demo" + (f" --ca {VAR / 'tls' / 'ca.pem'}" if TLS else "")
            )
        if S3:
            print(f"     aws s3 ls --recursive {BUCKET_URL}/   (with the AWS_* variables printed above)")
        print("Ctrl-C stops everything.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a service exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def _object_store(clusters: list[Rgw]) -> dict[str, str]:
    """A fresh one-node RGW under var/rgw (appended to ``clusters`` as soon as it runs) and
    the bucket of BUCKET_URL on it; returns the AWS_* variables that point at it."""
    if str(ROOT) not in sys.path:  # run as a script: deploy/ is on the path, the repository is not
        sys.path.insert(0, str(ROOT))
    import boto3

    from deploy import rgw
    from origin.storage.s3 import ensure_bucket

    tools = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")
    missing = [cmd for cmd in tools if not shutil.which(cmd)]
    if missing:
        raise SystemExit(
            f"make run-s3 needs Ceph's {', '.join(missing)}: "
            "sudo apt-get install ceph-mon ceph-osd radosgw ceph-common"
        )
    folder = VAR / "rgw"
    if (folder / "rgw.json").exists():  # left by a run that was killed: its daemons may still run
        rgw.load(folder).stop()
    if folder.exists():  # memstore: a stopped cluster's objects are gone; its files are useless
        shutil.rmtree(folder)
    print(f"starting a one-node Ceph RGW in {folder} (about 12 s) ...", flush=True)
    try:
        cluster = rgw.start(folder, port=RGW_PORT)
    except rgw.RgwError as exc:
        raise SystemExit(str(exc)) from exc
    clusters.append(cluster)
    session = boto3.session.Session(
        aws_access_key_id=cluster.access_key, aws_secret_access_key=cluster.secret_key, region_name=rgw.REGION
    )
    ensure_bucket(BUCKET_URL, session=session, endpoint_url=cluster.endpoint)
    print(f"{'rgw':8} {cluster.endpoint}  (pids {cluster.pids}, logs var/rgw/)  bucket {BUCKET_URL}")
    for k, v in cluster.env().items():
        print(f"         export {k}={v}")
    return cluster.env()


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
