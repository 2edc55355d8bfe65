"""The operator's views of an origin's storage, for the console (origin/console/): a
version's record and sizes per package, what an update between two versions costs per
plan and which files change (origin/compare.py), and the deep link and QR code of a
channel or a version (origin/qr.py).

Each read runs in the origin's executor (``run``); what costs most to make — a decoded
manifest, a package's file digests, a drawn QR code — is remembered in small LRUs, the
first two filled from executor threads under one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from common import codec
from common.errors import NotFound
from common.ids import check_app, check_channel, check_version, sha256
from common.manifest import Manifest, PackageEntry, open_manifest
from common.signing import SigningKey
from origin import compare, paths, qr
from origin.channels import Channels
from origin.history import rollback_target
from origin.publish import VersionRecord
from origin.storage import Store

__all__ = ["Views", "remember"]

T = TypeVar("T")


class Runner(Protocol):
    """Runs ``fn(*args)`` off the loop (the origin's executor)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


def remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int = 256) -> None:
    """Put ``key`` in the LRU ``cache``, dropping the oldest entry past ``size``."""
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


class Views:
    def __init__(
        self,
        storage: Store,
        key: SigningKey,
        channels: Channels,
        links: qr.LinkTemplate,
        run: Runner,
    ) -> None:
        self.storage = storage
        self.key = key
        self.channels = channels
        self.links = links
        self._run = run
        self._manifests: OrderedDict[bytes, Manifest] = OrderedDict()  # decoded
        self._digests: OrderedDict[tuple[bytes, str], dict[str, bytes]] = OrderedDict()
        self._views_lock = threading.Lock()  # the two above are filled from executor threads
        self._pictures: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    async def app_info(self, app: str) -> dict[str, Any]:
        """The app's versions, channels and pending moves (GET /v1/apps/{app})."""
        return await self._run(self._app_info, check_app(app))

    def _app_info(self, app: str) -> dict[str, Any]:
        vprefix = paths.versions_prefix(app)
        versions = []
        for key in self.storage.list(vprefix):
            blob = self.storage.read(key)
            if blob is None:  # dropped by gc since the listing
                continue
            rec = VersionRecord.unpack(blob.data)
            versions.append(
                {
                    "version": key[len(vprefix) :],
                    "manifest": rec.manifest.hex(),
                    "manifests": [m.hex() for m in rec.all_manifests],
                    "enriched": rec.enriched,
                    "created": rec.created,
                }
            )
        if not versions:
            raise NotFound(f"no app {app}")
        versions.sort(key=lambda v: int(v["created"]))  # type: ignore[call-overload]
        channels = {}
        refs, pending_moves = self.channels.view(app)
        for name, ref in refs.items():
            channels[name] = {
                "version": ref.version,
                "manifest": ref.manifest.hex(),
                "serial": ref.serial,
                "expires": ref.expires,
                "rollout": None
                if ref.rollout is None
                else {
                    "version": ref.rollout.version,
                    "manifest": ref.rollout.manifest.hex(),
                    "percent": ref.rollout.percent,
                },
            }
        pending = {name: p.to_json() for name, p in pending_moves.items()}
        return {"app": app, "versions": versions, "channels": channels, "pending": pending}

    async def history(self, app: str, channel: str) -> dict[str, Any]:
        """A channel's moves and its rollback target (GET .../history)."""
        return await self._run(self._history, check_app(app), check_channel(channel))

    def _history(self, app: str, channel: str) -> dict[str, Any]:
        ref = self.channels.current(app, channel)
        if ref is None:
            raise NotFound(f"app {app} has no channel {channel}")
        entries = self.channels.history(app, channel)
        return {
            "app": app,
            "channel": channel,
            "serial": ref.serial,
            "version": ref.version,
            "rollback_to": rollback_target(entries),
            "entries": [e.to_json() for e in entries],
        }

    async def version_info(self, app: str, version: str) -> dict[str, Any]:
        """A version's record and sizes, per package (origin/compare.py's ``summary``)."""
        return await self._run(self._version_info, check_app(app), check_version(version))

    def _version_info(self, app: str, version: str) -> dict[str, Any]:
        rec = self._record(app, version)
        manifest = self._manifest_body(rec.manifest)
        return {
            "app": app,
            "version": version,
            "manifest": rec.manifest.hex(),
            "manifests": [m.hex() for m in rec.all_manifests],
            "enriched": rec.enriched,
            "created": rec.created,
            **compare.summary(manifest, self._versions_by_manifest(app)),
        }

    async def compare(self, app: str, old: str, new: str) -> dict[str, Any]:
        """What updating ``app`` from version ``old`` to ``new`` costs, per package and plan,
        and which files changed (origin/compare.py)."""
        return await self._run(self._compare, check_app(app), check_version(old), check_version(new))

    def _compare(self, app: str, old: str, new: str) -> dict[str, Any]:
        a, b = self._record(app, old), self._record(app, new)
        body = compare.compare(
            self._manifest_body(a.manifest),
            a.all_manifests,
            self._manifest_body(b.manifest),
            self._file_digests,
        )
        ends = {
            "from": {"version": old, "manifest": a.manifest.hex()},
            "to": {"version": new, "manifest": b.manifest.hex()},
        }
        return {"app": app, **ends, **body}

    def _record(self, app: str, version: str) -> VersionRecord:
        blob = self.storage.read(paths.version_key(app, version))
        if blob is None:
            raise NotFound(f"app {app} has no version {version}")
        return VersionRecord.unpack(blob.data)

    def _versions_by_manifest(self, app: str) -> dict[bytes, str]:
        prefix = paths.versions_prefix(app)
        out = {}
        for key in self.storage.list(prefix):
            for mid in VersionRecord.unpack(self.storage.get(key)).all_manifests:
                out[mid] = key[len(prefix) :]
        return out

    def _manifest_body(self, mid: bytes) -> Manifest:
        """A stored manifest, verified with our own key and decoded (once per id: bounded LRU)."""
        with self._views_lock:
            found = self._manifests.get(mid)
        if found is None:
            found = open_manifest(self.storage.get(paths.manifest_key(mid.hex())), [self.key.public], mid)
            with self._views_lock:
                remember(self._manifests, mid, found, 16)
        return found

    def _file_digests(self, pkg: PackageEntry) -> dict[str, bytes]:
        """SHA-256 of each file of ``pkg``, from its chunks (each checked against its id as it
        is decoded); remembered per package stream, which the chunk ids name."""
        key = (sha256(b"".join(c.id for c in pkg.chunks)), pkg.name)
        with self._views_lock:
            found = self._digests.get(key)
        if found is None:
            frames = (
                codec.decode_chunk(c.id, self.storage.get(paths.chunk_key(c.id.hex()))) for c in pkg.chunks
            )
            found = compare.file_digests(pkg.files, frames)
            with self._views_lock:
                remember(self._digests, key, found, 16)
        return found

    async def qr_code(self, app: str, fmt: str, *, channel: str | None, version: str | None) -> bytes:
        """The QR code (``fmt``: svg or png) of the deep link to ``app``'s channel or version,
        which must exist; drawn once per link (bounded LRU: the links are as many as the
        channels and versions, since each must exist)."""
        link = await self.link(app, channel=channel, version=version)
        picture = self._pictures.get((link, fmt))
        if picture is None:
            picture = await self._run(qr.draw, link, fmt)
            remember(self._pictures, (link, fmt), picture)
        return picture

    async def link(self, app: str, *, channel: str | None, version: str | None) -> str:
        """The deep link to ``app``'s channel or version (``--qr-url``); NotFound unless it exists."""
        check_app(app)
        if channel is not None:
            if await self._run(self.channels.current, app, check_channel(channel)) is None:
                raise NotFound(f"app {app} has no channel {channel}")
        elif version is not None:
            await self._run(self._record, app, check_version(version))
        return self.links.link(app, channel=channel, version=version)
