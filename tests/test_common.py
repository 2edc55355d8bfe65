"""The pure core of common/: codec, canonical msgpack, signing, manifests, refs, layout, config."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
import zstandard

from common import codec, fsutil, wire
from common.config import parse_duration, parse_listen, parse_size
from common.errors import (
    BadArchive,
    ConfigError,
    ExpiredRef,
    IntegrityError,
    InvalidId,
    InvalidName,
    RollbackRef,
    SignatureError,
    TooLarge,
    UnsafeArchive,
)
from common.fsutil import atomic_write, open_atomic, sweep_temp
from common.http import Unsatisfiable, accepts_zstd, etag_matches, parse_range
from common.ids import check_app, check_version, parse_hex_id, sha256
from common.manifest import (
    ChunkEntry,
    Manifest,
    PackageEntry,
    Ref,
    Rollout,
    in_rollout,
    open_manifest,
    open_ref,
)
from common.package import layout
from common.paths import check_relpath
from common.signing import PublicKey, SigningKey, generate_keypair, seal


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


# -- ids -----------------------------------------------------------------------------------


def test_hex_ids_are_64_lowercase_hex() -> None:
    assert parse_hex_id("ab" * 32) == bytes.fromhex("ab" * 32)
    for bad in ["", "ab", "AB" * 32, "g" * 64, "a" * 65, "../" + "a" * 61]:
        with pytest.raises(InvalidId):
            parse_hex_id(bad)


def test_app_and_version_grammar() -> None:
    assert check_app("demo") == "demo" and check_app("a.b-c_d9")
    for bad in ["", "Demo", "-x", "a" * 65, "a/b", "a b", "..x"[:1] + "/"]:
        with pytest.raises(InvalidName):
            check_app(bad)
    assert check_version("1.2.3+build.5")
    for bad in ["", "..", ".", "1/2", "1 2", "x" * 65]:
        with pytest.raises(InvalidName):
            check_version(bad)


# -- codec ---------------------------------------------------------------------------------


def test_codec_roundtrip_and_verification() -> None:
    raw = os.urandom(1000) * 20
    frame = codec.compress(raw, 3)
    cid = sha256(raw)
    assert codec.frame_content_size(frame) == len(raw)
    assert codec.decode_chunk(cid, frame) == raw
    with pytest.raises(IntegrityError):
        codec.decode_chunk(sha256(b"other"), frame)
    flipped = bytearray(frame)
    flipped[len(frame) // 2] ^= 0x40
    with pytest.raises(IntegrityError):
        codec.decode_chunk(cid, bytes(flipped))
    with pytest.raises(IntegrityError):
        codec.decode_chunk(cid, frame + frame)  # one frame, no trailing data


def test_codec_refuses_bombs_before_inflating() -> None:
    frame = codec.compress(bytes(8 << 20), 3)
    with pytest.raises(TooLarge):
        codec.decompress(frame, 1 << 20)
    with pytest.raises(IntegrityError):
        codec.decode_chunk(sha256(bytes(8 << 20)), frame)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compressobj().compress(b"x" * 100)
    with pytest.raises(IntegrityError):
        codec.frame_content_size(no_size + zstandard.ZstdCompressor(write_content_size=False).compressobj().flush())


# -- canonical msgpack and envelopes --------------------------------------------------------


def test_canonical_msgpack_is_order_independent() -> None:
    a = wire.pack({"b": 1, "a": [1, {"z": b"\x00", "y": "s"}]})
    b = wire.pack({"a": [1, {"y": "s", "z": b"\x00"}], "b": 1})
    assert a == b
    assert wire.unpack(a) == {"a": [1, {"y": "s", "z": b"\x00"}], "b": 1}


def test_envelope_signature_and_key_id(key: SigningKey) -> None:
    env = seal(key, {"x": 1})
    doc = wire.unpack(env)
    assert set(doc) == {"payload", "key_id", "signature"}
    assert doc["key_id"] == hashlib.sha256(key.public.raw).hexdigest()[:16]
    pub = key.public
    from common.signing import open_envelope

    assert open_envelope(env, [pub]) == {"x": 1}
    doc["payload"] = wire.pack({"x": 2})
    with pytest.raises(SignatureError):
        open_envelope(wire.pack(doc), [pub])
    with pytest.raises(SignatureError):
        open_envelope(env, [PublicKey(os.urandom(32))])


def test_keygen_writes_private_key_0600_and_hex_public_key(tmp_path: Path) -> None:
    key = generate_keypair(tmp_path)
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600
    assert (tmp_path / "signing.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PublicKey.load(tmp_path / "public.key") == key.public
    assert SigningKey.load(tmp_path / "signing.key").public == key.public
    with pytest.raises(ConfigError):
        generate_keypair(tmp_path)  # never overwrites a key


# -- manifests and refs -------------------------------------------------------------------


def _manifest() -> Manifest:
    raw = b"x" * 100
    c = ChunkEntry(sha256(raw), 100, 20)
    return Manifest("demo", "1.0.0", 1_700_000_000, (
        PackageEntry("__APP__", False, (("app.json", 60), ("app.js", 40)), (c,)),
        PackageEntry("sub", True, (), ()),
    ), {"pages/index/index": ("sub",)})


def test_manifest_roundtrip_and_id(key: SigningKey) -> None:
    m = _manifest()
    env = m.seal(key)
    assert open_manifest(env, [key.public], sha256(env)) == m
    with pytest.raises(SignatureError):
        open_manifest(env, [key.public], sha256(env + b"x"))
    body = wire.unpack(wire.unpack(env)["payload"])
    assert body["packages"][0]["chunks"][0][0] == sha256(b"x" * 100)  # ids are 32-byte binary
    assert body["format"] == 2 and body["preload"] == {"pages/index/index": ["sub"]}
    older = dict(body, format=1)  # a format this reader does not know: refused, by name
    with pytest.raises(SignatureError, match="format 1 is not one this reader knows"):
        open_manifest(seal(key, older), [key.public])


def test_manifest_reader_rejects_inconsistent_or_unsafe_bodies(key: SigningKey) -> None:
    good = _manifest().to_wire()
    bad_sizes = json.loads(json.dumps(good, default=lambda b: b.hex()))
    bad_sizes["packages"][0]["chunks"] = [[sha256(b"x"), 99, 20]]
    with pytest.raises(SignatureError):
        open_manifest(seal(key, bad_sizes), [key.public])
    escape = dict(good)
    escape["packages"] = [dict(good["packages"][0], files=[["../etc/passwd", 100]])]
    with pytest.raises(SignatureError):
        open_manifest(seal(key, escape), [key.public])
    unknown_keys = dict(good, future={"x": 1})  # readers ignore keys they do not know
    assert open_manifest(seal(key, unknown_keys), [key.public]).app == "demo"


def test_ref_freshness_and_rollback() -> None:
    now = int(time.time())
    ref = Ref("demo", "release", 5, now, now + 100, "1.0.0", sha256(b"m"), heads=sha256(b"h"))
    ref.check_fresh(now, None)
    ref.check_fresh(now, 5)
    with pytest.raises(RollbackRef):
        ref.check_fresh(now, 6)
    with pytest.raises(ExpiredRef):
        ref.check_fresh(now + 100, None)


def test_ref_roundtrip_and_rollout_formula(key: SigningKey) -> None:
    now = int(time.time())
    roll = Rollout("1.1.0", sha256(b"b"), 30, heads=sha256(b"hb"))
    ref = Ref("demo", "release", 1, now, now + 60, "1.0.0", sha256(b"a"), roll, heads=sha256(b"ha"))
    assert open_ref(ref.seal(key), [key.public]) == ref
    assert ref.target_of(29) == ("1.1.0", sha256(b"b"), sha256(b"hb"))
    assert ref.target_of(30) == ref.target_of(None) == ("1.0.0", sha256(b"a"), sha256(b"ha"))
    headless = ref.to_wire()
    del headless["heads"]  # format 2: a ref names its version's heads
    with pytest.raises(SignatureError):
        open_ref(seal(key, headless), [key.public])
    inside = 0
    for i in range(200):
        uid = f"user-{i}"
        expected = int(hashlib.sha256(f"demo:{uid}".encode()).hexdigest()[:8], 16) % 100 < 30
        assert in_rollout("demo", uid, 30) == expected
        version, _ = ref.target_for(uid)
        assert version == ("1.1.0" if expected else "1.0.0")
        inside += expected
    assert 30 < inside < 100
    assert ref.target_for(None)[0] == "1.0.0"


# -- package layout -------------------------------------------------------------------------


def test_layout_follows_app_json() -> None:
    app_json = json.dumps({
        "pages": ["pages/index/index"],
        "subPackages": [{"root": "packageA/", "name": "pa", "pages": ["x"]},
                        {"root": "moduleB", "pages": ["y"], "independent": True}],
        "preloadRule": {"pages/index/index": {"network": "all", "packages": ["pa", "moduleB", "__APP__"]}},
    }).encode()
    paths = ["pages/index/index.js", "app.json", "packageA/x.js", "moduleB/y.js", "packageAB/z.js", "Z.js"]
    lay = layout(paths, app_json)
    by = {p.name: p for p in lay.packages}
    assert by["__APP__"].files == ("Z.js", "app.json", "packageAB/z.js", "pages/index/index.js")  # byte order
    assert by["packageA"].files == ("packageA/x.js",) and not by["packageA"].independent
    assert by["moduleB"].independent
    assert lay.preload == {"pages/index/index": ("packageA", "moduleB", "__APP__")}
    lower = layout(["a/b.js"], json.dumps({"subpackages": [{"root": "a"}]}).encode())
    assert [p.name for p in lower.packages] == ["__APP__", "a"]
    assert layout(["x.js"], None).packages[0].files == ("x.js",)


@pytest.mark.parametrize("doc", [
    b"{not json", b"[]", json.dumps({"subPackages": "x"}).encode(),
    json.dumps({"subPackages": [{"root": "a"}, {"root": "a/b"}]}).encode(),
    json.dumps({"subPackages": [{"root": "../x"}]}).encode(),
    json.dumps({"preloadRule": {"p": {"packages": ["nope"]}}}).encode(),
])
def test_bad_app_json_is_a_bad_archive(doc: bytes) -> None:
    with pytest.raises(BadArchive):
        layout(["a/x.js"], doc)


def test_relpath_check() -> None:
    assert check_relpath("a/b.js") == "a/b.js"
    for bad in ["", "/a", "a/../b", "..", "a//b", "a\\b", "a/./b", "C:x", "a\x00"]:
        with pytest.raises(UnsafeArchive):
            check_relpath(bad)


# -- config and HTTP pieces -------------------------------------------------------------------


def test_sizes_durations_listen() -> None:
    assert parse_size("256MiB") == 256 << 20 and parse_size("10GiB") == 10 << 30
    assert parse_size("64MB") == 64_000_000 and parse_size(4096) == 4096 and parse_size("1.5KiB") == 1536
    assert parse_duration("7d") == 7 * 86400 and parse_duration("500ms") == 0.5
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080) and parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError, match="memory_size"):
        parse_size("lots", key="memory_size")
    with pytest.raises(ConfigError, match="listen"):
        parse_listen("8080")


def test_range_parsing_rfc9110() -> None:
    assert parse_range("bytes=0-9", 100) and parse_range("bytes=0-9", 100).end == 9  # type: ignore[union-attr]
    r = parse_range("bytes=-10", 100)
    assert r is not None and (r.start, r.end) == (90, 99)
    r = parse_range("bytes=95-200", 100)
    assert r is not None and (r.start, r.end) == (95, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: served whole
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=9-1", 100) is None
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-0", 100)


def test_accept_encoding_and_etags() -> None:
    class R:
        def __init__(self, v: str) -> None:
            self.headers = {"Accept-Encoding": v}

    assert accepts_zstd(R("gzip, zstd"))  # type: ignore[arg-type]
    assert not accepts_zstd(R("gzip, zstd;q=0"))  # type: ignore[arg-type]
    assert accepts_zstd(R("*"))  # type: ignore[arg-type]
    assert not accepts_zstd(R("gzip"))  # type: ignore[arg-type]
    assert etag_matches('W/"a", "b"', '"a"') and etag_matches("*", '"x"') and not etag_matches('"a"', '"b"')


def test_atomic_write_leaves_old_or_new_and_sweeps_temps(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f"
    atomic_write(target, b"one")
    with pytest.raises(RuntimeError), open_atomic(target) as f:
        f.write(b"two-partial")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"one"
    assert [p.name for p in target.parent.iterdir()] == ["f"]
    atomic_write(target, b"three", replace=False)  # first writer wins
    assert target.read_bytes() == b"one"
    (target.parent / ".tmp-f.abc").write_bytes(b"orphan")
    assert sweep_temp(tmp_path) == 1 and target.read_bytes() == b"one"


def test_write_once_goes_through_a_nameless_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write-once file is made with O_TMPFILE and linked in (issue 15): never a temp
    name in the directory, the first writer wins, a missing directory is made."""
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def recording(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", recording)
    target = tmp_path / "ab" / "f"
    assert atomic_write(target, b"one" * 5000, replace=False, durable=False)
    assert atomic_write(target, b"two", replace=False, durable=True) is False
    assert target.read_bytes() == b"one" * 5000 and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["f"]
    nameless = [p for p, flags in opened if flags & os.O_TMPFILE == os.O_TMPFILE]
    assert nameless == [str(target.parent)] * 3  # refused once (missing), then made, then again
    assert not any(os.path.basename(p).startswith(".tmp-") for p, _ in opened)


def test_write_once_falls_back_to_a_named_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where O_TMPFILE is refused (a filesystem without it), the named recipe is used."""
    real_open = os.open

    def refusing(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not here")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", refusing)
    target = tmp_path / "f"
    assert atomic_write(target, b"one", replace=False) and target.read_bytes() == b"one"
    assert atomic_write(target, b"two", replace=False) is False and target.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_once_where_linking_through_proc_is_refused_uses_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox may refuse linkat through /proc/self/fd: that write and every later one
    go the named way, and none is lost."""
    monkeypatch.setattr(fsutil, "_proc_fds", 0)  # restored afterwards, with its descriptor
    real_link = os.link
    refused: list[str] = []

    def link(src, dst, *, src_dir_fd=None, **kw):  # type: ignore[no-untyped-def]
        if src_dir_fd is not None:
            refused.append(os.fspath(dst))
            raise PermissionError(errno.EPERM, "not through /proc")
        return real_link(src, dst, src_dir_fd=src_dir_fd, **kw)

    monkeypatch.setattr(os, "link", link)
    assert atomic_write(tmp_path / "a", b"one", replace=False)
    assert atomic_write(tmp_path / "b", b"two", replace=False)
    assert (tmp_path / "a").read_bytes() == b"one" and (tmp_path / "b").read_bytes() == b"two"
    assert refused == [str(tmp_path / "a")] and fsutil._proc_fds == -1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_write_once_in_a_forked_child_links_its_own_file(tmp_path: Path) -> None:
    """/proc/self/fd is opened once per process: a forked child must not use its parent's
    (it would link the parent's descriptor of that number, or fail)."""
    atomic_write(tmp_path / "parent", b"parent", replace=False)  # the parent opened its own
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            atomic_write(tmp_path / "child", b"child", replace=False)
            code = 0 if (tmp_path / "child").read_bytes() == b"child" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "child").read_bytes() == b"child"


def test_package_lookup_does_not_scan_every_package() -> None:
    """Enrichment and the client look up each package of apps with up to 10,000 of them:
    a scan per lookup made that quadratic (counted here as passes over the packages)."""

    class Counted(tuple):  # type: ignore[type-arg]
        passes = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Counted.passes += 1
            return super().__iter__()

    packages = Counted(PackageEntry(f"p{i}", False, (), ()) for i in range(10_000))
    m = Manifest("a", "1", 0, packages)
    Counted.passes = 0
    assert all(m.package(f"p{i}").name == f"p{i}" for i in range(10_000))
    assert Counted.passes <= 1
