"""Eviction policies over byte-sized entries: pure bookkeeping, no I/O, no asyncio.

A policy decides *which* keys leave; the tier that owns it deletes the bytes.  Two are
offered and measured against each other on Zipf traces (``loadtests/policy_zipf.py``,
figures in docs/edge.md):

- ``LRU``: one recency list.
- ``S3FIFO`` (Yang et al., SOSP '23): a small FIFO that new keys enter (10% of the
  bytes), a main FIFO with lazy promotion (a bit of frequency per key, cleared by
  re-insertion instead of moving on every hit), and a ghost list of keys recently
  evicted from the small queue, which go straight to main when they come back.  One-hit
  wonders — the chunks of an app installed once — leave through the small queue without
  pushing the hot set out.

``admit`` returns what it evicted, so a tier can delete exactly those bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["LRU", "POLICIES", "S3FIFO", "Evicted", "Policy", "make_policy"]

Evicted = list[tuple[str, int]]


class Policy(Protocol):
    """What a tier needs of a policy.  ``bytes`` never exceeds ``limit`` after ``admit``."""

    limit: int
    bytes: int

    def admit(self, key: str, size: int) -> Evicted:
        """Insert ``key`` (no-op when present or larger than ``limit``); returns evictions."""

    def touch(self, key: str) -> bool:
        """Record a hit; False when the key is not held."""

    def remove(self, key: str) -> int | None:
        """Forget ``key`` (the tier dropped it); its size, or None when it was not held."""

    def resize(self, limit: int) -> Evicted:
        """Change the limit, evicting what no longer fits."""

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...


class LRU:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: OrderedDict[str, int] = OrderedDict()

    def admit(self, key: str, size: int) -> Evicted:
        if key in self._items:
            self._items.move_to_end(key)
            return []
        if size > self.limit:
            return []
        evicted = self._evict_until(self.limit - size)
        self._items[key] = size
        self.bytes += size
        return evicted

    def touch(self, key: str) -> bool:
        if key not in self._items:
            return False
        self._items.move_to_end(key)
        return True

    def remove(self, key: str) -> int | None:
        size = self._items.pop(key, None)
        if size is not None:
            self.bytes -= size
        return size

    def resize(self, limit: int) -> Evicted:
        self.limit = limit
        return self._evict_until(limit)

    def _evict_until(self, target: int) -> Evicted:
        out: Evicted = []
        while self.bytes > target and self._items:
            key, size = self._items.popitem(last=False)
            self.bytes -= size
            out.append((key, size))
        return out

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))


class S3FIFO:
    MAX_FREQ = 3

    def __init__(self, limit: int, small_ratio: float = 0.1) -> None:
        self.limit = limit
        self.small_ratio = small_ratio
        self.bytes = 0
        self._small: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, int] = OrderedDict()
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._small_bytes = 0
        self._ghost_bytes = 0

    def admit(self, key: str, size: int) -> Evicted:
        if key in self._freq:
            self.touch(key)
            return []
        if size > self.limit:
            return []
        evicted: Evicted = []
        while self.bytes + size > self.limit:
            evicted.append(self._evict())
        if self._ghost.pop(key, None) is not None:
            self._ghost_bytes -= size
            self._main[key] = size
        else:
            self._small[key] = size
            self._small_bytes += size
        self._freq[key] = 0
        self.bytes += size
        return evicted

    def touch(self, key: str) -> bool:
        f = self._freq.get(key)
        if f is None:
            return False
        if f < self.MAX_FREQ:
            self._freq[key] = f + 1
        return True

    def remove(self, key: str) -> int | None:
        if self._freq.pop(key, None) is None:
            return None
        size = self._small.pop(key, None)
        if size is not None:
            self._small_bytes -= size
        else:
            size = self._main.pop(key)
        self.bytes -= size
        return size

    def resize(self, limit: int) -> Evicted:
        self.limit = limit
        evicted: Evicted = []
        while self.bytes > limit:
            evicted.append(self._evict())
        return evicted

    def _evict(self) -> tuple[str, int]:
        while True:
            if self._small and (self._small_bytes >= self.limit * self.small_ratio or not self._main):
                victim = self._evict_small()
            else:
                victim = self._evict_main()
            if victim is not None:
                del self._freq[victim[0]]
                self.bytes -= victim[1]
                return victim

    def _evict_small(self) -> tuple[str, int] | None:
        key, size = self._small.popitem(last=False)
        self._small_bytes -= size
        if self._freq[key] > 0:  # seen again while on probation: it earns a place in main
            self._freq[key] = 0
            self._main[key] = size
            return None
        self._remember(key, size)
        return key, size

    def _evict_main(self) -> tuple[str, int] | None:
        key, size = self._main.popitem(last=False)
        f = self._freq[key]
        if f > 0:  # lazy promotion: re-insert instead of moving on every hit
            self._freq[key] = f - 1
            self._main[key] = size
            return None
        return key, size

    def _remember(self, key: str, size: int) -> None:
        self._ghost[key] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self.limit * (1 - self.small_ratio):
            _, s = self._ghost.popitem(last=False)
            self._ghost_bytes -= s

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._freq))


POLICIES: dict[str, Callable[[int], Policy]] = {"lru": LRU, "s3fifo": S3FIFO}


def make_policy(name: str, limit: int) -> Policy:
    return POLICIES[name](limit)
