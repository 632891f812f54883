"""What every ``crpeer`` command shares: errors, files next to the database, JSON.

Errors: a command raises a :class:`~peer.errors.CrpeerError` (or lets one
through); :class:`CrpeerGroup` turns it into one line on stderr,
``crpeer: error: ...``, and exit status 1. Usage errors (click's, and
impossible option combinations) are one line, ``crpeer: usage error: ...``,
and exit status 2 (``peer.cli``). A closed stdout ends a command quietly.

Files next to a database ``D``: ``D.key`` (identity), ``D.trust.json`` (trust
store), ``D.lock`` (held by the running node, :mod:`peer.cli_database`), and
``D.status.json``, which ``crpeer serve`` rewrites atomically every second and
removes when it stops; ``crpeer status`` reads it. Writers of the trust store
and the status file take turns through ``<file>.lock`` (:mod:`peer.filelock`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import click

from peer.cli_database import serve_is_running
from peer.errors import ConfigError, CrpeerError
from peer.filelock import locked
from peer.housekeeping import wal_size
from peer.status import PeerStatus, SessionStatus
from peer.store import Store
from peer.trust import TrustStore

__all__ = [
    "DATABASE",
    "JSON_OPTION",
    "STALE_AFTER",
    "STATUS_FORMAT",
    "CliFailure",
    "CrpeerGroup",
    "DefaultGroup",
    "echo_json",
    "event_to_dict",
    "hoist_verbose",
    "host_port_option",
    "json_value",
    "log_to_stderr",
    "open_store",
    "parse_host_port",
    "peers_document",
    "read_status_file",
    "require_database",
    "serve_state",
    "status_document",
    "status_path",
    "write_status_file",
]

DATABASE = click.argument("database", type=click.Path(dir_okay=False, path_type=Path))
"""The DATABASE argument every command starts with."""
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
"""``--json`` for commands whose output is data."""

STATUS_FORMAT = "crpeer-status"
_STATUS_VERSION = 1
_MAX_STATUS_FILE = 16 << 20


class CliFailure(click.ClickException):
    """A runtime failure: ``crpeer: error: <message>`` on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        message = " ".join(self.format_message().split())  # one line, whatever the cause
        click.echo(f"crpeer: error: {message}", file=file or sys.stderr, err=file is None)


class CrpeerGroup(click.Group):
    """A click group that reports crpeer errors (and file errors) as :class:`CliFailure`.

    A closed stdout (``crpeer sql ... | head -1``) ends the command quietly,
    with status 0.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CrpeerError as exc:
            raise CliFailure(str(exc) or type(exc).__name__) from exc
        except BrokenPipeError:
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise CliFailure(f"{exc.strerror or exc}{where}") from exc


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the final flush at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


_VERBOSE = re.compile(r"-v+|--verbose")


def hoist_verbose(args: list[str]) -> list[str]:
    """``args`` with every ``-v``/``-vv``/``--verbose`` before ``--`` moved to the
    front, so that ``crpeer serve DB -v`` means ``crpeer -v serve DB``."""
    end = args.index("--") if "--" in args else len(args)
    flags = [arg for arg in args[:end] if _VERBOSE.fullmatch(arg)]
    rest = [arg for arg in args[:end] if not _VERBOSE.fullmatch(arg)]
    return [*flags, *rest, *args[end:]]


class DefaultGroup(CrpeerGroup):
    """A group whose ``default`` subcommand runs when the first word names none.

    So ``crpeer pair DB --secret S`` means ``crpeer pair join DB --secret S``.
    """

    default = ""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)")


def parse_host_port(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` as ``(host, port)``.

    A missing host is ``default_host``. Raises ConfigError for anything else.
    """
    text = text.strip()
    match = _HOST_PORT.fullmatch(text)
    if match:
        host, port_text = match["v6"] or match["host"] or default_host, match["port"]
    elif text.isdigit():
        host, port_text = default_host, text
    else:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    if int(port_text) > 65535:
        raise ConfigError(f"port {port_text} is out of range")
    return host, int(port_text)


def host_port_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    """A click callback: :func:`parse_host_port`, bad values as usage errors (status 2)."""
    if value is None:
        return None
    try:
        return parse_host_port(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def log_to_stderr(verbose: int) -> Callable[[], None]:
    """Show crpeer's warnings on stderr (``verbose`` 1: info, 2: debug).

    Returns a function that undoes it (the CLI calls it when the command
    ends, so that a command run in-process leaves logging as it found it).
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = _StderrHandler(level)
    handler.setFormatter(logging.Formatter("crpeer: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    # Without -v, the loggers' levels stay as they are (the root's WARNING applies).
    loggers = [logging.getLogger(name) for name in ("crpeer", "peer", "transports")]
    previous = [logger.level for logger in loggers]
    if verbose:
        for logger in loggers:
            logger.setLevel(level)

    def undo() -> None:
        root.removeHandler(handler)
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)

    return undo


def require_database(path: Path) -> Path:
    """``path`` if a database file is there; ConfigError saying what to do if not."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a database")
    if not path.exists():
        raise ConfigError(f"no database at {path}: create it with `crpeer init {path}`")
    return path


def open_store(path: Path) -> Store:
    """Open an existing database (see :func:`require_database`); StoreError if unusable."""
    return Store(require_database(path))


def status_path(database: Path) -> Path:
    """Where ``crpeer serve`` publishes its status for ``database``."""
    return Path(f"{os.fspath(database)}.status.json")


def write_status_file(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` as JSON, atomically, mode 0600 (it
    names the peers and addresses this node syncs with), holding the file's
    writer lock (:func:`peer.filelock.locked`). Raises OSError."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    text = json.dumps({"format": STATUS_FORMAT, "version": _STATUS_VERSION, **document}) + "\n"
    with locked(path):
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def read_status_file(path: Path) -> dict[str, Any] | None:
    """The document ``crpeer serve`` wrote, or None if there is none.

    Raises ConfigError if the file is not a crpeer status file.
    """
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_STATUS_FILE + 1)
    except FileNotFoundError:
        return None
    try:
        if len(data) > _MAX_STATUS_FILE:
            raise ValueError("too large")
        document = json.loads(data.decode("utf-8"))
        if not isinstance(document, dict) or document.get("format") != STATUS_FORMAT:
            raise ValueError(f'no "format": "{STATUS_FORMAT}"')
        if document.get("version") != _STATUS_VERSION:
            raise ValueError(f"version {document.get('version')!r}")
        if not isinstance(document.get("updated"), int | float):
            raise ValueError('no "updated" time')
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a crpeer status file ({exc}); remove it") from exc
    return document


STALE_AFTER = 5.0
"""Seconds after which a status file that was not rewritten is stale."""


def serve_state(database: Path) -> tuple[str, dict[str, Any] | None]:
    """Whether a ``crpeer serve`` runs for ``database``, and its status document.

    The instance lock decides whether one runs (:mod:`peer.cli_database`):
    ``"running"``: it holds the lock and its status file is fresh;
    ``"starting"``: it holds the lock and has not written the file yet;
    ``"stale"``: it holds the lock but the file is older than
    :data:`STALE_AFTER` (the process hangs); ``"crashed"``: a status file is
    there but no process holds the lock (it was killed; ``updated`` says
    when it was last alive); ``"stopped"``: neither. Reads only. Raises
    ConfigError for a damaged status file.
    """
    document = read_status_file(status_path(database))
    running = serve_is_running(database)
    if document is None:
        return ("starting" if running else "stopped"), None
    if not running:
        return "crashed", document
    age = time.time() - float(document["updated"])
    return ("running" if age <= STALE_AFTER else "stale"), document


def status_document(
    database: Path,
    serve_info: Mapping[str, Any],
    current: PeerStatus,
    problems: Sequence[str],
    wal: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """What ``crpeer status --json`` prints (and the admin listener's ``/api/status``):
    the database, the serve's state (``serve_info``), the integrity check's
    ``problems`` (``"ok"`` when there are none), the ``-wal`` file (its
    ``bytes`` and the serve's ``limit``; measured now when not given) and the
    status itself."""
    return {
        "database": os.fspath(database),
        "serve": dict(serve_info),
        "integrity": list(problems) or "ok",
        "wal": dict(wal) if wal is not None else {"bytes": wal_size(database)},
        **current.as_dict(),
    }


def peers_document(trusted: TrustStore, sessions: Sequence[SessionStatus] | None) -> dict[str, Any]:
    """What ``crpeer peers --json`` prints (and the admin listener's ``/api/peers``).

    ``sessions`` are the running serve's live sessions, or None when no serve
    runs (then whether a peer is connected is unknown: ``null``).
    """
    connected = {s.peer_id for s in sessions or () if s.peer_id is not None}
    return {
        "peers": [
            {
                "peer_id": entry.peer_id,
                "label": entry.label,
                "added": entry.added.isoformat(),
                "connected": (entry.peer_id in connected) if sessions is not None else None,
            }
            for entry in trusted.list()
        ],
        "joining_open": trusted.join_secret is not None,
    }


def json_value(value: Any) -> Any:
    """``value`` made JSON-ready: bytes as ``{"hex": ...}``, sets as sorted lists,
    mappings with bytes keys as hex keys, errors as their message."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"hex": bytes(value).hex()}
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    if isinstance(value, Mapping):
        return {
            (key.hex() if isinstance(key, bytes) else str(key)): json_value(item)
            for key, item in value.items()
        }
    if isinstance(value, set | frozenset):
        return sorted(json_value(item) for item in value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [json_value(item) for item in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


_EVENT_NAMES = {"Synced": "catching_up"}
"""JSON names that differ from the class name: ``Synced`` only means the remote's
cursor arrived and catch-up begins, before any change; "synced" would read as done."""


def event_to_dict(event: Any, now: float) -> dict[str, Any]:
    """A peer event as a JSON-ready dict: ``{"event": "changed", "time": ..., ...}``.

    The name is the class name in snake case, except ``Synced``:
    ``catching_up`` (see :data:`_EVENT_NAMES`).

    The remote is an object with hex ``site_id``; every other field keeps its
    name (bytes and cursors in hex). Works for any event dataclass.
    """
    name = (
        _EVENT_NAMES.get(type(event).__name__)
        or re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    )
    out: dict[str, Any] = {"event": name, "time": now}
    if dataclasses.is_dataclass(event):
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                out[field.name] = {
                    f.name: (
                        getattr(value, f.name).hex()
                        if isinstance(getattr(value, f.name), bytes)
                        else json_value(getattr(value, f.name))
                    )
                    for f in dataclasses.fields(value)
                }
            else:
                out[field.name] = json_value(value)
    for extra in ("rate", "remaining"):
        value = getattr(type(event), extra, None)
        if isinstance(value, property):
            out[extra] = json_value(getattr(event, extra))
    return out


def echo_json(document: Any) -> None:
    """Print ``document`` as one line of JSON on stdout (flushed at once)."""
    click.echo(json.dumps(document, ensure_ascii=False, allow_nan=False))
