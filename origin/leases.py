"""Leases: short-lived claims kept in the store itself, so that origin replicas sharing a
bucket agree on who does a piece of work (issue 18), with no other coordination service.

A lease is an object ``{"owner": str, "expires": unix seconds}``.  ``take`` creates it
(create-only put: of many takers exactly one wins) or, when the one there has expired,
replaces it by compare-and-swap from the etag read (of many takers of an expired lease,
exactly one wins).  ``renew`` extends one's own lease the same way; ``release`` deletes it
(unconditionally: RGW ignores a conditional DELETE — so a holder releases only a lease it
has just seen it still holds).  A holder that stops (SIGKILL) leaves its lease to expire:
the work is then someone else's after ``ttl``.

Clocks: expiry compares the replicas' wall clocks; keep them in sync (NTP) to well under
a lease's ``ttl``.  Used by: enrichment (one replica per version), the gc sweep against
publishes (origin/gc.py: a sweep holds ``locks/gc``, each publish a lease under
``locks/publish/``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.ids import sha256
from origin.storage import Store

__all__ = ["Lease", "Leases", "owner_id"]


def owner_id(workdir: str | os.PathLike[str] | None = None) -> str:
    """A lease's holder: with ``workdir``, this replica (host and working directory), the
    same after a restart, so a replica restarted after SIGKILL takes its own leases back at
    once; without, this process (host, pid, a random tag)."""
    host = socket.gethostname()[:64]
    if workdir is not None:
        return f"{host}:{sha256(os.fsencode(os.path.abspath(workdir))).hex()[:12]}"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    key: str
    owner: str
    expires: float
    etag: str

    def live(self, now: float) -> bool:
        return now < self.expires


def _pack(owner: str, expires: float) -> bytes:
    return json.dumps({"owner": owner, "expires": round(expires, 3)}).encode()


def _unpack(data: bytes) -> tuple[str, float] | None:
    """A lease's holder and expiry; None if the object is not a lease (treated as expired)."""
    try:
        d = json.loads(data)
        return str(d["owner"]), float(d["expires"])
    except (ValueError, KeyError, TypeError):
        return None


class Leases:
    def __init__(
        self, store: Store, owner: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.owner = owner or owner_id()
        self.clock = clock

    def read(self, key: str) -> Lease | None:
        """The lease at ``key`` (live or not); None when there is none."""
        blob = self.store.read(key)
        if blob is None:
            return None
        got = _unpack(blob.data)
        owner, expires = got if got is not None else ("?", 0.0)
        return Lease(key, owner, expires, blob.etag)

    def take(self, key: str, ttl: float) -> Lease | None:
        """Hold ``key`` for ``ttl`` seconds: the lease, or None while another holds it."""
        expires = self.clock() + ttl
        data = _pack(self.owner, expires)
        etag = self.store.create(key, data)
        if etag is not None:
            return Lease(key, self.owner, expires, etag)
        held = self.read(key)
        if held is None:  # released between the two calls: try once more
            etag = self.store.create(key, data)
            return Lease(key, self.owner, expires, etag) if etag is not None else None
        if held.live(self.clock()) and held.owner != self.owner:
            return None
        etag = self.store.swap(key, data, held.etag)
        return Lease(key, self.owner, expires, etag) if etag is not None else None

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend our own ``lease``; None if it was lost (expired and taken by another)."""
        expires = self.clock() + ttl
        etag = self.store.swap(lease.key, _pack(self.owner, expires), lease.etag)
        return Lease(lease.key, self.owner, expires, etag) if etag is not None else None

    def release(self, lease: Lease) -> None:
        """Give ``lease`` up, unless another has taken it since (then it is theirs)."""
        held = self.read(lease.key)
        if held is not None and held.etag == lease.etag:
            self.store.delete(lease.key)

    def live(self, prefix: str) -> list[Lease]:
        """Every live lease under ``prefix``."""
        now = self.clock()
        out = []
        for item in self.store.items(prefix):
            lease = self.read(item.key)
            if lease is not None and lease.live(now):
                out.append(lease)
        return out
