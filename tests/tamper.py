"""A tampering HTTP proxy for tests: it sits between a client and an edge on a loopback
port and, depending on ``mode``, alters what passes through."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Self

import aiohttp
import msgpack
from aiohttp import web

from tests.procs import free_port


@dataclass
class TamperProxy:
    upstream: str
    mode: str = "pass"  # pass | flip-chunk | bad-ref-signature | serve-ref
    ref_body: bytes = b""  # for serve-ref: the ref envelope to answer with
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
        if self.mode == "serve-ref" and "/channels/" in path:
            return web.Response(body=self.ref_body, content_type="application/x-msgpack")
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
        if self.mode == "bad-ref-signature" and "/channels/" in path and status == 200:
            env = msgpack.unpackb(body, raw=False)
            sig = bytearray(env["signature"])
            sig[0] ^= 0x01
            env["signature"] = bytes(sig)
            body = msgpack.packb(env, use_bin_type=True)
        return web.Response(status=status, body=body, headers=out_headers)

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
