"""The data plane's answers to GET and HEAD of ``/v1/{chunks,bundles,manifests}/{id}``:
common.representation's answer, rendered as HTTP/1.1 bytes.

The plain 200 head of an object the memory tier holds is rendered once per variant and
kept, with the body it goes with, in ``Prebuilt`` (beside the tier's entries, not on
them); the connection's inline path sends it as it is.  ``Answers.now`` answers what
needs no waiting; ``Answers.later`` (in a task) what needs a fill, a decode or an encoding.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from http import HTTPStatus

from common import codec
from common.errors import MinicdnError
from common.http import status_of
from common.representation import PLAIN, Answer, represent
from edge.encodings import Encodings
from edge.loops import Bound
from edge.memory import MemoryTier
from edge.objects import Entry, Obj, Sealed
from edge.plane.head import F_ACCEPT_ENCODING, F_IF_NONE_MATCH, HEX64, HOP_FIELDS, Request, accepts_zstd
from edge.plane.stats import Stats
from edge.representation import (
    BUNDLE,
    CHUNK_RAW,
    CHUNK_ZSTD,
    MANIFEST_RAW,
    MANIFEST_ZSTD,
    Form,
    not_modified,
)
from edge.service import Edge

__all__ = ["Answers", "Body", "Handoff", "Prebuilt", "Reply", "error", "render"]

log = logging.getLogger("minicdn.edge.dataplane")

Body = bytes | memoryview | Sealed


class Reply:
    __slots__ = ("body", "head", "route", "sent", "status")

    def __init__(self, route: str, status: int, head: bytes, body: Body | None, sent: int) -> None:
        self.route = route
        self.status = status
        self.head = head  # status line and fields, without Date and the blank line
        self.body = body  # None: nothing to send (HEAD, 304); Sealed: sent from its memfd
        self.sent = sent


class Handoff(Exception):
    """The request is aiohttp's: hand the connection over at this request."""


# Status lines, made once: an enum lookup per answer cost ~1 us of a miss (issue 15).
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


def render(status: int, fields: list[tuple[str, str]]) -> bytes:
    lines = [STATUS_LINES[status]]
    lines += [f"{k}: {v}\r\n" for k, v in fields]
    lines.append("Server: minicdn\r\n")
    return "".join(lines).encode("latin-1")


def error(
    route: str,
    status: int,
    code: str,
    message: str,
    fields: list[tuple[str, str]] | None = None,
    method: bytes = b"GET",
) -> Reply:
    body = json.dumps({"error": code, "message": message}).encode()
    head = render(
        status, [*(fields or []), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    if method == b"HEAD":
        return Reply(route, status, head, None, 0)
    return Reply(route, status, head, body, len(body))


class Prebuilt:
    """The plain 200 head of each variant of the memory tier's entries, with its body:
    ``forms[entry][form] == (head, body)``; forgotten with the entry."""

    def __init__(self, memory: MemoryTier) -> None:
        self.memory = memory
        self.forms: dict[Entry, dict[Form, tuple[bytes, bytes | Sealed]]] = {}
        memory.on_forget.append(self.forget)

    def get(self, key: str, entry: Entry, form: Form, body: bytes | Sealed) -> tuple[bytes, bytes | Sealed]:
        forms = self.forms.get(entry)
        made = None if forms is None else forms.get(form)
        if made is not None:
            return made
        size = body.size if isinstance(body, Sealed) else len(body)
        answer = represent(form.of(f'"{key.partition("/")[2]}"', size))
        made = render(200, answer.fields), body
        if self.memory.peek(key) is entry:
            self.forms.setdefault(entry, {})[form] = made
        return made

    def forget(self, entry: Entry) -> None:
        self.forms.pop(entry, None)


def _sized(answer: Answer, body: bytes | Sealed) -> bytes | memoryview:
    if isinstance(body, Sealed):
        return body.read(answer.start, answer.end)
    return memoryview(body)[answer.start : answer.end]


class Answers(Bound):
    """What every connection of one process answers object requests with."""

    def __init__(self, node: Edge, encodings: Encodings, stats: Stats) -> None:
        self.node = node
        self.memory = node.memory
        self.encodings = encodings
        self.stats = stats
        self.prebuilt = Prebuilt(node.memory)

    def now(self, req: Request) -> Reply | Entry | None:
        """The reply, when it can be made without waiting; else what a task needs to make
        it: the entry (found in memory) or None (a miss)."""
        early = not_modified(req.kind, req.etag, req.field(F_IF_NONE_MATCH))
        if early is not None:
            return self.reply(req, early, b"")
        entry = self.memory.get(req.key)
        if entry is None:
            if not HEX64.fullmatch(req.hexid) or any(f in req.low for f in HOP_FIELDS):
                raise Handoff
            return None
        self.stats.memory_hits.n += 1
        return self.finish(req, entry) or entry

    def finish(self, req: Request, entry: Entry) -> Reply | None:
        """The reply from ``entry``, or None when it needs a decode or an encoding first."""
        kind = req.kind
        if kind == "bundle":
            return self.immutable(req, entry, BUNDLE, entry.stored)
        zstd = accepts_zstd(req.field(F_ACCEPT_ENCODING) or "")
        if kind == "chunk":
            return self.immutable(req, entry, CHUNK_ZSTD, entry.stored) if zstd else None
        if not zstd:
            return self.immutable(req, entry, MANIFEST_RAW, entry.stored)
        encoded = self.encodings.zstd.get(entry)
        return None if encoded is None else self.immutable(req, entry, MANIFEST_ZSTD, encoded)

    def begin(self, req: Request) -> asyncio.Future[Reply] | None:
        """The reply to a miss (a chunk asked for as a frame), from a flight driven by
        callbacks (edge.fill's ``begin``): no task; None when it cannot be (``later``)."""
        if req.kind != "chunk" or not accepts_zstd(req.field(F_ACCEPT_ENCODING) or ""):
            return None
        try:
            flight = self.node.objects.begin(Obj("chunk", bytes.fromhex(req.hexid)))
        except Exception:  # a bug: ``later`` answers this request alone (a 500), if again
            log.exception("%s %s: the callback miss failed", req.method.decode(), req.path.decode())
            return None
        if flight is None:
            return None
        out: asyncio.Future[Reply] = self.loop().create_future()
        flight.add_done_callback(functools.partial(self._landed, req, out))
        return out

    def _landed(self, req: Request, out: asyncio.Future[Reply], flight: asyncio.Future[Entry]) -> None:
        if out.done():  # the connection went away
            return
        if flight.cancelled():
            out.cancel()
            return
        error = flight.exception()
        try:
            if error is not None:
                reply = self.failed(req, error)
            else:  # never None: a chunk's frame, as asked
                reply = self.finish(req, flight.result()) or self.failed(req, RuntimeError("needs a decode"))
        except Exception as exc:  # a bug: a 500, never a connection left waiting
            reply = self.failed(req, exc)
        out.set_result(reply)

    async def later(self, req: Request, entry: Entry | None) -> Reply:
        try:
            obj = Obj(req.kind, bytes.fromhex(req.hexid))
            if entry is None:
                entry = await self.node.objects.load(obj)
            reply = self.finish(req, entry)
            if reply is not None:
                return reply
            if req.kind == "chunk":
                loop = asyncio.get_running_loop()
                raw = await loop.run_in_executor(None, codec.decode_chunk, obj.id, entry.body)
                return self.reply(req, represent(CHUNK_RAW.of(req.etag, len(raw)), req.conditions()), raw)
            encoded = await self.encodings.zstd_of(req.key, entry)
            return self.immutable(req, entry, MANIFEST_ZSTD, encoded)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self.failed(req, exc)

    @staticmethod
    def failed(req: Request, exc: BaseException) -> Reply:
        """The error reply to ``req`` whose answer failed with ``exc``."""
        if isinstance(exc, MinicdnError):
            status = status_of(exc)
            if status >= 500:
                log.warning("%s %s: %s", req.method.decode(), req.path.decode(), exc.message)
            return error(req.kind, status, exc.code, exc.message, method=req.method)
        log.error("%s %s failed", req.method.decode(), req.path.decode(), exc_info=exc)
        return error(req.kind, 500, "internal", "internal error", method=req.method)

    def immutable(self, req: Request, entry: Entry, form: Form, body: bytes | Sealed) -> Reply:
        """``entry`` in ``form``: its prebuilt 200, or what its conditions select.  A sealed
        body is read only for the bytes a range selects, and sent from its memfd otherwise."""
        conditions = req.conditions()
        if conditions is PLAIN:
            head, body = self.prebuilt.get(req.key, entry, form, body)
            size = body.size if isinstance(body, Sealed) else len(body)
            if req.method == b"HEAD":
                return Reply(req.kind, 200, head, None, 0)
            return Reply(req.kind, 200, head, body, size)
        size = body.size if isinstance(body, Sealed) else len(body)
        return self.reply(req, represent(form.of(req.etag, size), conditions), body)

    def reply(self, req: Request, answer: Answer, body: bytes | Sealed) -> Reply:
        if answer.status == 416:
            return error(req.kind, 416, answer.code, answer.message, answer.fields, req.method)
        head = render(answer.status, answer.fields)
        if req.method == b"HEAD" or answer.status == 304:
            return Reply(req.kind, answer.status, head, None, 0)
        if answer.status == 200 and answer.end == (body.size if isinstance(body, Sealed) else len(body)):
            return Reply(req.kind, 200, head, body, answer.end)
        part = _sized(answer, body)
        return Reply(req.kind, answer.status, head, part, len(part))
