"""``minicdn origin`` and ``minicdn publish`` (``channel`` and ``apps``: origin/opscli.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import click
from aiohttp import web
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from common.chunking import ChunkParams
from common.cli import DURATION, LISTEN, SIZE, option, server_tls_options
from common.errors import ConfigError
from common.http import BodyPace, json_handlers
from common.ids import check_app, check_channel, check_version
from common.malloc import fix_mmap_threshold
from common.signing import SigningKey
from common.tls import OnHandshake, ServerTls, from_flags
from origin.app import make_app, metrics_app
from origin.gccli import policy_options
from origin.gcmark import Policy
from origin.ingest import Limits
from origin.opscli import apps, channel
from origin.qr import DEFAULT_QR_URL
from origin.remote import Live, Remote, check, headers_for
from origin.service import Origin, OriginSettings
from origin.storage import open_storage

__all__ = ["apps", "channel", "origin", "publish"]


@click.command()
@option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Working directory (uploads in progress; the signing key; the store unless --storage).",
)
@option(
    "--storage",
    "storage_url",
    metavar="URL",
    help="Where objects live: file:///path or s3://BUCKET/PREFIX (AWS_* variables and profiles "
    "give the endpoint and credentials) [default: file://DATA/store].",
)
@option(
    "--rescan",
    type=DURATION,
    default="10m",
    help="How often a replica looks for versions no replica is enriching and pending moves left behind.",
)
@option(
    "--gc-every",
    type=DURATION,
    default="0",
    help="Run retention (as minicdn gc) in the background this often; 0: never (run minicdn gc).",
)
@policy_options("gc-", "Background gc: ")
@option(
    "--feed-poll",
    type=DURATION,
    default="500ms",
    help="How often this replica reads the store's change log (moves made through other replicas).",
)
@option("--listen", type=LISTEN, default="127.0.0.1:8080", help="HOST:PORT to serve on.")
@option(
    "--signing-key",
    type=click.Path(dir_okay=False),
    help="PKCS#8 PEM Ed25519 key [default: DATA/signing.key].",
)
@option("--token", help="Bearer token for publishing and channel moves (prefer the environment).")
@option("--level", type=click.IntRange(1, 22), default=19, help="zstd level for chunks.")
@option("--workers", type=click.IntRange(1, 256), default=os.cpu_count() or 1, help="Compression processes.")
@option("--max-upload", type=SIZE, default="64MiB", help="Largest archive accepted.")
@option("--max-unpacked", type=SIZE, default="256MiB", help="Largest total unpacked size.")
@option(
    "--max-files",
    type=click.IntRange(1),
    default=60000,
    help="Most files in one archive (and most directories).",
)
@option(
    "--max-subpackages",
    type=click.IntRange(1),
    default=10000,
    help="Most subpackages one app.json may declare.",
)
@option("--max-ratio", type=click.FloatRange(1), default=200.0, help="Largest compression ratio of an entry.")
@option("--chunk-min", type=SIZE, default="4KiB", help="FastCDC minimum chunk size.")
@option("--chunk-avg", type=SIZE, default="16KiB", help="FastCDC average chunk size.")
@option("--chunk-max", type=SIZE, default="64KiB", help="FastCDC maximum chunk size.")
@option("--ref-ttl", type=DURATION, default="7d", help="Lifetime of a signed channel ref.")
@option("--ref-max-age", type=click.IntRange(0), default=30, help="Cache-Control max-age of refs, seconds.")
@option(
    "--delta-bases",
    type=click.IntRange(0, 64),
    default=3,
    help="Make deltas from this many earlier published versions (plus recent channel targets).",
)
@option(
    "--delta-window",
    type=DURATION,
    default="30d",
    help="Also make deltas from every version a channel pointed at within this time.",
)
@option("--body-timeout", type=DURATION, default="30s", help=BodyPace.TIMEOUT_HELP)
@option("--body-min-rate", type=SIZE, default="1KiB", help=BodyPace.MIN_RATE_HELP)
@server_tls_options
@option("--metrics-listen", type=LISTEN, help="HOST:PORT: plain HTTP for /metrics, /healthz, /readyz only.")
@option(
    "--qr-url",
    default=DEFAULT_QR_URL,
    help="Deep link the QR codes draw ({app}, {channel}, {version}; docs/design.md).",
)
def origin(
    data_dir: str,
    storage_url: str | None,
    rescan: float,
    gc_every: float,
    gc_keep: int,
    gc_keep_days: float,
    gc_grace: float,
    feed_poll: float,
    listen: tuple[str, int],
    signing_key: str | None,
    token: str | None,
    level: int,
    workers: int,
    max_upload: int,
    max_unpacked: int,
    max_files: int,
    max_subpackages: int,
    max_ratio: float,
    chunk_min: int,
    chunk_avg: int,
    chunk_max: int,
    ref_ttl: float,
    ref_max_age: int,
    delta_bases: int,
    delta_window: float,
    body_timeout: float,
    body_min_rate: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_min_version: str,
    tls_ocsp: str | None,
    tls_ticket_rotate: float,
    metrics_listen: tuple[str, int] | None,
    qr_url: str,
) -> None:
    """Serve the origin: publish, sign and serve app versions."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fix_mmap_threshold()  # before any worker starts (forked workers inherit it): common.malloc
    data = Path(data_dir)
    key_path = Path(signing_key) if signing_key else data / "signing.key"
    if not key_path.exists():
        raise ConfigError(f"--signing-key: {key_path} does not exist (run: minicdn keygen --out {data})")
    pace = BodyPace(body_timeout, body_min_rate)
    tls = from_flags(
        tls_cert, tls_key, tls_min_version, tls_ticket_rotate, tls_ocsp
    )  # SIGHUP reloads the pair
    settings = OriginSettings(
        token=token or None,
        level=level,
        workers=workers,
        limits=Limits(max_upload, max_unpacked, max_files, max_ratio, max_subpackages=max_subpackages),
        chunking=ChunkParams(chunk_min, chunk_avg, chunk_max),
        ref_ttl=ref_ttl,
        ref_max_age=ref_max_age,
        resign_interval=min(3600.0, ref_ttl / 8),
        delta_bases=delta_bases,
        delta_window=delta_window,
        qr_url=qr_url,
        feed_poll=feed_poll,
        rescan=rescan,
        gc_every=gc_every,
        gc=Policy(keep=gc_keep, keep_days=gc_keep_days, grace=gc_grace),
    )
    if not settings.token:
        logging.getLogger("minicdn.origin").warning("MINICDN_TOKEN is not set: publishing is disabled")
    store = open_storage(storage_url, data)
    service = Origin(store, SigningKey.load(key_path), data / "tmp", settings)
    _install_uvloop()
    metrics = (metrics_app(service), metrics_listen) if metrics_listen is not None else None
    app = make_app(service, pace)
    asyncio.run(serve(app, *listen, tls=tls, on_handshake=service.metrics.tls_handshake, metrics=metrics))


async def serve(
    app: web.Application,
    host: str,
    port: int,
    tls: ServerTls | None = None,
    on_handshake: OnHandshake = lambda ok, resumed: None,
    metrics: tuple[web.Application, tuple[str, int]] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then give requests in flight 10 s: web.run_app,
    with connection handlers that answer aiohttp's own errors as JSON (common.http).  With
    ``tls``, HTTPS: each handshake bounded by HANDSHAKE_TIMEOUT and told to
    ``on_handshake``; SIGHUP loads the pair again (a refused one leaves the old serving).
    ``metrics``: a second application (origin.app.metrics_app) on its own plain listener."""
    handler_args: dict[str, Any] = {"access_log": None, "keepalive_timeout": 75.0}
    runner = web.AppRunner(app, shutdown_timeout=10, **handler_args)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.BaseProtocol] = json_handlers(runner.server, **handler_args)
    rotation = None
    if tls is not None:
        factory = tls.accepting(factory, HANDSHAKE_TIMEOUT, on_handshake)
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
        rotation = asyncio.ensure_future(tls.rotate_tickets())
    server = await loop.create_server(factory, host, port)
    plain = plain_server = None
    if metrics is not None:
        plain = web.AppRunner(metrics[0], access_log=None)
        await plain.setup()
        assert plain.server is not None
        mhost, mport = metrics[1]
        plain_server = await loop.create_server(json_handlers(plain.server, access_log=None), mhost, mport)
        logging.getLogger("minicdn.origin").info("metrics listening on http://%s:%d", mhost, mport)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        if rotation is not None:
            rotation.cancel()
        if plain_server is not None:
            plain_server.close()
        if plain is not None:
            await plain.cleanup()
        await runner.cleanup()


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    uvloop.install()


HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS handshake may take (an edge's --header-timeout default)


# -- publisher side --------------------------------------------------------------------------


def pack_folder(folder: Path, out: io.BufferedWriter) -> None:
    """A deterministic tar.gz of a folder (sorted, zeroed owners and times)."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tf:
        for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix().encode()):
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise ConfigError(f"path: {rel} is a symlink; the origin refuses links")
            if not path.is_file():
                continue
            info = tarfile.TarInfo(rel)
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as f:
                tf.addfile(info, f)


async def _upload(url: str, archive: Path, headers: dict[str, str], quiet: bool) -> dict[str, Any]:
    """POST the archive with a progress bar; once it is sent, a spinner while the origin
    unpacks, chunks, compresses and signs."""
    size = archive.stat().st_size
    with Progress(
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=quiet,
        console=Console(stderr=True),  # standard output is the result, for pipelines
    ) as progress:
        task = progress.add_task("upload", total=size)

        async def body() -> AsyncIterator[bytes]:
            with open(archive, "rb") as f:
                while piece := f.read(256 * 1024):
                    progress.advance(task, len(piece))
                    yield piece
            progress.update(task, visible=False)
            progress.add_task("chunking and signing", total=None)

        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url,
                data=body(),
                headers={**headers, "Content-Length": str(size), "Content-Type": "application/octet-stream"},
            ) as resp,
        ):
            result: dict[str, Any] = json.loads(await check(resp))
            result["status"] = resp.status
            return result


async def _wait_live(
    origin_url: str, app: str, channel: str, version: str, timeout: float, quiet: bool
) -> Live:
    with Progress(
        SpinnerColumn(), "[progress.description]{task.description}", TimeElapsedColumn(),
        transient=True, disable=quiet, console=Console(stderr=True),
    ) as progress:  # fmt: skip
        progress.add_task(f"enrichment (bundles, deltas); then channel {channel} → {version}", total=None)
        async with Remote(origin_url) as remote:
            return await remote.wait_live(app, channel, version, timeout)


@click.command()
@click.argument("path", type=click.Path(exists=True))
@option("--origin", "origin_url", required=True, help="Origin base URL.")
@option("--app", required=True, help="App id.")
@option("--version", required=True, help="Version to publish.")
@option("--channel", help="Then point this channel at the version (once its bundles and deltas exist).")
@option("--rollout", type=click.IntRange(0, 100), help="With --channel: roll out to this percent of users.")
@option(
    "--no-wait",
    is_flag=True,
    help="With --channel: return at once; the move is made when enrichment is done.",
)
@option(
    "--wait-timeout", type=DURATION, default="30m", help="With --channel: give up waiting after this long."
)
@option("--token", help="Bearer token (prefer MINICDN_TOKEN).")
@option("--quiet", is_flag=True, help="No progress bar.")
def publish(
    path: str,
    origin_url: str,
    app: str,
    version: str,
    channel: str | None,
    rollout: int | None,
    no_wait: bool,
    wait_timeout: float,
    token: str | None,
    quiet: bool,
) -> None:
    """Publish PATH (a folder, zip, tar or tar.gz) as APP@VERSION.

    With --channel the channel moves once the version's enriched manifest (bundles and
    deltas) exists, so the first clients already get deltas; the command shows the
    progress and returns when the move is live (--no-wait: at once)."""
    check_app(app)
    check_version(version)
    if channel:
        check_channel(channel)
    if rollout is not None and not channel:
        raise ConfigError("rollout: --rollout needs --channel")
    headers = headers_for(token)
    origin_url = origin_url.rstrip("/")
    query = (
        ""
        if not channel
        else "?" + urlencode({"channel": channel, **({} if rollout is None else {"rollout": rollout})})
    )
    src = Path(path)
    with tempfile.TemporaryDirectory(prefix="minicdn-publish-") as tmp:
        archive = src
        if src.is_dir():
            archive = Path(tmp) / "upload.tar.gz"
            with open(archive, "wb") as out:
                pack_folder(src, out)
        url = f"{origin_url}/v1/apps/{app}/versions/{version}{query}"
        result = asyncio.run(_upload(url, archive, headers, quiet))
    what = "published" if result["status"] == 201 else "already published (same content)"
    click.echo(
        f"{app}@{version} {what}: manifest {result['manifest']}\n"
        f"  chunks {result['chunks']} ({result['new_chunks']} new), raw {result['raw_bytes']} B, "
        f"stored {result['stored_bytes']} B ({result['new_bytes']} B new)"
    )
    if not channel:
        return
    target = (
        f"channel {channel} → {version}"
        if rollout is None
        else f"channel {channel}: rolling out {version} to {rollout}%"
    )
    move = result["channel"]
    if move["state"] == "moved":
        click.echo(f"  {target} (serial {move['serial']})")
    elif no_wait:
        click.echo(f"  {target}: pending, made when enrichment (bundles and deltas) is done")
    else:
        live = asyncio.run(_wait_live(origin_url, app, channel, version, wait_timeout, quiet))
        if live.superseded:
            click.echo(f"  {target}: superseded by a later move of {channel} (serial {live.serial})")
        elif live.enriched:
            click.echo(f"  {target} (serial {live.serial}, enriched manifest {live.manifest[:16]})")
        else:
            click.echo(
                f"  {target} (serial {live.serial}; plain manifest: enrichment failed, see the origin's log)"
            )
