"""Format 2's per-package metadata (common/pkgmeta.py), the open exchange (common/opening.py)
and the phone's verification of it (client/opened.py), without a server: every hostile
input refused with the error its class promises."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.opened import MAX_PACKAGE_MANIFEST, verify
from common import codec, wire
from common.errors import BadRequest, IntegrityError, RollbackRef, SignatureError, TooLarge, UnknownPackage
from common.ids import sha256
from common.manifest import MAIN_PACKAGE, ChunkEntry, Manifest, PackageEntry, Ref
from common.opening import (
    MAX_REQUEST,
    OpenRequest,
    compose,
    encode_sync,
    index_heads,
    pack_request,
    parse_request,
)
from common.pkgmeta import (
    PackageMeta,
    content_digest,
    contents_of,
    decode_package,
    open_head,
    open_package,
    owner_of,
    split,
)
from common.signing import SigningKey, generate_keypair, seal
from tests.tamper import flip_signature


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _pkg(name: str, files: dict[str, bytes], independent: bool = False, deltas: Any = ()) -> PackageEntry:
    stream = b"".join(files[p] for p in sorted(files))
    chunk = ChunkEntry(sha256(stream), len(stream), len(codec.compress(stream)))
    return PackageEntry(
        name, independent, tuple((p, len(files[p])) for p in sorted(files)), (chunk,), None, tuple(deltas)
    )


def _version(v: str, revision: bytes = b"") -> Manifest:
    return Manifest(
        "demo",
        v,
        1_800_000_000,
        (
            _pkg(MAIN_PACKAGE, {"app.js": b"main" * 40, "pages/index/index.js": b"index" * 30}),
            _pkg("sub/a", {"sub/a/p/index.js": b"a" * 50 + revision}),
            _pkg("sub/b", {"sub/b/p/index.js": b"b" * 60}, independent=True),
        ),
        {"sub/a/p/index": ("sub/b",)},
    )


class World:
    """A channel serving one version, as an edge would hold it: the objects by id."""

    def __init__(self, key: SigningKey, m: Manifest, serial: int = 7) -> None:
        self.key = key
        self.envelope = m.seal(key)
        self.mid = sha256(self.envelope)
        parts = split(m, self.mid, key, {})
        self.objects = {sha256(parts.heads): parts.heads, **parts.packages}
        self.hid = sha256(parts.heads)
        now = int(time.time())
        self.ref = Ref("demo", "release", serial, now, now + 3600, m.version, self.mid, heads=self.hid).seal(key)

    async def answer(self, req: OpenRequest) -> bytes:
        async def load(oid: bytes) -> bytes | None:
            return self.objects.get(oid)

        async def heads_of(hid: bytes) -> Any:
            return index_heads(self.objects[hid])

        async def encode(_mid: bytes, body: bytes, _b: bytes | None, base: bytes | None) -> tuple[str, bytes]:
            return encode_sync(body, base, level=3)

        return await compose(req, self.ref, heads_of, load, encode)

    def open(self, req: OpenRequest, held: dict[bytes, bytes] | None = None, **kw: Any) -> Any:
        data = asyncio.run(self.answer(req))
        return self.verify(data, req, held or {}, **kw)

    def verify(self, data: bytes, req: OpenRequest, held: dict[bytes, bytes], **kw: Any) -> Any:
        args: dict[str, Any] = dict(
            app="demo",
            channel="release",
            now=int(time.time()),
            highest=None,
            bucket=req.bucket,
            have=req.have or {},
            held=held.get,
            dictionary=req.dictionary,
        )
        return verify(data, [self.key.public], **{**args, **kw})


# -- the objects -------------------------------------------------------------------------


def test_split_gives_one_signed_head_per_package_bound_to_its_version(key: SigningKey) -> None:
    w = World(key, _version("1.0.0"))
    heads = index_heads(w.objects[w.hid])
    assert list(heads) == [MAIN_PACKAGE, "sub/a", "sub/b"]  # byte order of name
    for name, (envelope, _) in heads.items():
        head = open_head(envelope, [key.public])
        assert head.of == w.mid and head.name == name
        meta = open_package(w.objects[head.manifest], head.manifest)
        assert meta.content == head.content == content_digest(meta.files, meta.chunks, meta.preload)
    # a preload rule lives with the package of its page
    a = open_package(w.objects[heads["sub/a"][1].manifest], heads["sub/a"][1].manifest)
    assert a.preload == {"sub/a/p/index": ("sub/b",)}
    assert heads["sub/b"][1].independent and not heads["sub/a"][1].independent


def test_deltas_are_listed_by_the_content_they_apply_to(key: SigningKey) -> None:
    old, new = _version("1.0.0"), _version("1.0.1", b"!")
    old_mid = sha256(old.seal(key))
    delta = (old_mid, sha256(b"delta"), 12)
    withdelta = Manifest(
        new.app, new.version, new.created, tuple(p if p.name != "sub/a" else
                                                 PackageEntry(p.name, p.independent, p.files, p.chunks,
                                                              (sha256(b"bundle"), 30), (delta,))
                                                 for p in new.packages), new.preload)
    parts = split(withdelta, sha256(withdelta.seal(key)), key, {old_mid: contents_of(old)})
    metas = [decode_package(wire.unpack(b)) for b in parts.packages.values()]
    a = next(m for m in metas if m.name == "sub/a")
    assert a.deltas == ((contents_of(old)["sub/a"], sha256(b"delta"), 12),)
    assert contents_of(old)["sub/a"] != content_digest(old.package("sub/a").files, old.package("sub/a").chunks)
    with pytest.raises(ValueError):  # a delta from a manifest whose contents are not given
        split(withdelta, sha256(b"x"), key, {})


def test_a_package_manifest_is_refused_unless_it_is_the_one_its_id_names() -> None:
    meta = PackageMeta("sub/a", (("sub/a/x.js", 3),), (ChunkEntry(sha256(b"abc"), 3, 12),))
    body = meta.pack()
    assert open_package(body, sha256(body)) == meta
    with pytest.raises(IntegrityError):
        open_package(body, sha256(body + b" "))
    for change in (
        {"format": 1},  # a format this reader does not know
        {"files": [["../x", 3]]},  # a path that escapes
        {"files": [["a", 3], ["a", 0]]},  # twice
        {"files": [["a", 4]]},  # sizes that do not add up
        {"chunks": [[b"short", 3, 12]]},
        {"name": "/etc"},
        {"preload": {"p": "not a list"}},
    ):
        bad = wire.pack({**meta.to_wire(), **change})
        with pytest.raises(SignatureError):
            open_package(bad, sha256(bad))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}(/[a-z0-9][a-z0-9._-]{0,7}){0,3}", fullmatch=True),
        st.integers(0, 5000),
        max_size=12,
    ),
    st.booleans(),
)
def test_package_manifests_round_trip(files: dict[str, int], with_bundle: bool) -> None:
    total = sum(files.values())
    chunks = (ChunkEntry(sha256(str(total).encode()), total, total // 2 + 9),)
    meta = PackageMeta(
        "sub/x",
        tuple(sorted(files.items())),
        chunks,
        (sha256(b"b"), 77) if with_bundle else None,
        ((sha256(b"f"), sha256(b"d"), 5),),
        {"sub/x/p": ("sub/y",)},
    )
    body = meta.pack()
    assert open_package(body, sha256(body)) == meta
    assert meta.content == content_digest(meta.files, meta.chunks, meta.preload)


def test_owner_of_a_page_is_its_deepest_root() -> None:
    names = {MAIN_PACKAGE, "sub", "pkg/a"}
    assert owner_of("sub/p/index", names) == "sub"
    assert owner_of("pkg/a/x", names) == "pkg/a"
    assert owner_of("pkg/ab/x", names) == MAIN_PACKAGE
    assert owner_of("pages/index", names) == MAIN_PACKAGE


# -- the request -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"packages": "sub"},
        {"packages": ["../x"]},
        {"page": 7},
        {"page": "/../etc"},
        {"bucket": 100},
        {"bucket": True},
        {"have": [["sub", b"x" * 32]]},
        {"have": [["sub", b"x" * 31, b"y" * 32]]},
        {"dictionary": b"short"},
        {"surprise": 1},
        {"packages": ["x"] * 1025},
    ],
)
def test_a_bad_open_request_is_a_bad_request(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_request(msgpack.packb(body, use_bin_type=True))


def test_an_open_request_too_large_or_not_msgpack_is_refused() -> None:
    with pytest.raises(TooLarge):
        parse_request(b"\x90" * (MAX_REQUEST + 1))
    with pytest.raises(BadRequest):
        parse_request(b"\xc1")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_a_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_request(data)


def test_a_request_round_trips() -> None:
    req = OpenRequest(("sub/a",), "sub/a/p/index", 42, {"sub/a": (sha256(b"c"), sha256(b"m"))}, sha256(b"d"))
    assert parse_request(pack_request(req)) == req


# -- the answer, composed and verified ---------------------------------------------------


def test_a_cold_open_gets_the_main_package_and_nothing_else(key: SigningKey) -> None:
    w = World(key, _version("1.0.0"))
    opened = w.open(OpenRequest())
    assert list(opened.heads) == [MAIN_PACKAGE] and list(opened.metas) == [MAIN_PACKAGE]
    assert opened.mid == w.mid and opened.version == "1.0.0"


def test_a_page_brings_its_package_its_preload_and_the_main_package(key: SigningKey) -> None:
    w = World(key, _version("1.0.0"))
    opened = w.open(OpenRequest(page="sub/a/p/index"))
    assert set(opened.heads) == {MAIN_PACKAGE, "sub/a", "sub/b"}
    only_b = w.open(OpenRequest(packages=("sub/b",)))  # independent: alone
    assert list(only_b.heads) == ["sub/b"]
    with pytest.raises(UnknownPackage):
        asyncio.run(w.answer(OpenRequest(packages=("sub/zzz",))))


def test_what_the_phone_holds_unchanged_costs_a_head_and_no_manifest(key: SigningKey) -> None:
    v1, v2 = World(key, _version("1.0.0")), World(key, _version("1.0.1", b"!"), serial=8)
    first = v1.open(OpenRequest(packages=("sub/a",)))
    held = {**first.received}
    have = {n: (first.heads[n].content, first.meta_ids[n]) for n in first.heads}
    req = OpenRequest(have=have)
    data = asyncio.run(v2.answer(req))
    answer = msgpack.unpackb(data, raw=False)
    assert len(answer["heads"]) == 2 and [m[0] for m in answer["manifests"]] == [
        index_heads(v2.objects[v2.hid])["sub/a"][1].manifest
    ]  # only sub/a changed
    assert answer["manifests"][0][1] in ("dcz", "zstd", "identity")
    opened = v2.verify(data, req, held)
    assert opened.meta_ids[MAIN_PACKAGE] == first.meta_ids[MAIN_PACKAGE]  # the one held
    assert opened.metas["sub/a"].content != first.metas["sub/a"].content


BOMB = codec.compress(b"\0" * (MAX_PACKAGE_MANIFEST + 1), 1)  # declares 64 MiB + 1 in a few KiB


def _edited(w: World, req: OpenRequest, edit: Any) -> bytes:
    answer = msgpack.unpackb(asyncio.run(w.answer(req)), raw=False)
    return bytes(msgpack.packb(edit(answer), use_bin_type=True))


def test_mix_and_match_tampering_and_replays_are_refused(key: SigningKey) -> None:
    v1, v2 = World(key, _version("1.0.0")), World(key, _version("1.0.1", b"!"), serial=8)
    req = OpenRequest(packages=("sub/a",))
    old_heads = msgpack.unpackb(asyncio.run(v1.answer(req)), raw=False)
    cases: list[tuple[Any, type[Exception]]] = [
        # a head of another version (mix-and-match), with its own manifest
        (lambda a: {**a, "heads": old_heads["heads"], "manifests": old_heads["manifests"]}, IntegrityError),
        # a package manifest of another version under this version's head (sub/a changed)
        (lambda a: {**a, "manifests": [a["manifests"][0], [a["manifests"][1][0], *old_heads["manifests"][1][1:]]]},
         IntegrityError),
        # a manifest no head names
        (lambda a: {**a, "manifests": [*a["manifests"], old_heads["manifests"][1]]}, IntegrityError),
        # a head left without its manifest
        (lambda a: {**a, "manifests": a["manifests"][:1]}, IntegrityError),
        (lambda a: {**a, "heads": [flip_signature(a["heads"][0]), *a["heads"][1:]]}, SignatureError),
        (lambda a: {**a, "ref": flip_signature(a["ref"])}, SignatureError),
        (lambda a: {**a, "heads": [a["heads"][0], a["heads"][0], *a["heads"][1:]]}, IntegrityError),
        (lambda a: {**a, "manifests": [[m[0], "dcz", m[2]] for m in a["manifests"]]}, IntegrityError),
        (lambda a: {**a, "manifests": [[m[0], "zstd", b"\x28\xb5\x2f\xfd" + b"\0" * 9] for m in a["manifests"]]},
         IntegrityError),
        (lambda a: [a], IntegrityError),
        # more heads than any request can ask for: refused before a signature is checked
        (lambda a: {**a, "heads": [b"x"] * 4097}, IntegrityError),
        # a decompression bomb: a zstd frame declaring more than a package manifest may be
        (lambda a: {**a, "manifests": [[m[0], "zstd", BOMB] for m in a["manifests"]]}, IntegrityError),
    ]
    for edit, error in cases:
        with pytest.raises(error):
            v2.verify(_edited(v2, req, edit), req, {})
    v2.verify(_edited(v2, req, lambda a: a), req, {})  # untouched: accepted
    with pytest.raises(RollbackRef):  # an older ref than the phone has seen
        v1.verify(_edited(v1, req, lambda a: a), req, {}, highest=8)
    with pytest.raises(IntegrityError):  # another channel's ref
        v2.verify(_edited(v2, req, lambda a: a), req, {}, channel="beta")


def test_a_rollout_bucket_picks_the_rollout_version(key: SigningKey, tmp_path: Path) -> None:
    v1, v2 = World(key, _version("1.0.0")), World(key, _version("1.0.1", b"!"))
    from common.manifest import Rollout

    now = int(time.time())
    ref = Ref("demo", "release", 9, now, now + 60, "1.0.0", v1.mid,
              Rollout("1.0.1", v2.mid, 50, heads=v2.hid), heads=v1.hid).seal(key)
    both = World(key, _version("1.0.0"))
    both.objects = {**v1.objects, **v2.objects}
    both.ref = ref
    assert both.open(OpenRequest(bucket=10)).version == "1.0.1"
    assert both.open(OpenRequest(bucket=50)).version == "1.0.0"
    assert both.open(OpenRequest()).version == "1.0.0"


def test_a_signed_ref_that_is_not_format_2_is_refused(key: SigningKey) -> None:
    w = World(key, _version("1.0.0"))
    body = wire.unpack(wire.unpack(w.ref)["payload"])
    w.ref = seal(key, {**body, "format": 1})
    with pytest.raises(BadRequest):  # the server cannot route it
        asyncio.run(w.answer(OpenRequest()))


def test_a_changed_preload_rule_is_a_changed_package(key: SigningKey) -> None:
    """The same files with other preload rules: the phone is sent the new package manifest
    (it would otherwise go on with its old rules: the review found it)."""
    v1 = World(key, _version("1.0.0"))
    m2 = _version("1.0.1")
    v2 = World(key, Manifest(m2.app, m2.version, m2.created, m2.packages, {}), serial=8)  # the rule dropped
    first = v1.open(OpenRequest(packages=("sub/a",)))
    have = {n: (first.heads[n].content, first.meta_ids[n]) for n in first.heads}
    opened = v2.open(OpenRequest(page="sub/a/p/index", have=have), held=dict(first.received))
    assert opened.metas["sub/a"].preload == {} and set(opened.heads) == {MAIN_PACKAGE, "sub/a"}
    assert opened.meta_ids["sub/a"] != first.meta_ids["sub/a"]  # sent anew


def test_the_phone_refuses_an_answer_that_leaves_out_a_package_it_needs(key: SigningKey) -> None:
    """An edge that drops heads: the page's package, the main package a normal one needs,
    a package the page's preload rule names — each an IntegrityError (the next edge is
    tried), never a crash or a silent partial install (the review found all three)."""
    from client.client import select_packages

    w = World(key, _version("1.0.0"))
    page = "sub/a/p/index"
    req = OpenRequest(page=page)

    def without(*names: str) -> Any:
        def edit(a: dict[str, Any]) -> dict[str, Any]:
            kept = [h for h in a["heads"] if wire.unpack(wire.unpack(h)["payload"])["name"] not in names]
            ids = {wire.unpack(wire.unpack(h)["payload"])["manifest"] for h in kept}
            return {**a, "heads": kept, "manifests": [m for m in a["manifests"] if m[0] in ids]}

        return w.verify(_edited(w, req, edit), req, {})

    select_packages(without().manifest(), [], page)  # all there
    for dropped in ("sub/a", MAIN_PACKAGE, "sub/b"):
        with pytest.raises(IntegrityError):
            select_packages(without(dropped).manifest(), [], page)
    with pytest.raises(IntegrityError):
        select_packages(without("sub/b").manifest(), ["sub/b"], None)


def test_only_a_package_manifest_may_be_a_dictionary(key: SigningKey) -> None:
    v1, v2 = World(key, _version("1.0.0")), World(key, _version("1.0.1", b"!"), serial=8)
    first = v1.open(OpenRequest(packages=("sub/a",)))
    v2.objects.update(v1.objects)
    a_id, main_id = first.meta_ids["sub/a"], first.meta_ids[MAIN_PACKAGE]

    def coding(req: OpenRequest) -> str:  # of sub/a's manifest (the main package's comes first)
        return str(msgpack.unpackb(asyncio.run(v2.answer(req)), raw=False)["manifests"][-1][1])

    held = {"sub/a": (first.heads["sub/a"].content, a_id)}
    assert coding(OpenRequest(packages=("sub/a",), have=held)) == "dcz"  # its own: yes
    other = {"sub/a": (first.heads["sub/a"].content, main_id)}  # another package's manifest
    assert coding(OpenRequest(packages=("sub/a",), have=other)) != "dcz"
    assert coding(OpenRequest(packages=("sub/a",), dictionary=v1.hid)) != "dcz"  # a heads object
    assert coding(OpenRequest(packages=("sub/a",), dictionary=a_id)) == "dcz"  # any package manifest
    assert parse_request(msgpack.packb({"packages": ["", "/", "__APP__"]})).packages == (MAIN_PACKAGE,)


def test_the_origin_keeps_the_heads_it_used_last(key: SigningKey, tmp_path: Path) -> None:
    """The origin's index of heads objects is an LRU: one used all along stays while nine
    others pass through (it was first-in-first-out: each pass re-read and re-indexed it)."""
    from origin import paths
    from origin.opens import HEADS_HELD, Opener
    from origin.storage import FileStorage

    storage = FileStorage(tmp_path / "store")
    worlds = [World(key, _version(f"1.0.{i}", bytes([i]))) for i in range(HEADS_HELD + 1)]
    for w in worlds:
        storage.put(paths.manifest_key(w.hid.hex()), w.objects[w.hid])
    reads: list[str] = []
    real = storage.read

    def counted(k: str) -> Any:
        reads.append(k)
        return real(k)

    storage.read = counted  # type: ignore[method-assign,assignment]

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    opener = Opener(storage, run)

    async def go() -> None:
        hot = worlds[0].hid
        for w in worlds:
            await opener.heads_of(hot)
            await opener.heads_of(w.hid)
        await opener.heads_of(hot)

    asyncio.run(go())
    assert reads.count(paths.manifest_key(worlds[0].hid.hex())) == 1
