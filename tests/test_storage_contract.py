"""One contract suite that every storage backend must pass (STYLE.md: distribution's
driver suite).  A new backend (S3-compatible, later) joins by adding a fixture param."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import NotFound
from origin.storage import FileStorage
from origin.storage import Store as Storage


@pytest.fixture(params=["file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "file":
        yield FileStorage(tmp_path / "store")


def test_put_if_absent_creates_once_and_keeps_the_first(storage: Storage) -> None:
    assert storage.put_if_absent("objects/chunks/ab/cd/x", b"one") is True
    assert storage.put_if_absent("objects/chunks/ab/cd/x", b"two") is False
    assert storage.get("objects/chunks/ab/cd/x") == b"one"


def test_put_replaces(storage: Storage) -> None:
    storage.put("apps/a/channels/release", b"v1")
    storage.put("apps/a/channels/release", b"v2")
    assert storage.get("apps/a/channels/release") == b"v2"


def test_get_and_stat_of_missing(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.get("objects/nope")
    assert storage.stat("objects/nope") is None
    storage.put("apps/a/versions/1", b"12345")
    st = storage.stat("apps/a/versions/1")
    assert st is not None and st.size == 5
    assert storage.stat("apps/a/versions") is None  # a prefix is not an object


def test_list_is_sorted_and_scoped(storage: Storage) -> None:
    for k in ["apps/b/versions/2", "apps/a/versions/1", "apps/a/channels/x", "objects/m/1"]:
        storage.put(k, b"")
    assert list(storage.list("apps/")) == ["apps/a/channels/x", "apps/a/versions/1", "apps/b/versions/2"]
    assert list(storage.list("apps/a/versions/")) == ["apps/a/versions/1"]
    assert list(storage.list("nothing/")) == []


def test_names_are_one_level_sorted_and_scoped(storage: Storage) -> None:
    for k in ["apps/b/versions/2", "apps/a/versions/1", "apps/a/channels/x", "apps/c", "objects/m/1"]:
        storage.put(k, b"")
    assert storage.names("apps/") == ["a", "b", "c"]
    assert storage.names("apps/a/") == ["channels", "versions"]
    assert storage.names("apps/a/versions/") == ["1"]
    assert storage.names("nothing/") == []
    assert storage.names("apps/c/") == []  # an object is no folder
    with pytest.raises(ValueError):
        storage.names("apps")


def test_delete(storage: Storage) -> None:
    storage.put("objects/x", b"1")
    storage.delete("objects/x")
    storage.delete("objects/x")  # absent: no error
    assert storage.stat("objects/x") is None


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/.tmp-x"])
def test_bad_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put(key, b"x")


def test_concurrent_put_if_absent_has_one_winner(storage: Storage) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def put(i: int) -> None:
        barrier.wait()
        wins.append(storage.put_if_absent("objects/race", b"same"))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and storage.get("objects/race") == b"same"


def test_file_backend_leaves_no_temp_files_and_sweeps_old_ones(tmp_path: Path) -> None:
    root = tmp_path / "s"
    s = FileStorage(root)
    s.put("objects/a", b"1")
    (root / "objects" / ".tmp-a.dead").write_bytes(b"partial")
    FileStorage(root)  # start-up sweeps what a crash left
    assert sorted(p.name for p in (root / "objects").iterdir()) == ["a"]
    assert list(s.list("objects/")) == ["objects/a"]
