"""Hops between edges: what a request carries when one edge asks another, and the rules
that keep a tier of edges from forwarding in circles.

- ``Via: 1.1 <node>`` (RFC 9110 §7.6.3) is appended by every edge to every request it
  sends on (to a peer or an upstream), after the ``Via`` it received.  An edge that finds
  its own node name in an incoming ``Via`` is seeing its own request come back (A's upstream
  is B, B's is A): it refuses at once with 508 Loop Detected (RFC 5842 §7.2) instead of
  joining the fill it is itself waiting on.  A request that already crossed ``MAX_HOPS``
  hops is refused the same way, whatever the names.
- ``X-Minicdn-Peer: <node>`` marks a request from a ring peer: the owner fills it from its
  upstreams and never forwards it to another peer.  When the edge has a token
  (``MINICDN_TOKEN``, which every member of a ring shares), the mark counts only with
  ``X-Minicdn-Peer-Proof``: HMAC-SHA256 under the token of ``"<node> <request target>"``.
  A mark without it is ignored (the request is a client's), so a client cannot make every
  edge bypass the ring and fill from the origin.  Without a token marks are taken on trust.

The incoming hop is kept in a context variable set by ``middleware``: it follows the
request into the fill it starts (asyncio copies the context into every task), so the
fill path and the HTTP client need no extra parameters.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from common.errors import LoopDetected

__all__ = [
    "MAX_HOPS",
    "PEER",
    "PEER_PROOF",
    "VIA",
    "Hop",
    "current",
    "middleware",
    "new_node_name",
    "outgoing",
    "own_request",
    "parse_via",
    "peer_mark",
]

VIA = "Via"
PEER = "X-Minicdn-Peer"
PEER_PROOF = "X-Minicdn-Peer-Proof"
MAX_HOPS = 8  # edges a request may cross: a chain of shields deeper than this is a mistake
_COMMENT = re.compile(r"\([^)]*\)")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Hop:
    via: tuple[str, ...] = ()  # the Via entries received, oldest first ("1.1 edge-ab12…")
    peer: bool = False  # the request came from a ring peer: never forward it again

    def through(self, node: str) -> bool:
        return any(received_by(entry) == node for entry in self.via)


_current: contextvars.ContextVar[Hop] = contextvars.ContextVar("minicdn_hop")
_CLIENT = Hop()  # a request straight from a client (or none at all: a background task)


def current() -> Hop:
    return _current.get(_CLIENT)


def new_node_name() -> str:
    """An edge's name in Via headers and health answers: random, made when the edge
    starts (a loop always happens within one run of an edge)."""
    return f"edge-{secrets.token_hex(6)}"


def parse_via(headers: list[str]) -> tuple[str, ...]:
    """The entries of every Via field line, comments dropped (RFC 9110 §7.6.3)."""
    entries = []
    for line in headers:
        for part in _COMMENT.sub("", line).split(","):
            if part.strip():
                entries.append(" ".join(part.split()))
    return tuple(entries)


def received_by(entry: str) -> str:
    """``1.1 edge-ab12`` → ``edge-ab12`` (a Via entry is protocol, then received-by)."""
    parts = entry.split()
    return parts[1] if len(parts) > 1 else parts[0] if parts else ""


def check(hop: Hop, node: str) -> None:
    if hop.through(node):
        raise LoopDetected(
            f"loop: this edge ({node}) forwarded this request before (Via: {', '.join(hop.via)})"
        )
    if len(hop.via) >= MAX_HOPS:
        raise LoopDetected(f"a request may cross at most {MAX_HOPS} edges (Via: {', '.join(hop.via)})")


def _proof(secret: str, node: str, target: str) -> str:
    return hmac.new(secret.encode(), f"{node} {target}".encode(), hashlib.sha256).hexdigest()


def peer_mark(node: str, secret: str | None, url: str) -> dict[str, str]:
    """The headers that mark a request for ``url`` as coming from peer ``node``; with the
    ring's shared ``secret``, proven (over the URL's path and query, as the peer reads them)."""
    if secret is None:
        return {PEER: node}
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return {PEER: node, PEER_PROOF: _proof(secret, node, target)}


def outgoing(node: str, peer: bool = False, secret: str | None = None, url: str = "") -> dict[str, str]:
    """Headers for a request this edge sends on, in the context of the request it serves.
    (Not for admin calls to peers: those are this edge's own, marked only as from a peer.)"""
    headers = {VIA: ", ".join([*current().via, f"1.1 {node}"])}
    if peer:
        headers.update(peer_mark(node, secret, url))
    return headers


def from_peer(request: web.Request, secret: str | None) -> bool:
    """Whether ``request`` carries a peer mark this edge accepts (see the module's doc)."""
    node = request.headers.get(PEER)
    if node is None or not node.isascii():  # node names are ASCII; a stray byte is a client's
        return False
    if secret is None:
        return True
    proof = request.headers.get(PEER_PROOF, "")
    if not proof.isascii():  # hex; aiohttp hands a byte past ASCII over as a lone surrogate
        return False
    return hmac.compare_digest(proof.encode(), _proof(secret, node, request.raw_path).encode())


def middleware(node: str, secret: str | None = None) -> Middleware:
    @web.middleware
    async def hops(request: web.Request, handler: Handler) -> web.StreamResponse:
        hop = Hop(parse_via(request.headers.getall(VIA, [])), from_peer(request, secret))
        check(hop, node)
        token = _current.set(hop)
        try:
            return await handler(request)
        finally:
            _current.reset(token)

    return hops


@contextlib.contextmanager
def own_request() -> Iterator[None]:
    """Within: the work being done is this edge's own, as if no request had come in: its
    fills may ask owner peers and carry no Via but this edge's.  For work a peer delegates
    as a whole (its share of a prefetch): the ring should still place every object it
    needs on that object's owner — which may be the peer that delegated it."""
    token = _current.set(_CLIENT)
    try:
        yield
    finally:
        _current.reset(token)
