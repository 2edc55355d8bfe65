"""Configuration values: sizes, listen addresses, durations — parsed and validated in one
place, with messages that name the key.  Precedence (see common.cli): command-line flag,
then ``MINICDN_*`` environment variable, then the TOML ``--config`` file, then the default.
"""

from __future__ import annotations

import re

from common.errors import ConfigError

__all__ = ["parse_duration", "parse_listen", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_DUR_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_size(value: str | int, key: str = "size") -> int:
    """``256MiB``, ``10GiB``, ``64MB``, ``4096`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    m = _SIZE_RE.fullmatch(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(f"{key}: {value!r} is not a size (examples: 4096, 256MiB, 10GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_duration(value: str | int | float, key: str = "duration") -> float:
    """``30``, ``500ms``, ``15m``, ``7d`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    m = _DUR_RE.fullmatch(str(value))
    if not m:
        raise ConfigError(f"{key}: {value!r} is not a duration (examples: 30s, 500ms, 15m, 7d)")
    return float(m.group(1)) * _DUR_UNITS[m.group(2)]


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not m:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port
