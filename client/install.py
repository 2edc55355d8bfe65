"""One install: the chosen packages of a verified manifest into one directory.

    plan      per package, the cheapest way to get what the store lacks (client/plan.py):
              none, a delta from the installed version (once its base stream is in hand),
              the missing chunks, or the bundle
    download  the chunks in batches and each bundle or delta, concurrently (client/download.py)
    assemble  the files written beside the target, then swapped in (client/files.py)
    commit    the install recorded in the store's state

When the directory holds these files already (the same manifest, or another manifest of the
same files and chunks: the origin's enriched manifest of a version installed from the plain
one), nothing is downloaded; a different manifest id is committed.  An ``Install`` lives for
one install and owns what it counts; the ``Client`` that makes it owns what outlives it.
File work runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import files, streams
from client.config import ClientConfig
from client.download import Downloader, together
from client.opened import Opened
from client.plan import Plan, choose
from client.state import Installed, State
from client.store import LocalStore
from client.transport import Edges, Traffic
from common.manifest import ChunkEntry, Manifest, PackageEntry, Ref
from common.pkgmeta import open_package

__all__ = ["FetchSummary", "Install", "Progress", "Target", "unique"]

# bytes received, chunks stored, expected bytes, expected chunks
Progress = Callable[[int, int, int, int], None]


@dataclass
class FetchSummary:
    app: str
    channel: str
    version: str
    manifest: str
    serial: int
    packages: list[str]
    # The one plan every package used (delta, chunks, bundle), "mixed", or "none" when
    # nothing had to be downloaded (already installed, or every chunk in the store).
    plan: str
    package_bytes: int  # raw size of the installed packages
    stored_bytes: int  # their chunks as stored (what a download of everything would cost)
    chunks: int
    chunks_downloaded: int  # chunks the store lacked and now holds, whatever the plan
    bytes_downloaded: int  # every response body received, ref and manifest included
    requests: int
    seconds: float
    freed_bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)  # package → none | delta | chunks | bundle

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Target:
    """What an install puts where: the ``chosen`` packages of ``manifest`` (id ``mid``, the
    version the ref named) into ``out``, over ``before``, what ``out`` holds of the app."""

    manifest: Manifest  # the packages the open answer has heads for (client/opened.py)
    mid: bytes
    chosen: tuple[str, ...]
    out: Path
    before: Installed | None
    opened: Opened


class Install:
    def __init__(
        self,
        target: Target,
        config: ClientConfig,
        store: LocalStore,
        state: State,
        edges: Edges,
        progress: Progress,
    ) -> None:
        self.target = target
        self.config = config
        self.store = store
        self.state = state
        self.edges = edges
        self.progress = progress
        self.plans: list[Plan] = []
        self.chunks_stored = 0  # chunks the store lacked and now holds
        self.expected = (0, 0)  # bytes received by the end of the download, chunks it stores
        self._bases: dict[str, bytes] = {}  # package → the base stream of its delta plan

    async def run(self) -> None:
        """plan → download → assemble → commit (or only a commit: see the module's doc)."""
        t = self.target
        if await asyncio.to_thread(self._current):
            if t.before is not None and t.before.manifest != t.mid.hex():
                await self._commit(t.before.packages)
            return
        self.plans, self._bases = await asyncio.to_thread(self._plan)
        await self._download()
        await asyncio.to_thread(files.assemble, self.store, t.manifest, t.chosen, t.out)
        await self._commit(t.chosen)

    def summary(self, ref: Ref, seconds: float, freed: int, traffic: Traffic) -> FetchSummary:
        manifest, chosen = self.target.manifest, self.target.chosen
        entries = unique(c for p in manifest.packages if p.name in chosen for c in p.chunks)
        kinds = {p.kind for p in self.plans} - {"none"}
        return FetchSummary(
            app=manifest.app,
            channel=ref.channel,
            version=manifest.version,
            manifest=self.target.mid.hex(),
            serial=ref.serial,
            packages=list(chosen),
            plan=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none"),
            package_bytes=sum(p.raw_size for p in manifest.packages if p.name in chosen),
            stored_bytes=sum(e.stored_size for e in entries),
            chunks=len(entries),
            chunks_downloaded=self.chunks_stored,
            bytes_downloaded=traffic.bytes,
            requests=traffic.requests,
            seconds=round(seconds, 3),
            freed_bytes=freed,
            by_kind=dict(traffic.by_kind),
            plans={p.package: p.kind for p in self.plans},
        )

    # -- the steps --------------------------------------------------------------------------

    def _current(self) -> bool:
        """Whether ``out`` holds the chosen packages exactly as the heads describe them: the
        same content digest for each (the same version, or another with the same files)."""
        t = self.target
        if t.before is None or not set(t.chosen) <= set(t.before.packages):
            return False
        heads = t.opened.heads
        return all(
            n in t.before.metas and bytes.fromhex(t.before.metas[n][0]) == heads[n].content for n in t.chosen
        )

    def _plan(self) -> tuple[list[Plan], dict[str, bytes]]:
        """One plan per chosen package, and the base stream of each delta: a delta is chosen
        only once its base is in hand (from the store, or the installed files, verified)."""
        t = self.target
        plans, bases = [], {}
        covered: set[bytes] = set()  # chunks an earlier package's plan brings
        for name in t.chosen:
            pkg = t.manifest.package(name)
            missing = [c for c in unique(pkg.chunks) if c.id not in covered and not self.store.has(c.id)]
            base_pkg, base_content = self._installed_package(name)
            plan = choose(pkg, missing, base_content, self.config.plan)
            if plan.kind == "delta" and base_pkg is not None and t.before is not None:
                stream = streams.base_stream(self.store, base_pkg, t.out)
                if stream is None:  # never a delta whose base the client lacks
                    plan = choose(pkg, missing, None, self.config.plan)
                else:
                    bases[name] = stream
            covered |= {c.id for c in (pkg.chunks if plan.object else plan.missing)}
            plans.append(plan)
        return plans, bases

    def _installed_package(self, name: str) -> tuple[PackageEntry | None, bytes | None]:
        """The package ``name`` as ``out`` holds it (from its manifest in the store), and its
        content digest: the base a delta applies to."""
        before = self.target.before
        if before is None or name not in before.packages or name not in before.metas:
            return None, None
        content, mid = (bytes.fromhex(x) for x in before.metas[name])
        raw = self.store.get_manifest(mid)
        if raw is None:
            return None, None
        meta = open_package(raw, mid)
        return PackageEntry(name, False, meta.files, meta.chunks), content

    async def _download(self) -> None:
        chunks = unique(e for p in self.plans if p.kind == "chunks" for e in p.missing)
        whole = [p for p in self.plans if p.object is not None]
        self.expected = (
            self.edges.traffic.bytes + sum(p.cost for p in self.plans),
            len(chunks) + sum(len(p.missing) for p in whole),
        )
        get = Downloader(
            self.edges,
            self.store,
            batch_size=self.config.batch_size,
            in_flight=self.config.batches_in_flight,
            stored=self._stored,
        )
        jobs = [get.chunks(chunks)] if chunks else []
        manifest = self.target.manifest
        jobs += [get.object(manifest.package(p.package), p, self._bases.get(p.package)) for p in whole]
        await together(jobs)

    def _stored(self, n: int) -> None:
        self.chunks_stored += n
        self.progress(self.edges.traffic.bytes, self.chunks_stored, *self.expected)

    async def _commit(self, packages: Sequence[str]) -> None:
        t = self.target
        heads, ids = t.opened.heads, t.opened.meta_ids
        metas = dict(t.before.metas) if t.before is not None else {}
        metas.update({n: (heads[n].content.hex(), ids[n].hex()) for n in packages if n in heads})
        metas = {n: v for n, v in metas.items() if n in packages}
        done = Installed(t.manifest.app, t.manifest.version, t.mid.hex(), tuple(packages), metas)
        await asyncio.to_thread(self.state.record_install, t.out, done)


def unique(entries: Iterable[ChunkEntry]) -> list[ChunkEntry]:
    seen: dict[bytes, ChunkEntry] = {}
    for e in entries:
        seen.setdefault(e.id, e)
    return list(seen.values())


def _package_or_none(manifest: Manifest | None, name: str) -> PackageEntry | None:
    if manifest is None:
        return None
    try:
        return manifest.package(name)
    except KeyError:
        return None
