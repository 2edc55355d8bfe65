"""The memory tier: entries ready to send, bounded by the bytes of their bodies.

Plain dict operations on the event loop's thread; nothing here blocks or awaits.

Bodies of at least ``SEAL_MIN`` bytes (except refs, which change) are moved into sealed
memfds as they are admitted, so the data plane sends them with ``sendfile`` rather than
copying them into the socket: at 64 KiB that copy was the largest single cost of a hit
(docs/performance.md).  Each costs a descriptor, so at most ``max_sealed`` entries are
sealed (by default a quarter of the process's descriptor limit); past that, and whenever
the system refuses a memfd, bodies stay bytes and are copied as before.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable, Iterator

from edge.objects import Entry
from edge.policy import Policy

__all__ = ["SEAL_MIN", "MemoryTier", "default_max_sealed"]

log = logging.getLogger("minicdn.edge.memory")

SEAL_MIN = 32 << 10


def default_max_sealed() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(0, soft // 4)


class MemoryTier:
    def __init__(
        self,
        policy: Policy,
        on_evict: Callable[[int], None] = lambda n: None,
        max_sealed: int | None = None,
        seal_min: int = SEAL_MIN,
    ) -> None:
        self.policy = policy
        self.on_evict = on_evict
        self.max_sealed = default_max_sealed() if max_sealed is None else max_sealed
        self.seal_min = seal_min
        self.sealed = 0  # entries held in a memfd now
        # Public so the data plane's inline path can look up with a dict lookup, not a
        # call; everyone else reads and changes it through the methods below.
        self.entries: dict[str, Entry] = {}
        # Told of every entry the tier lets go (evicted, removed or replaced): the serving
        # paths keep what they derive from an entry (encodings, prebuilt heads) beside it.
        self.on_forget: list[Callable[[Entry], None]] = []

    @property
    def used(self) -> int:
        return self.policy.bytes

    @property
    def limit(self) -> int:
        return self.policy.limit

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.policy.touch(key)
        return entry

    def peek(self, key: str) -> Entry | None:
        """The entry without recording a hit (the caller touches the policy if it uses it)."""
        return self.entries.get(key)

    def put(self, key: str, entry: Entry) -> bool:
        """Hold ``entry`` under ``key`` (replacing a previous one); False when it does not fit."""
        if key in self.entries:
            self.remove(key)
        evicted = self.policy.admit(key, entry.size)
        for k, size in evicted:
            self._forget(self.entries.pop(k))
            self.on_evict(size)
        if key not in self.policy:
            return False
        if (
            entry.sealed is None
            and entry.size >= self.seal_min
            and self.sealed < self.max_sealed
            and not key.startswith("refs/")
        ):
            try:
                entry.seal()
            except OSError as exc:  # out of descriptors or memory: keep the bytes
                log.warning("memory tier: body of %s stays unsealed: %s", key, exc)
        if entry.sealed is not None:
            self.sealed += 1
        self.entries[key] = entry
        return True

    def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._forget(entry)
            self.policy.remove(key)

    def _forget(self, entry: Entry) -> None:
        if entry.sealed is not None:
            self.sealed -= 1
        for forget in self.on_forget:
            forget(entry)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in list(self.entries) if k.startswith(prefix))

    def __len__(self) -> int:
        return len(self.entries)
