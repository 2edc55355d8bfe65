"""The operator console: a static page under ``/console/`` that talks to the JSON API
(docs/operations.md "The console").  Plain files, no build step, nothing from elsewhere.

The page holds the operator token in the tab's sessionStorage and sends it as a bearer
header; it sets no cookie, so no other site can make a browser act with it (no CSRF).
What it must never do is run script it did not ship: every answer here carries a strict
Content-Security-Policy (no inline script, nothing from another origin, no framing), and
the page writes the API's data as text, never as markup.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from common.errors import NotFound

__all__ = ["FILES", "HEADERS", "add_routes"]

FILES = {  # name → content type: nothing else under /console/ is served
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
    "icon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def add_routes(router: web.UrlDispatcher) -> None:
    """``/console/`` and its files, read once (they ship inside the package)."""
    here = resources.files(__name__)
    bodies = {name: (here / name).read_bytes() for name in FILES}

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        if name not in bodies:
            raise NotFound(f"no console file {name[:80]!r}")
        return web.Response(body=bodies[name], content_type=FILES[name], charset="utf-8", headers=HEADERS)

    async def bare(_request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/console/", **HEADERS})

    router.add_get("/console", bare, name="console_redirect")
    router.add_get("/console/", page, name="console")
    router.add_get("/console/{name}", page, name="console_file")
