"""An open answer (common/opening.py), verified: what the phone may trust of the version a
channel names for it, package by package (docs/client.md "Opening an app").

    ref        signature, app and channel, expiry, serial not below the highest seen
    heads      signature, ``of`` equal to the version manifest the ref names for this user,
               one per name
    manifests  each named by a head, its bytes hashing to that id once decoded, its content
               digest and name the head's; a head without one must be a package the phone
               holds with the same content (its manifest then comes from the store)

Pure but for the ``held`` lookup: no network, no files written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.errors import IntegrityError
from common.manifest import Manifest, PackageEntry, Ref, open_ref
from common.opening import decode_item, read_answer
from common.pkgmeta import Head, PackageMeta, open_head, open_package
from common.signing import PublicKey

__all__ = ["MAX_PACKAGE_MANIFEST", "Opened", "verify"]

MAX_PACKAGE_MANIFEST = 64 << 20


@dataclass(frozen=True)
class Opened:
    ref: Ref
    version: str
    mid: bytes  # the version manifest the ref names for this user
    heads: dict[str, Head]
    metas: dict[str, PackageMeta]  # every package of ``heads``
    meta_ids: dict[str, bytes]  # the id of each: the one sent, else the one the store holds
    received: dict[bytes, bytes]  # package manifest id → bytes, the ones the edge sent

    def manifest(self) -> Manifest:
        """The version as far as this phone knows it: the packages it was sent heads for,
        each with its deltas listed by the content they apply to."""
        packages = tuple(
            PackageEntry(n, self.heads[n].independent, m.files, m.chunks, m.bundle, m.deltas)
            for n, m in self.metas.items()
        )
        preload = {page: names for m in self.metas.values() for page, names in m.preload.items()}
        return Manifest(self.ref.app, self.version, 0, packages, preload)


def verify(
    data: bytes,
    keys: Iterable[PublicKey],
    *,
    app: str,
    channel: str,
    now: int,
    highest: int | None,
    bucket: int | None,
    have: dict[str, tuple[bytes, bytes]],
    held: Callable[[bytes], bytes | None],
    dictionary: bytes | None = None,
) -> Opened:
    """Check an answer (see the module's doc); IntegrityError, SignatureError or a
    RefRejected otherwise, so that the next edge is tried.  ``have``: name → (content,
    package manifest id) the phone holds; ``held(id)``: a package manifest from its store."""
    keys = list(keys)
    answer = read_answer(data)
    ref = open_ref(answer.ref, keys)
    if ref.app != app or ref.channel != channel:
        raise IntegrityError(f"ref names {ref.app}/{ref.channel}, not {app}/{channel}")
    ref.check_fresh(now, highest)
    version, mid, _heads = ref.target_of(bucket)
    heads: dict[str, Head] = {}
    for envelope in answer.heads:
        head = open_head(envelope, keys)
        if head.of != mid:
            raise IntegrityError(f"head of {head.name!r} belongs to another version than the ref names")
        if head.name in heads:
            raise IntegrityError(f"two heads for package {head.name!r}")
        heads[head.name] = head
    by_id = {h.manifest: h for h in heads.values()}
    metas: dict[str, PackageMeta] = {}
    ids: dict[str, bytes] = {}
    received: dict[bytes, bytes] = {}
    for pid, coding, body in answer.manifests:
        named = by_id.get(pid)
        if named is None or named.name in metas:
            raise IntegrityError(f"package manifest {pid.hex()} is named by no head sent (or twice)")
        base_id = have[named.name][1] if named.name in have else dictionary
        base = held(base_id) if base_id is not None else None
        raw = decode_item(coding, body, base, MAX_PACKAGE_MANIFEST)
        meta = open_package(raw, pid)
        if meta.name != named.name or meta.content != named.content:
            raise IntegrityError(f"package manifest {pid.hex()} is not the content its head names")
        metas[named.name], received[pid], ids[named.name] = meta, raw, pid
    for name, head in heads.items():
        if name in metas:
            continue
        mine = have.get(name)
        stored = held(mine[1]) if mine is not None and mine[0] == head.content else None
        if mine is None or stored is None:
            raise IntegrityError(f"the answer holds no manifest of package {name!r}, and this phone has none")
        meta = open_package(stored, mine[1])
        if meta.content != head.content:
            raise IntegrityError(f"the stored manifest of package {name!r} is not its content")
        metas[name], ids[name] = meta, mine[1]
    return Opened(ref, version, mid, heads, metas, ids, received)
