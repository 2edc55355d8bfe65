"""tests/sysdeps.py: a need it cannot install skips the test with the reason, and fails it
under CI=true (CI must run every test); one it has is found without installing anything."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.sysdeps import Need, require

GONE = Need("/nonexistent/minicdn-test-tool", "minicdn-no-such-package")


def test_a_need_it_cannot_meet_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: apt-get is out of reach
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"minicdn-no-such-package.*sudo apt-get install"):
        require(GONE)


def test_under_ci_a_need_it_cannot_meet_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        require(GONE)


def test_a_need_that_is_there_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # nothing to install, so no root needed
    assert require(Need("sh", "dash"), Need("/bin/sh", "dash")) == [shutil.which("sh"), "/bin/sh"]
