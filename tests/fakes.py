"""The one in-process fake of the edge's ``Source`` seam (edge.upstream), and a
``PeerPicker`` that names owners from a table.  tests/test_source_contract.py holds the
fake to the contract ``HttpSource`` keeps against real servers, so tests of the fill path
(tests/test_edge_fill.py) can trust it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

from edge.upstream import Answer, BatchItem, Source, SourceError

__all__ = ["FakeSource", "Owners"]


class FakeSource:
    """Answers ``get`` from ``answers`` by path (404 when absent), and ``batch`` from the
    same table (``/v1/chunks/<id>``); ``down`` refuses like a closed port, ``gate`` holds
    every answer until set, ``lie`` may bend a batch stream.  Every call is recorded."""

    def __init__(self, name: str, kind: str = "upstream") -> None:
        self.name = name
        self.kind = kind
        self.answers: dict[str, Answer] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.gate: asyncio.Event | None = None
        self.down = False
        self.batches: list[list[str]] = []
        self.lie: Callable[[list[BatchItem]], list[BatchItem]] = lambda items: items
        self.max_body: int | None = None  # an answer larger than this is refused, as HttpSource's is

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        self.calls.append((path, dict(headers)))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise SourceError(f"{self.name}: refused", "connect")
        answer = self.answers.get(path, Answer(404, b"", {}))
        if self.max_body is not None and len(answer.body) > self.max_body:
            raise SourceError(f"{self.name}{path}: larger than {self.max_body} bytes", "status")
        return answer

    async def batch(self, ids: Sequence[str], headers: Mapping[str, str]) -> AsyncGenerator[BatchItem, None]:
        """``answers`` as a batch stream (``lie`` may bend it); each call recorded in ``batches``."""
        self.batches.append(list(ids))
        if self.down:
            raise SourceError(f"{self.name}: refused", "connect")
        items = [(i, self._frame(i)) for i in ids]
        for item in self.lie(items):
            if self.gate is not None:
                await self.gate.wait()
            yield item

    def _frame(self, hexid: str) -> bytes | None:
        answer = self.answers.get(f"/v1/chunks/{hexid}")
        return None if answer is None or answer.status != 200 else answer.body


class Owners:
    """A ``PeerPicker`` whose owner of each key is ``table[key]`` (None: this node; keys
    not in the table: ``default``)."""

    def __init__(
        self, table: Mapping[str, Source | None] | None = None, default: Source | None = None
    ) -> None:
        self.table = dict(table or {})
        self.default = default

    def pick(self, key: str) -> Source | None:
        return self.table.get(key, self.default)

    def displaced(self, key: str) -> bool:
        return False
