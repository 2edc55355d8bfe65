"""The data plane's last resort, logged: one line for its bugs every few seconds."""

from __future__ import annotations

import logging
import time
import traceback

__all__ = ["FAILURES", "Failures"]

log = logging.getLogger("minicdn.edge.dataplane")


class Failures:
    """One log line for the data plane's bugs every ``every`` seconds, naming where the
    last one was raised and how many were not logged since."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.next = 0.0
        self.missed = 0

    def report(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self.next:
            self.missed += 1
            return
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        log.error(
            "data plane bug, answered 500: %s: %s at %s (%d more since the last report)",
            type(exc).__name__,
            exc,
            where,
            self.missed,
        )
        self.next = now + self.every
        self.missed = 0


FAILURES = Failures()
