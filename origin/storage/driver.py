"""The storage driver seam (issue 18), in the style of distribution/distribution's
storage drivers: one small interface whose every method states its contract, and one
implementation per backend (``file.py``, ``s3.py``).  Validation of keys, metrics and
the translation of backend errors are added once, by ``store.Store``, never per driver.

Keys are "/"-separated paths made by origin/paths.py ("objects/chunks/ab/cd/<hex>"); a
driver may assume a key it is given is valid (``Store`` checked it).  An **etag** is an
opaque string, never quoted, that changes whenever the object's bytes are replaced:
what ``swap`` compares.  Every method may block (a system call, an HTTP request); the
origin calls them from threads, never on its event loop.

Consistency asked of a backend: read-after-write and list-after-write (S3 has both since
2020; Ceph RGW, MinIO and moto have them), atomic create-only and compare-and-swap puts.
A driver raises ``DriverError`` (or any OSError) when the backend fails; ``Store`` turns
it into ``StorageUnavailable`` (HTTP 503).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PAGE", "Blob", "Driver", "DriverError", "Item", "Page", "Stat"]

PAGE = 1000  # keys in one listing page (S3's ListObjectsV2 maximum)


class DriverError(Exception):
    """The backend failed (network, 5xx, a refused credential): the operation may or may
    not have taken effect, and may be retried."""


@dataclass(frozen=True, slots=True)
class Stat:
    size: int  # bytes
    etag: str  # opaque, unquoted; changes when the bytes are replaced
    mtime: float  # unix seconds of the last write (gc's grace period compares it)


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    stat: Stat


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]  # sorted by key (bytewise), every key > ``after`` of the call
    more: bool  # True: there may be keys after the last one (ask again with after=last key)


class Driver(Protocol):
    name: str  # "file", "s3": the label of the storage metrics and of logs

    def get(self, key: str) -> Blob | None:
        """The object's bytes and etag, read in one request (never a stat then a get);
        None if there is no such object."""

    def stat(self, key: str) -> Stat | None:
        """The object's size, etag and mtime; None if absent (a prefix is not an object)."""

    def stat_many(self, keys: Iterable[str]) -> dict[str, Stat | None]:
        """``stat`` of every key, asked concurrently where the backend is remote (a publish
        checks which of thousands of chunks exist: never one request after another)."""

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``, replacing what was there, atomically (readers see
        the old object or the new one, never part of one); returns the new etag."""

    def create(self, key: str, data: bytes) -> str | None:
        """Store ``data`` under ``key`` only if no object has that key; the new etag, or
        None when one existed (it is kept).  Of many callers creating one key at once,
        exactly one gets an etag."""

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace the object only if its etag is still ``etag``; the new etag, or None when
        it is not (changed, or gone).  Of many callers swapping from one etag at once,
        at most one succeeds: read-modify-write without lost updates."""

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is absent.  Unconditional (Ceph RGW ignores
        a conditional DELETE, so nothing may rely on one)."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """``delete`` of every key, batched where the backend can (S3's DeleteObjects)."""

    def list(self, prefix: str, after: str | None = None, limit: int = PAGE) -> Page:
        """At most ``limit`` objects whose key starts with ``prefix`` and sorts after
        ``after`` (all of them when None), in key order, with their stat."""

    def names(self, prefix: str) -> builtins.list[str]:
        """The distinct names one level under ``prefix`` (which ends in "/"), sorted: the
        part of each key under it up to the next "/" (S3's delimiter listing).  Costs what
        is one level down, not the whole tree.  A name may outlive its keys where the
        backend keeps folders (a directory left empty)."""

    def close(self) -> None:
        """Release connections and threads."""
