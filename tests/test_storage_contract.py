"""One contract suite that every storage driver must pass (STYLE.md: distribution's driver
suite), each test run on the file driver, on moto's S3 server and on a real Ceph RGW
(tests/s3_servers.py starts both once a session).  Races are run with threads and with
separate processes, each with a driver of its own (``python -m tests.test_storage_contract``
is the worker)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from common.errors import ConfigError, NotFound, StorageUnavailable
from loadtests.net import free_port
from origin.storage import FileStorage, Store, open_storage
from origin.storage.s3 import S3Driver, parse_url
from tests.s3_servers import S3Server

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ["file", "moto", "rgw"]
WORKERS = 8  # processes in the process races
INCREMENTS = 4  # Store.update calls of each worker on the shared counter
RACE_TIMEOUT = 60.0  # seconds for every worker of a process race to finish


@dataclass
class Backend:
    name: str
    store: Store
    url: str  # what open_storage takes, in another process with ``env``
    env: dict[str, str] = field(default_factory=dict)
    server: S3Server | None = None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        root = tmp_path / "store"
        made = Backend("file", FileStorage(root), root.as_uri())
    else:
        server: S3Server = request.getfixturevalue(f"{request.param}_server")
        url = server.new_bucket()
        made = Backend(request.param, server.store(url), url, server.env(), server)
    try:
        yield made
    finally:
        made.store.close()


@pytest.fixture
def storage(backend: Backend) -> Store:
    return backend.store


# -- reads -------------------------------------------------------------------------------------


def test_read_and_stat_agree_and_etags_are_unquoted(storage: Store) -> None:
    before = time.time()
    storage.put("apps/a/versions/1", b"12345")
    blob = storage.read("apps/a/versions/1")
    st = storage.stat("apps/a/versions/1")
    assert blob is not None and st is not None
    assert blob.data == b"12345" and storage.get("apps/a/versions/1") == b"12345"
    assert st.size == 5 and st.etag == blob.etag and blob.etag and '"' not in blob.etag
    assert before - 2 <= st.mtime <= time.time() + 2  # S3 gives whole seconds
    [item] = storage.items("apps/a/versions/")
    assert item.stat.etag == blob.etag and item.stat.size == 5


def test_get_and_stat_of_missing(storage: Store) -> None:
    with pytest.raises(NotFound):
        storage.get("objects/nope")
    assert storage.read("objects/nope") is None
    assert storage.stat("objects/nope") is None
    storage.put("apps/a/versions/1", b"x")
    assert storage.stat("apps/a/versions") is None  # a prefix is not an object
    assert storage.read("apps/a/versions") is None


def test_stat_many_of_present_and_absent_keys(storage: Store) -> None:
    keys = [f"objects/chunks/{i:03d}" for i in range(300)]
    with ThreadPoolExecutor(16) as pool:
        etags = dict(zip(keys[::3], pool.map(lambda k: storage.put(k, k.encode()), keys[::3]), strict=True))
    got = storage.stat_many(keys)
    assert set(got) == set(keys)
    for key in keys:
        st = got[key]
        if key in etags:
            assert st is not None and st.etag == etags[key] and st.size == len(key)
        else:
            assert st is None
    assert storage.stat_many([]) == {}


# -- writes ------------------------------------------------------------------------------------


def test_put_replaces_and_changes_the_etag(storage: Store) -> None:
    first = storage.put("apps/a/channels/release", b"v1")
    second = storage.put("apps/a/channels/release", b"v2")
    assert storage.get("apps/a/channels/release") == b"v2"
    assert first != second and '"' not in second
    blob = storage.read("apps/a/channels/release")
    assert blob is not None and blob.etag == second


def test_create_only_keeps_the_first(storage: Store) -> None:
    etag = storage.create("objects/chunks/ab/cd/x", b"one")
    assert etag is not None and '"' not in etag
    assert storage.create("objects/chunks/ab/cd/x", b"two") is None
    blob = storage.read("objects/chunks/ab/cd/x")
    assert blob is not None and blob.data == b"one" and blob.etag == etag
    assert storage.put_if_absent("objects/chunks/ab/cd/y", b"1") is True
    assert storage.put_if_absent("objects/chunks/ab/cd/y", b"2") is False


def test_swap_only_from_the_current_etag(storage: Store) -> None:
    old = storage.put("apps/a/channels/release", b"v1")
    new = storage.swap("apps/a/channels/release", b"v2", old)
    assert new is not None and new != old and '"' not in new
    blob = storage.read("apps/a/channels/release")
    assert blob is not None and (blob.data, blob.etag) == (b"v2", new)
    assert storage.swap("apps/a/channels/release", b"v3", old) is None  # stale
    assert storage.get("apps/a/channels/release") == b"v2"
    assert storage.swap("apps/a/channels/gone", b"v1", old) is None  # absent
    assert storage.stat("apps/a/channels/gone") is None
    third = storage.swap("apps/a/channels/release", b"v3", new)  # a second swap on one driver
    assert third is not None and storage.get("apps/a/channels/release") == b"v3"


def test_update_creates_then_swaps(storage: Store) -> None:
    assert storage.update("refs/n", lambda b: b"1" if b is None else b"%d" % (int(b) + 1)) == b"1"
    assert storage.update("refs/n", lambda b: b"1" if b is None else b"%d" % (int(b) + 1)) == b"2"
    assert storage.update("refs/n", lambda b: None) is None
    assert storage.get("refs/n") == b"2"


def test_delete_and_delete_many(storage: Store) -> None:
    storage.put("objects/x", b"1")
    storage.delete("objects/x")
    storage.delete("objects/x")  # absent: no error
    assert storage.stat("objects/x") is None
    for k in ("objects/a", "objects/b", "objects/c"):
        storage.put(k, b"1")
    storage.delete_many(["objects/a", "objects/b", "objects/absent"])
    assert list(storage.list("objects/")) == ["objects/c"]
    storage.delete_many([])


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "a/.tmp-x", "a\x00b", "x" * 1025])
def test_bad_keys_are_refused(storage: Store, key: str) -> None:
    for call in (lambda: storage.put(key, b"x"), lambda: storage.read(key), lambda: storage.create(key, b"x")):
        with pytest.raises(ValueError):
            call()


# -- listings ----------------------------------------------------------------------------------


def test_list_is_sorted_and_scoped(storage: Store) -> None:
    for k in ["apps/b/versions/2", "apps/a/versions/1", "apps/a/channels/x", "apps-other/y", "objects/m/1"]:
        storage.put(k, b"")
    assert list(storage.list("apps/")) == ["apps/a/channels/x", "apps/a/versions/1", "apps/b/versions/2"]
    assert list(storage.list("apps/a/versions/")) == ["apps/a/versions/1"]
    assert list(storage.list("nothing/")) == []
    assert list(storage.list("")) == [
        "apps-other/y", "apps/a/channels/x", "apps/a/versions/1", "apps/b/versions/2", "objects/m/1"
    ]
    with pytest.raises(ValueError):
        list(storage.list("apps"))


def test_list_after_and_pages(storage: Store) -> None:
    keys = sorted(f"objects/{d}/{i:02d}" for d in ("a", "b", "c") for i in range(10))  # 30 keys
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: storage.put(k, k.encode()), keys))
    paged = list(storage.items("objects/", page=7))  # 5 pages: 7+7+7+7+2
    assert [i.key for i in paged] == keys
    assert all(i.stat.size == len(i.key) for i in paged)
    assert [i.key for i in storage.items("objects/", after="objects/b/05", page=4)] == keys[16:]
    assert [i.key for i in storage.items("objects/", after="objects/b/", page=4)] == keys[10:]
    page = storage.driver.list("objects/", None, 7)
    assert len(page.items) == 7 and page.more
    last = storage.driver.list("objects/", keys[-3], 7)
    assert [i.key for i in last.items] == keys[-2:] and not last.more


def test_names_are_one_level_sorted_and_scoped(storage: Store) -> None:
    for k in ["apps/b/versions/2", "apps/a/versions/1", "apps/a/channels/x", "apps/c", "objects/m/1"]:
        storage.put(k, b"")
    assert storage.names("apps/") == ["a", "b", "c"]
    assert storage.names("apps/a/") == ["channels", "versions"]
    assert storage.names("apps/a/versions/") == ["1"]
    assert storage.names("") == ["apps", "objects"]
    assert storage.names("nothing/") == []
    assert storage.names("apps/c/") == []  # an object is no folder
    with pytest.raises(ValueError):
        storage.names("apps")


@pytest.mark.parametrize("backend", ["moto", "rgw"], indirect=True)
def test_more_than_a_server_page_listed_and_deleted(backend: Backend) -> None:
    storage = backend.store
    keys = [f"objects/chunks/{i:04d}" for i in range(1001)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: storage.put(k, b"c"), keys))
    first = storage.driver.list("objects/")  # one request: the server's page is 1000 keys
    assert len(first.items) == 1000 and first.more
    assert list(storage.list("objects/")) == keys  # two requests, the second after the 1000th
    names = storage.names("objects/chunks/")  # a delimiter listing of two pages
    assert len(names) == 1001 and names[-3:] == ["0998", "0999", "1000"]
    storage.delete_many([*keys, "objects/absent"])  # two DeleteObjects (1000 + 2)
    assert list(storage.list("objects/")) == []


# -- races -------------------------------------------------------------------------------------


def _threads(n: int, work: object) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RACE_TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_creates_in_threads_have_one_winner(storage: Store) -> None:
    etags = _threads(12, lambda i: storage.create("objects/race", b"%d" % i))
    winners = [i for i, e in enumerate(etags) if e is not None]
    assert len(winners) == 1
    blob = storage.read("objects/race")
    assert blob is not None and blob.data == b"%d" % winners[0] and blob.etag == etags[winners[0]]


def test_concurrent_swaps_from_one_etag_in_threads_have_one_winner(storage: Store) -> None:
    old = storage.put("refs/race", b"start")
    etags = _threads(12, lambda i: storage.swap("refs/race", b"%d" % i, old))
    winners = [i for i, e in enumerate(etags) if e is not None]
    assert len(winners) == 1  # at most one by contract; none would be a lost write
    assert storage.get("refs/race") == b"%d" % winners[0]


def test_races_between_processes(backend: Backend, tmp_path: Path) -> None:
    """Each worker process opens the store by URL (for S3 through boto3's environment
    variables), and at once: creates one key, swaps another from one etag, then adds 1 to a
    counter ``INCREMENTS`` times with ``Store.update``."""
    old = backend.store.put("refs/swapped", b"start")
    env = {**os.environ, **backend.env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "tests.test_storage_contract", backend.url, str(tmp_path), old]
    procs = [
        subprocess.Popen([*cmd, str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO)
        for i in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + RACE_TIMEOUT
        assert [_line(p, deadline) for p in procs] == ["ready"] * WORKERS
        for p in procs:  # as nearly at once as a parent can
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [json.loads(_line(p, deadline)) for p in procs]
        assert [p.wait(max(0.1, deadline - time.monotonic())) for p in procs] == [0] * WORKERS
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
    created = [i for i, r in enumerate(results) if r["create"]]
    swapped = [i for i, r in enumerate(results) if r["swap"]]
    assert len(created) == 1 and backend.store.get("refs/created") == b"%d" % created[0]
    assert len(swapped) == 1 and backend.store.get("refs/swapped") == b"%d" % swapped[0]
    assert backend.store.get("refs/counter") == b"%d" % (WORKERS * INCREMENTS)  # no lost update


def _line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, f"worker {proc.pid} said nothing in time"
    line = proc.stdout.readline()
    assert line, f"worker {proc.pid} exited with {proc.wait(10)}"
    return line.decode().strip()


def _worker(url: str, data: str, etag: str, me: str) -> None:
    # Every worker opens its store (a file store sweeps temp files then) before any writes.
    store = open_storage(url, data)
    print("ready", flush=True)
    sys.stdin.readline()
    created = store.create("refs/created", me.encode()) is not None
    swapped = store.swap("refs/swapped", me.encode(), etag) is not None
    for _ in range(INCREMENTS):
        store.update("refs/counter", lambda b: b"1" if b is None else b"%d" % (int(b) + 1))
    print(json.dumps({"create": created, "swap": swapped}), flush=True)
    store.close()


# -- S3 specifics ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["moto", "rgw"], indirect=True)
def test_a_prefix_scopes_every_key(backend: Backend) -> None:
    assert backend.server is not None
    bucket, prefix = parse_url(backend.url)
    backend.store.put("apps/a/x", b"1")
    whole = backend.server.store(f"s3://{bucket}")
    other = backend.server.store(f"s3://{bucket}/other/")
    try:
        assert list(whole.list("")) == [f"{prefix}apps/a/x"]
        assert whole.names("") == [prefix.rstrip("/")]
        assert list(other.list("")) == [] and other.stat("apps/a/x") is None
        assert list(backend.store.list("")) == ["apps/a/x"]
    finally:
        whole.close()
        other.close()


def test_s3_urls() -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    assert parse_url("s3://bucket/a/b") == ("bucket", "a/b/")
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("s3:///x", "http://bucket/x", "s3://bucket/x?y=1"):
        with pytest.raises(ConfigError):
            parse_url(bad)


@pytest.mark.parametrize("backend", ["moto", "rgw"], indirect=True)
def test_a_missing_bucket_is_an_error_never_absent(backend: Backend) -> None:
    """S3 answers a HEAD with a bare 404 whether the key or the bucket is missing; a store
    whose bucket is gone must not read as "no such object" (a publish would then upload
    every chunk into nowhere, gc would see nothing).  The review of issue 18 found stat and
    stat_many saying None."""
    assert backend.server is not None
    gone = backend.server.store(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/p")
    try:
        for call in (lambda: gone.stat("objects/x"), lambda: gone.stat_many(["objects/x", "objects/y"]),
                     lambda: gone.read("objects/x")):
            with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
                call()
    finally:
        gone.close()
    assert backend.store.stat("objects/absent") is None  # in a bucket that exists: absent


def test_a_dead_endpoint_is_storage_unavailable_quickly() -> None:
    fast = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1, read_timeout=1)
    session = boto3.session.Session(aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    driver = S3Driver("bucket", "p", session=session, endpoint_url=f"http://127.0.0.1:{free_port()}", config=fast)
    store = Store(driver)
    start = time.monotonic()
    try:
        for call in (lambda: store.read("k"), lambda: store.create("k", b"1"), lambda: list(store.list(""))):
            with pytest.raises(StorageUnavailable, match="Could not connect"):
                call()
        with pytest.raises(StorageUnavailable):
            store.stat_many(["a", "b"])
    finally:
        store.close()
    assert time.monotonic() - start < 10


# -- the file driver's own -----------------------------------------------------------------------


def test_file_backend_leaves_no_temp_files_and_sweeps_old_ones(tmp_path: Path) -> None:
    root = tmp_path / "s"
    s = FileStorage(root)
    s.put("objects/a", b"1")
    (root / "objects" / ".tmp-a.dead").write_bytes(b"partial")
    FileStorage(root)  # start-up sweeps what a crash left
    assert sorted(p.name for p in (root / "objects").iterdir()) == ["a"]
    assert list(s.list("objects/")) == ["objects/a"]


if __name__ == "__main__":
    _worker(*sys.argv[1:])


def test_file_etags_never_repeat_for_a_key_even_when_inodes_are_reused(tmp_path: Path) -> None:
    """The file driver's etag is inode, size and mtime; ext4 reuses inodes and older
    kernels keep coarse file times, so write i and write i+2 could look the same (an ABA
    that lets a stale swap through).  Every put and swap stamps the new file's mtime past
    the old one's: a key's etags strictly rise in mtime and never repeat.  (Not seen to
    repeat on this machine's 6.x kernel, whose file times are fine-grained: hardening, not
    a reproduced failure.)"""
    store = FileStorage(tmp_path / "s")
    etag = first = store.put("apps/a/channels/c", b"0" * 64)
    seen, mtimes = {etag}, []
    for i in range(200):
        new = store.swap("apps/a/channels/c", f"{i % 10}".encode() * 64, etag) if i % 2 else store.put(
            "apps/a/channels/c", f"{i % 10}".encode() * 64)
        assert new is not None and new not in seen
        seen.add(new)
        etag = new
        mtimes.append(int(new.split("-")[2], 16))
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)
    assert store.swap("apps/a/channels/c", b"x", first) is None  # the oldest etag is stale


def test_a_malformed_endpoint_or_profile_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``minicdn origin --storage s3://...`` with a bad AWS_ENDPOINT_URL or an unknown
    profile stops with one line naming --storage (exit 2), not a traceback."""
    from origin.storage import open_storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    with pytest.raises(ConfigError, match="--storage"):
        open_storage("s3://bucket/p", tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile-here")
    with pytest.raises(ConfigError, match="--storage"):
        open_storage("s3://bucket/p", tmp_path)
