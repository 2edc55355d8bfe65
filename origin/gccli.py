"""``minicdn gc``: one mark and sweep of an origin's store (the policy: origin/gc.py).

Exit status: 0 done; 2 the command was wrong or the store cannot be reached (a bad URL
or number, no such directory, the object store unreachable or refusing us); 1 gc could
not run now (another sweep, publishes still running, a lease lost: run it again) or the
store is damaged (the message names the key)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from common.cli import DURATION, option
from common.errors import StorageUnavailable
from origin.gc import Policy, collect
from origin.storage import Store, open_storage

__all__ = ["gc", "open_store", "policy_options"]

F = TypeVar("F", bound=Callable[..., Any])


def open_store(url: str) -> Store:
    """The store ``url`` names, as ``minicdn origin --storage`` does, but one that exists
    already, its temp files left alone (``open_storage``'s ``existing``)."""
    return open_storage(url, ".", existing=True)  # "." matters only for an empty url


def policy_options(prefix: str = "", what: str = "") -> Callable[[F], F]:
    """The policy's flags, ``--keep``, ``--keep-days`` and ``--grace``: this command's, and
    with ``prefix`` "gc-" the origin's background mode's (``--gc-keep``...), one definition."""
    flags = (
        option(
            f"--{prefix}keep",
            type=click.IntRange(1),
            default=10,
            help=f"{what}Keep the last N versions of each app.",
        ),
        option(
            f"--{prefix}keep-days",
            type=click.FloatRange(0),
            default=30.0,
            help=f"{what}Keep every version a channel pointed at within this many days.",
        ),
        option(
            f"--{prefix}grace",
            type=DURATION,
            default="1d",
            help=f"{what}Never delete what was written more recently.",
        ),
    )

    def add(fn: F) -> F:
        for flag in reversed(flags):
            fn = flag(fn)
        return fn

    return add


@click.command()
@option("--storage", "url", required=True, help="The origin's store: file:///path or s3://bucket/prefix.")
@option("--dry-run", is_flag=True, help="Delete nothing; print what would go.")
@policy_options()
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc(url: str, dry_run: bool, keep: int, keep_days: float, grace: float, as_json: bool) -> None:
    """Delete versions the retention policy drops and every object nothing kept references."""
    policy = Policy(keep=keep, keep_days=keep_days, grace=grace)
    store = open_store(url)
    try:
        report = collect(store, policy, dry_run=dry_run)
    except StorageUnavailable as exc:
        if type(exc) is not StorageUnavailable:
            raise  # busy, lease lost, damaged: exit 1 with the message (common.cli)
        click.echo(f"minicdn: {exc.code}: {url}: {exc.message}", err=True)
        sys.exit(2)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"storage": url, **report.to_json()}, indent=2))
    else:
        click.echo(f"gc of {url}\n{report.text()}")
