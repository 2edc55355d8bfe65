"""origin/feed.py: the change log the origin replicas share through their store."""

from __future__ import annotations

import json
from pathlib import Path

from common.changes import Change, ChangeLog
from origin import paths
from origin.feed import EPOCH_KEY, SharedFeed
from origin.storage import FileStorage


def test_a_move_before_the_tail_opens_goes_after_the_end_of_a_trimmed_log(tmp_path: Path) -> None:
    """Moves made at start (pending moves a crash left) can come before the tail has read
    where the log ends.  On a log whose early seqs were trimmed, the first free seq is not
    the next one: the move must land after the last, where readers look (the review of
    issue 18 found it written at seq 1, below every cursor, never seen)."""
    store = FileStorage(tmp_path / "s")
    store.create(EPOCH_KEY, b"0123456789abcdef")
    for seq in (9000, 9001):  # everything before was trimmed
        store.create(paths.change_key(seq), json.dumps({"app": "a", "channel": "c", "serial": seq}).encode())
    feed = SharedFeed(store, ChangeLog(), poll=0.1)
    assert feed.append(Change("a", "c", 7)) == 9002
    assert not store.exists(paths.change_key(1))
    assert feed.append(Change("a", "c", 8)) == 9003


def test_two_replicas_appending_at_once_leave_no_hole_and_no_duplicate(tmp_path: Path) -> None:
    import threading

    store = FileStorage(tmp_path / "s")
    feeds = [SharedFeed(store, ChangeLog(), poll=0.1) for _ in range(2)]
    seqs: list[int] = []
    lock = threading.Lock()

    def run(feed: SharedFeed, who: int) -> None:
        for i in range(25):
            seq = feed.append(Change("a", f"c{who}", i))
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=run, args=(f, i)) for i, f in enumerate(feeds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seqs) == list(range(1, 51))
    stored = [json.loads(store.get(paths.change_key(s))) for s in range(1, 51)]
    for who in (0, 1):  # each writer's changes in the order it made them
        assert [c["serial"] for c in stored if c["channel"] == f"c{who}"] == list(range(25))
