"""What a client remembers between runs, under ``--store``: the highest ref serial seen per
app and channel (rollback protection), and what each install directory holds (so an
update knows its base, and the chunk store knows what it must keep)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import jsonutil
from common.errors import BadRequest, StoreError
from common.fsutil import atomic_write

__all__ = ["Installed", "State"]


@dataclass(frozen=True)
class Installed:
    app: str
    version: str
    manifest: str  # hex id of the version manifest the files came from
    packages: tuple[str, ...]
    # package → (hex content digest, hex id of its package manifest, kept in the store)
    metas: dict[str, tuple[str, str]] = field(default_factory=dict)

    def have(self) -> dict[str, tuple[bytes, bytes]]:
        """What an open request says the phone holds (common/opening.py)."""
        return {
            n: (bytes.fromhex(c), bytes.fromhex(m)) for n, (c, m) in self.metas.items() if n in self.packages
        }


MAX_STATE = 64 << 20  # bytes: a state file this large is not one this client wrote


class State:
    def __init__(self, root: Path) -> None:
        self.path = root / "state.json"
        try:
            root.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b"{}"
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from exc
        # A corrupt state file is an error, never a silent reset: starting afresh would
        # forget the serials seen and so disable rollback protection.
        try:
            self.doc: dict[str, Any] = _checked(jsonutil.loads(data, what="it", max_bytes=MAX_STATE))
        except BadRequest as exc:
            raise StoreError(
                f"state file {self.path} is corrupt ({exc.message}); it holds the ref serials that "
                "protect against rollback, so it is not reset: restore it, or delete it to start afresh"
            ) from exc

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
        return _installed(rec)

    def record_install(self, out_dir: Path, inst: Installed) -> None:
        self.doc["installs"][str(out_dir.resolve())] = asdict(inst)
        self.save()

    def installs(self) -> list[Installed]:
        return [_installed(r) for r in self.doc["installs"].values()]

    def save(self) -> None:
        try:
            atomic_write(self.path, json.dumps(self.doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from exc


def _installed(rec: dict[str, Any]) -> Installed:
    metas = {n: (c, m) for n, (c, m) in (rec.get("metas") or {}).items()}
    return Installed(rec["app"], rec["version"], rec["manifest"], tuple(rec["packages"]), metas)


def _hex_pair(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x) for x in v)
    )


def _checked(doc: Any) -> dict[str, Any]:
    """The state document, its shape checked (BadRequest names what is wrong)."""
    if not isinstance(doc, dict):
        raise BadRequest("it is not a JSON object")
    doc.setdefault("serials", {})
    doc.setdefault("installs", {})
    serials, installs = doc["serials"], doc["installs"]
    if not isinstance(serials, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in serials.values()
    ):
        raise BadRequest("'serials' must map app/channel to an integer")
    if not isinstance(installs, dict):
        raise BadRequest("'installs' must be an object")
    for where, rec in installs.items():
        if not (
            isinstance(rec, dict)
            and all(isinstance(rec.get(k), str) for k in ("app", "version", "manifest"))
            and isinstance(rec.get("packages"), list)
            and all(isinstance(p, str) for p in rec["packages"])
            and isinstance(rec.get("metas", {}), dict)
            and all(_hex_pair(v) for v in rec.get("metas", {}).values())
        ):
            raise BadRequest(f"'installs' entry {where!r} is not {{app, version, manifest, packages}}")
    return doc
