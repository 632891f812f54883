"""``crpeer serve --config FILE``: a TOML file holding what serve's flags hold.

::

    # crpeer.toml
    database = "notes.db"          # relative paths are relative to this file
    tcp = "0.0.0.0:4000"
    ws = "127.0.0.1:4001"
    http = "127.0.0.1:4002"
    lan = true
    snapshot = true                # a fresh database may bootstrap from a peer's snapshot
    connect = ["tcp://192.168.1.20:4000"]
    name = "laptop"
    status_interval = 1.0
    log_format = "json"            # or "text"
    wal_limit = 67108864           # bytes the -wal file is cut back to
    admin = "127.0.0.1:9000"       # the admin listener

    [limits]
    max_frame_bytes = 8388608
    max_batch_rows = 5000
    window = 4

Each key is a long flag of ``crpeer serve`` (``--log-format`` is
``log_format``). The file gives the defaults and the command line overrides
them (click's ``default_map``); ``CRPEER_*`` environment variables
(``CRPEER_CONFIG``, ``CRPEER_LOG_FORMAT``) sit between the two. An unknown
key, a wrong type or a bad value is an error naming the file, the line and
the key; ``crpeer config check FILE`` reports the same errors without
running anything.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from peer.cli_common import CliFailure, parse_host_port
from peer.cli_logs import LOG_FORMATS
from peer.cli_node import check_dial_address
from peer.errors import ConfigError

__all__ = [
    "CONFIG_OPTION",
    "ConfigFileError",
    "config",
    "load_config",
]

_MAX_CONFIG = 1 << 20


class ConfigFileError(CliFailure):
    """A config file that cannot be used: one line, ``crpeer: error: ...``, exit status 2."""

    exit_code = 2


def _host_port(value: Any) -> None:
    parse_host_port(value)


def _dial(value: Any) -> None:
    check_dial_address(value)


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(map(repr, choices))}, not {value!r}")

    return check


def _at_least(low: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value < low:
            raise ConfigError(f"must be at least {low}, not {value!r}")

    return check


@dataclass(frozen=True, slots=True)
class _Key:
    kind: type | tuple[type, ...]
    what: str
    """The type as people read it, for errors."""
    param: str
    """The name of serve's parameter."""
    check: Callable[[Any], None] | None = None


_KEYS: dict[str, _Key] = {
    "database": _Key(str, "a path", "database"),
    "tcp": _Key(str, 'a "HOST:PORT" string', "tcp", _host_port),
    "ws": _Key(str, 'a "HOST:PORT" string', "ws", _host_port),
    "http": _Key(str, 'a "HOST:PORT" string', "http", _host_port),
    "lan": _Key(bool, "true or false", "lan"),
    "snapshot": _Key(bool, "true or false", "snapshot"),
    "connect": _Key(list, "a list of URLs", "connect"),
    "insecure": _Key(bool, "true or false", "insecure"),
    "name": _Key(str, "a string", "name"),
    "json": _Key(bool, "true or false", "as_json"),
    "status_interval": _Key(
        (int, float), "a number of seconds", "status_interval", _at_least(0.05)
    ),
    "log_format": _Key(str, '"text" or "json"', "log_format", _one_of(*LOG_FORMATS)),
    "wal_limit": _Key(int, "a number of bytes", "wal_limit", _at_least(0)),
    "admin": _Key(str, 'a "HOST:PORT" string', "admin", _host_port),
}
_LIMITS: dict[str, _Key] = {
    "max_frame_bytes": _Key(int, "a number of bytes", "max_frame_bytes", _at_least(1024)),
    "max_batch_rows": _Key(int, "a number of rows", "max_batch_rows", _at_least(1)),
    "window": _Key(int, "a number of frames", "window", _at_least(1)),
}
_TABLES = {"limits": _LIMITS}

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]\s*(?:#.*)?$")


def _line_of(text: str, table: str | None, key: str) -> int | None:
    """The line where ``key`` is set in ``table`` (None: the top level), or the
    table's header line when ``key`` is empty. A plain scan: good enough to
    point a person at the right line."""
    current: str | None = None
    assignment = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*[=.]")
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).strip("\"' ")
            if not key and current == table:
                return number
            continue
        if key and current == table and assignment.match(line):
            return number
        if key and current is None and table is not None:
            dotted = re.compile(rf"\s*{re.escape(table)}\s*\.\s*{re.escape(key)}\s*=")
            if dotted.match(line):
                return number
    return None


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def load_config(path: Path) -> dict[str, Any]:
    """Read and check the config file at ``path``; return serve's defaults from it
    (a ``default_map``: parameter name -> value as the command line gives it).

    Raises ConfigError naming the file, the line and the key for an unreadable
    file, a TOML syntax error, an unknown key, a wrong type or a bad value.
    """
    try:
        data = path.read_bytes()[: _MAX_CONFIG + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_CONFIG:
        raise ConfigError(f"{path} is larger than {_MAX_CONFIG} bytes: not a config file")
    try:
        text = data.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    def fail(table: str | None, key: str, message: str) -> ConfigError:
        line = _line_of(text, table, key)
        if line is None and table and key:  # an inline table: point at the table
            line = _line_of(text, table, "") or _line_of(text, None, table)
        where = f"{path}:{line}" if line is not None else f"{path}"
        name = f"{table}.{key}" if table and key else (table or key)
        return ConfigError(f"{where}: {name}: {message}")

    defaults: dict[str, Any] = {}

    def take(table: str | None, key: str, value: Any, spec: _Key) -> None:
        if not isinstance(value, spec.kind) or (isinstance(value, bool) and spec.kind is not bool):
            raise fail(table, key, f"must be {spec.what}, not {_type_name(value)}")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise fail(table, key, f"must be {spec.what}, not a list of {_type_name(item)}")
                try:
                    _dial(item)
                except ConfigError as exc:
                    raise fail(table, key, str(exc)) from None
        elif spec.check is not None:
            try:
                spec.check(value)
            except ConfigError as exc:
                raise fail(table, key, str(exc)) from None
        if key == "database" and table is None:
            value = os.fspath(path.parent / Path(str(value)).expanduser())
        defaults[spec.param] = value

    for key, value in document.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise fail(None, key, f"must be a table ([{key}]), not {_type_name(value)}")
            for inner, inner_value in value.items():
                inner_spec = _TABLES[key].get(inner)
                if inner_spec is None:
                    known = ", ".join(sorted(_TABLES[key]))
                    raise fail(key, inner, f"unknown key (known in [{key}]: {known})")
                take(key, inner, inner_value, inner_spec)
            continue
        spec = _KEYS.get(key)
        if spec is None:
            known = ", ".join(sorted([*_KEYS, *(f"[{t}]" for t in _TABLES)]))
            raise fail(None, key, f"unknown key (known: {known})")
        take(None, key, value, spec)
    return defaults


def _use_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """The ``--config`` callback: the file's values become the command's defaults."""
    if value is None:
        return None
    try:
        defaults = load_config(value)
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from exc
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CRPEER_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=_use_config,
    help="Read defaults for every option from this TOML file (env: CRPEER_CONFIG).",
)
"""``--config FILE`` for ``crpeer serve``: eager, so the file's values are the
defaults of every other option and argument, which the command line overrides."""


@click.group()
def config() -> None:
    """Check crpeer config files (see `crpeer serve --config`)."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Check FILE as `crpeer serve --config FILE` reads it.

    Exit status 0 when it is valid; 2, with the line and the key, when not.
    """
    try:
        defaults = load_config(file)
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from exc
    click.echo(f"{file}: ok ({len(defaults)} settings)")
