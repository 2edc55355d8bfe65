"""The minicdn client: resolve a channel, verify, download only what is missing, install
atomically.  This is the reference for native clients; docs/client.md states its rules.

    resolve ref (signature, expiry, serial >= highest seen) → pick the user's version
    → manifest (dcz against the installed one, or zstd; id = SHA-256 of the envelope, signature)
    → choose packages → per package, the cheapest plan (client/plan.py): a delta from the
      installed version, the missing chunks, or the bundle
    → download (chunks batched, several batches in flight; bundles and deltas one request
      each; failover) → verify every chunk (a decoded stream piece by piece)
    → assemble the files beside the target → swap in → record → collect the store
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from client import streams
from client.plan import Plan, check_preference, choose
from client.state import Installed, State
from client.store import LocalStore
from client.transport import RETRYABLE, Edges
from common import codec, dcz
from common.errors import BadRequest, IntegrityError, MinicdnError, NotFound, StoreError, UpstreamError
from common.fsutil import fsync_dir
from common.ids import check_app, check_channel, sha256
from common.manifest import MAIN_PACKAGE, ChunkEntry, Manifest, PackageEntry, Ref, open_manifest, open_ref
from common.signing import PublicKey

__all__ = ["Client", "ClientConfig", "FetchSummary", "select_packages"]

Progress = Callable[
    [int, int, int, int], None
]  # bytes received, chunks stored, expected bytes, expected chunks


@dataclass(frozen=True)
class ClientConfig:
    edges: tuple[str, ...]
    public_keys: tuple[PublicKey, ...]
    store_dir: Path
    store_size: int = 1 << 30
    batch_size: int = 128
    batches_in_flight: int = 4
    timeout: float = 15.0
    cooldown: float = 5.0
    retry_for: float = 10.0  # each request is retried at least this long (client/transport.py)
    plan: str = "auto"  # auto | delta | chunks | bundle (client/plan.py)

    def __post_init__(self) -> None:
        check_preference(self.plan)


MAX_MANIFEST = 64 << 20


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


def select_packages(
    manifest: Manifest, requested: list[str], open_page: str | None, installed: tuple[str, ...] = ()
) -> list[str]:
    """Which packages an install holds (DESIGN.md, ``minicdn fetch``): the main package,
    unless only independent subpackages are asked for; plus each ``--package``; plus the
    package of ``open_page`` and what its preloadRule names; plus what is installed already."""
    by_name = {p.name: p for p in manifest.packages}

    def known(name: str) -> str:
        name = name.strip("/") or MAIN_PACKAGE
        if name not in by_name:
            raise BadRequest(
                f"{manifest.app}@{manifest.version} has no package {name!r}; "
                f"it has {', '.join(sorted(by_name))}"
            )
        return name

    chosen = [known(n) for n in requested]
    if open_page is not None:
        page = open_page.strip("/")
        owner = next(
            (p.name for p in manifest.packages if p.name != MAIN_PACKAGE and page.startswith(p.name + "/")),
            MAIN_PACKAGE,
        )
        chosen += [owner, *(known(n) for n in manifest.preload.get(page, ()))]
    chosen += [n for n in installed if n in by_name]
    if not chosen or any(not by_name[n].independent for n in chosen):
        chosen.append(MAIN_PACKAGE)
    return sorted(set(chosen), key=lambda n: (n != MAIN_PACKAGE, n))


class Client:
    def __init__(
        self,
        config: ClientConfig,
        session: aiohttp.ClientSession | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        # The store and its state first: they can raise, and then no session may be open.
        self.store = LocalStore(config.store_dir, config.store_size)
        self.state = State(config.store_dir)
        self._own_session = session is None
        self.session = session or aiohttp.ClientSession(auto_decompress=False)
        self.edges = Edges(
            list(config.edges),
            self.session,
            timeout=config.timeout,
            cooldown=config.cooldown,
            retry_for=config.retry_for,
        )
        self.progress = progress or (lambda *_: None)
        self._expected = (0, 0)
        self._stored = 0
        self._bases: dict[str, bytes] = {}  # package → the base stream of its delta plan

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session:
            await self.session.close()

    # -- ref and manifest -------------------------------------------------------------------

    async def resolve(self, app: str, channel: str) -> Ref:
        """The channel's ref, verified: signature, expiry, and no rollback."""
        check_app(app)
        check_channel(channel)
        highest = self.state.highest_serial(app, channel)

        def check(body: bytes, _enc: str | None) -> Ref:
            ref = open_ref(body, self.config.public_keys)
            if ref.app != app or ref.channel != channel:
                raise IntegrityError(f"ref names {ref.app}/{ref.channel}, not {app}/{channel}")
            ref.check_fresh(int(time.time()), highest)
            return ref

        try:
            ref = await self.edges.get(f"/v1/apps/{app}/channels/{channel}", "ref", check, max_size=1 << 20)
        except NotFound as exc:
            raise NotFound(f"no channel {channel!r} of app {app!r} (or no such app)") from exc
        self.state.saw_serial(app, channel, ref.serial)
        return ref

    async def manifest(self, mid: bytes, dictionary: bytes | None = None) -> Manifest:
        """The verified manifest ``mid``: from the store, else from an edge — as dcz
        against the stored manifest ``dictionary`` (RFC 9842) when given, else zstd."""
        cached = self.store.get_manifest(mid)
        if cached is not None:
            return open_manifest(cached, self.config.public_keys, mid)
        base = self.store.get_manifest(dictionary) if dictionary is not None else None
        headers = {"Accept-Encoding": "zstd"}
        if base is not None and dictionary is not None:
            headers = {
                "Accept-Encoding": f"{dcz.CONTENT_ENCODING}, zstd",
                dcz.AVAILABLE_DICTIONARY: dcz.available_dictionary(dictionary),
            }

        def check(body: bytes, enc: str | None) -> tuple[Manifest, bytes]:
            if enc == "zstd":
                body = codec.decompress(body, MAX_MANIFEST)
            elif enc == dcz.CONTENT_ENCODING and base is not None:
                body = dcz.decode(body, base, MAX_MANIFEST)
            elif enc not in (None, "identity"):
                raise IntegrityError(f"manifest sent with unrequested encoding {enc}")
            return open_manifest(body, self.config.public_keys, mid), body

        manifest, envelope = await self.edges.get(
            f"/v1/manifests/{mid.hex()}", "manifest", check, headers=headers
        )
        await asyncio.to_thread(self.store.put_manifest, mid, envelope)
        return manifest

    # -- install ----------------------------------------------------------------------------

    async def install(
        self,
        app: str,
        out: Path,
        *,
        channel: str = "release",
        user: str | None = None,
        packages: list[str] | tuple[str, ...] = (),
        open_page: str | None = None,
    ) -> FetchSummary:
        t0 = time.monotonic()
        out = out.absolute()
        with _locked(self.config.store_dir):
            _recover(out)
            ref = await self.resolve(app, channel)
            version, mid = ref.target_for(user)
            before = self.state.installed(out)
            if before is not None and before.app != app:
                before = None
            installed = bytes.fromhex(before.manifest) if before else None
            manifest = await self.manifest(mid, dictionary=installed)
            if manifest.app != app or manifest.version != version:
                raise IntegrityError(
                    f"manifest is {manifest.app}@{manifest.version}, ref said {app}@{version}"
                )
            chosen = select_packages(manifest, list(packages), open_page, before.packages if before else ())
            entries = _unique(c for p in manifest.packages if p.name in chosen for c in p.chunks)
            plans: list[Plan] = []
            self._stored = 0
            current = before is not None and set(chosen) <= set(before.packages)
            if before and current and self._same_content(before, mid, manifest, chosen):
                if before.manifest != mid.hex():  # the same files under another manifest (enriched)
                    self.state.record_install(out, Installed(app, version, mid.hex(), before.packages))
            else:
                plans = await self._plan(manifest, chosen, before, out)
                await self._execute(manifest, plans)
                await asyncio.to_thread(_install_files, self.store, manifest, chosen, out)
                self.state.record_install(out, Installed(app, version, mid.hex(), tuple(chosen)))
            freed = await asyncio.to_thread(self._collect)
        chosen_pkgs = [p for p in manifest.packages if p.name in chosen]
        kinds = {p.kind for p in plans} - {"none"}
        return FetchSummary(
            app=app,
            channel=channel,
            version=version,
            manifest=mid.hex(),
            serial=ref.serial,
            packages=chosen,
            plan=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none"),
            package_bytes=sum(p.raw_size for p in chosen_pkgs),
            stored_bytes=sum(e.stored_size for e in entries),
            chunks=len(entries),
            chunks_downloaded=self._stored,
            bytes_downloaded=self.edges.traffic.bytes,
            requests=self.edges.traffic.requests,
            seconds=round(time.monotonic() - t0, 3),
            freed_bytes=freed,
            by_kind=dict(self.edges.traffic.by_kind),
            plans={p.package: p.kind for p in plans},
        )

    def _same_content(self, before: Installed, mid: bytes, manifest: Manifest, chosen: list[str]) -> bool:
        """Whether the install already holds ``chosen`` exactly as ``manifest`` describes
        them (the same manifest, or another manifest of the same files and chunks)."""
        if before.manifest == mid.hex():
            return True
        envelope = self.store.get_manifest(bytes.fromhex(before.manifest))
        if envelope is None or before.version != manifest.version:
            return False
        old = open_manifest(envelope, self.config.public_keys)
        old_pkgs = {p.name: p for p in old.packages}
        return all(
            n in old_pkgs
            and old_pkgs[n].files == manifest.package(n).files
            and old_pkgs[n].chunks == manifest.package(n).chunks
            for n in chosen
        )

    # -- plans --------------------------------------------------------------------------------

    async def _plan(
        self, manifest: Manifest, chosen: list[str], before: Installed | None, out: Path
    ) -> list[Plan]:
        """One plan per chosen package (client/plan.py).  A delta is chosen only once its
        base stream is in hand: from the store, or from the installed files, verified."""
        base_id = bytes.fromhex(before.manifest) if before else None
        envelope = self.store.get_manifest(base_id) if base_id else None
        base = open_manifest(envelope, self.config.public_keys, base_id) if envelope else None
        self._bases = {}
        plans = []
        covered: set[bytes] = set()  # chunks an earlier package's plan brings
        for name in chosen:
            pkg = manifest.package(name)
            unique = _unique(iter(pkg.chunks))
            missing = [c for c in unique if c.id not in covered and not self.store.has(c.id)]
            base_pkg = _package_or_none(base, name)
            plan = choose(pkg, missing, base_id if base_pkg else None, self.config.plan)
            if plan.kind == "delta" and base_pkg is not None and before is not None:
                where = out if name in before.packages else None
                stream = await asyncio.to_thread(streams.base_stream, self.store, base_pkg, where)
                if stream is None:  # never a delta whose base the client lacks
                    plan = choose(pkg, missing, None, self.config.plan)
                else:
                    self._bases[name] = stream
            covered |= {c.id for c in (pkg.chunks if plan.object else plan.missing)}
            plans.append(plan)
        return plans

    async def _execute(self, manifest: Manifest, plans: list[Plan]) -> None:
        chunks = _unique(e for p in plans if p.kind == "chunks" for e in p.missing)
        whole = [p for p in plans if p.object is not None]
        self._expected = (
            self.edges.traffic.bytes + sum(p.cost for p in plans),
            len(chunks) + sum(len(p.missing) for p in whole),
        )
        jobs = [self._download(chunks)] if chunks else []
        jobs += [self._fetch_stream(manifest, p) for p in whole]
        await _all(jobs)

    async def _fetch_stream(self, manifest: Manifest, plan: Plan) -> None:
        """One bundle or delta: its bytes checked against its id on receipt (so another
        edge is tried if they do not match), then decoded and checked chunk by chunk."""
        assert plan.object is not None
        oid, size = plan.object
        pkg = manifest.package(plan.package)

        def check(body: bytes, enc: str | None) -> bytes:
            if enc not in (None, "identity"):
                raise IntegrityError(f"{plan.kind} {oid.hex()} sent with unrequested encoding {enc}")
            if sha256(body) != oid:
                raise IntegrityError(f"{plan.kind} {oid.hex()}: bytes do not match the id")
            return body

        frame = await self.edges.get(f"/v1/bundles/{oid.hex()}", "bundles", check, max_size=size)
        pieces = await asyncio.to_thread(streams.decode, pkg, frame, self._bases.get(plan.package))
        added = await asyncio.to_thread(self._put_missing, pieces)
        self._stored += added  # after the await: concurrent fetches add to the same counter
        self.progress(self.edges.traffic.bytes, self._stored, *self._expected)

    def _put_missing(self, pieces: list[tuple[bytes, bytes]]) -> int:
        """Store the verified chunks the store lacks; returns how many (counted on the loop)."""
        added = 0
        for cid, raw in pieces:
            if not self.store.has(cid):
                self.store.put(cid, raw)
                added += 1
        return added

    def _collect(self) -> int:
        referenced: set[bytes] = set()
        for inst in self.state.installs():
            envelope = self.store.get_manifest(bytes.fromhex(inst.manifest))
            if envelope is None:
                continue
            m = open_manifest(envelope, self.config.public_keys)
            referenced |= {c.id for p in m.packages if p.name in inst.packages for c in p.chunks}
        return self.store.collect(referenced)

    # -- chunks -----------------------------------------------------------------------------

    async def _download(self, entries: list[ChunkEntry]) -> None:
        queue = deque(entries)
        size = self.config.batch_size

        async def worker() -> None:
            while queue:
                group = [queue.popleft() for _ in range(min(size, len(queue)))]
                await self._fetch_group(group)

        workers = [asyncio.create_task(worker()) for _ in range(self.config.batches_in_flight)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _fetch_group(self, group: list[ChunkEntry]) -> None:
        """One batch, re-asked on another edge for whatever a failed edge did not deliver."""
        remaining = {e.id.hex(): e for e in group}
        max_item = max(e.stored_size for e in group)
        last: BaseException | None = None
        started, attempt = time.monotonic(), 0
        while True:
            base = self.edges.pick()
            try:
                async for hexid, frame in self.edges.batch(base, list(remaining), max_item):
                    entry = remaining[hexid]
                    raw = _verify(entry, frame) if frame is not None else await self._single(entry)
                    await asyncio.to_thread(self.store.put, entry.id, raw)
                    del remaining[hexid]
                    self._stored += 1
                    self.progress(self.edges.traffic.bytes, self._stored, *self._expected)
                return
            except RETRYABLE as exc:
                self.edges.mark_failed(base)
                last = exc
            if not await self.edges.retry(attempt, started):
                break
            attempt += 1
        if isinstance(last, MinicdnError) and not isinstance(last, UpstreamError):
            raise last
        raise UpstreamError(f"chunks could not be fetched from any edge ({type(last).__name__}: {last})")

    async def _single(self, entry: ChunkEntry) -> bytes:
        """A chunk a batch answered with nil for: ask for it alone, on any edge."""

        def check(body: bytes, enc: str | None) -> bytes:
            return _verify(entry, body) if enc == "zstd" else _verify_raw(entry, body)

        return await self.edges.get(
            f"/v1/chunks/{entry.id.hex()}",
            "chunks",
            check,
            headers={"Accept-Encoding": "zstd"},
            max_size=max(entry.stored_size, entry.raw_size),
        )


def _verify(entry: ChunkEntry, frame: bytes) -> bytes:
    if len(frame) > entry.stored_size:
        raise IntegrityError(f"chunk {entry.id.hex()}: frame larger than the manifest says")
    raw = codec.decode_chunk(entry.id, frame, max_size=entry.raw_size)
    return _verify_raw(entry, raw)


def _verify_raw(entry: ChunkEntry, raw: bytes) -> bytes:
    if len(raw) != entry.raw_size or sha256(raw) != entry.id:
        raise IntegrityError(f"chunk {entry.id.hex()}: content does not match its id")
    return raw


async def _all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first failure cancels the rest and is raised as itself."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _package_or_none(manifest: Manifest | None, name: str) -> PackageEntry | None:
    if manifest is None:
        return None
    try:
        return manifest.package(name)
    except KeyError:
        return None


def _unique(entries: Iterator[ChunkEntry]) -> list[ChunkEntry]:
    seen: dict[bytes, ChunkEntry] = {}
    for e in entries:
        seen.setdefault(e.id, e)
    return list(seen.values())


# -- files --------------------------------------------------------------------------------


def _install_files(store: LocalStore, manifest: Manifest, chosen: list[str], out: Path) -> None:
    """Write the chosen packages beside ``out`` and swap them in; on any failure the
    previous install is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{secrets.token_hex(4)}")
    try:
        for pkg in manifest.packages:
            if pkg.name in chosen:
                _write_package(store, pkg.files, pkg.chunks, staging)
        staging.mkdir(exist_ok=True)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_package(
    store: LocalStore, files: tuple[tuple[str, int], ...], chunks: tuple[ChunkEntry, ...], root: Path
) -> None:
    it = iter(chunks)
    buf, pos = b"", 0
    for path, size in files:
        target = root / path  # paths were checked when the manifest was decoded
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            need = size
            while need:
                if pos == len(buf):
                    buf, pos = store.get(next(it).id), 0
                take = min(need, len(buf) - pos)
                f.write(memoryview(buf)[pos : pos + take])
                pos += take
                need -= take
            f.flush()
            os.fsync(f.fileno())


def _swap_in(staging: Path, out: Path) -> None:
    """Two renames, with the old tree kept until the new one is in place; ``_recover``
    puts the old one back if a crash falls between them."""
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _recover(out: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        return
    name = glob.escape(out.name)
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not out.exists() and olds:
        os.rename(olds[-1], out)
    for stale in [*parent.glob(f".{name}.old-*"), *parent.glob(f".{name}.staging-*")]:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _locked(store_dir: Path) -> Iterator[None]:
    """One install at a time per store (two would race on the state file and the swap)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    with open(store_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(f"{store_dir} is in use by another fetch") from exc
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
