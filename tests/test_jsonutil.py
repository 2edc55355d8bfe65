"""common.jsonutil: hostile JSON is refused with BadRequest, never RecursionError or worse."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BadArchive, BadRequest
from common.jsonutil import depth_ok, loads

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(JSON)
def test_any_document_within_the_depth_parses_as_json_does(value: object) -> None:
    text = json.dumps(value)
    assert loads(text, max_depth=max(1, _depth(value))) == json.loads(text)


@given(JSON)
def test_a_document_one_level_too_deep_is_refused(value: object) -> None:
    depth = _depth(value)
    if depth == 0:
        return
    with pytest.raises(BadRequest, match="deeper than"):
        loads(json.dumps(value), max_depth=depth - 1)


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(alphabet='[]{}"\\,:0123456789abc \n', max_size=200))
def test_arbitrary_input_parses_or_is_a_bad_request(data: bytes | str) -> None:
    with contextlib.suppress(BadRequest):
        loads(data)


@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}")])
def test_a_hundred_thousand_levels_are_refused_before_parsing(opener: str, closer: str) -> None:
    with pytest.raises(BadRequest, match="deeper than 32"):
        loads(opener * 100_000 + "1" + closer * 100_000)
    with pytest.raises(BadRequest, match="brackets do not match"):
        loads(opener * 100_000)
    assert depth_ok(b"[" * 100_000, 32) is None
    assert depth_ok(("[" * 33 + "]" * 33).encode(), 32) is False
    assert depth_ok(("[" * 32 + "]" * 32).encode(), 32) is True


def test_brackets_inside_strings_do_not_count() -> None:
    doc = json.dumps({"k": "[[[[[[[[[[{{{{{{{{{{" * 100, "e": 'a "quoted" \\ [ string'})
    assert loads(doc, max_depth=1) == json.loads(doc)


def test_size_limit_and_error_class_are_the_callers() -> None:
    with pytest.raises(BadArchive, match=r"app\.json is larger than 10 bytes"):
        loads(b'{"pages": []}', what="app.json", max_bytes=10, error=BadArchive)
    with pytest.raises(BadArchive, match=r"app\.json is not valid JSON"):
        loads(b"{", what="app.json", error=BadArchive)
    with pytest.raises(BadRequest, match="not valid JSON"):
        loads(b"1" * 5000)  # past Python's integer digit limit: ValueError, not a 500
    assert loads(b"\xef\xbb\xbf{}") == {}  # a UTF-8 BOM is allowed
