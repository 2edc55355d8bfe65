"""``minicdn fetch``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from client.client import Client, ClientConfig, FetchSummary
from client.plan import PREFERENCES
from common.cli import DURATION, SIZE, option
from common.errors import (
    BadRequest,
    ConfigError,
    IntegrityError,
    MinicdnError,
    NotFound,
    RefRejected,
    SignatureError,
    StoreError,
    UpstreamError,
)
from common.signing import PublicKey

__all__ = ["EXIT_CODES", "fetch"]

# Exit status of ``minicdn fetch`` by what failed (docs/client.md); 2 is click's usage error.
EXIT_CODES = {"usage": 2, "network": 3, "signature": 4, "hash": 4, "expiry": 5, "rollback": 5,
              "not_found": 6, "store": 7}  # fmt: skip


def _failed(what: str, message: str) -> click.ClickException:
    """One line on standard error, ``Error: <what>: <message>; …``, and the exit status of ``what``."""
    exc = click.ClickException(f"{what}: {message}; the previous install, if any, is untouched")
    exc.exit_code = EXIT_CODES[what]  # type: ignore[misc]  # click reads it per instance
    return exc


def _what(exc: MinicdnError) -> str:
    """What failed, in one word: the class of the error a user acts on."""
    if isinstance(exc, SignatureError):
        return "signature"
    if isinstance(exc, IntegrityError):
        return "hash"
    if isinstance(exc, RefRejected):
        return "expiry" if exc.code == "expired" else "rollback"
    if isinstance(exc, UpstreamError):
        return "network"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, StoreError):
        return "store"
    if isinstance(exc, BadRequest | ConfigError):
        return "usage"
    raise exc  # an error class this table does not know is a bug: let it show as one


@click.command()
@click.argument("app")
@option("--edge", "edges", multiple=True, required=True, help="Edge base URL (repeat for failover).")
@option(
    "--public-key",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Pinned publisher key (64 hex).",
)
@option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Install directory.")
@option("--channel", default="release", help="Channel to follow.")
@option("--user", help="User id (places the user in or out of a rollout).")
@option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False),
    help="Chunk store and state [default: OUT/../.minicdn-store].",
)
@option("--store-size", type=SIZE, default="1GiB", help="Bound of the chunk store.")
@option("--package", "packages", multiple=True, help="Also install this subpackage (repeatable).")
@option("--open", "open_page", help="Install what opening PAGE needs (its package and its preloadRule).")
@option("--timeout", type=DURATION, default="15s", help="Per-request timeout.")
@option(
    "--retry-for",
    type=DURATION,
    default="10s",
    help="Keep retrying a failed request, over every edge, at least this long.",
)
@option(
    "--plan",
    type=click.Choice(PREFERENCES),
    default="auto",
    help="auto: the cheapest per package; delta/chunks/bundle: that one where offered.",
)
@option("--ca", type=click.Path(dir_okay=False), help="PEM CA certificates to trust for https edges.")
@option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def fetch(
    app: str,
    edges: tuple[str, ...],
    public_key: str,
    out_dir: str,
    channel: str,
    user: str | None,
    store_dir: str | None,
    store_size: int,
    packages: tuple[str, ...],
    open_page: str | None,
    timeout: float,
    retry_for: float,
    plan: str,
    ca: str | None,
    as_json: bool,
) -> None:
    """Install APP from edges: verified, only what is missing (a delta, chunks or a
    bundle, whichever is cheapest per package), swapped in atomically.

    Exit status: 0 installed; 2 usage (flags, app id, package name, key file); 3 network
    (no edge answered); 4 signature or hash (verification failed on every edge); 5 expiry
    or rollback (the ref was refused); 6 not found (app, channel or object); 7 store (the
    local store or install directory cannot be used).  The previous install is kept."""
    out = Path(out_dir)
    store = Path(store_dir) if store_dir else out.absolute().parent / ".minicdn-store"
    console = Console(stderr=True)
    try:
        # ClientConfig checks itself (client/config.py): its ConfigError names the flag and,
        # like every usage error, exits 2 (see _what).
        config = ClientConfig(
            edges=edges,
            public_keys=(PublicKey.load(public_key),),
            store_dir=store,
            store_size=store_size,
            timeout=timeout,
            retry_for=retry_for,
            plan=plan,
            ca=Path(ca) if ca else None,
        )
        summary = asyncio.run(
            _run(config, app, out, channel, user, list(packages), open_page, console, as_json)
        )
    except MinicdnError as exc:
        raise _failed(_what(exc), exc.message) from exc
    except OSError as exc:  # the store or --out: a full disk, a permission
        where = f"{exc.filename}: " if exc.filename else ""
        raise _failed("store", f"{where}{exc.strerror or exc}") from exc
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=1))
    else:
        s = summary
        pct = 100 * s.bytes_downloaded / s.package_bytes if s.package_bytes else 0
        click.echo(
            f"{s.app}@{s.version} ({s.channel}, serial {s.serial}) → {out}\n"
            f"  packages {', '.join(s.packages)}; plan {s.plan}{_per_package(s)}\n"
            f"  downloaded {s.bytes_downloaded} B for {s.package_bytes} B of files ({pct:.1f}%), "
            f"{s.chunks_downloaded} of {s.chunks} chunks, {s.requests} requests, {s.seconds:.2f}s"
        )


def _per_package(s: FetchSummary) -> str:
    if len(set(s.plans.values())) < 2:
        return ""
    return " (" + ", ".join(f"{name}: {kind}" for name, kind in s.plans.items()) + ")"


async def _run(
    config: ClientConfig,
    app: str,
    out: Path,
    channel: str,
    user: str | None,
    packages: list[str],
    open_page: str | None,
    console: Console,
    quiet: bool,
) -> FetchSummary:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task(f"fetch {app}", total=None, chunks=0)

        def on_progress(received: int, chunks: int, expected: int, expected_chunks: int) -> None:
            progress.update(task, completed=received, total=expected, chunks=f"{chunks}/{expected_chunks}")

        async with Client(config, progress=on_progress) as client:
            return await client.install(
                app, out, channel=channel, user=user, packages=packages, open_page=open_page
            )
