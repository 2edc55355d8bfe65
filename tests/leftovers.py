"""A pytest plugin: the test run leaves no process behind.

At configure time it puts ``MINICDN_TEST_RUN=<a fresh id>`` in the environment, so every
process the run starts inherits it: servers, their workers, spawn workers, resource
trackers, and whatever those start in turn, even once re-parented to init
(loadtests.proctree).  After the last test, a session fixture waits up to ``GRACE`` seconds
for marked processes to finish exiting, then kills what is left and fails the run (an error
in teardown), naming each by PID and command line.

The run's own resource tracker, if it started one, is the one exception: it belongs to
this process and exits with it.

Enabled from tests/conftest.py; ``-p tests.leftovers`` enables it in any pytest run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from loadtests.proctree import cmdline, kill, marked, wait_gone

__all__ = ["GRACE", "MARKER", "left_behind"]

MARKER = "MINICDN_TEST_RUN"
# Long enough for an edge worker orphaned by a SIGKILLed supervisor to drain (--drain-timeout
# is 10 s by default); spent only when something is still running.
GRACE = 20.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--leftover-grace", type=float, default=GRACE, help="seconds processes get to exit after the last test"
    )


def pytest_configure(config: pytest.Config) -> None:
    os.environ[MARKER] = uuid.uuid4().hex


def left_behind(value: str, grace: float = GRACE) -> list[tuple[int, str]]:
    """Processes marked ``MARKER=value`` still running ``grace`` seconds from now (this
    process and its resource tracker aside), each as (pid, command line); they are
    SIGKILLed before this returns."""
    exclude = {os.getpid(), *_own_tracker()}
    left = wait_gone(marked(MARKER, value, exclude), grace)
    described = [(pid, cmdline(pid)) for pid in left]
    # Re-read the marks just before killing: a PID that exited meanwhile may have been reused.
    kill(set(left) & set(marked(MARKER, value, exclude)))
    return described


def _own_tracker() -> list[int]:
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    return [pid] if pid else []


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    grace = pytestconfig.getoption("--leftover-grace")
    left = left_behind(os.environ[MARKER], grace)
    if left:
        lines = "\n".join(f"  pid {pid}: {' '.join(cmd.split())[:300]}" for pid, cmd in left)
        pytest.fail(
            f"{len(left)} process(es) started by this test run still ran {grace:g}s after its last "
            f"test (now killed):\n{lines}",
            pytrace=False,
        )
