"""One archive entry on its way to disk: its path checked, its bytes counted as they are written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from common.paths import check_relpath
from origin.limits import Budget

__all__ = ["PIECE", "Readable", "copy_entry", "entry_path", "is_root"]

PIECE = 64 * 1024


def entry_path(name: str) -> str:
    name = name.rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return check_relpath(name)


def is_root(name: str) -> bool:
    """``tar -C dir .`` names the folder itself first: nothing to make."""
    return name in (".", "./")


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def copy_entry(
    src: Readable, dest_root: Path, path: str, budget: Budget, check: Callable[[int], None] | None = None
) -> None:
    """Stream one entry to dest_root/path, counting every byte against the budget;
    ``check(produced)`` runs after every piece, so a bomb stops within one piece."""
    target = dest_root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    produced = 0
    with open(target, "xb") as out:
        while piece := src.read(PIECE):
            produced += len(piece)
            budget.add_bytes(len(piece))
            if check is not None:
                check(produced)
            out.write(piece)
