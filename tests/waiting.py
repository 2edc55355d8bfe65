"""The tests' one way to wait for something to happen: poll a condition against a deadline.

A fixed sleep either waits too long or, on a loaded machine, not long enough; polling
stops as soon as the condition holds and fails with a message naming what never happened.
(``loadtests.net.wait_http`` is the HTTP-specific poll the services use to start.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")

INTERVAL = 0.02  # between two checks: short enough to add nothing a test would notice


def eventually(
    check: Callable[[], T | None],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    interval: float = INTERVAL,
) -> T:
    """Call ``check`` until it returns a true value, and return that value.

    After ``timeout`` seconds: AssertionError naming ``what`` (a callable is called then,
    so the message can show the state that did not change).  An exception from ``check``
    propagates: a check that may fail transiently catches what it expects itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} did not hold within {timeout}s")
        time.sleep(interval)
