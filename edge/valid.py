"""The checks the edge's settings make of themselves (``__post_init__`` of EdgeSettings,
ClusterSettings), each failing with a ConfigError whose message names the command-line
flag, which ``minicdn edge`` reports as its usage error (edge.cli)."""

from __future__ import annotations

from common.errors import ConfigError

__all__ = ["http_urls", "non_negative", "positive"]


def positive(values: dict[str, float]) -> None:
    """``values`` by flag name: the first not > 0 fails."""
    for flag, value in values.items():
        if not value > 0:
            raise ConfigError(f"{flag} must be > 0")


def non_negative(values: dict[str, float], zero: str) -> None:
    """``values`` by flag name: the first below 0 fails; ``zero`` says what 0 means."""
    for flag, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{flag} must be >= 0 ({zero})")


def http_urls(flag: str, urls: tuple[str, ...] | list[str]) -> None:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{flag}: {url!r} is not an http(s) URL")
