"""The origin's settings validate themselves, and every message names the flag to change."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.chunking import ChunkParams
from common.errors import ConfigError
from common.signing import generate_keypair
from origin.enrich import EnrichSettings
from origin.ingest import Limits
from origin.service import OriginSettings

# (what is built, the message it is refused with)
REFUSED: list[tuple[Callable[[], object], str]] = [
    (lambda: Limits(max_upload=0), "--max-upload must be at least 1 byte"),
    (lambda: Limits(max_unpacked=0), "--max-unpacked must be at least 1 byte"),
    (lambda: Limits(max_files=0), "--max-files must be at least 1"),
    (lambda: Limits(max_ratio=0.5), "--max-ratio must be at least 1"),
    (lambda: Limits(max_ratio=math.nan), "--max-ratio must be at least 1"),
    (lambda: Limits(ratio_floor=-1), "ratio_floor must not be negative"),
    (lambda: Limits(max_subpackages=0), "--max-subpackages must be at least 1"),
    (lambda: EnrichSettings(level=0), "--level must be between 1 and 22"),
    (lambda: EnrichSettings(level=23), "--level must be between 1 and 22"),
    (lambda: EnrichSettings(delta_bases=-1), "--delta-bases must be between 0 and 64"),
    (lambda: EnrichSettings(delta_bases=65), "--delta-bases must be between 0 and 64"),
    (lambda: EnrichSettings(delta_window=-1.0), "--delta-window must not be negative"),
    (lambda: EnrichSettings(max_stream=0), "max_stream must be at least 1 byte"),
    (lambda: OriginSettings(workers=0), "--workers must be at least 1"),
    (lambda: OriginSettings(ref_ttl=3599), "--ref-ttl must be at least 1h"),
    (lambda: OriginSettings(ref_max_age=-1), "--ref-max-age must not be negative"),
    (lambda: OriginSettings(resign_interval=0), "resign_interval must be positive and less than half of --ref-ttl"),
    (lambda: OriginSettings(ref_ttl=3600, resign_interval=1800),
     "resign_interval must be positive and less than half of --ref-ttl"),
    # OriginSettings checks what it hands the enricher when it is made, not when enrichment starts
    (lambda: OriginSettings(level=0), "--level must be between 1 and 22"),
    (lambda: OriginSettings(delta_bases=65), "--delta-bases must be between 0 and 64"),
    (lambda: OriginSettings(delta_window=-1.0), "--delta-window must not be negative"),
    (lambda: ChunkParams(8192, 4096, 65536),
     "need 64 B <= --chunk-min <= --chunk-avg <= --chunk-max <= 1 MiB, got --chunk-min 8192 --chunk-avg 4096 --chunk-max 65536"),
]


@pytest.mark.parametrize(("make", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_a_setting_out_of_range_is_refused_naming_its_flag(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.message == message


def test_the_defaults_and_the_bounds_themselves_are_accepted() -> None:
    assert OriginSettings().enrich() == EnrichSettings(level=19)
    Limits(max_upload=1, max_unpacked=1, max_files=1, max_ratio=1.0, ratio_floor=0, max_subpackages=1)
    EnrichSettings(level=1, delta_bases=0, delta_window=0.0, max_stream=1)
    EnrichSettings(level=22, delta_bases=64)
    OriginSettings(workers=1, ref_ttl=3600, ref_max_age=0, resign_interval=1799, level=22, delta_bases=64)


def test_the_flags_name_the_fields_they_set() -> None:
    """One spelling per setting: the flag ``--delta-bases`` sets ``delta_bases`` everywhere."""
    assert OriginSettings(delta_bases=5, delta_window=60.0, level=3).enrich() == EnrichSettings(
        level=3, delta_bases=5, delta_window=60.0
    )


def origin_cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    generate_keypair(tmp_path / "keys")
    args = ["origin", "--data", str(tmp_path / "d"), "--signing-key", str(tmp_path / "keys" / "signing.key"),
            "--listen", "127.0.0.1:1", *flags]
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("flags", "message"), [
    (("--max-upload", "0"), "--max-upload must be at least 1 byte"),
    (("--ref-ttl", "30m"), "--ref-ttl must be at least 1h"),
])
def test_the_command_line_reports_a_refused_setting_as_one_usage_line(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    r = origin_cli(tmp_path, *flags)
    assert (r.returncode, r.stderr) == (2, f"minicdn: config: {message}\n")


def test_a_duration_that_does_not_parse_is_reported_under_its_flag(tmp_path: Path) -> None:
    r = origin_cli(tmp_path, "--ref-ttl", "soon")
    assert r.returncode == 2 and "--ref-ttl: 'soon' is not a duration" in r.stderr, r.stderr
