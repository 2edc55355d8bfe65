"""The ``minicdn`` command line against a real origin: keygen, publish, channel set, config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from common.cli import SIZE, main, option
from common.manifest import open_ref
from tests.conftest import DEMO, TOKEN, http
from tests.procs import Service


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_keygen(tmp_path: Path) -> None:
    r = run("keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "k" / "public.key").read_text().strip()) == 64
    again = run("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr


def test_publish_folder_then_channel_set(origin: Service, origin_key: object, tmp_path: Path) -> None:
    env = {"MINICDN_TOKEN": TOKEN}
    r = run("publish", str(DEMO), "--origin", origin.url, "--app", "clidemo", "--version", "1.0.0",
            "--channel", "release", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert "published" in r.stdout and "chunks" in r.stdout and "channel release" in r.stdout
    again = run("publish", str(DEMO), "--origin", origin.url, "--app", "clidemo", "--version", "1.0.0",
                "--quiet", env=env)
    assert again.returncode == 0 and "already published" in again.stdout
    r = run("channel", "set", "--origin", origin.url, "--app", "clidemo", "--channel", "beta",
            "--version", "1.0.0", "--rollout-version", "1.0.0", "--percent", "10", env=env)
    assert r.returncode == 0, r.stderr
    ref = open_ref(http("GET", f"{origin.url}/v1/apps/clidemo/channels/beta").body, [origin_key])  # type: ignore[list-item]
    assert ref.rollout is not None and ref.rollout.percent == 10


def test_publish_errors_are_one_clear_line(origin: Service, tmp_path: Path) -> None:
    no_token = run("publish", str(DEMO), "--origin", origin.url, "--app", "x", "--version", "1", "--quiet",
                   env={"MINICDN_TOKEN": ""})
    assert no_token.returncode != 0 and "MINICDN_TOKEN" in no_token.stderr
    wrong = run("publish", str(DEMO), "--origin", origin.url, "--app", "x", "--version", "1", "--quiet",
                env={"MINICDN_TOKEN": "nope"})
    assert wrong.returncode == 1 and "401" in wrong.stderr and "Traceback" not in wrong.stderr
    bad_app = run("publish", str(DEMO), "--origin", origin.url, "--app", "Bad App", "--version", "1",
                  env={"MINICDN_TOKEN": TOKEN})
    assert bad_app.returncode != 0 and "app id" in bad_app.stderr
    notarchive = tmp_path / "x.zip"
    notarchive.write_bytes(b"nope" * 100)
    r = run("publish", str(notarchive), "--origin", origin.url, "--app", "x", "--version", "1", "--quiet",
            env={"MINICDN_TOKEN": TOKEN})
    assert r.returncode == 1 and "bad_archive" in r.stderr


def test_config_file_and_environment_precedence(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    @click.command()
    @option("--listen", default="127.0.0.1:1")
    @option("--memory-size", type=SIZE, default="1MiB")
    def probe(listen: str, memory_size: int) -> None:
        seen.update(listen=listen, memory_size=memory_size)

    main.add_command(probe, "probe")
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text('listen = "127.0.0.1:2"\n[probe]\nmemory-size = "2MiB"\n')
        runner = CliRunner()
        assert runner.invoke(main, ["--config", str(cfg), "probe"]).exit_code == 0
        assert seen == {"listen": "127.0.0.1:2", "memory_size": 2 << 20}
        r = runner.invoke(main, ["--config", str(cfg), "probe"], env={"MINICDN_MEMORY_SIZE": "3MiB"})
        assert r.exit_code == 0 and seen["memory_size"] == 3 << 20
        r = runner.invoke(main, ["--config", str(cfg), "probe", "--memory-size", "4MiB"],
                          env={"MINICDN_MEMORY_SIZE": "3MiB"})
        assert r.exit_code == 0 and seen["memory_size"] == 4 << 20
        cfg.write_text('[probe]\nmemroy-size = "2MiB"\n')
        r = runner.invoke(main, ["--config", str(cfg), "probe"])
        assert r.exit_code != 0 and "probe.memroy_size" in r.output
        cfg.write_text('[probe]\nmemory-size = "lots"\n')
        r = runner.invoke(main, ["--config", str(cfg), "probe"])
        assert r.exit_code != 0 and "memory-size" in r.output
    finally:
        main.commands.pop("probe", None)


def test_origin_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    r = run("origin", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:1")
    assert r.returncode == 2 and "--signing-key" in r.stderr and "keygen" in r.stderr


@pytest.mark.parametrize("bad", ["--listen=nope", "--max-upload=huge"])
def test_origin_flag_errors_name_the_flag(tmp_path: Path, bad: str) -> None:
    r = run("origin", "--data", str(tmp_path), bad)
    assert r.returncode == 2 and bad.split("=")[0] in r.stderr
