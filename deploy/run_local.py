"""``make run``: a local origin (and edges, when the edge command exists) with the sample
app published as ``demo`` on channel ``release``.  Ctrl-C stops everything it started.

State lives under ``var/``: the signing key (``var/keys``, made on first start), the
publish token (``var/token``), the origin's storage and each edge's cache.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.manifest import open_manifest, open_ref
from common.signing import PublicKey, generate_keypair

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
HOST = "127.0.0.1"
ORIGIN_PORT = int(os.environ.get("MINICDN_RUN_ORIGIN_PORT", "8080"))
EDGE_PORTS = [int(p) for p in os.environ.get("MINICDN_RUN_EDGE_PORTS", "8081,8082").split(",") if p]
CLI = [sys.executable, "-m", "common"]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}; see its log under var/")
        try:
            with urllib.request.urlopen(url, timeout=2):
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
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], port: int) -> None:
        log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        # A session of its own: the terminal's Ctrl-C reaches only this script, which then
        # drains every child with SIGTERM (a child that saw SIGINT too would die mid-drain).
        proc = subprocess.Popen(
            [*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(proc)
        _wait(f"http://{HOST}:{port}/healthz", proc)
        print(f"{name:8} http://{HOST}:{port}  (pid {proc.pid}, log var/{name}.log)")

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
    origin = f"http://{HOST}:{ORIGIN_PORT}"
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
                    ],
                    port,
                )
                edges.append(f"http://{HOST}:{port}")
        print(f"\npublic key: {keys / 'public.key'}   token: var/token (MINICDN_TOKEN)")
        print(f"try: curl -s {origin}/v1/apps/demo")
        if edges:
            print(
                f"     minicdn fetch demo --edge {edges[0]} --public-key {keys / 'public.key'} "
                "--out /tmp/demo"
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
    with urllib.request.urlopen(f"{origin}/v1/apps/demo/channels/release") as r:
        ref = open_ref(r.read(), [key])
    with urllib.request.urlopen(f"{origin}/v1/manifests/{ref.manifest.hex()}") as r:
        manifest = open_manifest(r.read(), [key], ref.manifest)
    files = sum(len(p.files) for p in manifest.packages)
    print(
        f"demo@{ref.version} on channel release (serial {ref.serial}): manifest {ref.manifest.hex()[:16]}… "
        f"verified, {len(manifest.packages)} packages, {files} files"
    )


if __name__ == "__main__":
    sys.exit(main())
