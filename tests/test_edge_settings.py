"""The edge's settings check themselves, with messages that name the flag, and
``minicdn edge`` reports a failed check as its usage error: one line, exit status 2."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from edge.cluster import ClusterSettings
from edge.plane.plane import Limits
from edge.service import EdgeSettings
from tests.procs import MINICDN

UP = ["http://127.0.0.1:1"]


def edge_settings(**kw: Any) -> EdgeSettings:
    return EdgeSettings(**{"upstreams": UP, "cache_dir": Path("/nonexistent"), **kw})


def test_the_defaults_and_sound_values_pass() -> None:
    edge_settings(
        negative_ttl=0.0, cluster=ClusterSettings(peers=("http://a:1", "https://b:2"), self_url="http://a:1")
    )
    ClusterSettings(dns=("edges.svc", 8081), self_url="http://10.0.0.1:8081")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"upstreams": []}, "--upstream: give at least one"),
        ({"upstreams": ["ftp://origin"]}, "--upstream: 'ftp://origin' is not an http(s) URL"),
        ({"upstream_timeout": 0.0}, "--upstream-timeout must be > 0"),
        ({"negative_ttl": -1.0}, "--negative-ttl must be >= 0 (0: off)"),
    ],
)
def test_edge_settings_refuse_what_cannot_work_naming_the_flag(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        edge_settings(**kw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"peers": ("http://a:1",), "dns": ("edges", 1)}, "--peer, --peers-dns: give one way"),
        ({"peers": ("a:1",)}, "--peer: 'a:1' is not an http(s) URL"),
        ({"peers": ("http://a:1",), "self_url": "a:1"}, "--self: 'a:1' is not an http(s) URL"),
        ({"self_url": "http://a:1"}, "--self names this edge among --peer or --peers-dns members"),
        ({"peer_timeout": 0.0}, "--peer-timeout must be > 0"),
        ({"check_interval": 0.0}, "--peer-check-interval must be > 0"),
        ({"dns_interval": 0.0}, "--peers-dns-interval must be > 0"),
    ],
)
def test_cluster_settings_refuse_what_cannot_work_naming_the_flag(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterSettings(**kw)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--upstream", "ftp://origin"], "minicdn: config: --upstream: 'ftp://origin' is not an http(s) URL"),
        (
            ["--upstream", *UP, "--peer", "http://a:1", "--peers-dns", "edges:1"],
            "minicdn: config: --peer, --peers-dns: give one way to find the ring's members, not both",
        ),
        (["--upstream", *UP, "--workers", "0"], "minicdn: config: --workers must be at least 1"),
        (["--upstream", *UP, "--send-timeout", "0s"], "minicdn: config: --send-timeout must be > 0"),
        (["--upstream", *UP, "--body-min-rate", "0"], "minicdn: config: --body-timeout and --body-min-rate must be > 0"),
    ],
)
def test_the_command_reports_a_refused_setting_as_a_one_line_usage_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    r = subprocess.run(
        [*MINICDN, "edge", "--cache-dir", str(tmp_path / "cache"), "--listen", "127.0.0.1:1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip() == message, r.stderr


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: Limits(header_timeout=0.0), "--header-timeout"),
        (lambda: Limits(keepalive_timeout=-1.0), "--keepalive-timeout"),
        (lambda: Limits(send_timeout=0.0), "--send-timeout"),
    ],
)
def test_the_data_planes_limits_refuse_a_timeout_that_is_not_positive_naming_the_flag(
    make: Callable[[], Limits], flag: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == f"{flag} must be > 0"
