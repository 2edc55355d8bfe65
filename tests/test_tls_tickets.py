"""Session ticket keys (common.tickets): set in OpenSSL's context through the ``ssl``
module's own libssl, the same key for every worker of one server in one period, a new one
each period.  Real OpenSSL handshakes in memory (a client and a server context talking
through memory BIOs), then a real edge with two workers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.tickets import KEY_BYTES, Tickets, key_of, next_state
from common.tls import ServerTls, TlsFiles, from_flags, server_context
from tests.procs import Service
from tests.test_tls_edge import client_context, connect, get, serving, tls_edge
from tests.test_tls_pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tickets-pki"))


def _server(pki: Pki) -> ssl.SSLContext:
    pair = pki.issue("tickets")
    return server_context(TlsFiles(pair.cert, pair.key))[0]


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """A full TLS 1.3 exchange in memory, the tickets included; the client's end."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1", session=session)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (obj, out, peer_in) in enumerate(((c, c_out, s_in), (s, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            break
    assert all(done)
    s.write(b"x")  # the server's tickets go out before its first record after the handshake
    c_in.write(s_out.read())
    assert c.read(1) == b"x"
    return c


def test_a_ratchet_a_key_per_period_and_no_way_back() -> None:
    s0 = b"s" * 32
    s1, s2 = next_state(s0), next_state(next_state(s0))
    assert len({s0, s1, s2}) == 3 and len(key_of(s0)) == KEY_BYTES
    stepping, jumping = Tickets(60.0, s0, start=600.0), Tickets(60.0, s0, start=600.0)
    assert stepping.key(10) == key_of(s0)
    assert stepping.key(11) == key_of(s1) and stepping.key(12) == key_of(s2)
    assert jumping.key(12) == key_of(s2)  # a worker started later steps to the same key
    assert stepping.key(11) is None and stepping.state == s2  # the earlier states are gone
    assert Tickets(60.0, b"t" * 32, start=600.0).key(12) != key_of(s2)


def test_the_context_holds_the_periods_key(pki: Pki) -> None:
    s0 = b"k" * 32
    tickets = Tickets(60.0, s0, start=600.0)
    assert tickets.supported, "this Python's ssl and OpenSSL are the ones the project supports"
    ctx = _server(pki)
    assert tickets.apply(ctx, now=600.0)
    assert tickets.held(ctx) == key_of(s0) and tickets.current == 10
    assert tickets.apply(ctx, now=660.0)
    assert tickets.held(ctx) == key_of(next_state(s0))
    assert not tickets.apply(ctx, now=550.0)  # the clock went back: the key stays
    assert tickets.held(ctx) == key_of(next_state(s0))
    assert tickets.until_next(now=661.5) == pytest.approx(58.5)


def test_a_worker_started_again_takes_the_periods_key_at_once(pki: Pki) -> None:
    """A worker forked again inherits the key its supervisor set when the server started;
    rotate_tickets replaces it before it sleeps, not a period later."""
    pair = pki.issue("restarted")
    now = time.time()
    s0 = b"r" * 32
    tls = ServerTls(TlsFiles(pair.cert, pair.key), Tickets(3600.0, s0, start=now - 2 * 3600))
    expected = key_of(next_state(next_state(s0)))
    assert tls.tickets.held(tls.context) == expected  # set at start, for this period
    tls.tickets._set(tls.context, key_of(s0))  # as inherited: the key of two periods ago
    tls.tickets.current -= 2

    async def briefly() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tls.rotate_tickets(), 0.2)

    asyncio.run(briefly())
    assert tls.tickets.held(tls.context) == expected


SUPERVISED = """
import os, sys, tempfile, time
from pathlib import Path
from edge.workers import supervise
out = Path(sys.argv[1])
def tick():
    with out.open("a") as f:
        f.write(f"{os.getpid()}\\n")
def work(slot):
    time.sleep(60)
    return 0
sys.exit(supervise(1, work, Path(tempfile.mkdtemp()), tick=(0.1, tick)))
"""


def test_the_supervisor_steps_its_ratchet_and_its_workers_do_not(tmp_path: Path) -> None:
    """edge.workers.supervise's tick (what keeps the supervisor's ticket ratchet current):
    it runs in the supervisor every period, never in a worker."""
    out = tmp_path / "ticks"
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED, str(out)], cwd=Path(__file__).parent.parent)
    try:
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    pids = out.read_text().split()
    assert len(pids) >= 5 and set(pids) == {str(proc.pid)}


def test_the_ratchet_is_stepped_by_advance() -> None:
    tickets = Tickets(60.0, b"a" * 32, start=time.time() - 180)
    before = tickets.at
    tickets.advance()
    assert tickets.at == before + 3 and tickets.state == next_state(next_state(next_state(b"a" * 32)))


def test_a_period_under_a_second_is_refused_naming_the_flag(pki: Pki) -> None:
    pair = pki.issue("short")
    with pytest.raises(ConfigError, match="--tls-ticket-rotate"):
        from_flags(str(pair.cert), str(pair.key), "1.3", 0.5)
    assert from_flags(str(pair.cert), str(pair.key), "1.3", 0.0) is not None  # 0: never


def test_workers_share_a_periods_key_and_a_new_period_refuses_old_tickets(pki: Pki) -> None:
    client = client_context(pki)
    tickets = Tickets(60.0, start=600.0)
    one, two = _server(pki), _server(pki)  # two workers' contexts (inherited, in the edge)
    for ctx in (one, two):
        tickets.apply(ctx, now=600.0)
    first = _handshake(client, one)
    assert not first.session_reused and first.session is not None
    assert _handshake(client, two, first.session).session_reused  # the other worker resumes it
    tickets.apply(two, now=660.0)  # the next period
    again = _handshake(client, two, first.session)
    assert not again.session_reused  # a full handshake: the old key is gone
    assert _handshake(client, two, again.session).session_reused  # and new tickets resume
    # Another server's secret (a different edge, or a restart) does not resume them either.
    other = _server(pki)
    Tickets(60.0, start=660.0).apply(other, now=660.0)
    assert not _handshake(client, other, again.session).session_reused


def test_without_rotation_the_key_is_openssls_own(pki: Pki) -> None:
    ctx = _server(pki)
    before = Tickets(60.0).held(ctx)
    tickets = Tickets(0.0)
    assert not tickets.supported and not tickets.apply(ctx)
    assert Tickets(60.0).held(ctx) == before


def test_an_edge_rotates_its_ticket_key_in_every_worker(pki: Pki, origin: Service, tmp_path: Path) -> None:
    period = 4.0
    e = tls_edge(tmp_path, pki.issue("rotating"), origin.url,
                 extra=("--workers", "2", "--tls-ticket-rotate", f"{period:g}s"))  # fmt: skip
    ctx = client_context(pki)
    with serving(e):
        if time.time() % period > 1.0:  # start just after a period begins
            time.sleep(period - time.time() % period + 0.05)
        with connect(ctx, e.port) as s:
            assert get(s, "/healthz", "")[0] == 200  # (the tickets come with the answer)
            session = s.session
        # 24 connections the kernel spreads over both workers by source port (SO_REUSEPORT:
        # all on one with odds of 2 in 2**24): every one resumes the first one's session.
        for _ in range(24):
            with connect(ctx, e.port, session=session) as s:
                assert s.session_reused
        time.sleep(period - time.time() % period + 0.3)  # the next period
        with connect(ctx, e.port, session=session) as s:
            assert not s.session_reused
            assert get(s, "/healthz", "")[0] == 200
            fresh = s.session
        with connect(ctx, e.port, session=fresh) as s:
            assert s.session_reused
    assert "TLS session ticket key rotated" in e.svc.output()
