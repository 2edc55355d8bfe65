"""QR codes of deep links: what a phone scans to open an app's channel or version.

The link comes from the operator's template (``minicdn origin --qr-url``), with the
placeholders ``{app}``, ``{channel}`` and ``{version}``.  A channel's QR has no version and a
version's QR has no channel: a query pair that is exactly ``name={placeholder}`` for the
missing one is left out, and the placeholder anywhere else becomes the empty string.  So
the default names the app and the channel, or the app and the version::

    minicdn://open?app={app}&channel={channel}&version={version}
    → minicdn://open?app=demo&channel=release   (channel release)
    → minicdn://open?app=demo&version=1.2.0     (version 1.2.0)

Values are percent-encoded (a version's "+" becomes %2B).  A template is checked once, at
start-up (ConfigError naming ``--qr-url``), so drawing never meets a bad one.  Pure: no I/O.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from urllib.parse import quote

import segno

from common.errors import ConfigError

__all__ = ["DEFAULT_QR_URL", "FORMATS", "PLACEHOLDERS", "LinkTemplate", "draw"]

DEFAULT_QR_URL = "minicdn://open?app={app}&channel={channel}&version={version}"
PLACEHOLDERS = ("app", "channel", "version")
MAX_TEMPLATE = 1024  # a link past ~1.5 KB makes a QR code too dense to scan from a screen
FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
SCALE = 8  # pixels per module: a 33-module code is 328 px wide with its quiet zone
BORDER = 4  # the quiet zone ISO/IEC 18004 asks for, in modules

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%{}]*")  # RFC 3986, plus braces
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PAIR = re.compile(r"[^=&]*=\{(app|channel|version)\}")


@dataclass(frozen=True)
class LinkTemplate:
    text: str = DEFAULT_QR_URL

    def __post_init__(self) -> None:
        _check(self.text)

    def link(self, app: str, *, channel: str | None = None, version: str | None = None) -> str:
        """The deep link of ``app``'s ``channel`` or ``version`` (exactly one of them)."""
        if (channel is None) == (version is None):
            raise ValueError("a link names a channel or a version, not both or neither")
        values = {"app": app, "channel": channel, "version": version}
        head, hash_, fragment = self.text.partition("#")
        base, question, query = head.partition("?")
        pairs = [
            p for p in query.split("&") if not ((m := _PAIR.fullmatch(p)) and values[m.group(1)] is None)
        ]
        out = _fill(base, values) + question + "&".join(_fill(p, values) for p in pairs)
        return out + hash_ + _fill(fragment, values)


def _fill(text: str, values: dict[str, str | None]) -> str:
    return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)] or "", safe=""), text)


def _check(text: str) -> None:
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"--qr-url: {why} (got {text[:100]!r})")

    if not isinstance(text, str) or not text:
        raise refuse("must be a URL template such as " + DEFAULT_QR_URL)
    if len(text) > MAX_TEMPLATE:
        raise refuse(f"longer than {MAX_TEMPLATE} characters")
    if not _SCHEME.match(text):
        raise refuse("must start with a URL scheme (minicdn:, https:, ...)")
    if not _URI_CHARS.fullmatch(text):
        raise refuse("has a character a URL cannot hold (spaces, quotes, non-ASCII: percent-encode them)")
    names = _PLACEHOLDER.findall(text)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        listed = ", ".join("{" + n + "}" for n in unknown)
        raise refuse(f"unknown placeholder {listed}; the placeholders are {{app}}, {{channel}}, {{version}}")
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise refuse("has an unmatched brace")
    if "app" not in names:
        raise refuse("must contain {app}, or every app would share one QR code")


def draw(link: str, fmt: str) -> bytes:
    """The QR code of ``link`` as an SVG or PNG document (segno's own writers: no Pillow)."""
    if fmt not in FORMATS:
        raise ValueError(f"no QR format {fmt!r}")
    code = segno.make_qr(link, error="m")
    out = io.BytesIO()
    # A white background, drawn: a dark-mode page behind a transparent code defeats scanners.
    code.save(out, kind=fmt, scale=SCALE, border=BORDER, dark="#000", light="#fff")
    return out.getvalue()
