"""``POST /v1/apps/{app}/channels/{channel}/open`` (docs/design.md "Opening an app"): in one
round trip, the channel's ref, the heads of the packages a phone opens or holds, and the
package manifests of those whose content it lacks.  The phone then fetches bundles,
deltas or chunks: two round trips in all.

Edge and origin both answer it, by ``compose``, from objects they already serve: the ref,
the heads object and package manifests (each loaded through the server's own cache and
checked there against its id).  Neither verifies a signature (an edge holds no key): the
phone verifies everything (``read_answer`` only parses).

    request   msgpack map, at most MAX_REQUEST bytes:
              {"packages": [name, ...],   # packages to open (may be empty)
               "page": str | nil,          # a page to open: its package and its preloadRule
               "bucket": 0..99 | nil,      # the user's rollout bucket (nil: no rollout)
               "have": [[name, content, manifest], ...],   # what the phone holds
               "dictionary": id | nil}     # a package manifest it holds, for dcz of others
    answer    msgpack map {"ref": ref envelope, "heads": [head envelope, ...],
                           "manifests": [[id, coding, bytes], ...]}
              coding "identity", "zstd" or "dcz" (RFC 9842's body, against the package
              manifest the phone holds of that name, else ``dictionary``)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common import codec, dcz, signing, wire
from common.errors import BadRequest, IntegrityError, MinicdnError, NotFound, TooLarge, UnknownPackage
from common.manifest import MAIN_PACKAGE, Ref, decode_ref
from common.paths import check_relpath
from common.pkgmeta import FORMAT, Head, decode_head, decode_heads, owner_of

__all__ = [
    "MAX_ANSWER",
    "MAX_REQUEST",
    "Answer",
    "HeadsIndex",
    "OpenRequest",
    "compose",
    "index_heads",
    "pack_request",
    "parse_request",
    "read_answer",
]

MAX_REQUEST = 256 << 10
MAX_NAMES = 1024  # packages a request may name or hold
MAX_ANSWER = 64 << 20
# heads an answer may carry: what a request can name (packages, holds, a page's owner and
# its preload rule, the main package) is far below; each costs the phone a signature check
MAX_HEADS_SENT = 4 * MAX_NAMES
CODINGS = ("identity", "zstd", "dcz")
MIN_DCZ = 8  # bytes: a dictionary must be at least this long (common.dcz)
MAX_DICTIONARY = 4 << 20  # bytes: a package manifest of ~40,000 files
MAX_DCZ = 8  # dictionaries one answer may use (each read, checked, a level-19 encode); the rest: zstd

# name → (head envelope, its head decoded, unverified)
HeadsIndex = dict[str, tuple[bytes, Head]]


@dataclass(frozen=True)
class OpenRequest:
    packages: tuple[str, ...] = ()
    page: str | None = None
    bucket: int | None = None
    have: dict[str, tuple[bytes, bytes]] | None = None  # name → (content, manifest id)
    dictionary: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "packages": list(self.packages),
            "page": self.page,
            "bucket": self.bucket,
            "have": [[n, c, m] for n, (c, m) in (self.have or {}).items()],
            "dictionary": self.dictionary,
        }


def pack_request(req: OpenRequest) -> bytes:
    return wire.pack(req.to_wire())


def _name(v: Any) -> str:
    if not isinstance(v, str):
        raise BadRequest("open: a package name must be a string")
    if v.strip("/") in ("", MAIN_PACKAGE):  # "" and "/" name the main package, as --package does
        return MAIN_PACKAGE
    try:
        return check_relpath(v.strip("/"))
    except MinicdnError as exc:
        raise BadRequest(f"open: package name {v[:80]!r} is not a safe relative path") from exc


def _opt_id(v: Any, what: str) -> bytes | None:
    if v is None:
        return None
    if not isinstance(v, bytes) or len(v) != 32:
        raise BadRequest(f"open: {what} must be a 32-byte id")
    return v


def parse_request(body: bytes) -> OpenRequest:
    """A request body, every field checked: BadRequest (400) names what is wrong."""
    if len(body) > MAX_REQUEST:
        raise TooLarge(f"open: a request body may have at most {MAX_REQUEST} bytes")
    d = wire.unpack(body, what="open request")
    if not isinstance(d, dict):
        raise BadRequest("open: the body is not a msgpack map")
    unknown = set(d) - {"packages", "page", "bucket", "have", "dictionary"}
    if unknown:
        raise BadRequest(f"open: unknown field {sorted(map(str, unknown))[0][:40]!r}")
    packages = d.get("packages") or []
    if not isinstance(packages, list) or len(packages) > MAX_NAMES:
        raise BadRequest(f"open: 'packages' must be a list of at most {MAX_NAMES} names")
    page = d.get("page")
    if page is not None:
        if not isinstance(page, str):
            raise BadRequest("open: 'page' must be a string")
        try:
            page = check_relpath(page.strip("/"))
        except MinicdnError as exc:
            raise BadRequest(f"open: page {page[:80]!r} is not a safe relative path") from exc
    bucket = d.get("bucket")
    if bucket is not None and (
        not isinstance(bucket, int) or isinstance(bucket, bool) or not 0 <= bucket <= 99
    ):
        raise BadRequest("open: 'bucket' must be an integer from 0 to 99")
    have_list = d.get("have") or []
    if not isinstance(have_list, list) or len(have_list) > MAX_NAMES:
        raise BadRequest(f"open: 'have' must be a list of at most {MAX_NAMES} entries")
    have: dict[str, tuple[bytes, bytes]] = {}
    for entry in have_list:
        if not isinstance(entry, list) or len(entry) != 3:
            raise BadRequest("open: a 'have' entry is [name, content, manifest]")
        content, manifest = _opt_id(entry[1], "a content digest"), _opt_id(entry[2], "a manifest id")
        if content is None or manifest is None:
            raise BadRequest("open: a 'have' entry is [name, content, manifest]")
        have[_name(entry[0])] = (content, manifest)
    return OpenRequest(
        tuple(dict.fromkeys(_name(n) for n in packages)),
        page,
        bucket,
        have,
        _opt_id(d.get("dictionary"), "'dictionary'"),
    )


def index_heads(data: bytes) -> HeadsIndex:
    """A heads object, indexed by name (signatures unchecked: the phone checks them)."""
    out: HeadsIndex = {}
    for envelope in decode_heads(data):
        head = decode_head(signing.payload_of(envelope, what="head"))
        out[head.name] = (envelope, head)
    return out


def ref_of(envelope: bytes) -> Ref:
    """A ref envelope's body, decoded but not verified (for routing only)."""
    return decode_ref(signing.payload_of(envelope, what="ref"))


Load = Callable[[bytes], Awaitable[bytes | None]]  # a manifest-kind object by id, or None
Heads = Callable[[bytes], Awaitable[HeadsIndex]]  # a heads object by id, indexed
# (manifest id, its bytes, dictionary id, dictionary bytes) → (coding, bytes): the server's
# smallest encoding, which it may cache by the two ids
Encode = Callable[[bytes, bytes, bytes | None, bytes | None], Awaitable[tuple[str, bytes]]]


async def compose(
    req: OpenRequest, ref_envelope: bytes, heads_of: Heads, load: Load, encode: Encode
) -> bytes:
    """The answer to ``req`` for the channel whose ref is ``ref_envelope``.  NotFound for a
    package the version does not have; what ``load`` or ``heads_of`` raise passes through."""
    ref = ref_of(ref_envelope)
    version, _manifest, heads_id = ref.target_of(req.bucket)
    heads = await heads_of(heads_id)
    have = req.have or {}
    chosen: list[str] = []
    for name in req.packages:
        if name not in heads:
            raise UnknownPackage(f"{ref.app}@{version} has no package {name!r}")
        chosen.append(name)
    metas: dict[str, bytes] = {}
    if req.page is not None:
        owner = owner_of(req.page, set(heads))
        chosen.append(owner)
        body = await _load(load, heads[owner][1].manifest)
        metas[owner] = body
        chosen += [n for n in _preload_of(body, req.page) if n in heads]
    chosen += [n for n in have if n in heads]
    if not chosen or any(not heads[n][1].independent for n in chosen):
        chosen.append(MAIN_PACKAGE)
    names = sorted(set(chosen), key=lambda n: (n != MAIN_PACKAGE, n.encode()))
    out_heads, out_manifests = [], []
    dictionaries = MAX_DCZ
    for name in names:
        envelope, head = heads[name]
        out_heads.append(envelope)
        held = have.get(name)
        if held is not None and held[0] == head.content:
            continue
        body = metas.get(name) or await _load(load, head.manifest)
        base_id = held[1] if held is not None else req.dictionary
        base = None
        if base_id is not None and base_id != head.manifest and dictionaries > 0:
            dictionaries -= 1
            base = await load(base_id)
            # only a package manifest (of this package, when the phone says it holds one)
            if base is not None and not _dictionary_for(base, name if held is not None else None):
                base = None
        coding, data = await encode(head.manifest, body, base_id if base is not None else None, base)
        out_manifests.append([head.manifest, coding, data])
    return wire.pack({"ref": ref_envelope, "heads": out_heads, "manifests": out_manifests})


def _preload_of(body: bytes, page: str) -> list[str]:
    """The names a package manifest's preload rule for ``page`` gives (only that field is
    read: the phone checks the whole manifest; a server need not, per request)."""
    doc = wire.unpack(body, what="package manifest")
    rules = doc.get("preload") if isinstance(doc, dict) else None
    names = rules.get(page) if isinstance(rules, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _dictionary_for(base: bytes, name: str | None) -> bool:
    """Whether ``base`` may be a dcz dictionary: a package manifest of at most
    MAX_DICTIONARY bytes, named ``name`` when given.  Anything else (a heads object, a
    version manifest, another package's manifest) would only let a request make the
    server compress against large objects of its choosing."""
    if not MIN_DCZ <= len(base) <= MAX_DICTIONARY:
        return False
    try:
        d = wire.unpack(base, what="dictionary")
    except BadRequest:
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT and (name is None or d.get("name") == name)


async def _load(load: Load, oid: bytes) -> bytes:
    body = await load(oid)
    if body is None:
        raise NotFound(f"package manifest {oid.hex()} is not stored")
    return body


def encode_sync(body: bytes, dictionary: bytes | None, level: int = 19) -> tuple[str, bytes]:
    """The smallest of identity, zstd and (with a dictionary) dcz."""
    best = ("identity", body)
    z = codec.compress(body, level)
    if len(z) < len(best[1]):
        best = ("zstd", z)
    if dictionary is not None:
        d = dcz.encode(body, dictionary, level)
        if len(d) < len(best[1]):
            best = ("dcz", d)
    return best


@dataclass(frozen=True)
class Answer:
    ref: bytes
    heads: list[bytes]
    manifests: list[tuple[bytes, str, bytes]]


def read_answer(data: bytes) -> Answer:
    """An answer's parts, parsed and bounded, nothing verified (``decode_item`` inflates)."""
    if len(data) > MAX_ANSWER:
        raise IntegrityError(f"open: answer larger than {MAX_ANSWER} bytes")
    try:
        d = wire.unpack(data, what="open answer")
    except BadRequest as exc:
        raise IntegrityError(exc.message) from exc
    if not isinstance(d, dict) or not isinstance(d.get("ref"), bytes):
        raise IntegrityError("open: the answer is not {ref, heads, manifests}")
    heads, manifests = d.get("heads"), d.get("manifests")
    if not isinstance(heads, list) or not all(isinstance(h, bytes) for h in heads):
        raise IntegrityError("open: 'heads' is not a list of envelopes")
    if len(heads) > MAX_HEADS_SENT:  # each costs the phone a signature check
        raise IntegrityError(f"open: more than {MAX_HEADS_SENT} heads")
    if not isinstance(manifests, list):
        raise IntegrityError("open: 'manifests' is not a list")
    items = []
    for m in manifests:
        if (
            not isinstance(m, list)
            or len(m) != 3
            or not isinstance(m[0], bytes)
            or len(m[0]) != 32
            or m[1] not in CODINGS
            or not isinstance(m[2], bytes)
        ):
            raise IntegrityError("open: a manifest entry is not [id, coding, bytes]")
        items.append((m[0], m[1], m[2]))
    return Answer(d["ref"], heads, items)


def decode_item(coding: str, data: bytes, dictionary: bytes | None, max_size: int) -> bytes:
    """A manifest entry's bytes, inflated (bounded by ``max_size``); IntegrityError if the
    coding needs a dictionary the phone did not offer, or the bytes are corrupt."""
    try:
        if coding == "identity":
            return data
        if coding == "zstd":
            return codec.decompress(data, max_size)
        if dictionary is None:
            raise IntegrityError("open: a dcz manifest against no dictionary this phone offered")
        return dcz.decode(data, dictionary, max_size)
    except TooLarge as exc:
        raise IntegrityError(f"open: {exc.message}") from exc
