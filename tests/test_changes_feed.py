"""``GET /v1/changes`` against real origin processes: the contract of DESIGN.md "The change
feed" — reset without a cursor or across a restart, immediate answers, a long-poll that
wakes on a move, 400s for hostile input, a drained shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.changes import Busy, Change, ChangeLog, Changes, Cursor
from tests.conftest import DEMO, TOKEN, enriched, http, publish, set_channel, tar_gz_of
from tests.procs import Service, metric, origin_service
from tests.waiting import eventually

CURSOR = re.compile(r"[0-9a-f]{16}\.[0-9]+")


def changes(url: str, query: str = "", timeout: float = 70) -> dict[str, Any]:
    r = http("GET", f"{url}/v1/changes{query}", timeout=timeout)
    assert r.status == 200, r.body
    assert r.headers["cache-control"] == "no-store" and r.headers["content-type"].startswith(
        "application/json"
    )
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"cursor", "changes", "reset"}, body
    assert CURSOR.fullmatch(body["cursor"]), body
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Path]]:
    tmp = tmp_path_factory.mktemp("feed")
    svc = origin_service(tmp, TOKEN).start()
    try:
        assert publish(svc.url, "feed", "1.0.0", tar_gz_of(DEMO)).status == 201
        enriched(svc.url, "feed", "1.0.0")
        yield svc, tmp
    finally:
        svc.stop()


def test_no_cursor_is_a_reset_with_the_current_cursor(world: tuple[Service, Path]) -> None:
    origin, _ = world
    first = changes(origin.url)
    assert first["reset"] is True and first["changes"] == []
    again = changes(origin.url, f"?after={first['cursor']}&wait=0")
    assert again == {"cursor": first["cursor"], "changes": [], "reset": False}


def test_moves_after_a_cursor_are_answered_at_once_in_order(world: tuple[Service, Path]) -> None:
    origin, _ = world
    cursor = changes(origin.url)["cursor"]
    for _ in range(3):
        assert set_channel(origin.url, "feed", "beta", {"version": "1.0.0"}).status == 200
    got = changes(origin.url, f"?after={cursor}&wait=30", timeout=5)  # at once, not after 30 s
    serials = [c["serial"] for c in got["changes"]]
    assert [(c["app"], c["channel"]) for c in got["changes"]] == [("feed", "beta")] * 3
    assert serials == sorted(serials) and len(set(serials)) == 3 and got["reset"] is False
    epoch, seq = cursor.split(".")
    assert got["cursor"] == f"{epoch}.{int(seq) + 3}"


def test_a_long_poll_wakes_when_a_channel_moves(world: tuple[Service, Path]) -> None:
    origin, _ = world
    cursor = changes(origin.url)["cursor"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        polls = [pool.submit(changes, origin.url, f"?after={cursor}&wait=50") for _ in range(3)]
        eventually(lambda: metric(origin.url, "minicdn_origin_change_waiters") == 3, 20, "3 parked polls")
        assert not any(p.done() for p in polls)
        t0 = time.monotonic()
        assert set_channel(origin.url, "feed", "release", {"version": "1.0.0"}).status == 200
        answers = [p.result(timeout=20) for p in polls]
        woke = time.monotonic() - t0
    assert woke < 5, woke  # generous: the issue asks for 2 s end to end
    for a in answers:
        assert [(c["app"], c["channel"]) for c in a["changes"]] == [("feed", "release")] and not a["reset"]
    assert metric(origin.url, "minicdn_origin_change_waiters") == 0


def test_a_quiet_poll_ends_after_wait_with_the_same_cursor(world: tuple[Service, Path]) -> None:
    origin, _ = world
    cursor = changes(origin.url)["cursor"]
    got = changes(origin.url, f"?after={cursor}&wait=0.3")
    assert got == {"cursor": cursor, "changes": [], "reset": False}


@pytest.mark.parametrize(
    "query",
    [
        "?after=nope",
        "?after=0123456789abcdef",
        "?after=0123456789ABCDEF.1",
        "?after=0123456789abcdef.-1",
        "?after=0123456789abcdef.01",
        "?after=0123456789abcdef.1&wait=x",
        "?wait=nan",
        "?wait=1e3",
        "?wait=",
        "?after=" + "a" * 5000,
    ],
)
def test_a_malformed_cursor_or_wait_is_a_json_400(world: tuple[Service, Path], query: str) -> None:
    origin, _ = world
    r = http("GET", f"{origin.url}/v1/changes{query}")
    assert r.status == 400, (query, r.status, r.body)
    assert r.json()["error"] == "bad_request"  # type: ignore[index]


def test_other_epochs_and_future_cursors_are_resets(world: tuple[Service, Path]) -> None:
    origin, _ = world
    epoch, seq = changes(origin.url)["cursor"].split(".")
    other = "0123456789abcdef" if epoch != "0123456789abcdef" else "fedcba9876543210"
    for cursor in (f"{other}.{seq}", f"{epoch}.{int(seq) + 5000}"):
        got = changes(origin.url, f"?after={cursor}&wait=0")
        assert got["reset"] is True and got["changes"] == [] and got["cursor"] == f"{epoch}.{seq}"
    # a little ahead (a reader that failed over from a replica further along): no reset,
    # its own cursor back, until this replica catches up
    near = f"{epoch}.{int(seq) + 3}"
    assert changes(origin.url, f"?after={near}&wait=0") == {"cursor": near, "changes": [], "reset": False}
    big = changes(origin.url, "?wait=100000")  # clamped, and answered at once: no cursor
    assert big["reset"] is True


def test_a_restart_keeps_the_stores_epoch_and_a_drained_shutdown(world: tuple[Service, Path]) -> None:
    """The feed's log lives in the store (origin/feed.py): a restarted origin goes on from
    the same epoch and seq, so a subscriber that saw everything is not reset; one behind
    what the store's log held at the restart is."""
    origin, _ = world
    cursor = changes(origin.url)["cursor"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poll = pool.submit(changes, origin.url, f"?after={cursor}&wait=50")
        eventually(lambda: metric(origin.url, "minicdn_origin_change_waiters") == 1, 20, "a parked poll")
        t0 = time.monotonic()
        assert origin.stop() == 0
        drained = poll.result(timeout=20)
        assert time.monotonic() - t0 < 9  # the waiter was answered, not left to the 10 s shutdown timeout
    assert drained == {"cursor": cursor, "changes": [], "reset": False}
    origin.start()
    epoch, seq = cursor.split(".")
    eventually(lambda: changes(origin.url)["cursor"] == cursor, 20, "the restarted feed at the same cursor")
    assert changes(origin.url, f"?after={cursor}&wait=0") == {"cursor": cursor, "changes": [], "reset": False}
    behind = changes(origin.url, f"?after={epoch}.{int(seq) - 1}&wait=0")
    assert behind == {"cursor": cursor, "changes": [], "reset": True}
    assert set_channel(origin.url, "feed", "release", {"version": "1.0.0"}).status == 200
    moved = changes(origin.url, f"?after={cursor}&wait=0")
    assert [c["channel"] for c in moved["changes"]] == ["release"]
    assert moved["cursor"] == f"{epoch}.{int(seq) + 1}"


# -- the log alone (common.changes, which the origin serves): limits too large to reach through
# -- a real origin cheaply; the rest of its contract: tests/test_changes_log.py


def test_a_cursor_older_than_what_is_kept_is_a_reset_and_answers_are_capped() -> None:
    log = ChangeLog(keep=8, max_batch=3, epoch="00000000000000aa")
    start = log.cursor
    for serial in range(1, 8):
        log.append(Change("a", "c", serial))
    first = log.since(start)
    assert first is not None and [c.serial for c in first.changes] == [1, 2, 3]
    assert str(first.cursor) == "00000000000000aa.3" and not first.reset
    rest = log.since(first.cursor)
    assert rest is not None and [c.serial for c in rest.changes] == [4, 5, 6]
    for serial in range(8, 12):  # 11 changes, 8 kept: seq 4..11
        log.append(Change("a", "c", serial))
    assert log.since(start) == Changes(Cursor("00000000000000aa", 11), (), True)
    edge = log.since(Cursor.parse("00000000000000aa.3"))  # the oldest kept follows seq 3
    assert edge is not None and not edge.reset and edge.changes[0].serial == 4


def test_waiters_beyond_the_bound_are_refused_and_close_wakes_the_rest() -> None:
    async def scenario() -> None:
        log = ChangeLog(max_waiters=1)
        cursor = log.cursor
        parked = asyncio.create_task(log.wait(cursor, 50))
        while log.waiting < 1:
            await asyncio.sleep(0)
        with pytest.raises(Busy):
            await log.wait(cursor, 50)
        log.close()
        assert (await parked) == Changes(log.cursor)
        assert log.waiting == 0 and (await log.wait(cursor, 50)) == Changes(log.cursor)  # closed: at once

    asyncio.run(scenario())
