"""Rendezvous (highest-random-weight) hashing: which member of a cluster owns a key.

Every member scores every key with ``weight(member, key)``; the highest score owns it
(Thaler & Ravishankar, 1998).  Nodes that agree on the member set agree on every owner
without talking, and removing a member moves only the keys it owned (each to the member
that scored second), so a node leaving or rejoining disturbs ``1/n`` of the keys.

One more property the cluster relies on: a node forwards a key only to a member that
outscores itself, so any chain of forwards climbs strictly in weight and can never come
back — even between nodes whose member sets briefly differ.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["Ring", "weight"]


def weight(member: str, key: str) -> int:
    """A 64-bit score, uniform over members for a fixed key and stable across processes
    (Python's ``hash`` is salted per process, so it will not do)."""
    digest = hashlib.blake2b(f"{member}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Ring:
    """An immutable member set; build a new Ring when membership changes."""

    def __init__(self, members: Iterable[str]) -> None:
        self.members = tuple(sorted(set(members)))

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def owner(self, key: str) -> str | None:
        """The member with the highest weight for ``key`` (ties, of 1 in 2**64, go to the
        member that sorts first); None for an empty ring."""
        best, best_w = None, -1
        for m in self.members:
            w = weight(m, key)
            if w > best_w:
                best, best_w = m, w
        return best
