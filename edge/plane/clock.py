"""Coarse time for the data plane's timeouts and the ``Date`` field."""

from __future__ import annotations

import time
from email.utils import formatdate

__all__ = ["CLOCK", "Clock"]


class Clock:
    """Advanced by the plane's sweeper: reading it costs an attribute load, not a system
    call.  ``date`` is the ``Date`` field with the blank line that ends a response head."""

    def __init__(self) -> None:
        self.now = 0.0
        self.date = b""
        self._second = -1
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        second = int(time.time())
        if second != self._second:
            self._second = second
            self.date = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n\r\n"


CLOCK = Clock()
