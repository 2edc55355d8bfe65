"""An edge never follows a redirect: not from an upstream, not from a peer, not from a
peer's /healthz, not on an admin call to a peer.  A 3xx is a failure of the source that
sent it (counted, the next source asked), and the host it points at is never contacted:
it would get this edge's Via, peer mark and token, and its answer would be passed on.

Real processes on loopback: an origin, edges, and scripted servers in front of the origin
that answer every request with a 307 to a second scripted server, which records whether
anyone came."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.ring import Ring
from tests.conftest import TOKEN, auth, http
from tests.edge_support import (
    App,
    ScriptedUpstream,
    edge,
    eventually,
    get_chunk,
    publish_app,
    random_app,
    ring_size,
    scripted,
    verify_chunk,
)
from tests.procs import Service, free_port, metric, origin_chunks


@pytest.fixture(scope="module")
def app(origin: Service, tmp_path_factory: pytest.TempPathFactory) -> App:
    return publish_app(origin.url, "redir", random_app(tmp_path_factory.mktemp("redir") / "app", 0.5, seed=71))


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirecting_upstream_is_a_failed_source_and_its_target_is_never_contacted(
    origin: Service, app: App, tmp_path: Path, status: int
) -> None:
    with scripted(origin.url) as elsewhere, scripted(origin.url) as redirector:
        redirector.redirect, redirector.redirect_status = elsewhere.url, status
        svc = edge(tmp_path, redirector.url).start()
        try:
            cid = app.chunks[0]
            assert get_chunk(svc.url, cid).status == 502
            assert http("GET", f"{svc.url}/v1/manifests/{app.manifest}").status == 502
            assert http("GET", f"{svc.url}/v1/apps/redir/channels/release").status == 502
            assert http("GET", f"{svc.url}/v1/apps").status == 502
            assert len(redirector.requests) == 4
            assert elsewhere.requests == []
            assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="redirect"') == 4
        finally:
            svc.stop()


def test_the_next_upstream_answers_after_a_redirect(origin: Service, app: App, tmp_path: Path) -> None:
    with scripted(origin.url) as elsewhere, scripted(origin.url) as redirector:
        redirector.redirect = elsewhere.url
        svc = edge(tmp_path, redirector.url, origin.url).start()
        try:
            before = origin_chunks(origin)
            for cid in app.chunks[:3]:
                verify_chunk(cid, get_chunk(svc.url, cid, zstd=True))
            assert http("GET", f"{svc.url}/v1/apps/redir/channels/release").status == 200
            assert origin_chunks(origin) - before == 3  # the second upstream, once each
            assert elsewhere.requests == []
            assert metric(svc.url, "minicdn_edge_upstream_errors_total", 'reason="redirect"') == 4
        finally:
            svc.stop()


@contextmanager
def beside_a_redirecting_peer(origin: Service, app: App, tmp: Path, check_interval: str) -> Iterator[Peered]:
    """An edge in a ring of two whose other member answers everything with a 307 to a
    third server; yields the edge, the redirector, that third server, and the app's chunks
    the redirector owns."""
    with scripted(origin.url) as elsewhere, scripted(origin.url) as redirector:
        redirector.redirect = elsewhere.url
        port = free_port()
        me = f"http://127.0.0.1:{port}"
        svc = edge(tmp, origin.url, port=port,
                   extra=("--peer", me, "--peer", redirector.url, "--self", me,
                          "--peer-check-interval", check_interval)).start()
        try:
            ring = Ring([me, redirector.url])
            theirs = [c for c in app.chunks if ring.owner(f"chunks/{c}") == redirector.url][:3]
            assert theirs
            yield Peered(svc, redirector, elsewhere, theirs)
        finally:
            svc.stop()


@dataclass
class Peered:
    edge: Service
    redirector: ScriptedUpstream
    elsewhere: ScriptedUpstream
    theirs: list[str]


def test_a_redirecting_peer_is_neither_followed_nor_kept_in_the_ring(
    origin: Service, app: App, tmp_path: Path
) -> None:
    """Its /healthz redirect fails the check (it points at a server that would answer
    200); its chunks come from the origin; an admin call to it fails."""
    with beside_a_redirecting_peer(origin, app, tmp_path, "200ms") as p:
        eventually(lambda: ring_size(p.edge) == 1, what="the redirecting peer out of the ring")
        assert "/healthz" in p.redirector.requests
        for cid in p.theirs:
            verify_chunk(cid, get_chunk(p.edge.url, cid, zstd=True))
        body = json.dumps({"app": "redir", "cluster": True}).encode()
        r = http("POST", f"{p.edge.url}/v1/admin/purge", body, auth(TOKEN))
        assert r.status == 200 and r.json()["failed"] == [p.redirector.url]  # type: ignore[index]
        assert p.elsewhere.requests == []
        assert metric(p.edge.url, "minicdn_edge_peers", 'state="down"') == 1


def test_a_redirecting_peer_asked_for_a_chunk_is_a_counted_peer_failure(
    origin: Service, app: App, tmp_path: Path
) -> None:
    """While the redirecting peer is still in the ring (health checks every 10 min), its
    chunks are asked of it, fail as redirects, and come from the origin instead."""
    with beside_a_redirecting_peer(origin, app, tmp_path, "600s") as p:
        for cid in p.theirs:
            verify_chunk(cid, get_chunk(p.edge.url, cid, zstd=True))
        assert metric(p.edge.url, "minicdn_edge_peer_errors_total", 'reason="redirect"') == len(p.theirs)
        assert p.elsewhere.requests == []
