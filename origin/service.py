"""The origin as one object: storage, publisher, channels and enricher behind async methods.

Everything that blocks (files, hashing, signing, extraction) runs in the default thread
executor; compression runs in the process pool owned here.  Enrichment (bundles and
deltas, origin/enrich.py) runs after publishing, one version at a time in a worker
thread, and holds off while a publish is running so that publish latency is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common import codec, dcz, opening
from common.changes import Change, ChangeLog
from common.chunking import ChunkParams
from common.errors import ConfigError, Conflict, NotFound
from common.ids import check_app, check_channel, check_version, sha256
from common.listing import Page, page
from common.manifest import app_of
from common.signing import SigningKey
from origin import paths, qr
from origin.channels import DAY, Channels, RolloutSpec, check_percent
from origin.enrich import Enricher, EnrichSettings
from origin.feed import SharedFeed
from origin.gclock import LeaseLost, SweepInProgress, publish_guard
from origin.gcmark import Policy
from origin.ingest import Limits, extract
from origin.leases import Lease, Leases, owner_id
from origin.metrics import OriginMetrics
from origin.opens import Opener
from origin.pool import die_with_parent
from origin.publish import Publisher, PublishResult
from origin.storage import Store
from origin.views import Views, remember

__all__ = ["ChannelMove", "Origin", "OriginSettings"]

log = logging.getLogger("minicdn.origin")

ENRICH_RETRY = 30.0  # seconds before an enrichment put off by a gc sweep is tried again
ENRICH_LEASE = 300.0  # seconds a replica's claim on enriching a version lasts unless renewed
MIN_REF_TTL = 3600.0  # a ref must outlive the re-signing check that renews it
T = TypeVar("T")


FEED_WAITERS = 10_000  # long-polls of the change feed at once; beyond: 503 busy (docs/design.md)


@dataclass(frozen=True)
class OriginSettings:
    """The origin's flags, each field named as its flag (``ref_ttl``: ``--ref-ttl``); limits,
    chunking and enrichment validate their own (``Limits``, ``ChunkParams``, ``EnrichSettings``)."""

    token: str | None = None
    level: int = 19
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    limits: Limits = field(default_factory=Limits)
    chunking: ChunkParams = field(default_factory=ChunkParams)
    ref_ttl: float = 7 * 86400
    ref_max_age: int = 30
    feed_poll: float = 0.5  # --feed-poll: how often a replica lists the store's change log
    rescan: float = 600.0  # --rescan: look for versions and moves no replica is seeing to
    gc_every: float = 0.0  # --gc-every: background retention rounds (0: off; origin/gcloop.py)
    gc: Policy = field(default_factory=Policy)  # --gc-keep, --gc-keep-days, --gc-grace
    resign_interval: float = 3600.0  # no flag: --ref-ttl / 8, at most an hour (origin/cli.py)
    delta_bases: int = 3
    delta_window: float = 30 * DAY
    qr_url: str = qr.DEFAULT_QR_URL

    def __post_init__(self) -> None:
        qr.LinkTemplate(self.qr_url)  # --qr-url
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if not self.ref_ttl >= MIN_REF_TTL:  # also refuses NaN
            raise ConfigError("--ref-ttl must be at least 1h")
        if self.ref_max_age < 0:
            raise ConfigError("--ref-max-age must not be negative")
        if not 0.05 <= self.feed_poll <= 60:
            raise ConfigError("--feed-poll must be between 50ms and 60s")
        if not 1 <= self.rescan < float("inf"):
            raise ConfigError("--rescan must be at least 1s")
        if not (self.gc_every == 0 or 1 <= self.gc_every < float("inf")):
            raise ConfigError("--gc-every must be 0 (off) or at least 1s")
        # Refs are re-signed once less than half their lifetime is left: a check must come
        # round within that half, or a ref could expire between two checks.
        if not 0 < self.resign_interval < self.ref_ttl / 2:
            raise ConfigError("resign_interval must be positive and less than half of --ref-ttl")
        self.enrich()  # --level, --delta-bases, --delta-window

    def enrich(self) -> EnrichSettings:
        return EnrichSettings(level=self.level, delta_bases=self.delta_bases, delta_window=self.delta_window)


@dataclass(frozen=True)
class ChannelMove:
    """A publish's channel move: ``percent`` set rolls the version out on top of what the
    channel serves when the move is made."""

    channel: str
    percent: int | None = None

    def __post_init__(self) -> None:
        check_channel(self.channel)
        if self.percent is not None:
            check_percent(self.percent)


class _Stopped(Exception):
    """The origin is shutting down: enrichment stops between two compressions."""


class Origin:
    def __init__(
        self,
        storage: Store,
        key: SigningKey,
        tmp_dir: Path,
        settings: OriginSettings,
        metrics: OriginMetrics | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.settings = settings
        self.metrics = metrics or OriginMetrics.create()
        storage.observe = self.metrics.storage_op
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in tmp_dir.iterdir():  # uploads a crash interrupted
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        self.feed = ChangeLog(max_waiters=FEED_WAITERS, shared=True)
        self.metrics.change_waiters.set_function(lambda: self.feed.waiting)
        # The feed's log is the store's (origin/feed.py): shared by every replica.
        self.shared_feed = SharedFeed(storage, self.feed, poll=settings.feed_poll)
        self.channels = Channels(storage, key, ttl=settings.ref_ttl, on_move=self._moved)
        self._pool: ProcessPoolExecutor | None = None
        self._publish_lock = asyncio.Lock()
        self._zstd_manifests: OrderedDict[bytes, bytes] = OrderedDict()
        self._opener = Opener(self.storage, self._run)
        self._dcz_manifests: OrderedDict[tuple[bytes, bytes], bytes | None] = OrderedDict()
        # The operator's views (the console): a version's sizes, update costs, deep links.
        self.views = Views(storage, key, self.channels, qr.LinkTemplate(settings.qr_url), self._run)
        self.enricher = Enricher(
            storage,
            key,
            self.channels,
            settings.enrich(),
        )
        self._enrich_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        # Set while no publish runs; the enricher thread waits on it before each compression.
        self._quiet = threading.Event()
        self._quiet.set()
        self._publishing = 0
        self._stopping = threading.Event()
        self.leases = Leases(storage, owner_id(tmp_dir))
        self._lease: Lease | None = None  # the enrichment lease held now

    # -- lifecycle ----------------------------------------------------------------------------

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn": forking a process that runs threads and an event loop is unsafe.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.settings.workers, mp_context=ctx, initializer=die_with_parent
            )
        return self._pool

    def _moved(self, app: str, channel: str, serial: int, kind: str) -> None:
        """Channels' move hook, called in a worker thread after the ref was written: the
        notice goes to the store's log, which every replica's feed tails."""
        self.metrics.channel_moves.labels(kind).inc()
        try:
            self.shared_feed.append(Change(app, channel, serial))
        except Exception:  # the move stands; edges see it at the ref's max-age
            log.exception("writing the change notice of %s/%s (serial %d) failed", app, channel, serial)

    def stop_background(self) -> None:
        """Make a running enrichment stop at its next pause (the owner then cancels the loop)."""
        self._stopping.set()
        self._quiet.set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    # -- read API -----------------------------------------------------------------------------

    async def chunk(self, cid: bytes) -> bytes:
        self.metrics.chunk_requests.inc()
        return await self._run(self.storage.get, paths.chunk_key(cid.hex()))

    async def chunk_or_none(self, cid: bytes) -> bytes | None:
        try:
            return await self.chunk(cid)
        except NotFound:
            return None

    @staticmethod
    def decoded(cid: bytes, frame: bytes) -> bytes:
        return codec.decode_chunk(cid, frame)

    async def bundle(self, bid: bytes) -> bytes:
        return await self._run(self.storage.get, paths.bundle_key(bid.hex()))

    async def manifest(self, mid: bytes) -> bytes:
        return await self._run(self.storage.get, paths.manifest_key(mid.hex()))

    async def manifest_zstd(self, mid: bytes) -> bytes:
        """The envelope as one zstd-19 frame, compressed once per manifest (bounded LRU)."""
        frame = self._zstd_manifests.get(mid)
        if frame is None:
            envelope = await self.manifest(mid)
            frame = await self._run(codec.compress, envelope, 19)
            remember(self._zstd_manifests, mid, frame)
        else:
            self._zstd_manifests.move_to_end(mid)
        return frame

    async def manifest_dcz(self, mid: bytes, dictionary: bytes) -> bytes | None:
        """The envelope as a dcz body against the manifest ``dictionary`` names (RFC 9842),
        or None when that is no stored manifest of the same app (the caller then sends
        zstd).  Encoded once per pair (bounded LRU), unknown dictionaries included."""
        pair = (mid, dictionary)
        if pair in self._dcz_manifests:
            self._dcz_manifests.move_to_end(pair)
            return self._dcz_manifests[pair]
        envelope = await self.manifest(mid)
        body = await self._run(self._encode_dcz, envelope, dictionary)
        remember(self._dcz_manifests, pair, body)
        return body

    def _encode_dcz(self, envelope: bytes, dictionary: bytes) -> bytes | None:
        if dictionary == sha256(envelope):
            return None
        blob = self.storage.read(paths.manifest_key(dictionary.hex()))
        if blob is None:
            return None
        base = blob.data
        # Only an earlier manifest of the same app is a useful dictionary; anything else
        # would only let a client make the origin compress against arbitrary objects.
        if app_of(base) != app_of(envelope):
            return None
        return dcz.encode(envelope, base)

    async def ref(self, app: str, channel: str) -> bytes:
        check_app(app)
        check_channel(channel)
        return await self._run(self.channels.envelope, app, channel)

    async def open(self, app: str, channel: str, req: opening.OpenRequest) -> bytes:
        """``POST .../open``'s answer (common/opening.py), from the store."""
        return await self._opener.answer(req, await self.ref(app, channel))

    async def apps(self) -> list[str]:
        return await self._run(self.channels.apps)

    async def apps_page(self, want: Page) -> tuple[list[str], str | None]:
        """One page of the app ids (origin/listing.py)."""
        return page(await self.apps(), want)

    async def app_info(self, app: str) -> dict[str, Any]:
        return await self.views.app_info(app)

    async def history(self, app: str, channel: str) -> dict[str, Any]:
        return await self.views.history(app, channel)

    # -- write API ----------------------------------------------------------------------------

    async def publish(
        self, app: str, version: str, archive: Path, move: ChannelMove | None = None
    ) -> tuple[PublishResult, int | None]:
        """Publish ``archive`` as ``app@version``; with ``move``, then move that channel
        once the version is enriched.  Returns the result and, when the move was made at
        once (the version was enriched already), the ref's new serial."""
        check_app(app)
        check_version(version)
        serial = None
        work = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="publish-"))
        self._publishing += 1
        self._quiet.clear()
        try:
            files = await self._run(extract, archive, work / "files", self.settings.limits)
            publisher = Publisher(
                self.storage,
                self.key,
                self.pool(),
                workers=self.settings.workers,
                level=self.settings.level,
                params=self.settings.chunking,
                tmp_dir=work,
            )
            # One publish at a time: each already uses every core, and two publishes of one
            # version must see each other's version record.
            async with self._publish_lock:
                t0 = time.perf_counter()
                result = await self._run(publisher.publish, app, version, files)
                self.metrics.publish_seconds.observe(time.perf_counter() - t0)
                if result.created:
                    # Inside the lock: the queue stays in publish order (delta bases rely on it).
                    self._enqueue(app, version)
                if move is not None:
                    # Enrichment may end before this runs: plan and apply_pending meet under
                    # the channels lock, and plan moves at once for a settled version.
                    serial = await self._run(self.channels.plan, app, move.channel, version, move.percent)
            if result.created:
                self.metrics.published_bytes.inc(result.raw_bytes)
            return result, serial
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._quiet.set()
            await self._run(shutil.rmtree, work, True)

    # -- enrichment (bundles and deltas) -------------------------------------------------------

    def _enqueue(self, app: str, version: str) -> None:
        self._enrich_queue.put_nowait((app, version))
        self.metrics.enrich_pending.set(self._enrich_queue.qsize())

    def _pause(self) -> None:
        """Called by the enricher thread before each compression: wait while a publish runs;
        renew the enrichment lease when a third of it is gone (Stopped if it was lost)."""
        self._quiet.wait()
        if self._stopping.is_set():
            raise _Stopped
        lease = self._lease
        if lease is not None and lease.expires - time.time() < ENRICH_LEASE * 2 / 3:
            renewed = self.leases.renew(lease, ENRICH_LEASE)
            if renewed is None:
                raise RuntimeError(f"the enrichment lease {lease.key} was lost")
            self._lease = renewed

    async def enrich_loop(self) -> None:
        """Resume what a restart interrupted, then enrich each published version in turn
        (owned by the app's cleanup_ctx)."""
        try:
            moved = await self._run(self.enricher.repoint_stale)
            if moved:
                log.info("moved %d refs to enriched manifests", moved)
            await self._run(self._resume_pending)
            pending = await self._run(self.enricher.pending)
            # Publishes that arrived during the scan go after the older pending versions:
            # publish order is what makes a version's bases enriched before it is.
            arrived = [self._enrich_queue.get_nowait() for _ in range(self._enrich_queue.qsize())]
            for item in [*pending, *(a for a in arrived if a not in pending)]:
                self._enqueue(*item)
        except Exception:  # the queue still serves new publishes
            log.exception("listing versions to enrich failed")
        while True:
            app, version = await self._enrich_queue.get()
            t0 = time.perf_counter()
            lease = None
            try:
                # One replica enriches a version (origin/leases.py); the others look again
                # once its lease could have run out, and then find the version enriched.
                lease = await self._run(self.leases.take, paths.enrich_lease_key(app, version), ENRICH_LEASE)
                if lease is None:
                    log.info("%s@%s is being enriched by another replica", app, version)
                    loop = asyncio.get_running_loop()
                    loop.call_later(ENRICH_LEASE / 2, self._enqueue, app, version)
                    continue
                self._lease = lease
                await self._run(self.enricher.enrich, app, version, self._pause)
                self.metrics.enrich_seconds.observe(time.perf_counter() - t0)
                await self._settle(app, version, enriched=True)
            except _Stopped:
                return
            except (SweepInProgress, LeaseLost) as exc:  # a gc sweep ran: not a failure, later
                log.info("enriching %s@%s put off: %s", app, version, exc)
                asyncio.get_running_loop().call_later(ENRICH_RETRY, self._enqueue, app, version)
            except Exception:  # keep the loop alive (zstd, storage, a malformed record, ...)
                # Left not enriched: tried again at the next start; clients use chunks meanwhile.
                log.exception("enriching %s@%s failed", app, version)
                await self._settle(app, version, enriched=False)
            finally:
                if self._lease is not None:
                    held, self._lease = self._lease, None
                    with contextlib.suppress(Exception):
                        await self._run(self.leases.release, held)
                self.metrics.enrich_pending.set(self._enrich_queue.qsize())

    async def rescan_loop(self) -> None:
        """Every ``--rescan``: queue the versions not enriched yet and make the pending moves
        whose version is, as at start — what a replica that died for good (scaled down, its
        node lost) was doing, no other replica would otherwise take up until it restarts.
        A version another replica is enriching is left to it (its lease)."""
        while True:
            await asyncio.sleep(self.settings.rescan * random.uniform(0.9, 1.1))
            try:
                await self._run(self._resume_pending)
                for item in await self._run(self.enricher.pending):
                    self._enqueue(*item)
            except Exception:  # the next round tries again
                log.exception("looking for versions to enrich failed")

    async def _settle(self, app: str, version: str, *, enriched: bool) -> None:
        """Make the publish moves that waited for this version's enrichment: to its enriched
        manifest, or — when enrichment failed — to the plain one, loudly (a release must
        not hang on an optimisation)."""
        try:
            moved = await self._run(self.channels.apply_pending, app, version)
        except Exception:
            log.exception("moving channels of %s to %s failed; retried at the next start", app, version)
            return
        if moved and not enriched:
            self.metrics.unenriched_moves.inc(len(moved))
            log.warning(
                "enriching %s@%s failed: moved %s to its plain manifest (clients update from chunks)",
                app,
                version,
                ", ".join(moved),
            )
        elif moved:
            log.info("moved %s of %s to %s (enriched)", ", ".join(moved), app, version)

    def _resume_pending(self) -> None:
        """At start: make pending moves whose version a crash left enriched but unmoved (the
        others are made when their version's enrichment, queued at start, ends)."""
        for app in self.channels.apps():
            for pending in {p.version for p in self.channels.pending(app).values()}:
                if self.channels.enriched(app, pending):
                    self.channels.apply_pending(app, pending)

    async def check_rollout(self, app: str, move: ChannelMove | None) -> None:
        """A publish that rolls out needs a channel to roll out on: refused before the upload."""
        if move is None or move.percent is None:
            return
        if await self._run(self.channels.current, check_app(app), move.channel) is None:
            raise Conflict(
                f"channel {move.channel} of {app} has no version yet: publish without rollout first"
            )

    async def set_channel(self, app: str, channel: str, version: str, rollout: RolloutSpec | None) -> bytes:
        check_app(app)
        check_channel(channel)
        check_version(version)
        return await self._run(self._guarded, self.channels.move, app, channel, version, rollout)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """An operator's move under a publish lease (origin/gclock.py): a gc sweep never
        drops a version while a move to it is being made, nor a move while it marks."""
        with publish_guard(self.storage) as held:
            held.check()
            return fn(*args)

    async def rollback(self, app: str, channel: str) -> dict[str, Any]:
        old, new = await self._run(
            self._guarded, self.channels.rollback, check_app(app), check_channel(channel)
        )
        return {
            "app": app,
            "channel": channel,
            "from": old.version,
            "version": new.version,
            "serial": new.serial,
        }

    async def resign_loop(self) -> None:
        """Re-sign live refs well before they expire (owned by the app's cleanup_ctx)."""
        while True:
            try:
                done = await self._run(self.channels.resign_due)
                if done.resigned:
                    log.info("re-signed %d refs", done.resigned)
                # What is left after re-signing is what an operator must hear about
                # (expiry times only grow, so between rounds this errs early, never late).
                self.metrics.ref_earliest_expiry.set(done.soonest)
            except Exception:  # keep the loop alive; the next round retries
                log.exception("re-signing refs failed")
            await asyncio.sleep(self.settings.resign_interval)
