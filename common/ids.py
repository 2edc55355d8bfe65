"""Content ids and names: SHA-256 ids, and the grammar of app ids, versions and channels."""

from __future__ import annotations

import hashlib
import re

from common.errors import InvalidId, InvalidName

__all__ = [
    "APP_RE",
    "CHANNEL_RE",
    "VERSION_RE",
    "check_app",
    "check_channel",
    "check_version",
    "hexid",
    "parse_hex_id",
    "sha256",
]

ID_RE = re.compile(r"[0-9a-f]{64}")
# DESIGN.md fixes the app grammar; channels follow it.  Versions also admit upper case
# and "+" so that semver build metadata (1.2.3+build.5) is a valid version.
APP_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHANNEL_RE = APP_RE
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte SHA-256 digest: the id of a chunk, bundle, delta or manifest."""
    return hashlib.sha256(data).digest()


def hexid(digest: bytes) -> str:
    return digest.hex()


def parse_hex_id(text: str) -> bytes:
    """A URL id: exactly 64 lowercase hex digits, else InvalidId (a 400)."""
    if not isinstance(text, str) or not ID_RE.fullmatch(text):
        raise InvalidId(f"id must be 64 lowercase hex digits, got {text[:80]!r}")
    return bytes.fromhex(text)


def _check(kind: str, pattern: re.Pattern[str], value: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(f"invalid {kind} {str(value)[:80]!r}: must match {pattern.pattern}")
    return value


def check_app(app: str) -> str:
    return _check("app id", APP_RE, app)


def check_channel(channel: str) -> str:
    return _check("channel", CHANNEL_RE, channel)


def check_version(version: str) -> str:
    # "." and ".." match the grammar's shape only by accident; they are never versions.
    if version in {".", ".."}:
        raise InvalidName(f"invalid version {version!r}")
    return _check("version", VERSION_RE, version)
