"""A channel's history (``apps/{app}/history/{channel}``): one entry per move, oldest first,
and what "roll back" means over it.  Pure: no storage, no clock.

An entry is stored as msgpack ``[time, version, serial, kind, rollout]`` (``rollout``:
``[version, percent]`` or nil).  Entries written before moves were kinds had only
``[time, version]`` (and only when the version changed); they read as moves of unknown kind.

Rollback is an undo: replaying the history, every move to another version pushes it on a
stack and every rollback pops one, so the target of a rollback is the version under the
top.  ``1, 2, 3, rollback, rollback`` ends on 1, and a third rollback has nothing to go to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["KEEP", "KINDS", "Entry", "rollback_target"]

KINDS = ("publish", "set", "rollback", "rollout", "enriched")  # channel moves, by what made them
KEEP = 1000  # entries kept per channel


@dataclass(frozen=True)
class Entry:
    time: int
    version: str
    serial: int | None = None
    kind: str | None = None
    rollout: tuple[str, int] | None = None

    def pack(self) -> list[Any]:
        return [self.time, self.version, self.serial, self.kind, list(self.rollout) if self.rollout else None]

    @classmethod
    def unpack(cls, raw: list[Any]) -> Entry:
        time, version, *rest = raw
        serial, kind, roll = [*rest, None, None, None][:3]
        return cls(int(time), str(version), serial, kind, (str(roll[0]), int(roll[1])) if roll else None)

    def to_json(self) -> dict[str, object]:
        roll = None if self.rollout is None else {"version": self.rollout[0], "percent": self.rollout[1]}
        return {
            "time": self.time,
            "version": self.version,
            "serial": self.serial,
            "kind": self.kind,
            "rollout": roll,
        }


def rollback_target(entries: Iterable[Entry]) -> str | None:
    """The version a rollback moves to, or None when the history holds no earlier one."""
    stack: list[str] = []
    for e in entries:
        if e.kind == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != e.version:  # a history cut at KEEP entries
                stack.append(e.version)
        elif not stack or stack[-1] != e.version:
            stack.append(e.version)
    return stack[-2] if len(stack) >= 2 else None
