"""The operator's commands: ``minicdn channel set|rollback|history`` and ``minicdn apps``.
Each prints an aligned table (or, with ``--json``, the origin's JSON as it came)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import click

from common.cli import option
from common.errors import ConfigError
from common.ids import check_app, check_channel, check_version
from origin.remote import Remote, check, headers_for

__all__ = ["apps", "channel", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; "-" for None."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _when(unix: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(unix))) if isinstance(unix, int) else "-"


def _rollout(roll: dict[str, Any] | None) -> str | None:
    return None if not roll else f"{roll['version']} {roll['percent']}%"


def _emit(as_json: bool, doc: object, text: str) -> None:
    click.echo(json.dumps(doc, indent=2) if as_json else text)


@click.group()
def channel() -> None:
    """Channel moves: set, rollback, history."""


@channel.command("set")
@option("--origin", "origin_url", required=True, help="Origin base URL.")
@option("--app", required=True, help="App id.")
@option("--channel", "channel_name", required=True, help="Channel name.")
@option("--version", required=True, help="Version the channel serves.")
@option("--rollout-version", help="Version to roll out gradually.")
@option("--percent", type=click.IntRange(0, 100), help="Percent of users on --rollout-version.")
@option("--token", help="Bearer token (prefer MINICDN_TOKEN).")
def channel_set(
    origin_url: str,
    app: str,
    channel_name: str,
    version: str,
    rollout_version: str | None,
    percent: int | None,
    token: str | None,
) -> None:
    """Point APP's CHANNEL at VERSION, optionally rolling another version out."""
    check_app(app)
    check_channel(channel_name)
    check_version(version)
    if (rollout_version is None) != (percent is None):
        raise ConfigError("rollout: --rollout-version and --percent go together")
    rollout = {"version": check_version(rollout_version), "percent": percent} if rollout_version else None
    asyncio.run(move(origin_url, app, channel_name, version, rollout, headers_for(token)))
    extra = f", rolling out {rollout_version} to {percent}%" if rollout else ""
    click.echo(f"{app} channel {channel_name} → {version}{extra}")


async def move(
    origin_url: str,
    app: str,
    channel: str,
    version: str,
    rollout: dict[str, Any] | None,
    headers: dict[str, str],
) -> None:
    body: dict[str, Any] = {"version": version, **({"rollout": rollout} if rollout else {})}
    async with (
        Remote(origin_url) as r,
        r.session.put(f"{r.url}/v1/apps/{app}/channels/{channel}", json=body, headers=headers) as resp,
    ):
        await check(resp)


@channel.command("rollback")
@option("--origin", "origin_url", required=True, help="Origin base URL.")
@option("--app", required=True, help="App id.")
@option("--channel", "channel_name", required=True, help="Channel name.")
@option("--token", help="Bearer token (prefer MINICDN_TOKEN).")
@option("--json", "as_json", is_flag=True, help="Print the origin's JSON answer.")
def channel_rollback(origin_url: str, app: str, channel_name: str, token: str | None, as_json: bool) -> None:
    """Move APP's CHANNEL back to the version before (from its history); refuses when there is none."""
    check_app(app)
    check_channel(channel_name)

    async def run() -> dict[str, Any]:
        async with Remote(origin_url, token) as r:
            return await r.rollback(app, channel_name)

    moved = asyncio.run(run())
    text = table(
        ["app", "channel", "from", "to", "serial"],
        [[app, channel_name, moved["from"], moved["version"], moved["serial"]]],
    )
    _emit(as_json, moved, text)


@channel.command("history")
@option("--origin", "origin_url", required=True, help="Origin base URL.")
@option("--app", required=True, help="App id.")
@option("--channel", "channel_name", required=True, help="Channel name.")
@option("--json", "as_json", is_flag=True, help="Print the origin's JSON answer.")
def channel_history(origin_url: str, app: str, channel_name: str, as_json: bool) -> None:
    """Every move of APP's CHANNEL, oldest first, and where a rollback would go."""
    check_app(app)
    check_channel(channel_name)

    async def run() -> dict[str, Any]:
        async with Remote(origin_url) as r:
            return await r.history(app, channel_name)

    hist = asyncio.run(run())
    rows = [
        [_when(e["time"]), e["serial"], e["kind"], e["version"], _rollout(e["rollout"])]
        for e in hist["entries"]
    ]
    text = table(["time", "serial", "kind", "version", "rollout"], rows)
    text += f"\nnow {hist['version']} (serial {hist['serial']}); rollback → {hist['rollback_to'] or 'none'}"
    _emit(as_json, hist, text)


@click.command()
@click.argument("app", required=False)
@option("--origin", "origin_url", required=True, help="Origin base URL.")
@option("--json", "as_json", is_flag=True, help="Print JSON.")
def apps(app: str | None, origin_url: str, as_json: bool) -> None:
    """The origin's apps; with APP, its versions, channels, rollouts and enrichment."""
    if app is not None:
        check_app(app)

    async def run() -> Any:
        async with Remote(origin_url) as r:
            if app is not None:
                return await r.app(app)
            return [await r.app(name) for name in await r.apps()]

    doc = asyncio.run(run())
    _emit(as_json, doc, _app_text(doc) if app is not None else _apps_text(doc))


def _apps_text(infos: list[dict[str, Any]]) -> str:
    rows = []
    for info in infos:
        versions = info["versions"]
        waiting = sum(not v["enriched"] for v in versions)
        chans = ", ".join(f"{n}={c['version']}" for n, c in sorted(info["channels"].items()))
        rows.append([info["app"], len(versions), versions[-1]["version"], waiting, chans or None])
    return table(["app", "versions", "latest", "unenriched", "channels"], rows)


def _app_text(info: dict[str, Any]) -> str:
    versions = table(
        ["version", "created", "enriched", "manifest"],
        [
            [v["version"], _when(v["created"]), "yes" if v["enriched"] else "no", v["manifest"][:16]]
            for v in info["versions"]
        ],
    )
    pending = info.get("pending", {})
    rows = []
    for name in sorted({*info["channels"], *pending}):
        c, wait = info["channels"].get(name, {}), pending.get(name)
        waiting = None if wait is None else f"{wait['version']} (waiting for enrichment)"
        rows.append(
            [
                name,
                c.get("version"),
                c.get("serial"),
                _rollout(c.get("rollout")),
                _when(c.get("expires")),
                waiting,
            ]
        )
    chans = table(["channel", "version", "serial", "rollout", "expires", "pending"], rows)
    return f"{info['app']}\n\n{versions}\n\n{chans}"
