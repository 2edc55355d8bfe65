"""The origin's operator views behind the console, over HTTP to a real origin process:
paging ``/v1/apps`` (10,000 apps), a version's sizes, what an update costs and which files
it changes, the QR codes and their deep links (decoded by zbarimg), the token check, the
console's files and headers, and a JSON 4xx for every bad input.  The pure parts
(origin/listing.py, origin/qr.py, origin/compare.py) are tested synchronously too."""

from __future__ import annotations

import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.plan import CHUNK_OVERHEAD as CLIENT_CHUNK_OVERHEAD
from client.plan import choose, options
from common.errors import BadRequest, ConfigError
from common.listing import MAX_LIMIT, Page, page, parse_page
from common.manifest import Manifest, open_manifest
from common.signing import PublicKey
from origin import paths
from origin.compare import CHUNK_OVERHEAD, file_digests
from origin.console import CSP, FILES
from origin.qr import DEFAULT_QR_URL, LinkTemplate, draw
from tests.conftest import REPO, TOKEN, auth, http, publish, set_channel, tar_gz_of
from tests.console_support import ADDED, CHANGED, REMOVED, Demo, decode_qr, publish_demo
from tests.procs import MINICDN, Service, origin_service

# -- pure: paging, links, digests -------------------------------------------------------------

NAMES = sorted(["a", "a-1", "a.b", "ab", "b", "b0", "ba", "c9", "z"])


@given(
    st.sampled_from(["", "a", "a.", "b", "c", "q", "z"]),
    st.integers(1, 12),
    st.sampled_from([None, "a", "a-1", "ab", "b", "b5", "zz"]),
)
def test_a_page_is_the_sorted_slice_after_the_cursor(prefix: str, limit: int, cursor: str | None) -> None:
    want = [n for n in NAMES if n.startswith(prefix) and (cursor is None or n > cursor)]
    got, after = page(NAMES, Page(prefix, limit, cursor))
    assert got == want[:limit]
    assert after == (got[-1] if len(want) > limit else None)


def test_paging_to_the_end_lists_every_name_once() -> None:
    seen, cursor = [], None
    while True:
        got, cursor = page(NAMES, Page("", 2, cursor))
        seen += got
        if cursor is None:
            break
    assert seen == NAMES


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": str(MAX_LIMIT + 1)},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "１０"},  # full-width digits: isdigit() says yes
        {"limit": "00000000001"},
        {"prefix": "Upper"},
        {"prefix": "a/b"},
        {"prefix": "-x"},
        {"prefix": "a" * 65},
        {"cursor": ""},
        {"cursor": "../x"},
        {"cursor": "NOT"},
    ],
)
def test_bad_paging_parameters_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse_page(query, dict.fromkeys(query, 1))


def test_paging_parameters_given_twice_are_refused() -> None:
    with pytest.raises(BadRequest, match="more than once"):
        parse_page({"limit": "5"}, {"limit": 2})


def test_no_paging_parameter_is_the_bare_listing() -> None:
    assert parse_page({"other": "1"}, {"other": 1}) is None
    assert parse_page({"prefix": ""}, {"prefix": 1}) == Page("", 100, None)


def test_the_default_link_names_the_app_and_the_channel_or_the_version() -> None:
    t = LinkTemplate()
    assert t.text == DEFAULT_QR_URL
    assert t.link("demo", channel="release") == "minicdn://open?app=demo&channel=release"
    assert t.link("demo", version="1.2.3+build.5") == "minicdn://open?app=demo&version=1.2.3%2Bbuild.5"
    with pytest.raises(ValueError):
        t.link("demo")
    with pytest.raises(ValueError):
        t.link("demo", channel="release", version="1")


def test_a_template_fills_every_placeholder_where_it_stands() -> None:
    t = LinkTemplate("https://m.example.test/p/{app}/{channel}?v={version}&x=1#{app}")
    assert t.link("shop", channel="beta") == "https://m.example.test/p/shop/beta?x=1#shop"
    assert t.link("shop", version="2.0") == "https://m.example.test/p/shop/?v=2.0&x=1#shop"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("minicdn://open?app={app}&c={chanel}", "unknown placeholder {chanel}"),
        ("minicdn://open?app={app}&x={}", "unknown placeholder {}"),
        ("minicdn://open?app={app}}", "unmatched brace"),
        ("minicdn://open?app={app", "unmatched brace"),
        ("minicdn://open?channel={channel}", "must contain {app}"),
        ("open?app={app}", "URL scheme"),
        ("https://x/{app} y", "character a URL cannot hold"),
        ("https://x/{app}/é", "character a URL cannot hold"),
        ("", "URL template"),
        ("https://x/{app}/" + "a" * 1100, "longer than"),
    ],
)
def test_a_bad_template_is_a_config_error_naming_the_flag(template: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        LinkTemplate(template)
    assert exc.value.message.startswith("--qr-url: ") and why in exc.value.message, exc.value.message


def test_a_drawn_qr_code_decodes_to_its_link(tmp_path: Path) -> None:
    link = LinkTemplate("https://m.example.test/open/{app}?ch={channel}&v={version}").link(
        "shop", channel="beta"
    )
    png = tmp_path / "q.png"
    png.write_bytes(draw(link, "png"))
    assert decode_qr(png) == link
    svg = ET.fromstring(draw(link, "svg"))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert not [
        e for e in svg.iter() if e.tag.endswith("script") or any(a.startswith("on") for a in e.attrib)
    ]


def test_the_origin_prices_chunks_as_the_client_does() -> None:
    assert CHUNK_OVERHEAD == CLIENT_CHUNK_OVERHEAD  # kept equal by hand: the origin may not import the client


def test_file_digests_follow_files_across_chunk_boundaries() -> None:
    import hashlib

    files = [("a", 3), ("b", 0), ("c", 7), ("d", 2)]
    stream = b"aaa" + b"ccccccc" + b"dd"
    for cuts in ([12], [1, 11], [3, 7, 2], [5, 5, 2], [2, 2, 2, 2, 2, 2]):
        pieces, at = [], 0
        for n in cuts:
            pieces.append(stream[at : at + n])
            at += n
        got = file_digests(files, iter(pieces))
        assert got == {
            "a": hashlib.sha256(b"aaa").digest(),
            "b": hashlib.sha256(b"").digest(),
            "c": hashlib.sha256(b"ccccccc").digest(),
            "d": hashlib.sha256(b"dd").digest(),
        }, cuts


# -- a real origin with the demo app in two versions -------------------------------------------


@pytest.fixture(scope="module")
def demo(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    d = publish_demo(origin.url, tmp_path_factory.mktemp("console-demo"))
    assert set_channel(origin.url, d.app, "release", {"version": d.old}).status == 200
    return d


def get(url: str, token: str | None = TOKEN) -> Any:
    r = http("GET", url, headers=auth(token) if token else None)
    assert r.status == 200, (url, r.status, r.body[:300])
    return r.json()


def refused(url: str, status: int, code: str | None = None, token: str | None = TOKEN) -> str:
    r = http("GET", url, headers=auth(token) if token else None)
    assert r.status == status, (url, r.status, r.body[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    if code is not None:
        assert body["error"] == code, body
    return str(body["message"])


def manifest(origin: Service, key: PublicKey, mid: str) -> Manifest:
    r = http("GET", f"{origin.url}/v1/manifests/{mid}")
    assert r.status == 200
    return open_manifest(r.body, [key], bytes.fromhex(mid))


def test_the_token_check_tells_right_from_wrong(origin: Service) -> None:
    assert get(f"{origin.url}/v1/token") == {"ok": True}
    refused(f"{origin.url}/v1/token", 401, "unauthorized", token="wrong")
    refused(f"{origin.url}/v1/token", 401, "unauthorized", token=None)


def test_operator_views_need_the_token_and_show_nothing_without(origin: Service, demo: Demo) -> None:
    for path in (
        f"/v1/apps/demo/versions/{demo.new}",
        f"/v1/apps/demo/compare?from={demo.old}&to={demo.new}",
    ):
        for token in (None, "wrong", TOKEN + "x"):
            message = refused(origin.url + path, 401, "unauthorized", token=token)
            assert demo.new not in message and "packages" not in message


def test_a_version_shows_its_packages_and_their_sizes(
    origin: Service, origin_key: PublicKey, demo: Demo
) -> None:
    info = get(f"{origin.url}/v1/apps/demo/versions/{demo.new}")
    listed = next(v for v in get(f"{origin.url}/v1/apps/demo")["versions"] if v["version"] == demo.new)
    assert {k: info[k] for k in ("manifest", "manifests", "enriched", "created")} == {
        k: listed[k] for k in ("manifest", "manifests", "enriched", "created")
    }
    m = manifest(origin, origin_key, info["manifest"])
    assert [p["name"] for p in info["packages"]] == [p.name for p in m.packages]
    assert len(info["packages"]) >= 3  # the main package and the demo's subpackages
    for row, pkg in zip(info["packages"], m.packages, strict=True):
        assert row["independent"] == pkg.independent
        assert row["files"] == len(pkg.files) and row["raw_bytes"] == pkg.raw_size
        assert row["chunks"] == len(pkg.chunks) and row["chunk_bytes"] == pkg.stored_size
        assert pkg.bundle is not None and row["bundle_bytes"] == pkg.bundle[1]
        old_ids = set(
            next(v for v in get(f"{origin.url}/v1/apps/demo")["versions"] if v["version"] == demo.old)[
                "manifests"
            ]
        )
        assert {d["from_manifest"] for d in row["deltas"]} <= old_ids
        assert {d["from_version"] for d in row["deltas"]} == {demo.old}
    assert info["raw_bytes"] == sum(p.raw_size for p in m.packages)
    assert info["files"] == sum(len(p.files) for p in m.packages)
    assert info["bundle_bytes"] == sum(p.bundle[1] for p in m.packages if p.bundle)


def test_an_update_costs_what_the_client_would_pay_and_names_the_changed_files(
    origin: Service, origin_key: PublicKey, demo: Demo
) -> None:
    c = get(f"{origin.url}/v1/apps/demo/compare?from={demo.old}&to={demo.new}")
    versions = {v["version"]: v for v in get(f"{origin.url}/v1/apps/demo")["versions"]}
    old = manifest(origin, origin_key, versions[demo.old]["manifest"])
    new = manifest(origin, origin_key, versions[demo.new]["manifest"])
    held = {ch.id for p in old.packages for ch in p.chunks}
    rows = {r["name"]: r for r in c["packages"]}
    assert c["from"]["version"] == demo.old and c["to"]["version"] == demo.new
    main = rows["__APP__"]
    assert main["state"] == "changed"
    assert main["files"]["changed"] == [[CHANGED, *(2 * [dict(new.package("__APP__").files)[CHANGED]])]]
    assert [f[0] for f in main["files"]["added"]] == [ADDED]
    assert [f[0] for f in main["files"]["removed"]] == [REMOVED]
    base = bytes.fromhex(versions[demo.old]["manifest"])  # what a client of the old version holds
    for pkg in new.packages:
        row = rows[pkg.name]
        missing = list({ch.id: ch for ch in pkg.chunks if ch.id not in held}.values())
        # The client's own planner (client/plan.py) prices the same update.
        plans = {p.kind: p.cost for p in options(pkg, missing, base)}
        assert {k: v for k, v in row["plans"].items() if v is not None} == plans, pkg.name
        best = choose(pkg, missing, base)
        assert (row["cheapest"], row["bytes"]) == (best.kind, best.cost)
        assert row["state"] == ("unchanged" if best.kind == "none" else "changed")
        if missing:
            assert row["missing_chunks"] == len(missing) and "delta" in plans
    assert c["bytes"] == sum(r["bytes"] for r in c["packages"])
    assert rows["__APP__"]["cheapest"] == "delta"  # one changed byte: the delta is tiny
    # the other way round, the files swap sides
    back = {
        r["name"]: r
        for r in get(f"{origin.url}/v1/apps/demo/compare?from={demo.new}&to={demo.old}")["packages"]
    }
    assert [f[0] for f in back["__APP__"]["files"]["added"]] == [REMOVED]
    assert [f[0] for f in back["__APP__"]["files"]["removed"]] == [ADDED]
    same = get(f"{origin.url}/v1/apps/demo/compare?from={demo.new}&to={demo.new}")
    assert same["bytes"] == 0 and {r["state"] for r in same["packages"]} == {"unchanged"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/apps/demo/compare", 400),
        ("/v1/apps/demo/compare?from=1.0.0", 400),
        ("/v1/apps/demo/compare?from=1.0.0&to=1.1.0&to=1.1.0", 400),
        ("/v1/apps/demo/compare?from=1.0.0&to=../x", 400),
        ("/v1/apps/demo/compare?from=1.0.0&to=9.9.9", 404),
        ("/v1/apps/nope/compare?from=1.0.0&to=1.1.0", 404),
        ("/v1/apps/Bad!/compare?from=1.0.0&to=1.1.0", 400),
        ("/v1/apps/demo/versions/9.9.9", 404),
        ("/v1/apps/demo/versions/..", 400),
        ("/v1/apps/demo/versions/" + "1" * 65, 400),
    ],
)
def test_bad_operator_view_requests_are_json_4xx(origin: Service, demo: Demo, path: str, status: int) -> None:
    refused(origin.url + path, status)


def test_qr_codes_decode_to_the_documented_default_link(origin: Service, demo: Demo, tmp_path: Path) -> None:
    for query, link in (
        ("channel=release", "minicdn://open?app=demo&channel=release"),
        (f"version={demo.new}", f"minicdn://open?app=demo&version={demo.new}"),
    ):
        r = http("GET", f"{origin.url}/v1/apps/demo/qr.png?{query}")
        assert r.status == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-content-type-options"] == "nosniff"
        png = tmp_path / "qr.png"
        png.write_bytes(r.body)
        assert decode_qr(png) == link
        assert get(f"{origin.url}/v1/apps/demo/link?{query}", token=None)["link"] == link
        svg = http("GET", f"{origin.url}/v1/apps/demo/qr.svg?{query}")
        assert svg.status == 200 and svg.headers["content-type"] == "image/svg+xml"
        assert svg.headers["content-security-policy"] == "default-src 'none'"
        assert ET.fromstring(svg.body).tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?channel=release&version=1.0.0", 400),
        ("?channel=release&channel=beta", 400),
        ("?channel=Release!", 400),
        ("?version=" + quote("1.0/../x", safe=""), 400),
        ("?channel=nope", 404),
        ("?version=9.9.9", 404),
    ],
)
def test_bad_qr_requests_are_json_4xx(origin: Service, demo: Demo, query: str, status: int) -> None:
    for path in ("/v1/apps/demo/qr.svg", "/v1/apps/demo/qr.png", "/v1/apps/demo/link"):
        refused(origin.url + path + query, status, token=None)
    refused(f"{origin.url}/v1/apps/nope/qr.svg?channel=release", 404, token=None)
    refused(f"{origin.url}/v1/apps/Bad!/qr.svg?channel=release", 400, token=None)
    refused(f"{origin.url}/v1/apps/demo/qr.gif?channel=release", 404, token=None)


PATHS = [
    "/v1/apps?prefix={}",
    "/v1/apps?limit={}",
    "/v1/apps?cursor={}",
    "/v1/apps?prefix={}&cursor={}",
    "/v1/apps/demo/qr.svg?channel={}",
    "/v1/apps/demo/qr.png?version={}",
    "/v1/apps/demo/link?version={}&channel={}",
    "/v1/apps/{}/link?channel=release",
    "/v1/apps/demo/compare?from={}&to=1.1.0",
    "/v1/apps/demo/compare?from=1.0.0&to={}",
    "/v1/apps/demo/versions/{}",
    "/console/{}",
]
NASTY = ["", "0", "-1", "1e3", "0x10", "١٠", "²", "..", "a/b", "%ff", "\x00", "\ud800", "A" * 70, "release", "1.0.0"]


def never_5xx(origin: Service, path: str, value: str) -> None:
    url = origin.url + path.replace("{}", quote(value, safe="", errors="surrogatepass"))
    r = http("GET", url, headers=auth())
    assert r.status < 500, (url, r.status, r.body[:300])
    if r.status >= 400:
        body = r.json()
        assert isinstance(body, dict) and set(body) == {"error", "message"}, (url, body)


@pytest.mark.parametrize("path", PATHS)
def test_nasty_parameters_get_a_json_4xx_never_a_5xx(origin: Service, demo: Demo, path: str) -> None:
    for value in NASTY:
        never_5xx(origin, path, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PATHS), st.text(max_size=80))
def test_any_parameter_gets_an_answer_never_a_5xx(origin: Service, demo: Demo, path: str, value: str) -> None:
    never_5xx(origin, path, value)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in {"src", "href"} and v]
        self.inline += [k for k in a if k.startswith("on") or k == "style"]
        self._in_script = tag == "script"
        if tag == "script" and not a.get("src"):
            self.inline.append("script without src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script")


def test_the_console_is_served_with_a_strict_policy(origin: Service) -> None:
    r = http("GET", f"{origin.url}/console/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    assert "default-src 'none'" in CSP and "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in r.headers
    page_refs = _Refs()
    page_refs.feed(r.body.decode())
    assert page_refs.inline == []  # nothing the policy would have to allow inline
    assert sorted(ref for ref in page_refs.refs if not ref.startswith("#")) == sorted(
        name for name in FILES if name != "index.html"
    )  # only the console's own files, by relative path: nothing from elsewhere
    for name, ctype in FILES.items():
        f = http("GET", f"{origin.url}/console/{name}")
        assert f.status == 200 and f.headers["content-type"].startswith(ctype), name
        assert f.headers["content-security-policy"] == CSP
    moved = http("GET", f"{origin.url}/console")
    assert moved.status == 200 and moved.body == r.body  # urllib follows the 301 to /console/
    refused(f"{origin.url}/console/nope.js", 404, "not_found", token=None)
    refused(f"{origin.url}/console/..%2f..%2fsigning.key", 404, token=None)


def test_the_console_writes_data_as_text_only() -> None:
    """The policy forbids inline script; this keeps the page from making markup of data."""
    js = (REPO / "origin" / "console" / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    assert "localStorage" not in js and "document.cookie" not in js  # the token lives in the tab only


def test_a_bad_qr_url_stops_the_origin_at_start_with_a_clear_error(tmp_path: Path) -> None:
    args = origin_service(tmp_path).args  # (makes the key)
    for flag, env in (
        (["--qr-url", "minicdn://x/{app}/{chanel}"], {}),
        ([], {"MINICDN_QR_URL": "x://{ver}"}),
    ):
        done = subprocess.run(
            [*MINICDN, *args, *flag], capture_output=True, text=True, timeout=60, env={**_env(), **env}
        )
        assert done.returncode == 2, (done.returncode, done.stderr[-800:])
        assert "--qr-url" in done.stderr and "unknown placeholder" in done.stderr, done.stderr[-800:]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "MINICDN_TOKEN": TOKEN}


# -- 10,000 apps ---------------------------------------------------------------------------------

MANY = 10_000


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, list[str]]]:
    """An origin holding 10,000 apps: one app published for real, its version record then
    copied under 9,999 more ids while the origin is stopped (publishing each would take
    ~0.3 s: most of an hour), so every app names a real, enriched manifest."""
    tmp = tmp_path_factory.mktemp("crowded")
    svc = origin_service(tmp)
    a = tmp / "seed"
    a.mkdir()
    (a / "app.js").write_text("App({})\n")
    svc.start()
    try:
        assert publish(svc.url, "app-00000", "1.0.0", tar_gz_of(a)).status == 201
        from tests.conftest import wait_enriched

        wait_enriched(svc.url, "app-00000", "1.0.0")
    finally:
        svc.stop()
    store = tmp / "origin" / "store"
    record = (store / paths.version_key("app-00000", "1.0.0")).read_bytes()
    names = [f"app-{i:05d}" for i in range(MANY)]
    for name in names[1:]:
        target = store / paths.version_key(name, "1.0.0")
        target.parent.mkdir(parents=True)
        target.write_bytes(record)
    svc.start()
    try:
        yield svc, names
    finally:
        svc.stop()


def test_ten_thousand_apps_page_fast_and_completely(crowded: tuple[Service, list[str]]) -> None:
    svc, names = crowded
    timings = []

    def timed(url: str) -> Any:
        t0 = time.perf_counter()
        body = get(url, token=None)
        timings.append(time.perf_counter() - t0)
        return body

    seen, cursor = [], None
    while True:
        q = f"limit=1000&cursor={cursor}" if cursor else "limit=1000"
        body = timed(f"{svc.url}/v1/apps?{q}")
        assert len(body["apps"]) <= 1000
        seen += body["apps"]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == names
    assert len(timings) == 10  # ten full pages, and the last says it is the last
    first = timed(f"{svc.url}/v1/apps?limit=50")
    assert first["apps"] == names[:50] and first["next"] == names[49]
    hits = timed(f"{svc.url}/v1/apps?prefix=app-0999&limit=50")
    assert hits == {"apps": names[9990:], "next": None}
    assert timed(f"{svc.url}/v1/apps?prefix=app-1&limit=50") == {"apps": [], "next": None}
    after = timed(f"{svc.url}/v1/apps?prefix=app-099&limit=5&cursor=app-09957")
    assert after == {"apps": names[9958:9963], "next": names[9962]}
    # the bare form still lists every app, as before paging (edges relay it)
    assert get(f"{svc.url}/v1/apps", token=None) == {"apps": names, "next": None}
    assert get(f"{svc.url}/v1/apps/{names[-1]}", token=None)["versions"][0]["enriched"] is True
    # Measured here, unloaded: a page in 5-60 ms. Listing the 10,000 ids took ~650 ms when it
    # walked every key under apps/, ~15 ms with storage.names (one level).
    assert max(timings) < 2.0, timings


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=5&limit=6",
        "prefix=A",
        "prefix=%2F",
        "cursor=..",
        "cursor=%00",
    ],
)
def test_bad_paging_is_a_json_400(crowded: tuple[Service, list[str]], query: str) -> None:
    message = refused(f"{crowded[0].url}/v1/apps?{query}", 400, "bad_request", token=None)
    assert re.search(r"limit|prefix|cursor", message), message
