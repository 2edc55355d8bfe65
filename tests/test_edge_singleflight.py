"""Single-flight: one fill per key, shared by every caller, never cancelled by one of them."""

from __future__ import annotations

import asyncio

import pytest

from edge.singleflight import Flights


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
