"""The operator's side of the origin's HTTP API (DESIGN.md's table): what ``minicdn
publish``, ``minicdn channel`` and ``minicdn apps`` send, and how they wait for a release to
go live.  Errors are translated here, at the boundary: a refusal the operator can act on
(no such app or channel, nothing to roll back to) keeps its class; anything else is an
UpstreamError naming the request and the origin's answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from common.errors import ConfigError, Conflict, MinicdnError, NotFound, UpstreamError

__all__ = ["Live", "Remote", "check", "headers_for"]

POLL = 10.0  # seconds one long-poll of the change feed may wait while a release goes live


def headers_for(token: str | None) -> dict[str, str]:
    if not token:
        raise ConfigError("token: set MINICDN_TOKEN (or --token) to the origin's token")
    return {"Authorization": f"Bearer {token}"}


async def check(resp: aiohttp.ClientResponse, keep: tuple[int, ...] = ()) -> bytes:
    """The body of a 2xx answer; else an error: the origin's own class for a status in
    ``keep`` (404 → NotFound, 409 → Conflict), UpstreamError for the rest."""
    body = await resp.read()
    if resp.status < 400:
        return body
    try:
        err = json.loads(body)
        code, message = str(err["error"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", body[:200].decode(errors="replace")
    kept: dict[int, type[MinicdnError]] = {404: NotFound, 409: Conflict}
    if resp.status in keep and resp.status in kept:
        raise kept[resp.status](message)
    detail = f"{code}: {message}" if code else message
    raise UpstreamError(f"{resp.method} {resp.url.path} answered {resp.status} ({detail})")


@dataclass(frozen=True)
class Live:
    """Where a publish's channel move ended: ``serial`` of the ref naming ``manifest``;
    ``enriched`` False when enrichment failed and the move took the plain manifest;
    ``superseded`` when a later move of the channel (an operator's, another publish's)
    replaced this one before it was made."""

    serial: int
    manifest: str
    enriched: bool
    superseded: bool = False


class Remote:
    """One origin, one session (use ``async with``)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Remote:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Remote in `async with`"
        return self._session

    async def get_json(self, path: str, keep: tuple[int, ...] = (404,), timeout: float = 60) -> Any:
        t = aiohttp.ClientTimeout(total=timeout)
        async with self.session.get(self.url + path, timeout=t) as resp:
            return json.loads(await check(resp, keep))

    async def apps(self) -> list[str]:
        listing: list[str] = (await self.get_json("/v1/apps"))["apps"]
        return listing

    async def app(self, app: str) -> dict[str, Any]:
        info: dict[str, Any] = await self.get_json(f"/v1/apps/{app}")
        return info

    async def history(self, app: str, channel: str) -> dict[str, Any]:
        hist: dict[str, Any] = await self.get_json(f"/v1/apps/{app}/channels/{channel}/history")
        return hist

    async def rollback(self, app: str, channel: str) -> dict[str, Any]:
        path = f"/v1/apps/{app}/channels/{channel}/rollback"
        async with self.session.post(self.url + path, headers=headers_for(self.token)) as resp:
            moved: dict[str, Any] = json.loads(await check(resp, keep=(404, 409)))
            return moved

    async def changes(self, after: str | None, wait: float) -> dict[str, Any]:
        query = urlencode({"wait": f"{wait:g}", **({"after": after} if after else {})})
        answer: dict[str, Any] = await self.get_json(f"/v1/changes?{query}", keep=(), timeout=wait + 30)
        return answer

    async def wait_live(self, app: str, channel: str, version: str, timeout: float) -> Live:
        """Wait until the publish's move of ``channel`` to ``version`` is made: woken by the
        change feed, confirmed by the app listing (the feed only says "look again")."""
        cursor = (await self.changes(None, 0))["cursor"]  # before looking: no move is missed
        deadline = time.monotonic() + timeout
        while True:
            live = _live(await self.app(app), channel, version)
            if live is not None:
                return live
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamError(
                    f"channel {channel} is not on {version} after {timeout:g} s; "
                    "the move stays pending and is made when enrichment is done"
                )
            try:
                cursor = (await self.changes(cursor, min(POLL, left)))["cursor"]
            except (TimeoutError, aiohttp.ClientError, UpstreamError):
                await asyncio.sleep(1)  # an origin restarting: look again in a moment


def _live(info: dict[str, Any], channel: str, version: str) -> Live | None:
    if info.get("pending", {}).get(channel, {}).get("version") == version:
        return None
    ref = info.get("channels", {}).get(channel)
    entry = next((v for v in info["versions"] if v["version"] == version), None)
    if ref is None or entry is None:
        return None
    for target in (ref, ref.get("rollout") or {}):
        if target.get("version") == version and target.get("manifest") == entry["manifest"]:
            return Live(ref["serial"], entry["manifest"], bool(entry["enriched"]))
    return Live(ref["serial"], "", False, superseded=True)
