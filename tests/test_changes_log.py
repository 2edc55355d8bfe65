"""common.changes: the change log, its cursors and long-polls (the contract of issue 17)."""

from __future__ import annotations

import asyncio

import pytest

from common.changes import MAX_WAIT, Busy, Change, ChangeLog, Changes, Cursor, parse_wait
from common.errors import BadRequest


def change(i: int) -> Change:
    return Change("app", f"c{i}", i)


def test_no_cursor_another_epoch_or_a_future_seq_is_a_reset_at_once() -> None:
    log = ChangeLog()
    log.append(change(1))
    for after in (None, Cursor("0" * 16, 1), Cursor(log.epoch, 2)):
        assert log.since(after) == Changes(Cursor(log.epoch, 1), (), True)


def test_changes_after_a_cursor_come_at_once_at_most_a_batch() -> None:
    log = ChangeLog(keep=10, max_batch=3)
    start = log.cursor
    for i in range(1, 6):
        log.append(change(i))
    first = log.since(start)
    assert first is not None and first.changes == (change(1), change(2), change(3))
    assert first.cursor == Cursor(log.epoch, 3) and not first.reset
    rest = log.since(first.cursor)
    assert rest is not None and rest.changes == (change(4), change(5)) and rest.cursor == log.cursor
    assert log.since(log.cursor) is None  # nothing new: the poll waits


def test_a_cursor_older_than_the_log_keeps_is_a_reset() -> None:
    log = ChangeLog(keep=4)
    start = log.cursor
    for i in range(1, 6):
        log.append(change(i))
    assert log.since(start) == Changes(log.cursor, (), True)
    kept = log.since(Cursor(log.epoch, 1))
    assert kept is not None and kept.changes == tuple(change(i) for i in range(2, 6))


def test_a_new_epoch_resets_every_cursor() -> None:
    log = ChangeLog()
    log.append(change(1))
    old = log.cursor
    log.new_epoch()
    assert log.since(old) == Changes(log.cursor, (), True) and log.cursor.seq == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "0123456789abcdef",
        "0123456789ABCDEF.1",
        "0123456789abcdef.-1",
        "0123456789abcdef.01",
        "0123456789abcdef.1.2",
        "0123456789abcdef.1x",
    ],
)
def test_a_malformed_cursor_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        Cursor.parse(text)


def test_wait_defaults_clamps_and_refuses_what_is_not_a_number() -> None:
    assert parse_wait(None) == 25.0
    assert parse_wait("-3") == 0.0 and parse_wait("1000") == MAX_WAIT and parse_wait("1.5") == 1.5
    for bad in ("x", "nan", "inf", "", "1e3", " 1", "1_000", "0x10"):
        with pytest.raises(BadRequest):
            parse_wait(bad)


def test_an_answer_reads_back_as_it_was_written_and_a_bad_one_is_refused() -> None:
    answer = Changes(Cursor("0123456789abcdef", 7), (change(7),), False)
    assert Changes.from_json(answer.to_json()) == answer
    bad: object
    for bad in (
        [],
        {"cursor": "x", "changes": []},
        {"cursor": "0123456789abcdef.1", "changes": [{"app": 1}]},
        {"cursor": "0123456789abcdef.1", "changes": [{"app": "a", "channel": "c", "serial": True}]},
    ):
        with pytest.raises(BadRequest):
            Changes.from_json(bad)


def test_a_long_poll_answers_at_the_next_change_or_when_its_wait_is_over() -> None:
    async def run() -> None:
        log = ChangeLog()
        cursor = log.cursor
        waiting = asyncio.ensure_future(log.wait(cursor, 30))
        while log.waiting == 0:
            await asyncio.sleep(0)
        log.append(change(1))
        got = await waiting
        assert got.changes == (change(1),) and got.cursor == log.cursor
        empty = await log.wait(log.cursor, 0.01)
        assert empty == Changes(log.cursor) and log.waiting == 0

    asyncio.run(run())


def test_waiters_are_bounded() -> None:
    async def run() -> None:
        log = ChangeLog(max_waiters=2)
        polls = [asyncio.ensure_future(log.wait(log.cursor, 30)) for _ in range(2)]
        while log.waiting < 2:
            await asyncio.sleep(0)
        with pytest.raises(Busy):
            await log.wait(log.cursor, 30)
        log.append(change(1))
        assert all(p.changes == (change(1),) for p in await asyncio.gather(*polls))

    asyncio.run(run())


def test_a_shared_copy_lets_a_reader_slightly_ahead_wait_instead_of_resetting() -> None:
    """An origin replica's log is a copy of the store's, a poll behind at most: an edge that
    fails over from a replica further along arrives with a cursor ahead of this copy.  It
    waits for the copy to catch up and keeps its place (a reset would make it revalidate
    every ref it holds, right when a replica was lost); far ahead, or another epoch, is
    still a reset.  The review of issue 18 found every failover a reset."""
    log = ChangeLog(epoch="00000000000000aa", shared=True)
    for serial in range(1, 4):
        log.append(Change("a", "c", serial))
    ahead = Cursor("00000000000000aa", 5)
    assert log.since(ahead) is None  # wait: nothing due yet, no reset
    assert asyncio.run(log.wait(ahead, 0.01)) == Changes(ahead)  # its own cursor back, no reset
    for serial in (4, 5, 6):
        log.append(Change("a", "c", serial))
    caught = log.since(ahead)
    assert caught is not None and not caught.reset and [c.serial for c in caught.changes] == [6]
    far = log.since(Cursor("00000000000000aa", 6 + log.max_batch + 1))
    assert far is not None and far.reset
    plain = ChangeLog(epoch="00000000000000aa")  # an edge's own log: ahead is a reset, as before
    plain.append(Change("a", "c", 1))
    got = plain.since(Cursor("00000000000000aa", 2))
    assert got is not None and got.reset
