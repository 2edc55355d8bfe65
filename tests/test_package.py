"""common.package and common.paths against anything a publisher can write."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BadArchive, UnsafeArchive
from common.manifest import MAIN_PACKAGE
from common.package import layout
from common.paths import MAX_COMPONENT, check_relpath

JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["root", "name", "independent", "pages", "packages", "subPackages", "subpackages",
                        "preloadRule", "x"])
# Shaped like app.json, with every field sometimes of the wrong type.
APPISH: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["a", "a/", "/a", "a/b", "b", "", " a", "..",
                                                                 "__APP__", "a\n"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.sampled_from(["a", "b"]), inner,
                                                                max_size=4),
    max_leaves=30,
)
PATHS = ["app.json", "a/x.js", "a/b/y.js", "b/z.js", "c.js"]


@settings(max_examples=500, deadline=None)
@given(JSON | APPISH)
def test_any_json_lays_out_or_is_a_bad_archive(doc: Any) -> None:
    try:
        lay = layout(PATHS, json.dumps(doc).encode())
    except BadArchive:
        return
    assert sorted(f for p in lay.packages for f in p.files) == sorted(PATHS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_lay_out_or_are_a_bad_archive(data: bytes) -> None:
    with contextlib.suppress(BadArchive):  # anything else fails the test
        layout(PATHS, data)


SEGMENT = st.sampled_from(["a", "b", "c", "ab"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(SEGMENT, min_size=1, max_size=3).map("/".join), max_size=8),
       st.lists(st.lists(SEGMENT, min_size=1, max_size=4).map("/".join), max_size=20, unique=True))
def test_files_go_to_the_root_they_lie_under(roots: list[str], paths: list[str]) -> None:
    """Against the obvious quadratic reading: overlapping roots refused, each file in the
    package whose root is a component prefix of its path, else in the main package."""
    doc = json.dumps({"subPackages": [{"root": r} for r in roots]}).encode()
    overlap = len(set(roots)) < len(roots) or any(
        a != b and b.startswith(a + "/") for a in roots for b in roots)
    if overlap:
        with pytest.raises(BadArchive):
            layout(paths, doc)
        return
    owners = {p: next((r for r in roots if p.startswith(r + "/")), MAIN_PACKAGE) for p in paths}
    got = {f: pkg.name for pkg in layout(paths, doc).packages for f in pkg.files}
    assert got == owners


@pytest.mark.parametrize("root", ["/etc", "etc//", " pkg", "pkg ", "a/../b", "..", "./a", "a\\b", "a\nb",
                                  "a\x00", "__APP__", "", "/"])
def test_subpackage_root_is_taken_as_written(root: str) -> None:
    with pytest.raises(BadArchive, match=r"subPackages\[0\]\.root"):
        layout(["a.js"], json.dumps({"subPackages": [{"root": root}]}).encode())


def test_one_trailing_slash_is_how_wechat_writes_a_root() -> None:
    lay = layout(["pkg/a.js", "b.js"], b'{"subPackages": [{"root": "pkg/", "name": "p"}],'
                 b' "preloadRule": {"index": {"packages": ["p", "pkg/", "pkg", "__APP__"]}}}')
    assert [(p.name, p.files) for p in lay.packages] == [(MAIN_PACKAGE, ("b.js",)), ("pkg", ("pkg/a.js",))]
    assert lay.preload == {"index": ("pkg", "pkg", "pkg", MAIN_PACKAGE)}


@pytest.mark.parametrize("doc", [
    {"subPackages": [{"root": "a", "independent": "yes"}]},
    {"subPackages": [{"root": "a", "name": 1}]},
    {"subPackages": [{"root": "a", "pages": "index"}]},
    {"subPackages": [{"root": "a", "pages": [1]}]},
    {"subPackages": {"root": "a"}},
    {"subPackages": ["a"]},
    {"subPackages": [], "subpackages": []},
    {"preloadRule": [[1]]},
    {"preloadRule": {"p": [1]}},
    {"preloadRule": {"p": {"packages": "a"}}},
    {"preloadRule": {"p": {"packages": [[1]]}}},
    {"subPackages": [{"root": "a", "name": "n"}, {"root": "b", "name": "n"}]},
    {"subPackages": [{"root": "a", "name": "b"}, {"root": "b"}]},
])
def test_wrong_types_and_ambiguous_names_are_a_bad_archive(doc: dict[str, Any]) -> None:
    with pytest.raises(BadArchive):
        layout(["a/x.js"], json.dumps(doc).encode())


def test_subpackage_cap_is_named() -> None:
    doc = json.dumps({"subPackages": [{"root": f"p{i}"} for i in range(11)]}).encode()
    assert len(layout([], doc, max_subpackages=11).packages) == 12
    with pytest.raises(BadArchive, match="at most 10"):
        layout([], doc, max_subpackages=10)


def test_ten_thousand_subpackages_and_twenty_thousand_files_lay_out() -> None:
    doc = json.dumps({"subPackages": [{"root": f"sub/p{i}"} for i in range(10_000)]}).encode()
    paths = [f"sub/p{i % 10_000}/{i}.js" for i in range(20_000)]
    lay = layout(paths, doc, max_subpackages=10_000)
    assert len(lay.packages) == 10_001 and all(len(p.files) == 2 for p in lay.packages[1:])


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\tb", "a\x7fb", "a\x85b", "a\x9fb", "a\x1b[31m",
                                 "x" * (MAX_COMPONENT + 1), "a/" + "é" * 128, "a\ud800"])
def test_controls_long_components_and_non_utf8_are_unsafe(bad: str) -> None:
    with pytest.raises(UnsafeArchive):
        check_relpath(bad)


def test_a_component_of_255_bytes_is_fine() -> None:
    assert check_relpath("a/" + "é" * 127 + "x") == "a/" + "é" * 127 + "x"


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40) | st.lists(st.text(max_size=8), max_size=5).map("/".join))
def test_check_relpath_returns_only_safe_paths(path: str) -> None:
    try:
        assert check_relpath(path) == path
    except UnsafeArchive:
        return
    parts = path.split("/")
    assert not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F and c != "\\" for c in path)
    assert all(len(p.encode()) <= MAX_COMPONENT for p in parts)
