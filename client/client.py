"""The minicdn client: resolve a channel, verify, download only what is missing, install
atomically.  This is the reference for native clients; docs/client.md states its rules.

    open (one round trip, ``POST .../open``): the ref (signature, expiry, serial >= highest
    seen), the heads of the packages to install (signed, of the version the ref names for
    this user) and the package manifests whose content the phone lacks (each against its
    head; dcz against the one held) — client/opened.py
    → choose packages → an ``Install`` (client/install.py): plan → download → assemble → commit
    → collect the store

A ``Client`` holds what outlives one install: the store and its state, the HTTP session and
the edges (their failover state and the traffic counted).  It opens them in ``__aenter__``,
the store and state first, so a store that cannot be used leaves no session open.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from client import files
from client.config import ClientConfig
from client.install import FetchSummary, Install, Progress, Target
from client.opened import Opened, verify
from client.state import State
from client.store import LocalStore
from client.transport import Edges
from common import codec, dcz
from common.errors import BadRequest, IntegrityError, NotFound, UnknownPackage
from common.ids import check_app, check_channel
from common.manifest import MAIN_PACKAGE, Manifest, Ref, open_manifest, open_ref, rollout_bucket
from common.opening import OpenRequest, pack_request
from common.pkgmeta import open_package, owner_of
from common.tls import client_context

__all__ = ["Client", "ClientConfig", "FetchSummary", "Progress", "select_packages"]

MAX_MANIFEST = 64 << 20


def select_packages(
    manifest: Manifest, requested: list[str], open_page: str | None, installed: tuple[str, ...] = ()
) -> list[str]:
    """Which packages an install holds (DESIGN.md, ``minicdn fetch``): the main package,
    unless only independent subpackages are asked for; plus each ``--package``; plus the
    package of ``open_page`` and what its preloadRule names; plus what is installed already.

    ``manifest`` holds the packages an open answer sent heads for, and the server chose
    them by these same rules: a package they need that it lacks is the edge's fault, an
    IntegrityError (the next edge is tried), as is a page none of its packages holds (one
    of the owner's files is the page).  A package the user names that the version lacks
    never gets here: the edge answers 404 ``unknown_package``.  (A package the phone holds
    and the edge left out cannot be told from one the version dropped: it is not
    installed, and comes back when it is opened.)"""
    by_name = {p.name: p for p in manifest.packages}

    def sent(name: str) -> str:
        if name not in by_name:
            raise IntegrityError(f"the edge sent no head for package {name!r}")
        return name

    chosen = [sent(n.strip("/") or MAIN_PACKAGE) for n in requested]
    if open_page is not None:
        page = open_page.strip("/")
        owner = owner_of(page, set(by_name))
        if owner not in by_name or not any(f.startswith(page + ".") for f, _ in by_name[owner].files):
            raise IntegrityError(f"the edge sent no package holding page {page!r}")
        chosen += [owner, *(sent(n) for n in manifest.preload.get(page, ()))]
    chosen += [n for n in installed if n in by_name]
    if not chosen or any(not by_name[n].independent for n in chosen):
        chosen.append(sent(MAIN_PACKAGE))
    return sorted(set(chosen), key=lambda n: (n != MAIN_PACKAGE, n))


@dataclass(frozen=True)
class _Open:
    """What a client opens in ``__aenter__``."""

    store: LocalStore
    state: State
    session: aiohttp.ClientSession
    edges: Edges


class Client:
    def __init__(
        self,
        config: ClientConfig,
        session: aiohttp.ClientSession | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or (lambda *_: None)
        self._session = session  # the caller's, which it closes; else one of ours
        self._open: _Open | None = None

    async def __aenter__(self) -> Client:
        # The store and its state first, in a thread (they read and create files): they can
        # raise (a corrupt state file, a store path under a file), and then no session may be open.
        store, state = await asyncio.to_thread(_open_store, self.config)
        session = self._session or aiohttp.ClientSession(
            auto_decompress=False,
            # https edges: certificates and host names verified (and --ca's CA trusted)
            connector=aiohttp.TCPConnector(ssl=client_context(self.config.ca, "--ca")),
        )
        c = self.config
        edges = Edges(list(c.edges), session, timeout=c.timeout, cooldown=c.cooldown, retry_for=c.retry_for)
        self._open = _Open(store, state, session, edges)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._open is not None and self._session is None:
            await self._open.session.close()

    @property
    def _opened(self) -> _Open:
        if self._open is None:
            raise RuntimeError("a Client is used inside `async with Client(config) as client:`")
        return self._open

    @property
    def store(self) -> LocalStore:
        return self._opened.store

    @property
    def state(self) -> State:
        return self._opened.state

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._opened.session

    @property
    def edges(self) -> Edges:
        return self._opened.edges

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
        await asyncio.to_thread(self.state.saw_serial, app, channel, ref.serial)
        return ref

    async def manifest(self, mid: bytes, dictionary: bytes | None = None) -> Manifest:
        """The verified manifest ``mid``: from the store, else from an edge — as dcz
        against the stored manifest ``dictionary`` (RFC 9842) when given, else zstd."""
        cached = await asyncio.to_thread(self.store.get_manifest, mid)
        if cached is not None:
            return open_manifest(cached, self.config.public_keys, mid)
        base = None if dictionary is None else await asyncio.to_thread(self.store.get_manifest, dictionary)
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
        started = time.monotonic()
        out = out.absolute()
        check_app(app)
        check_channel(channel)
        async with files.locked(self.config.store_dir):
            # Installs through one store take turns (the lock), so what the edges count from
            # here on is this install's alone: its summary reports that, not the client's total.
            counted = self.edges.traffic.copy()
            await asyncio.to_thread(files.recover, out)
            target, ref = await self._open_app(app, channel, user, out, list(packages), open_page)
            job = Install(target, self.config, self.store, self.state, self.edges, self.progress)
            await job.run()
            freed = await asyncio.to_thread(self._collect)
            traffic = self.edges.traffic.since(counted)
        return job.summary(ref, time.monotonic() - started, freed, traffic)

    async def _open_app(
        self, app: str, channel: str, user: str | None, out: Path, packages: list[str], open_page: str | None
    ) -> tuple[Target, Ref]:
        """One round trip (``POST .../open``): the ref, the heads of the packages to install
        and the package manifests this phone lacks, verified (client/opened.py); then the
        packages to install in ``out``."""
        before = await asyncio.to_thread(self.state.installed, out)
        if before is not None and before.app != app:
            before = None
        claimed = before.have() if before is not None else {}
        bodies = await asyncio.to_thread(lambda: {m: self.store.get_manifest(m) for _, m in claimed.values()})
        # a manifest the store lost (or holds corrupt) is not offered: the edge sends it anew
        have = {n: v for n, v in claimed.items() if bodies.get(v[1]) is not None}
        found = None if have else await asyncio.to_thread(self._dictionary, app)
        dictionary = None
        if found is not None:
            dictionary, bodies[found[0]] = found
        bucket = None if user is None else rollout_bucket(app, user)
        page = open_page.strip("/") if open_page is not None else None
        wanted = [n.strip("/") or MAIN_PACKAGE for n in packages]
        req = OpenRequest(tuple(wanted), page or None, bucket, have, dictionary)
        highest = self.state.highest_serial(app, channel)
        held = bodies.get

        def check(body: bytes, _enc: str | None) -> Opened:
            return verify(
                body,
                self.config.public_keys,
                app=app,
                channel=channel,
                now=int(time.time()),
                highest=highest,
                bucket=bucket,
                have=have,
                held=held,
                dictionary=dictionary,
            )

        try:
            opened = await self.edges.get(
                f"/v1/apps/{app}/channels/{channel}/open",
                "open",
                check,
                headers={"Content-Type": "application/x-msgpack"},
                data=pack_request(req),
            )
        except UnknownPackage as exc:  # the user's mistake: a usage error
            raise BadRequest(exc.message) from exc
        except NotFound as exc:
            raise NotFound(f"no channel {channel!r} of app {app!r} (or no such app): {exc.message}") from exc
        await asyncio.to_thread(self.state.saw_serial, app, channel, opened.ref.serial)
        for pid, raw in opened.received.items():
            await asyncio.to_thread(self.store.put_manifest, pid, raw)
        manifest = opened.manifest()
        chosen = select_packages(manifest, wanted, page, before.packages if before else ())
        return Target(manifest, opened.mid, tuple(chosen), out, before, opened), opened.ref

    def _dictionary(self, app: str) -> tuple[bytes, bytes] | None:
        """A package manifest of another app this phone holds (the main package of its first
        install of one), its id and bytes: a dcz dictionary for a first open of ``app``,
        which may share a library with it."""
        for inst in self.state.installs():
            if inst.app != app and MAIN_PACKAGE in inst.metas:
                mid = bytes.fromhex(inst.metas[MAIN_PACKAGE][1])
                body = self.store.get_manifest(mid)
                if body is not None:
                    return mid, body
        return None

    def _collect(self) -> int:
        """Drop the package manifests and chunks no recorded install references (blocking:
        run in a thread); returns the bytes freed."""
        referenced: set[bytes] = set()
        manifests: set[bytes] = set()
        for inst in self.state.installs():
            for name in inst.packages:
                _content, mid = inst.metas.get(name, ("", ""))
                raw = self.store.get_manifest(bytes.fromhex(mid)) if mid else None
                if raw is not None:
                    manifests.add(bytes.fromhex(mid))
                    referenced |= {c.id for c in open_package(raw, bytes.fromhex(mid)).chunks}
        return self.store.collect_manifests(manifests) + self.store.collect(referenced)


def _open_store(config: ClientConfig) -> tuple[LocalStore, State]:
    return LocalStore(config.store_dir, config.store_size), State(config.store_dir)
