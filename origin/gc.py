"""Retention (issue 18, item 6): ``minicdn gc`` and ``collect``, a mark and sweep of the store.

Policy
------

Per app, a sweep **keeps** a version when any of these holds:

- it is one of the last ``--keep`` N versions published (publish order: the record's
  ``created``, then ``published``, then the version's name);
- a channel pointed at it within the last ``--keep-days`` D days: a move in that window,
  the version the channel served when the window opened, or what the channel's ref names
  now, its rollout included (as ``Channels.versions_since``);
- a channel has a pending move to it (a publish waiting for its enrichment);
- its record was written within ``--grace`` (a publish or an enrichment just made).

A kept version keeps everything it references: every manifest it has had
(``VersionRecord.all_manifests``: the plain one and the enriched one) and every chunk,
bundle and delta those manifests name.  So does whatever manifest a channel's ref names.

Everything else **goes**: the record of every version not kept, then every object under
``objects/`` that no kept version references and that was last written more than
``--grace`` ago (``Stat.mtime``).  Also swept: enrichment leases (``leases/enrich/``) and
publish leases (``locks/publish/``) expired and last written more than a day ago.  Never
touched: channels, histories, pending moves, ``changes/`` (trimmed by the change feed).

A channel can no longer be rolled back, nor set, to a version gc dropped; ``--keep-days``
is how far back rollback reaches.

Why it is safe
--------------

Content addressing makes a publish skip a chunk the store already has.  The danger is a
publish that finds an *old, unreferenced* chunk stored (so it does not upload it) while a
sweep that has marked it garbage deletes it: the version record would then name a missing
chunk.  The grace period cannot help there (the chunk is old), so sweeps and publishes
exclude each other with leases in the store (origin/gclock.py, as restic does with its
lock files):

1. a publish creates its own lease under ``locks/publish/`` *before* its first existence
   check, then reads ``locks/gc``; if a live sweep holds it, the publish drops its lease
   and waits (bounded: then 503 ``gc_in_progress`` with Retry-After);
2. a sweep creates ``locks/gc``, then lists ``locks/publish/`` and waits until no live
   publish lease is left (bounded: then it gives up, ``publishes_running``);
3. only then does it mark and sweep, and it holds ``locks/gc`` until its last delete.

Each side writes before it reads the other, and the store is read-after-write and
list-after-write consistent, so at least one sees the other: a publish either finished
before the mark (its record is marked, so are its chunks) or starts after the sweep (it
finds the chunks gone and uploads them).  A publish keeps its lease until its record is
written, renewing it while it runs; it releases it at the end, also on failure.

Leases expire (``LEASE_TTL``), so a SIGKILLed publish or sweep blocks the other side for at
most that long.  A holder *paused* longer than its lease (SIGSTOP, a frozen VM) may find
the other side went ahead: each checks, before its step that matters (a publish before it
writes its record, a sweep before each batch of deletes), that its lease was live all
along with half its life left, and abandons the work otherwise (``lease_lost``); the
publish's retry then uploads what is missing.  Hosts' clocks must agree to well under
half a lease (NTP).

Enrichment (origin/enrich.py) and operator moves (``channel set``, rollback) hold a
publish lease too: enrichment may find a bundle or delta stored already that only a
dropped version names (and leave its mtime old), and a move may name a version a sweep is
dropping.

What the grace period still protects: a publish whose lease lapsed, or that crashed,
whose chunks a retry will find; a version record just written (kept whatever the policy
says); an object store whose clock differs from ours.  Keep ``--grace`` well above the
longest publish and enrichment (the default is a day).

Crash safety: records go first, then the objects only they referenced (manifests, then
bundles, then chunks).  A crash in between leaves unreferenced objects and no record
naming a missing one; the next run finds them unreferenced and finishes the job.  A sweep
marks once without the lock (to learn what every manifest names, which is the slow part)
and again under it, which lists every app's records, refs, histories and pending moves and
reads only what changed (origin/gcmark.py); a dry run takes no lock and deletes nothing.
Publishes, enrichments and moves wait while a sweep holds the lock: its second mark and
its deletes (1,000 keys a request on S3).

An enrichment that rewrites the record of a version gc dropped while it ran does so by
compare-and-swap from the record it read, so the record is not brought back.

Memory: the sweep holds every key under ``objects/`` (and every kept one) in memory,
about 100-200 bytes a key: a store of 10 million chunks needs a couple of GiB for a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from origin import paths
from origin.gclock import (
    LEASE_TTL,
    Held,
    LeaseLost,
    PublishesRunning,
    SweepInProgress,
    publish_guard,
    sweep_lock,
)
from origin.gcmark import Damaged, Marked, Marker, Policy
from origin.leases import Leases
from origin.storage import PAGE, Store

__all__ = [
    "KINDS",
    "LEASE_TTL",
    "Damaged",
    "LeaseLost",
    "Policy",
    "PublishesRunning",
    "Report",
    "SweepInProgress",
    "Tally",
    "collect",
    "publish_guard",
    "sweep_lock",
]

log = logging.getLogger("minicdn.origin.gc")

LEFTOVER = 86400.0  # seconds since an expired lease was last written before gc removes it
KINDS = ("records", "manifests", "bundles", "chunks", "leases")  # "bundles": bundles and deltas
_OBJECTS = {"objects/manifests/": "manifests", "objects/bundles/": "bundles", "objects/chunks/": "chunks"}
_LEASES = ("leases/enrich/", paths.PUBLISH_LOCKS)


@dataclass
class Tally:
    count: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self.bytes}


@dataclass
class Report:
    """What a run deleted (a dry run: would delete), and what it kept."""

    dry_run: bool
    policy: Policy
    kept: int = 0  # versions kept, every app
    dropped: dict[str, list[str]] = field(default_factory=dict)  # app → versions dropped, publish order
    deleted: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in KINDS})
    young: Tally = field(default_factory=Tally)  # unreferenced objects spared by the grace period
    seconds: float = 0.0

    @property
    def total(self) -> Tally:
        return Tally(sum(t.count for t in self.deleted.values()), sum(t.bytes for t in self.deleted.values()))

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "policy": {
                "keep": self.policy.keep,
                "keep_days": self.policy.keep_days,
                "grace": self.policy.grace,
            },
            "versions": {"kept": self.kept, "dropped": self.dropped},
            "deleted": {k: t.to_json() for k, t in self.deleted.items()},
            "total": self.total.to_json(),
            "young": self.young.to_json(),
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"versions: {self.kept} kept, {sum(map(len, self.dropped.values()))} dropped"]
        lines += [f"  {app}: {' '.join(versions)}" for app, versions in sorted(self.dropped.items())]
        lines.append(f"{verb}:")
        rows = [*self.deleted.items(), ("total", self.total)]
        lines += [f"  {kind:<10}{t.count:>9}  {_bytes(t.bytes):>10}" for kind, t in rows]
        lines.append(f"spared (younger than --grace): {self.young.count} objects, {_bytes(self.young.bytes)}")
        if self.dry_run:
            lines.append("dry run: nothing was deleted")
        return "\n".join(lines)


def collect(
    store: Store,
    policy: Policy,
    *,
    dry_run: bool,
    clock: Callable[[], float] = time.time,
    lease_ttl: float | None = None,
    wait: float | None = None,
) -> Report:
    """One mark and sweep of ``store`` under ``policy`` (the module's doc).  Blocking; safe
    to call from a thread, again and again, on a store that origins are using.  Raises
    SweepInProgress, PublishesRunning, LeaseLost (try later), Damaged, StorageUnavailable."""
    started = time.monotonic()
    report = Report(dry_run, policy)
    marker = Marker(store, policy)
    first = marker.mark(clock())
    old = _unreferenced(store, clock() - policy.grace, first.objects, report.young)
    if dry_run:
        _plan(report, first, old, _stale_leases(store, clock()))
    else:
        with sweep_lock(store, ttl=lease_ttl, wait=wait, clock=clock) as lock:
            marked = marker.mark(clock())
            doomed = {key: size for key, size in old.items() if key not in marked.objects}
            stale = _stale_leases(store, clock())
            _plan(report, marked, doomed, stale)
            _sweep(store, lock, marked, doomed)
            _delete(store, lock, stale)
    report.seconds = time.monotonic() - started
    log.info("gc%s: %s", " (dry run)" if dry_run else "", report.to_json())
    return report


def _unreferenced(store: Store, cutoff: float, marked: set[str], young: Tally) -> dict[str, int]:
    """{key: size} of every object under objects/ not in ``marked`` and last written before
    ``cutoff``; counts the younger ones in ``young``."""
    out = {}
    for item in store.items("objects/"):
        if item.key in marked or _kind(item.key) is None:
            continue
        if item.stat.mtime <= cutoff:
            out[item.key] = item.stat.size
        else:
            young.add(item.stat.size)
    return out


def _stale_leases(store: Store, now: float) -> dict[str, int]:
    leases = Leases(store, clock=lambda: now)
    out = {}
    for prefix in _LEASES:
        for item in store.items(prefix):
            if item.stat.mtime < now - LEFTOVER:
                lease = leases.read(item.key)
                if lease is not None and not lease.live(now):
                    out[item.key] = item.stat.size
    return out


def _plan(report: Report, marked: Marked, objects: dict[str, int], leases: dict[str, int]) -> None:
    report.kept = len(marked.kept)
    for v in marked.dropped:
        report.dropped.setdefault(v.app, []).append(v.name)
        report.deleted["records"].add(v.size)
    for key, size in objects.items():
        report.deleted[_kind(key) or "chunks"].add(size)
    for size in leases.values():
        report.deleted["leases"].add(size)


def _sweep(store: Store, lock: Held, marked: Marked, doomed: dict[str, int]) -> None:
    """Records first, then what only they referenced: a crash in between leaves garbage
    that the next run finds unreferenced, never a record naming a missing object."""
    _delete(store, lock, [v.key for v in marked.dropped])
    order = {kind: i for i, kind in enumerate(KINDS)}  # manifests, then bundles, then chunks
    _delete(store, lock, sorted(doomed, key=lambda k: (order[_kind(k) or "chunks"], k)))


def _delete(store: Store, lock: Held, keys: Iterable[str]) -> None:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == PAGE:
            lock.check()
            store.delete_many(batch)
            batch = []
    if batch:
        lock.check()
        store.delete_many(batch)


def _kind(key: str) -> str | None:
    return next((kind for prefix, kind in _OBJECTS.items() if key.startswith(prefix)), None)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
