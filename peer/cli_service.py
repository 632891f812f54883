"""``crpeer service install DB``: run ``crpeer serve`` as a systemd service.

The unit runs ``crpeer serve`` with absolute paths (the crpeer executable
this command runs from, the database, the config file), restarts it when it
fails, and stops it with SIGTERM, on which serve closes its sessions, commits
nothing half-done and exits 0. ``--user`` (the default) installs under
``~/.config/systemd/user/`` (a service of the logged-in user); ``--system``
under ``/etc/systemd/system/``, run as the user who installs it. ``--print``
shows the unit, ``--output FILE`` writes it elsewhere.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import sys
from pathlib import Path

import click

from peer.cli_common import JSON_OPTION, echo_json, require_database

__all__ = ["crpeer_command", "service", "systemd_quote", "unit_name", "unit_path", "unit_text"]


def crpeer_command() -> list[str]:
    """The absolute command that runs this crpeer: its console script when it
    sits beside the running Python (a virtualenv) or on PATH, else
    ``python -m peer.cli``."""
    beside = Path(sys.executable).parent / "crpeer"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [os.fspath(beside.absolute())]
    found = shutil.which("crpeer")
    if found is not None:
        return [os.fspath(Path(found).absolute())]
    return [os.fspath(Path(sys.executable).absolute()), "-m", "peer.cli"]


def systemd_quote(word: str) -> str:
    """``word`` as one argument of a unit's ``ExecStart=`` (specifiers and
    variables escaped; quoted when it holds spaces or quotes)."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped) or not escaped:
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def unit_name(database: Path) -> str:
    """``crpeer-<database stem>.service``, with characters systemd dislikes replaced."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", database.stem) or "node"
    return f"crpeer-{stem}.service"


def unit_path(database: Path, *, system: bool) -> Path:
    """Where systemd looks for the unit: the user's or the system's unit folder."""
    if system:
        return Path("/etc/systemd/system") / unit_name(database)
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config_home) / "systemd" / "user" / unit_name(database)


def unit_text(
    database: Path,
    *,
    system: bool,
    config: Path | None = None,
    command: list[str] | None = None,
    user: str | None = None,
) -> str:
    """The unit file that runs ``crpeer serve`` on ``database`` (absolute paths)."""
    database = database.absolute()
    argv = [*(command or crpeer_command()), "serve", os.fspath(database)]
    if config is not None:
        argv += ["--config", os.fspath(config.absolute())]
    lines = [
        "[Unit]",
        f"Description=crpeer sync node for {database}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={' '.join(systemd_quote(word) for word in argv)}",
        f"WorkingDirectory={systemd_quote(os.fspath(database.parent))}",
        "Restart=on-failure",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if system:
        lines.append(f"User={user or getpass.getuser()}")
    lines += ["", "[Install]", f"WantedBy={'multi-user' if system else 'default'}.target", ""]
    return "\n".join(lines)


@click.group()
def service() -> None:
    """Run `crpeer serve` as a systemd service."""


@service.command()
@click.argument("database", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--user/--system", "user_unit", default=True, help="A user service (default) or a system one."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Have the service run `crpeer serve --config FILE`.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the unit here instead of systemd's unit folder.",
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@JSON_OPTION
def install(
    database: Path,
    user_unit: bool,
    config_file: Path | None,
    output: Path | None,
    print_only: bool,
    as_json: bool,
) -> None:
    """Write a systemd unit that runs `crpeer serve DATABASE`.

    It restarts the node when it fails and stops it with SIGTERM. Then run
    `systemctl --user daemon-reload && systemctl --user enable --now UNIT`
    (without --user for --system). Runs no systemctl itself.
    """
    if print_only and output is not None:
        raise click.UsageError("--print and --output exclude each other")
    require_database(database)
    text = unit_text(database, system=not user_unit, config=config_file)
    if print_only:
        click.echo(text, nl=False)
        return
    target = output or unit_path(database, system=not user_unit)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    scope = "--user " if user_unit else ""
    if as_json:
        echo_json({"unit": os.fspath(target), "name": target.name})
        return
    click.echo(f"wrote {target}")
    if output is None:
        start = f"systemctl {scope}daemon-reload && systemctl {scope}enable --now {target.name}"
        click.echo(f"start it: {start}")
