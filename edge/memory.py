"""The memory tier: entries ready to send, bounded by the bytes of their bodies.

Plain dict operations on the event loop's thread; nothing here blocks or awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from edge.objects import Entry
from edge.policy import Policy

__all__ = ["MemoryTier"]


class MemoryTier:
    def __init__(self, policy: Policy, on_evict: Callable[[int], None] = lambda n: None) -> None:
        self.policy = policy
        self.on_evict = on_evict
        self._items: dict[str, Entry] = {}

    @property
    def used(self) -> int:
        return self.policy.bytes

    @property
    def limit(self) -> int:
        return self.policy.limit

    def get(self, key: str) -> Entry | None:
        entry = self._items.get(key)
        if entry is not None:
            self.policy.touch(key)
        return entry

    def peek(self, key: str) -> Entry | None:
        """The entry without recording a hit (the caller touches the policy if it uses it)."""
        return self._items.get(key)

    def put(self, key: str, entry: Entry) -> bool:
        """Hold ``entry`` under ``key`` (replacing a previous one); False when it does not fit."""
        if key in self._items:
            self.remove(key)
        evicted = self.policy.admit(key, entry.size)
        for k, size in evicted:
            del self._items[k]
            self.on_evict(size)
        if key not in self.policy:
            return False
        self._items[key] = entry
        return True

    def remove(self, key: str) -> None:
        if self._items.pop(key, None) is not None:
            self.policy.remove(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in list(self._items) if k.startswith(prefix))

    def __len__(self) -> int:
        return len(self._items)
