"""Phones installing and updating apps with the client library, each install checked
byte for byte against the files that were published (run by loadtests.soak, in a process
of its own so that its memory and descriptors are sampled apart).

Each phone has its own chunk store and lists every edge, starting from a different one
(its nearest PoP), so that a dead edge makes it fail over.  It opens apps chosen by Zipf
popularity: ``Client.install`` resolves the channel and downloads what the store lacks
(nothing, an update, or a cold install); then the installed tree must equal, file for
file and byte for byte, ``PUBLISHED/<app>/<version>/`` for the version the client says it
installed.  Now and then a phone is replaced by a new one (an empty store).

Every open is one JSON line in ``--out``: at (Unix time it ended), phone, app, version,
kind (install, update, launch), seconds, plan, bytes, ok, error.  An exception from the
client (after its own retries and failover) is ``ok: false`` with the error; so is a
tree that differs from the published files.

    python -m loadtests.phones --edge URL [--edge URL ...] --public-key FILE --published DIR
        --app ID [--app ID ...] --work DIR --out FILE --seconds N [--phones 6]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from client.client import Client, ClientConfig
from common.signing import PublicKey

NEW_PHONE = 0.1  # chance, per app opened, that a phone is replaced by a new one
THINK = (0.1, 0.6)  # seconds between two opens of one phone


def differences(installed: Path, published: Path) -> list[str]:
    """What differs between two trees: paths missing, extra, or with other bytes."""
    got = {p.relative_to(installed).as_posix(): p for p in installed.rglob("*") if p.is_file()}
    want = {p.relative_to(published).as_posix(): p for p in published.rglob("*") if p.is_file()}
    out = [f"missing {p}" for p in sorted(want.keys() - got.keys())]
    out += [f"extra {p}" for p in sorted(got.keys() - want.keys())]
    out += [
        f"differs {p}"
        for p in sorted(got.keys() & want.keys())
        if got[p].read_bytes() != want[p].read_bytes()
    ]
    return out


class Phones:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.edges: list[str] = args.edge
        self.keys = (PublicKey.load(args.public_key),)
        self.published: Path = args.published
        self.apps: list[str] = args.app
        self.work: Path = args.work
        self.out = out
        self.deadline = time.monotonic() + args.seconds
        self.weights = list(itertools.accumulate(1 / rank for rank in range(1, len(self.apps) + 1)))
        self.ids = itertools.count()

    def record(self, **row: Any) -> None:
        self.out.write(json.dumps({"at": time.time(), **row}) + "\n")
        self.out.flush()

    async def phone(self, slot: int) -> None:
        rnd = random.Random(slot)
        while time.monotonic() < self.deadline:
            n = next(self.ids)
            home = self.work / f"phone-{n}"
            start = slot % len(self.edges)
            config = ClientConfig(
                edges=tuple(self.edges[start:] + self.edges[:start]),
                public_keys=self.keys,
                store_dir=home / "store",
            )
            async with Client(config) as client:
                for opened in self.opens(rnd):
                    await self.open(client, n, home, opened)
                    await asyncio.sleep(rnd.uniform(*THINK))
            await asyncio.to_thread(shutil.rmtree, home, True)

    def opens(self, rnd: random.Random) -> Iterator[str]:
        """Apps this phone opens, by popularity, until it is replaced or the run ends."""
        while time.monotonic() < self.deadline:
            yield self.apps[bisect.bisect_left(self.weights, rnd.random() * self.weights[-1])]
            if rnd.random() < NEW_PHONE:
                return

    async def open(self, client: Client, phone: int, home: Path, app: str) -> None:
        out = home / "apps" / app
        before = client.state.installed(out.absolute())
        t = time.monotonic()
        row: dict[str, Any] = {"phone": phone, "app": app}
        try:
            summary = await client.install(app, out)
        except Exception as exc:  # what the phone's user would see: after every retry
            self.record(
                **row,
                kind="failed",
                seconds=round(time.monotonic() - t, 3),
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        seconds = round(time.monotonic() - t, 3)
        kind = "install" if before is None else ("launch" if before.version == summary.version else "update")
        wrong = await asyncio.to_thread(differences, out, self.published / app / summary.version)
        self.record(
            **row,
            version=summary.version,
            kind=kind,
            seconds=seconds,
            plan=summary.plan,
            bytes=summary.bytes_downloaded,
            ok=not wrong,
            error=f"not the published files: {', '.join(wrong[:5])}" if wrong else None,
        )

    async def run(self, phones: int) -> None:
        await asyncio.gather(*(self.phone(i) for i in range(phones)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.phones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--edge", action="append", required=True)
    ap.add_argument("--public-key", type=Path, required=True)
    ap.add_argument("--published", type=Path, required=True)
    ap.add_argument("--app", action="append", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--phones", type=int, default=6)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as out:
        asyncio.run(Phones(args, out).run(args.phones))
    return 0


if __name__ == "__main__":
    sys.exit(main())
