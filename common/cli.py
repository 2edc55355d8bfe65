"""The ``minicdn`` console script: one click group assembled from entry points.

common/ must not import origin/, edge/ or client/, so each of them registers its commands
under the ``minicdn.commands`` entry-point group (see pyproject.toml) and this module
only discovers and wires them.  Every option also reads ``MINICDN_<NAME>`` from the
environment and ``name`` from the TOML ``--config`` file (a top-level key applies to every
command that has the option; a ``[command]`` table to that command only).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

import click

from common.config import parse_duration, parse_listen, parse_size
from common.errors import BadRequest, ConfigError, Conflict, MinicdnError, NotFound

__all__ = ["DURATION", "LISTEN", "SIZE", "main", "option"]

F = TypeVar("F", bound=Callable[..., Any])

# Exit 2, like click's usage errors: what the operator asked for is wrong or refused as such
# (a bad flag, no such app or channel, nothing to roll back to).  Anything else exits 1.
USAGE = (ConfigError, BadRequest, NotFound, Conflict)


def _flag(param: click.Parameter | None, default: str) -> str:
    """The option as the user spells it (``--ref-ttl``), so that every message names the flag."""
    return next((o for o in param.opts if o.startswith("--")), default) if param else default


class _Size(click.ParamType):  # type: ignore[type-arg]
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value, key=_flag(param, "size"))
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value, key=_flag(param, "duration"))
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)


class _Listen(click.ParamType):  # type: ignore[type-arg]
    name = "host:port"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_listen(value)
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)


SIZE = _Size()
DURATION = _Duration()
LISTEN = _Listen()


def option(*decls: str, **kw: Any) -> Callable[[F], F]:
    """click.option with the ``MINICDN_<NAME>`` environment variable attached."""
    long = next(d for d in decls if d.startswith("--"))
    kw.setdefault("envvar", "MINICDN_" + long[2:].upper().replace("-", "_"))
    kw.setdefault("show_envvar", True)
    kw.setdefault("show_default", "default" in kw)
    return click.option(*decls, **kw)


def server_tls_options(command: F) -> F:
    """``--tls-cert``, ``--tls-key`` and ``--tls-min-version``: a server's HTTPS (both the
    origin and the edge; common.tls.from_flags makes them a ServerTls)."""
    for decorate in reversed(
        [
            option(
                "--tls-cert",
                type=click.Path(dir_okay=False),
                help="PEM certificate chain: serve HTTPS (with --tls-key).",
            ),
            option(
                "--tls-key",
                type=click.Path(dir_okay=False),
                help="PEM private key of --tls-cert (unencrypted).",
            ),
            option(
                "--tls-min-version",
                type=click.Choice(["1.2", "1.3"]),
                default="1.3",
                help="Oldest TLS version served.",
            ),
            option(
                "--tls-ocsp",
                type=click.Path(dir_okay=False),
                help="DER OCSP response for --tls-cert, stapled (refreshed by you; SIGHUP rereads it).",
            ),
            option(
                "--tls-ticket-rotate",
                type=DURATION,
                default="1h",
                help="Period of the session ticket key (0: OpenSSL's own, for the life of the process).",
            ),
        ]
    ):
        command = decorate(command)
    return command


def _load_config(path: str, group: click.Group) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from exc
    top = {k.replace("-", "_"): v for k, v in doc.items() if not isinstance(v, dict)}
    default_map: dict[str, Any] = {}
    known_top: set[str] = set()
    for name, cmd in group.commands.items():
        params = {p.name for p in cmd.params if p.name}
        known_top |= params
        section = {k.replace("-", "_"): v for k, v in doc.get(name, {}).items()}
        unknown = set(section) - params - {n for n in getattr(cmd, "commands", {})}
        if unknown:
            raise click.BadParameter(
                f"{path}: unknown key {name}.{sorted(unknown)[0]}", param_hint="--config"
            )
        entry = {k: v for k, v in top.items() if k in params}
        entry.update(section)
        if entry:
            default_map[name] = entry
    stray = set(top) - known_top
    if stray:
        raise click.BadParameter(f"{path}: unknown key {sorted(stray)[0]}", param_hint="--config")
    tables = {k for k, v in doc.items() if isinstance(v, dict)} - set(group.commands)
    if tables:
        raise click.BadParameter(f"{path}: unknown table [{sorted(tables)[0]}]", param_hint="--config")
    return default_map


class _Group(click.Group):
    _loaded = False

    def load_entry_points(self) -> None:
        if not self._loaded:
            self._loaded = True
            for ep in entry_points(group="minicdn.commands"):
                try:
                    cmd = ep.load()
                except ImportError as exc:
                    # One broken command must not take the others down; it fails loudly
                    # when it is the one invoked.
                    cmd = _broken(ep.name, exc)
                self.add_command(cmd, ep.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_entry_points()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self.load_entry_points()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MinicdnError as exc:
            click.echo(f"minicdn: {exc.code}: {exc.message}", err=True)
            sys.exit(2 if isinstance(exc, USAGE) else 1)


def _broken(name: str, exc: ImportError) -> click.Command:
    def run() -> None:
        raise click.ClickException(f"command {name} cannot load: {exc}")

    return click.Command(name, callback=run, help=f"(unavailable: {exc})")


def _on_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        assert isinstance(ctx.command, _Group)
        ctx.command.load_entry_points()
        ctx.default_map = _load_config(value, ctx.command)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="MINICDN_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=_on_config,
    help="TOML file with option values (top-level keys, or a [command] table).",
)
@click.version_option(package_name="minicdn")
def main() -> None:
    """minicdn: a content delivery network for mini-program packages."""
