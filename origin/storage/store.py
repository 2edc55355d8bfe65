"""``Store``: what the origin calls, around one ``Driver`` (driver.py).  Added here once for
every driver: the check of every key (a key is a relative path of names, no "", "." or
"..", no NUL, not the temp prefix), a Prometheus-style observation of every operation
(operation, outcome, seconds), the translation of a backend's failure into
``StorageUnavailable`` (503), paging of listings, and the read-modify-write loop on
compare-and-swap (``update``).

Calls block: the origin runs them in its executor, never on the event loop.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from common.errors import Conflict, MinicdnError, NotFound, StorageUnavailable
from common.fsutil import TEMP_PREFIX
from origin.storage.driver import PAGE, Blob, Driver, Item, Stat

__all__ = ["Observe", "Store", "check_key", "check_prefix"]

log = logging.getLogger("minicdn.origin.storage")

# driver name, operation, outcome ("ok", "absent", "exists", "conflict", "error"), seconds
Observe = Callable[[str, str, str, float], None]
T = TypeVar("T")

MAX_KEY = 1024  # bytes: S3's limit on a key, prefix included


def check_key(key: str) -> str:
    parts = key.split("/")
    if (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or any(p in {"", ".", ".."} for p in parts)
        or "\x00" in key
        or len(key.encode()) > MAX_KEY
    ):
        raise ValueError(f"bad storage key {key!r}")
    if parts[-1].startswith(TEMP_PREFIX):
        raise ValueError(f"storage key {key!r} uses the reserved temp prefix")
    return key


def check_prefix(prefix: str) -> str:
    """A listing's prefix: "" (everything) or a key's leading names ending in "/"."""
    if prefix and (not prefix.endswith("/") or check_key(prefix[:-1]) is None):
        raise ValueError(f"a listing prefix ends in '/': {prefix!r}")
    return prefix


def _no_observer(driver: str, op: str, outcome: str, seconds: float) -> None:
    pass


class Store:
    """The origin's storage: a driver with checks, metrics and error translation."""

    def __init__(self, driver: Driver, *, observe: Observe | None = None) -> None:
        self.driver = driver
        self.observe: Observe = observe or _no_observer

    @property
    def name(self) -> str:
        return self.driver.name

    def _call(self, op: str, fn: Callable[..., T], *args: object, outcome: Callable[[T], str]) -> T:
        start = time.perf_counter()
        try:
            result = fn(*args)
        except MinicdnError:
            self.observe(self.driver.name, op, "error", time.perf_counter() - start)
            raise
        except Exception as exc:  # OSError, DriverError, a client library's own (keys and
            # prefixes were checked before the call: a ValueError here is the backend's)
            self.observe(self.driver.name, op, "error", time.perf_counter() - start)
            log.warning("storage %s %s failed: %s", self.driver.name, op, exc)
            raise StorageUnavailable(f"storage {op} failed: {type(exc).__name__}: {exc}") from exc
        self.observe(self.driver.name, op, outcome(result), time.perf_counter() - start)
        return result

    # -- reads --------------------------------------------------------------------------------

    def read(self, key: str) -> Blob | None:
        """The object's bytes and etag in one request; None if absent."""
        return self._call("get", self.driver.get, check_key(key), outcome=_found)

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound if absent."""
        blob = self.read(key)
        if blob is None:
            raise NotFound(f"no object {key}")
        return blob.data

    def stat(self, key: str) -> Stat | None:
        return self._call("stat", self.driver.stat, check_key(key), outcome=_found)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat_many(self, keys: Iterable[str]) -> dict[str, Stat | None]:
        """``stat`` of every key at once (concurrent on a remote store)."""
        checked = [check_key(k) for k in keys]
        if not checked:
            return {}
        return self._call("stat_many", self.driver.stat_many, checked, outcome=lambda r: "ok")

    # -- writes -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        """Replace the object atomically; its new etag."""
        return self._call("put", self.driver.put, check_key(key), bytes(data), outcome=lambda r: "ok")

    def create(self, key: str, data: bytes) -> str | None:
        """Create the object unless one exists: its etag, or None (the existing one is kept)."""
        return self._call("create", self.driver.create, check_key(key), bytes(data), outcome=_created)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """``create``: True if this call created the object."""
        return self.create(key, data) is not None

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace the object only if its etag is still ``etag``: the new etag, or None."""
        return self._call("swap", self.driver.swap, check_key(key), bytes(data), etag, outcome=_swapped)

    def update(
        self, key: str, change: Callable[[bytes | None], bytes | None], *, tries: int = 64
    ) -> bytes | None:
        """Read-modify-write without lost updates, against any number of writers in any
        number of processes: ``change(current bytes or None)`` returns the new bytes (or
        None: leave the object as it is), written by ``create`` or ``swap`` from the etag
        read; on a conflict the object is read again and ``change`` called again, after a
        short random backoff.  Returns what was written (None if nothing).  Conflict after
        ``tries`` lost races."""
        for attempt in range(tries):
            blob = self.read(key)
            new = change(None if blob is None else blob.data)
            if new is None:
                return None
            done = self.create(key, new) if blob is None else self.swap(key, new, blob.etag)
            if done is not None:
                return new
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        raise Conflict(f"{key}: still changing after {tries} tries; try again")

    def delete(self, key: str) -> None:
        self._call("delete", self.driver.delete, check_key(key), outcome=lambda r: "ok")

    def delete_many(self, keys: Iterable[str]) -> None:
        checked = [check_key(k) for k in keys]
        if checked:
            self._call("delete_many", self.driver.delete_many, checked, outcome=lambda r: "ok")

    # -- listings -----------------------------------------------------------------------------

    def items(self, prefix: str, after: str | None = None, page: int = PAGE) -> Iterator[Item]:
        """Every object under ``prefix`` after ``after``, in key order, a page at a time."""
        check_prefix(prefix)
        while True:
            got = self._call("list", self.driver.list, prefix, after, page, outcome=lambda r: "ok")
            yield from got.items
            if not got.more or not got.items:
                return
            after = got.items[-1].key

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, in key order."""
        for item in self.items(prefix):
            yield item.key

    def names(self, prefix: str) -> builtins.list[str]:
        """The names one level under ``prefix``, sorted (driver.Driver.names)."""
        return self._call("names", self.driver.names, check_prefix(prefix), outcome=lambda r: "ok")

    def close(self) -> None:
        self.driver.close()


def _found(result: object) -> str:
    return "absent" if result is None else "ok"


def _created(result: object) -> str:
    return "exists" if result is None else "ok"


def _swapped(result: object) -> str:
    return "conflict" if result is None else "ok"
