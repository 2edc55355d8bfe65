"""Issue 16's choice of metadata format, by the numbers: what a phone pays in metadata under
each candidate design, computed from the real manifests of a published app.

``--collect DIR`` publishes ``loadtests.subapps``' app of ``--subpackages`` subpackages in
three versions (v2 changes ``sub/s0007``, v3 ten others; as ``bench_metadata``) and a second
app ``other`` (``build_app`` with the same library) to a real origin, waits for bundles and
deltas, and keeps each version's enriched manifest in DIR.  Then, for each design, the bytes
of metadata (ref included; bundles, deltas and chunks are the same in every design and left
out) of these rows:

    cold      cold open of the main package
    open      having the main package, open sub/s0500
    update    main + sub/s0007 held, v1 → v2 (sub/s0007 changed)
    nothing   main + sub/s0007 held, v2 → v3 (nothing it holds changed)
    share     app ``many``'s main package held, cold open of ``other`` (same library)

at the real size and at ``--scale`` packages (the real subpackages copied under new names,
ids drawn at random: the structure of a larger app, not its compressibility).

Designs: ``today`` (format 1: the version's whole manifest, zstd; dcz against the held one
for an update of the same app); ``index`` (a flat version index of every package's name and
ids, named by the ref; per-package manifests); ``bins`` (PEP 458's hashed bins: the ref names
a list of ~sqrt(n) bins, a bin lists its packages); ``merkle`` (the ref signs a Merkle root
over the packages' leaves; each leaf comes with its audit path, RFC 6962); ``heads`` (one
small signed head per package, bound to the version manifest the ref names: format 2).
Package manifests are zstd -19, or for an update dcz against the package manifest held.

    python -m loadtests.metadata_options --collect DIR [--subpackages 1000] [--scale 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import wire
from common.manifest import ChunkEntry, Manifest, PackageEntry, Ref, decode_manifest
from common.pkgmeta import Head, PackageMeta
from common.signing import SigningKey, seal

APP, OTHER = "many", "other"
VERSIONS = ("1.0.0", "1.0.1", "1.0.2")
ONE, OPENED = "sub/s0007", "sub/s0500"
MAIN = "__APP__"
LEVEL = 19


def collect(out: Path, subpackages: int) -> None:
    from loadtests.bench_delivery import _request, cdn, publish, wait_enriched
    from loadtests.data import build_app, chains, ensure_data
    from loadtests.subapps import build_subpackage_app

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    data, lib = ensure_data(), chains()["@vant/weapp"][-1]
    revisions: dict[str, dict[int, int]] = {
        "1.0.0": {},
        "1.0.1": {7: 1},
        "1.0.2": {7: 1, **{i: 1 for i in range(100, 110)}},
    }
    with cdn(work / "cdn") as (origin, _edge):
        for ver, revs in revisions.items():
            folder = build_subpackage_app(
                work / "apps" / ver, {"@vant/weapp": lib}, subpackages,
                app_name=APP, revisions=revs, data_dir=data,
            )
            publish(origin.url, APP, ver, folder)
        other = build_app(work / "apps" / OTHER, {"@vant/weapp": lib}, pages=3, data_dir=data, app_name=OTHER)
        publish(origin.url, OTHER, "1.0.0", other)
        wait_enriched(origin.url, APP, len(revisions))
        wait_enriched(origin.url, OTHER, 1)
        for name in (APP, OTHER):
            info = json.loads(_request("GET", f"{origin.url}/v1/apps/{name}"))
            for entry in info["versions"]:
                envelope = _request("GET", f"{origin.url}/v1/manifests/{entry['manifest']}")
                (out / f"{name}@{entry['version']}.manifest").write_bytes(envelope)
    shutil.rmtree(work)


def load(folder: Path) -> dict[str, Manifest]:
    out = {}
    for path in sorted(folder.glob("*.manifest")):
        body = wire.unpack(wire.unpack(path.read_bytes())["payload"])
        out[path.stem] = decode_manifest(body)
    return out


# -- encodings -----------------------------------------------------------------------------


def z(data: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=LEVEL).compress(data))


def dz(data: bytes, base: bytes) -> int:
    """dcz: a 40-byte header and a frame made with ``base`` as a raw-content dictionary."""
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return 40 + len(zstandard.ZstdCompressor(level=LEVEL, dict_data=d).compress(data))


def best(data: bytes, base: bytes | None) -> int:
    return min(z(data), dz(data, base)) if base is not None and len(base) >= 8 else z(data)


@dataclass
class Version:
    """One version, held as every design would publish it."""

    app: str
    version: str
    manifest: Manifest
    metas: dict[str, bytes]  # name → packed package manifest (format 2)
    content: dict[str, bytes]
    vid: bytes
    heads: dict[str, bytes]  # name → head envelope

    def meta_id(self, name: str) -> bytes:
        return hashlib.sha256(self.metas[name]).digest()

    def leaf(self, name: str) -> bytes:
        p = self.manifest.package(name)
        return wire.pack([name, p.independent, self.content[name], self.meta_id(name)])

    def names(self) -> list[str]:
        return sorted(self.metas, key=str.encode)


def build(m: Manifest, key: SigningKey, contents_by_manifest: dict[bytes, dict[str, bytes]]) -> Version:
    metas, content = {}, {}
    for p in m.packages:
        c = PackageMeta(p.name, p.files, p.chunks).content
        deltas = tuple(
            (contents_by_manifest.get(fm, {}).get(p.name, hashlib.sha256(fm + p.name.encode()).digest()),
             d, s)
            for fm, d, s in p.deltas
        )
        meta = PackageMeta(p.name, p.files, p.chunks, p.bundle, deltas)
        metas[p.name], content[p.name] = meta.pack(), c
    vid = hashlib.sha256(m.seal(key)).digest()  # the version manifest's id: what heads are "of"
    heads = {}
    for p in m.packages:
        pid = hashlib.sha256(metas[p.name]).digest()
        heads[p.name] = Head(vid, p.name, p.independent, content[p.name], pid).seal(key)
    return Version(m.app, m.version, m, metas, content, vid, heads)


def scaled(m: Manifest, n: int, rng: random.Random) -> Manifest:
    """``m`` with ``n`` subpackages: its own, then copies under new names with fresh ids."""
    subs = [p for p in m.packages if p.name != MAIN]
    out = [m.package(MAIN), *subs]
    i = len(subs)
    while len(out) - 1 < n:
        src = subs[i % len(subs)]
        root = f"sub/s{i:05d}"
        files = tuple((root + path[len(src.name) :], size) for path, size in src.files)
        chunks = tuple(ChunkEntry(rng.randbytes(32), c.raw_size, c.stored_size) for c in src.chunks)
        bundle = (rng.randbytes(32), src.bundle[1]) if src.bundle else None
        deltas = tuple((rng.randbytes(32), rng.randbytes(32), s) for _, _, s in src.deltas)
        out.append(PackageEntry(root, src.independent, files, chunks, bundle, deltas))
        i += 1
    return Manifest(m.app, m.version, m.created, tuple(out), m.preload)


# -- the designs ---------------------------------------------------------------------------


def ref1(m: Manifest, key: SigningKey) -> int:
    """A ref as format 1 had it: no heads."""
    ref = Ref(m.app, "release", 12, 1_800_000_000, 1_800_086_400, m.version, os.urandom(32), heads=b"")
    body = ref.to_wire()
    del body["heads"]
    return len(seal(key, body))


def ref2(v: Version, key: SigningKey) -> int:
    """A ref naming what the design needs besides the version manifest (an index, bins, a
    root or heads: one id)."""
    ref = Ref(v.app, "release", 12, 1_800_000_000, 1_800_086_400, v.version, v.vid, heads=os.urandom(32))
    return len(ref.seal(key))


def envelope1(m: Manifest, key: SigningKey) -> bytes:
    return m.seal(key)


def index_doc(v: Version, names: list[str] | None = None) -> bytes:
    names = names if names is not None else v.names()
    return wire.pack([wire.unpack(v.leaf(n)) for n in names])


def bins_of(v: Version) -> tuple[int, dict[int, list[str]]]:
    count = 1 << max(0, math.ceil(math.log2(math.sqrt(len(v.metas)))))
    bins: dict[int, list[str]] = {}
    for n in v.names():
        bins.setdefault(int.from_bytes(hashlib.sha256(n.encode()).digest()[:4], "big") % count, []).append(n)
    return count, bins


def bin_of(name: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % count


def proof_nodes(size: int, indexes: set[int]) -> int:
    """Hashes an RFC 6962 multiproof of ``indexes`` in a tree of ``size`` leaves carries:
    the siblings of the paths from those leaves that no other path supplies."""
    known = set(indexes)
    level, width, nodes = known, size, 0
    while width > 1:
        parents = set()
        for i in level:
            sib = i ^ 1
            if sib < width and sib not in level:
                nodes += 1
            parents.add(i // 2)
        level, width = parents, (width + 1) // 2
    return nodes


def metadata(
    design: str, key: SigningKey, have: Version | None, new: Version, held: list[str], want: list[str]
) -> int:
    """Bytes of metadata for a phone that holds ``held`` packages of ``have`` and wants
    ``want`` of ``new`` (``have`` may be another app: then nothing of it is comparable but
    package manifests, as a dictionary)."""
    same_app = have is not None and have.app == new.app
    changed = [
        n for n in want
        if not (same_app and n in held and have is not None and have.content[n] == new.content[n])
    ]

    def metas() -> int:
        total = 0
        for n in changed:
            base = None
            if have is not None:
                base = have.metas.get(n) if same_app else have.metas.get(MAIN)
            total += best(new.metas[n], base)
        return total

    if design == "today":
        env = envelope1(new.manifest, key)
        if same_app and have is not None and have.version == new.version:
            return ref1(new.manifest, key)
        base = envelope1(have.manifest, key) if same_app and have is not None else None
        return ref1(new.manifest, key) + best(env, base)
    r = ref2(new, key)
    if design == "index":
        if same_app and have is not None and have.version == new.version:
            return r + metas()
        base = index_doc(have) if same_app and have is not None else None
        return r + best(index_doc(new), base) + metas()
    if design == "bins":
        count, bins = bins_of(new)
        top = wire.pack([os.urandom(32) for _ in range(count)])
        total = r
        if not (same_app and have is not None and have.version == new.version):
            total += z(top) if not same_app else len(top) // 2  # about half the bins change
            for b in {bin_of(n, count) for n in want}:
                doc = index_doc(new, bins[b])
                base = index_doc(have, bins[b]) if same_app and have is not None else None
                total += best(doc, base)
        return total + metas()
    if design == "merkle":
        names = new.names()
        where = {n: i for i, n in enumerate(names)}
        leaves = sum(len(new.leaf(n)) for n in want)
        return r + leaves + 32 * proof_nodes(len(names), {where[n] for n in want}) + metas()
    if design == "heads":
        return r + sum(len(new.heads[n]) for n in want) + metas()
    raise ValueError(design)


DESIGNS = ("today", "index", "bins", "merkle", "heads")


def rows(ms: dict[str, Manifest], key: SigningKey, scale: int | None) -> dict[str, dict[str, int]]:
    rng = random.Random(16)
    many = [ms[f"{APP}@{v}"] for v in VERSIONS]
    if scale:
        # the same copies in every version: copies of s0007 and s0100..s0109 change with them
        grown = []
        for m in many:
            grown.append(scaled(m, scale, random.Random(16)))
        many = grown
    contents: dict[bytes, dict[str, bytes]] = {}
    versions = []
    for m in many:
        v = build(m, key, contents)
        contents[hashlib.sha256(envelope1(m, key)).digest()] = v.content
        versions.append(v)
    other = build(ms[f"{OTHER}@1.0.0"], key, {})
    v1, v2, v3 = versions
    cases = {
        "cold": (None, v1, [], [MAIN]),
        "open": (v1, v1, [MAIN], [OPENED]),
        "update": (v1, v2, [MAIN, ONE], [MAIN, ONE]),
        "nothing": (v2, v3, [MAIN, ONE], [MAIN, ONE]),
        "share": (v1, other, [MAIN], [MAIN]),
    }
    del rng
    return {
        design: {row: metadata(design, key, *case) for row, case in cases.items()} for design in DESIGNS
    }


def table(result: dict[str, dict[str, int]], packages: int) -> str:
    lines = [
        f"Metadata bytes (ref included), {packages:,} subpackages:",
        "",
        "| design | " + " | ".join(("cold", "open", "update", "nothing", "share")) + " |",
        "|---|---|---|---|---|---|",
    ]
    for design, r in result.items():
        cells = " | ".join(f"{r[k]:,}" for k in ("cold", "open", "update", "nothing", "share"))
        lines.append(f"| {design} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", type=Path, required=True, help="folder of manifests (made when empty)")
    ap.add_argument("--subpackages", type=int, default=1000)
    ap.add_argument("--scale", type=int, default=10000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not any(a.collect.glob("*.manifest")):
        began = time.monotonic()
        collect(a.collect, a.subpackages)
        print(f"collected in {time.monotonic() - began:.1f} s")
    ms = load(a.collect)
    key = SigningKey(Ed25519PrivateKey.generate())
    out = {"real": rows(ms, key, None), "scaled": rows(ms, key, a.scale)}
    print(table(out["real"], a.subpackages))
    print()
    print(table(out["scaled"], a.scale))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
