"""A tampering HTTP proxy for tests: it sits between a client and an edge on a loopback
port and, depending on ``mode``, alters what passes through."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
import msgpack
from aiohttp import web

from tests.procs import free_port


def flip_signature(envelope: bytes) -> bytes:
    """A signed envelope (common.signing) with one bit of its signature flipped."""
    env = msgpack.unpackb(envelope, raw=False)
    sig = bytearray(env["signature"])
    sig[0] ^= 0x01
    env["signature"] = bytes(sig)
    return bytes(msgpack.packb(env, use_bin_type=True))


@dataclass
class TamperProxy:
    upstream: str
    mode: str = "pass"  # pass | flip-chunk | bad-ref-signature | serve-ref | edit-open
    ref_body: bytes = b""  # for serve-ref: the ref envelope to answer with
    # edit-open: a function of the open answer's map (ref, heads, manifests) to the one sent
    edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    port: int = field(default_factory=free_port)
    runner: web.AppRunner | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
        if self.session:
            await self.session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.rel_url.path_qs
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.upstream + path, headers=headers,
                                        data=await request.read()) as up:
            body = await up.read()
            out_headers = {k: v for k, v in up.headers.items()
                           if k.lower() in ("content-type", "content-encoding", "etag", "cache-control")}
            status = up.status
        if self.mode == "flip-chunk" and status == 200:
            body = self._flip_chunks(path, body)
        if "/channels/" in path and path.endswith("/open") and status == 200:
            body = self._edit_open(body)
        return web.Response(status=status, body=body, headers=out_headers)

    def _edit_open(self, body: bytes) -> bytes:
        """The open answer (common/opening.py) with its ref or anything else altered."""
        answer = msgpack.unpackb(body, raw=False)
        if self.mode == "bad-ref-signature":
            answer["ref"] = flip_signature(answer["ref"])
        elif self.mode == "serve-ref":
            answer["ref"] = self.ref_body
        elif self.mode == "edit-open" and self.edit is not None:
            answer = self.edit(answer)
        return bytes(msgpack.packb(answer, use_bin_type=True))

    @staticmethod
    def _flip_chunks(path: str, body: bytes) -> bytes:
        if path.startswith("/v1/chunks:batch"):
            items = list(msgpack.Unpacker(io.BytesIO(body), raw=False))
            out = bytearray()
            for hexid, frame in items:
                if frame is not None:
                    f = bytearray(frame)
                    f[len(f) // 2] ^= 0x01
                    frame = bytes(f)
                out += msgpack.packb([hexid, frame], use_bin_type=True)
            return bytes(out)
        if path.startswith("/v1/chunks/"):
            b = bytearray(body)
            b[len(b) // 2] ^= 0x01
            return bytes(b)
        return body
