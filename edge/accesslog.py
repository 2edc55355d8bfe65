"""An optional JSON-lines access log, written by a logging QueueListener thread so that a
slow disk never stalls the event loop."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["AccessLog"]


class AccessLog:
    def __init__(self, path: str) -> None:
        """``path`` is a file (appended to) or ``-`` for standard output."""
        target: logging.Handler = (
            logging.StreamHandler(sys.stdout) if path == "-" else logging.FileHandler(path, encoding="utf-8")
        )
        target.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, target)
        self._logger = logging.Logger("minicdn.edge.access")
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._target = target
        self._listener.start()

    def write(self, record: dict[str, Any]) -> None:
        self._logger.info(json.dumps(record, separators=(",", ":")))

    def request(
        self, remote: str | None, method: str, path: str, status: int, sent: int, seconds: float, ua: str
    ) -> None:
        """One answered request, as either serving path saw it: ``sent`` body bytes."""
        self.write(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "remote": remote,
                "method": method,
                "path": path,
                "status": status,
                "bytes": sent,
                "ms": round(seconds * 1000, 3),
                "ua": ua,
            }
        )

    def close(self) -> None:
        self._listener.stop()
        self._target.close()
