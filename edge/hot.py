"""Which objects a non-owner keeps (groupcache's hot cache).

In a cluster each object is cached by its owner; a node that had to ask the owner for it
does not store it on disk (the cluster's disks then add up instead of each holding the same
copies).  It keeps a copy in memory only once the object proves popular *here*: the second
time it has to ask the owner for the same key among the last ``window`` keys it asked for.
One-off requests never push this node's own objects out of memory, and a chunk every phone
wants stops costing its owner one request per phone per node.  (groupcache admits one
peer answer in ten at random; a second sighting is as cheap, deterministic, and never
admits a key asked for only once.)

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["HotKeys"]


class HotKeys:
    def __init__(self, window: int = 16384) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: str) -> bool:
        """Record that ``key`` came from its owner; True when it is hot (seen before within
        the window), in which case it is forgotten here: the memory tier holds it now."""
        if key in self._seen:
            del self._seen[key]
            return True
        self._seen[key] = None
        if len(self._seen) > self.window:
            self._seen.popitem(last=False)
        return False
