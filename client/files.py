"""The install directory and the store's lock, on disk.

    assemble  write the chosen packages into ``.NAME.staging-*`` beside the target, every
              file fsynced; then swap: the old tree aside, the new one in, the directory
              fsynced; on any failure the previous install is untouched
    recover   a crash fell between the two renames: put the old tree back; drop leftovers
    locked    one install at a time per store

Everything here blocks (it is file work): ``locked`` runs its system calls in a thread,
and callers run ``assemble`` and ``recover`` in one (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from client.store import LocalStore
from common.errors import StoreError
from common.fsutil import fsync_dir
from common.manifest import ChunkEntry, Manifest

__all__ = ["assemble", "locked", "recover"]


def assemble(store: LocalStore, manifest: Manifest, chosen: tuple[str, ...], out: Path) -> None:
    """Write the chosen packages beside ``out`` and swap them in; on any failure the
    previous install is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{secrets.token_hex(4)}")
    try:
        for pkg in manifest.packages:
            if pkg.name in chosen:
                _write_package(store, pkg.files, pkg.chunks, staging)
        staging.mkdir(exist_ok=True)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_package(
    store: LocalStore, files: tuple[tuple[str, int], ...], chunks: tuple[ChunkEntry, ...], root: Path
) -> None:
    it = iter(chunks)
    buf, pos = b"", 0
    for path, size in files:
        target = root / path  # paths were checked when the manifest was decoded
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            need = size
            while need:
                if pos == len(buf):
                    buf, pos = store.get(next(it).id), 0
                take = min(need, len(buf) - pos)
                f.write(memoryview(buf)[pos : pos + take])
                pos += take
                need -= take
            f.flush()
            os.fsync(f.fileno())


def _swap_in(staging: Path, out: Path) -> None:
    """Two renames, with the old tree kept until the new one is in place; ``recover``
    puts the old one back if a crash falls between them."""
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        return
    name = glob.escape(out.name)
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not out.exists() and olds:
        os.rename(olds[-1], out)
    for stale in [*parent.glob(f".{name}.old-*"), *parent.glob(f".{name}.staging-*")]:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.asynccontextmanager
async def locked(store_dir: Path) -> AsyncIterator[None]:
    """One install at a time per store (two would race on the state file and the swap)."""
    f = await asyncio.to_thread(_lock, store_dir)
    try:
        yield
    finally:
        await asyncio.to_thread(_unlock, f)


def _lock(store_dir: Path) -> IO[str]:
    store_dir.mkdir(parents=True, exist_ok=True)
    f = open(store_dir / ".lock", "w")  # noqa: SIM115  # held until _unlock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.close()
        raise StoreError(f"{store_dir} is in use by another fetch") from exc
    except BaseException:
        f.close()
        raise
    return f


def _unlock(f: IO[str]) -> None:
    with f:
        fcntl.flock(f, fcntl.LOCK_UN)
