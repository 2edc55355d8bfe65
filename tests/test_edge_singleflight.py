"""Single-flight: one fill per key, shared by every caller, never cancelled by one of them."""

from __future__ import annotations

import asyncio

import pytest

from edge.singleflight import Flights, Unsettled


async def test_concurrent_callers_share_one_fill() -> None:
    flights: Flights[int] = Flights()
    calls = 0
    gate = asyncio.Event()

    async def fill() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.ensure_future(flights.do("k", fill)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1 and len(flights) == 0
    assert [v for v, _ in results] == [42] * 50
    assert sum(joined for _, joined in results) == 49


async def test_an_error_reaches_every_caller_and_the_next_call_fills_again() -> None:
    flights: Flights[int] = Flights()
    gate = asyncio.Event()

    async def boom() -> int:
        await gate.wait()
        raise ValueError("upstream said no")

    tasks = [asyncio.ensure_future(flights.do("k", boom)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)

    async def ok() -> int:
        return 7

    assert await flights.do("k", ok) == (7, False)


async def test_a_caller_that_leaves_does_not_cancel_the_fill_others_wait_for() -> None:
    flights: Flights[str] = Flights()
    gate = asyncio.Event()

    async def fill() -> str:
        await gate.wait()
        return "done"

    leader = asyncio.ensure_future(flights.do("k", fill))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.do("k", fill))
    await asyncio.sleep(0)
    leader.cancel()  # its client disconnected
    await asyncio.sleep(0)
    gate.set()
    assert await follower == ("done", True)
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_waiter_past_the_bound_fetches_alone() -> None:
    flights: Flights[str] = Flights(wait_bound=0.01)
    never = asyncio.Event()

    async def stuck() -> str:
        await never.wait()
        return "late"

    async def alone() -> str:
        return "alone"

    leader = asyncio.ensure_future(flights.do("k", stuck))
    await asyncio.sleep(0)
    assert await flights.do("k", stuck, alone=alone) == ("alone", True)
    await flights.close()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(flights) == 0


async def test_a_second_fill_is_shared_and_the_first_answer_wins() -> None:
    flights: Flights[str] = Flights(wait_bound=0.001)
    first_gate, second_gate = asyncio.Event(), asyncio.Event()
    seconds = 0

    async def first() -> str:
        await first_gate.wait()
        return "first"

    async def second() -> str:
        nonlocal seconds
        seconds += 1
        await second_gate.wait()
        raise ValueError("the second fill failed")

    leader = asyncio.ensure_future(flights.do("k", first))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(flights.do("k", first, alone=second)) for _ in range(10)]
    while seconds == 0:
        await asyncio.sleep(0)
    second_gate.set()  # the second fails: the waiters keep waiting on the first
    first_gate.set()
    assert await asyncio.gather(*waiters) == [("first", True)] * 10
    assert await leader == ("first", False)
    assert seconds <= 2  # one, or two if a waiter timed out after the first second landed


async def test_claimed_keys_are_settled_by_one_fill_and_joined_by_do() -> None:
    flights: Flights[str] = Flights()
    gate = asyncio.Event()
    runs: list[list[str]] = []

    async def fill_many(claimed: dict[str, asyncio.Future[str]]) -> None:
        runs.append(sorted(claimed))
        await gate.wait()
        claimed["a"].set_result("A")
        # "b" is left unsettled: its callers get an error, not a hang

    async def never() -> str:
        raise AssertionError("a claimed key is not filled again")

    async def fill_c() -> str:
        await gate.wait()
        return "C"

    taken = asyncio.ensure_future(flights.do("c", fill_c))  # "c" is in flight before the claim
    await asyncio.sleep(0)
    claimed = flights.claim(["a", "b", "a", "c"], fill_many)
    assert sorted(claimed) == ["a", "b"] and "a" in flights and len(flights) == 3
    joined = asyncio.ensure_future(flights.do("a", never))
    await asyncio.sleep(0)
    gate.set()
    assert await joined == ("A", True)
    with pytest.raises(Unsettled):
        await claimed["b"]
    assert runs == [["a", "b"]] and await taken == ("C", False)
    assert len(flights) == 0


async def test_close_cancels_claimed_fills() -> None:
    flights: Flights[str] = Flights()

    async def forever(claimed: dict[str, asyncio.Future[str]]) -> None:
        await asyncio.Event().wait()

    claimed = flights.claim(["x"], forever)
    await flights.close()
    assert claimed["x"].cancelled() and len(flights) == 0


# -- a flight that begins with a look run by the caller that starts it ----------------------------


async def test_a_look_that_finds_the_value_is_the_answer_for_every_caller_and_fills_nothing() -> None:
    flights: Flights[str] = Flights()
    gate, looks, fills = asyncio.Event(), [], []

    async def look() -> str | None:
        looks.append(1)
        await gate.wait()
        return "found"

    async def fill() -> str:
        fills.append(1)
        return "filled"

    calls = [asyncio.ensure_future(flights.do("k", fill, look=look)) for _ in range(5)]
    while not looks:
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*calls) == [("found", False)] + [("found", True)] * 4
    assert looks == [1] and not fills and "k" not in flights


async def test_when_the_caller_that_looks_leaves_the_others_still_get_an_answer() -> None:
    flights: Flights[str] = Flights()
    gate, looks = asyncio.Event(), []

    async def look() -> str | None:
        looks.append(1)
        await gate.wait()
        return None

    async def fill() -> str:
        return "filled"

    leader = asyncio.ensure_future(flights.do("k", fill, look=look))
    while not looks:
        await asyncio.sleep(0)
    joiner = asyncio.ensure_future(flights.do("k", fill, look=look))
    await asyncio.sleep(0)  # one turn: the joiner's first step joins the flight
    leader.cancel()  # its client went away during the look
    gate.set()
    assert await joiner == ("filled", True)
    assert leader.cancelled() and looks == [1, 1]
    await flights.close()
