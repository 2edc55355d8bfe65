"""What a client remembers between runs, under ``--store``: the highest ref serial seen per
app and channel (rollback protection), and what each install directory holds (so an
update knows its base, and the chunk store knows what it must keep)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.fsutil import atomic_write

__all__ = ["Installed", "State"]


@dataclass(frozen=True)
class Installed:
    app: str
    version: str
    manifest: str  # hex id of the manifest the files came from
    packages: tuple[str, ...]


class State:
    def __init__(self, root: Path) -> None:
        self.path = root / "state.json"
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.doc: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.doc = {}
        # A corrupt state file raises (ValueError): silently starting afresh would
        # forget the serials seen and so disable rollback protection.
        self.doc.setdefault("serials", {})
        self.doc.setdefault("installs", {})

    def highest_serial(self, app: str, channel: str) -> int | None:
        value = self.doc["serials"].get(f"{app}/{channel}")
        return int(value) if value is not None else None

    def saw_serial(self, app: str, channel: str, serial: int) -> None:
        key = f"{app}/{channel}"
        if serial > self.doc["serials"].get(key, -1):
            self.doc["serials"][key] = serial
            self.save()

    def installed(self, out_dir: Path) -> Installed | None:
        rec = self.doc["installs"].get(str(out_dir.resolve()))
        if rec is None or not out_dir.is_dir():
            return None
        return Installed(rec["app"], rec["version"], rec["manifest"], tuple(rec["packages"]))

    def record_install(self, out_dir: Path, inst: Installed) -> None:
        self.doc["installs"][str(out_dir.resolve())] = asdict(inst)
        self.save()

    def installs(self) -> list[Installed]:
        return [
            Installed(r["app"], r["version"], r["manifest"], tuple(r["packages"]))
            for r in self.doc["installs"].values()
        ]

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.doc, indent=1, sort_keys=True).encode())
