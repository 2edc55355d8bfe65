"""Content-defined chunking: boundaries follow content, not offsets."""

from __future__ import annotations

import itertools
import random

from common.chunking import ChunkParams, cut
from common.ids import sha256


def _ids(data: bytes) -> list[bytes]:
    return [sha256(data[o : o + n]) for o, n in cut(data)]


def _text(n: int, seed: int) -> bytes:
    """JS-like text: realistic for mini-program sources, and not trivially repetitive."""
    rnd = random.Random(seed)
    words = [f"var{i}" for i in range(400)] + ["function", "return", "const", "this.setData", "wx.request"]
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) + ";\n").encode()
    return bytes(out[:n])


def test_chunks_cover_the_input_in_order_within_bounds() -> None:
    data = _text(1 << 20, 1)
    pieces = list(cut(data))
    assert pieces[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert sum(n for _, n in pieces) == len(data)
    p = ChunkParams()
    assert all(p.min_size <= n <= p.max_size for _, n in pieces[:-1])
    assert 8 * 1024 < len(data) / len(pieces) < 32 * 1024  # average near 16 KiB


def test_insert_at_start_of_300kb_file_changes_at_most_two_chunks() -> None:
    for seed in range(5):
        original = _text(300_000, seed)
        edited = b"/* hi */" + original
        before, after = _ids(original), set(_ids(edited))
        changed = [c for c in before if c not in after]
        assert len(before) >= 10
        assert len(changed) <= 2, (seed, len(changed))


def test_edit_in_the_middle_is_local() -> None:
    data = _text(500_000, 9)
    edited = data[:250_000] + b"X" * 3 + data[250_003:]
    before, after = _ids(data), set(_ids(edited))
    assert sum(1 for c in before if c not in after) <= 2


def test_empty_and_tiny_inputs() -> None:
    assert list(cut(b"")) == []
    assert list(cut(b"abc")) == [(0, 3)]


def test_params_are_validated() -> None:
    import pytest

    from common.errors import ConfigError

    with pytest.raises(ConfigError):
        ChunkParams(min_size=32 * 1024, avg_size=16 * 1024)
