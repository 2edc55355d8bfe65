"""The suite's check that it leaves no process behind (tests/leftovers.py) finds what it
must: an orphan re-parented to init is named and killed, a process still exiting within the
grace period is not, and a whole pytest run that orphans a process fails."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from loadtests.proctree import alive, cmdline, descendants, kill, marked, wait_gone
from tests.conftest import REPO
from tests.leftovers import MARKER, left_behind

# Forks, and the child outlives its parent: re-parented to init, no longer anyone's descendant.
ORPHAN = "import os, sys, time\nif os.fork(): os._exit(0)\ntime.sleep(float(sys.argv[1]))"


def orphan(seconds: float, token: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-c", ORPHAN, str(seconds), token], env=env, check=True, timeout=30)


def with_token(token: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and token in cmdline(int(p)) and alive(int(p))]


def test_an_orphan_is_found_named_and_killed() -> None:
    run, token = uuid.uuid4().hex, uuid.uuid4().hex
    orphan(120, token, {**os.environ, MARKER: run})
    try:
        (pid,) = with_token(token)
        assert pid not in descendants(os.getpid()), "not orphaned"
        assert pid not in marked(MARKER, os.environ[MARKER])  # this run's mark is another
        left = left_behind(run, grace=0.5)
        assert [p for p, _ in left] == [pid] and token in left[0][1]
        assert not wait_gone([pid], 10), "named but not killed"
    finally:
        kill(with_token(token))


def test_a_process_that_exits_within_the_grace_period_is_not_named() -> None:
    run, token = uuid.uuid4().hex, uuid.uuid4().hex
    orphan(1, token, {**os.environ, MARKER: run})
    try:
        assert with_token(token)
        assert left_behind(run, grace=30) == []
    finally:
        kill(with_token(token))


@pytest.mark.parametrize("leaves", [True, False])
def test_a_pytest_run_that_leaves_a_process_behind_fails_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, leaves: bool
) -> None:
    token = uuid.uuid4().hex
    pytester.makepyfile(
        f"""
        import subprocess, sys

        def test_starts_a_process():
            code = {ORPHAN!r} if {leaves} else "import sys, time; time.sleep(float(sys.argv[1]))"
            subprocess.run([sys.executable, "-c", code, "60" if {leaves} else "0.1", "{token}"], check=True)
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    try:
        result = pytester.runpytest_subprocess("-p", "tests.leftovers", "--leftover-grace", "1", "-p", "no:asyncio", "-p",
                                               "no:cacheprovider")
        if leaves:
            result.assert_outcomes(passed=1, errors=1)
            result.stdout.fnmatch_lines(["*1 process(es) started by this test run still ran 1s*",
                                         f"*pid *{token}*"])
            assert not wait_gone(with_token(token), 10), "the run named it but did not kill it"
        else:
            result.assert_outcomes(passed=1)
    finally:
        kill(with_token(token))
