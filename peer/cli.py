"""The ``crpeer`` command line.

::

    crpeer init notes.db                     # database + identity key + trust store
    crpeer sql notes.db "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT)"
    crpeer crr notes.db notes                # replicate the table
    crpeer tables notes.db                   # which tables replicate
    crpeer pair new-secret notes.db          # let another device join
    crpeer serve notes.db                    # sync until Ctrl-C (LAN + TCP, TLS)
    crpeer status notes.db                   # what the running serve reports

Exit status: 0 on success, 1 when the command failed (one line on stderr,
``crpeer: error: ...``), 2 for a usage error (one line, ``crpeer: usage
error: ...``). Every command that prints takes ``--json``; ``-v`` may go
anywhere. Long-running commands live in :mod:`peer.cli_serve` (their output
in :mod:`peer.cli_events`), ``crpeer sql`` in :mod:`peer.cli_sql`, the checks
of a database file (lock, integrity, read-only status) in
:mod:`peer.cli_database`, snapshots in :mod:`peer.store.snapshot`, shared
helpers in :mod:`peer.cli_common`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from peer.cli_common import (
    DATABASE,
    JSON_OPTION,
    CliFailure,
    CrpeerGroup,
    echo_json,
    hoist_verbose,
    log_to_stderr,
    open_store,
    require_database,
    serve_state,
    status_document,
)
from peer.cli_config import config
from peer.cli_database import damage_message, read_local_status
from peer.cli_events import human_bytes
from peer.cli_serve import serve
from peer.cli_service import service
from peer.cli_sql import sql
from peer.cli_trust import pair, peers, trust
from peer.errors import ConfigError, CrpeerError
from peer.housekeeping import wal_size
from peer.identity import Identity, default_key_path, format_peer_id
from peer.status import PeerStatus
from peer.store import Store
from peer.store.snapshot import restore_snapshot, take_snapshot
from peer.trust import TrustStore, default_trust_path

__all__ = ["cli", "main"]


_NO_ARGS_IS_HELP: type[click.UsageError] | None = getattr(
    click.exceptions, "NoArgsIsHelpError", None
)


class _TopGroup(CrpeerGroup):
    """The ``crpeer`` group: ``-v`` anywhere on the line, and usage errors as
    one line, ``crpeer: usage error: ...``, with exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_verbose(args))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            if _NO_ARGS_IS_HELP is not None and isinstance(exc, _NO_ARGS_IS_HELP):
                exc.show()  # a bare `crpeer` or `crpeer pair`: the help, as click shows it
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if exc.ctx is not None else "crpeer"
            message = " ".join(exc.format_message().split())
            click.echo(f"crpeer: usage error: {message} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("crpeer: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_TopGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crpeer", prog_name="crpeer")
@click.option(
    "-v", "--verbose", count=True, help="Log more to stderr (-vv: debug); allowed anywhere."
)
def cli(verbose: int) -> None:
    """Peer-to-peer replication of SQLite databases (cr-sqlite).

    Every command takes the database path first; the identity key
    (DATABASE.key) and trust store (DATABASE.trust.json) live next to it.
    """
    click.get_current_context().call_on_close(log_to_stderr(verbose))


for _command in (serve, config, service, peers, trust, pair, sql):
    cli.add_command(_command)


def _identity(database: Path) -> Identity:
    key = default_key_path(database)
    if not key.exists():
        raise ConfigError(f"no identity key at {key}: run `crpeer init {database}`")
    return Identity.load_or_create(key)


# -- a database and its identity ----------------------------------------------------


@cli.command()
@DATABASE
@JSON_OPTION
def init(database: Path, as_json: bool) -> None:
    """Create DATABASE (if needed), its identity key and its trust store.

    Prints the peer id other devices use to trust this one. Running it again
    changes nothing; a failed run leaves no file behind.
    """
    if database.is_dir():
        raise click.UsageError(f"{database} is a directory, not a database")
    key_path, trust_path = default_key_path(database), default_trust_path(database)
    created = [
        path
        for path in (
            database,
            Path(f"{database}-wal"),
            Path(f"{database}-shm"),
            key_path,
            trust_path,
        )
        if not path.exists()
    ]
    try:
        with Store(database) as store:
            site_id = store.site_id
        identity = Identity.load_or_create(key_path)
        trust = TrustStore.load(trust_path)
        if not trust.path.exists():
            trust.clear_join_secret()  # writes the empty store
    except BaseException:
        for path in created:  # what this failed run made, and nothing else
            path.unlink(missing_ok=True)
        raise
    if as_json:
        echo_json(
            {
                "database": os.fspath(database),
                "peer_id": identity.peer_id,
                "site_id": site_id.hex(),
                "key": os.fspath(identity.key_path),
                "trust": os.fspath(trust.path),
            }
        )
        return
    click.echo(f"database     {database}")
    click.echo(f"peer id      {format_peer_id(identity.peer_id)}")
    click.echo(f"key          {identity.key_path} (keep it private; back it up)")
    click.echo(f"trust store  {trust.path}")


@cli.command("id")
@DATABASE
@JSON_OPTION
def show_id(database: Path, as_json: bool) -> None:
    """Show the peer id of DATABASE's node."""
    identity = _identity(database)
    if as_json:
        echo_json({"peer_id": identity.peer_id, "formatted": format_peer_id(identity.peer_id)})
    else:
        click.echo(format_peer_id(identity.peer_id))


@cli.command()
@DATABASE
@click.argument("tables", nargs=-1, required=True)
@JSON_OPTION
def crr(database: Path, tables: tuple[str, ...], as_json: bool) -> None:
    """Replicate TABLES: make them conflict-free replicated relations.

    Each needs a primary key declared NOT NULL, and NOT NULL columns need
    defaults. Every device must have the same tables. `crpeer tables` lists
    them.
    """
    with open_store(database) as store:
        store.make_crr(*tables)
    if as_json:
        echo_json({"replicating": list(tables)})
    else:
        click.echo(f"replicating {', '.join(tables)}")


@cli.command()
@DATABASE
@JSON_OPTION
def tables(database: Path, as_json: bool) -> None:
    """List DATABASE's tables and which of them replicate."""
    require_database(database)
    with Store(database, read_only=True) as store:
        replicated = store.crr_columns()
        names = [
            name
            for (name,) in store.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
                "AND name NOT LIKE 'crsql%' AND name NOT LIKE 'crpeer%' "
                "AND name NOT LIKE '%\\_\\_crsql\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
    if as_json:
        echo_json(
            [
                {
                    "table": name,
                    "replicated": name in replicated,
                    "columns": sorted(replicated.get(name, ())),
                }
                for name in names
            ]
        )
        return
    if not names:
        click.echo("no tables")
    for name in names:
        click.echo(f"{name:<24} {'replicated' if name in replicated else 'local only'}")


# -- status -------------------------------------------------------------------------


@cli.command()
@DATABASE
@JSON_OPTION
def status(database: Path, as_json: bool) -> None:
    """Show DATABASE's sync status, as its running `crpeer serve` reports it.

    Without a running serve, shows what the database itself holds (opened
    read-only: nothing is written), and whether it is damaged. Exits 1 when
    the database is damaged.
    """
    require_database(database)
    state, document = serve_state(database)
    problems: list[str] = []
    if state == "running" and document is not None:
        current = PeerStatus.from_dict(document["status"])
    else:
        current, problems = read_local_status(database)
    serve_info: dict[str, Any] = {"state": state}
    wal = {"bytes": wal_size(database)}
    if document is not None and isinstance(document.get("wal_limit"), int):
        wal["limit"] = document["wal_limit"]
    if document is not None:
        serve_info |= {
            "pid": document.get("pid"),
            "updated": document["updated"],
            "age": round(time.time() - float(document["updated"]), 3),
            "listen": document.get("listen", []),
        }
    try:
        labels = {e.peer_id: e.label for e in TrustStore.load(default_trust_path(database)).list()}
    except CrpeerError:
        labels = {}
    if as_json:
        echo_json(status_document(database, serve_info, current, problems, wal))
    else:
        _print_status(database, state, serve_info, current, problems, labels, wal)
    if problems:
        raise CliFailure(damage_message(database, problems))


def _print_status(
    database: Path,
    state: str,
    serve_info: dict[str, Any],
    current: PeerStatus,
    problems: list[str],
    labels: dict[str, str],
    wal: dict[str, int],
) -> None:
    click.echo(f"database        {database}")
    click.echo(f"peer id         {format_peer_id(current.peer_id) if current.peer_id else '-'}")
    if state == "stopped":
        click.echo("serve           not running")
    elif state == "crashed":
        when = datetime.fromtimestamp(serve_info["updated"]).isoformat(sep=" ", timespec="seconds")
        click.echo(f"serve           not running (pid {serve_info['pid']} crashed at {when})")
    elif state == "starting":
        click.echo("serve           starting")
    else:
        line = f"{state} (pid {serve_info['pid']}, updated {serve_info['age']:.1f} s ago)"
        click.echo(f"serve           {line}")
        for address in serve_info["listen"] if state == "running" else []:
            click.echo(f"listening on    {address}")
    click.echo(f"integrity       {'DAMAGED: ' + problems[0] if problems else 'ok'}")
    click.echo(f"db version      {current.db_version}")
    click.echo(f"schema version  {current.schema_version}")
    click.echo(f"held changes    {current.held_rows}")
    limit = f" (limit {human_bytes(wal['limit'])})" if "limit" in wal else ""
    click.echo(f"wal file        {human_bytes(wal['bytes'])}{limit}")
    for dial in current.dials:
        line = {"backing_off": "backing off", "failed": "failed"}.get(dial.state, dial.state)
        if dial.state == "backing_off" and dial.retry_at is not None:
            line += f" until {datetime.fromtimestamp(dial.retry_at).strftime('%H:%M:%S')}"
        line += f" (attempt {dial.attempt})"
        if dial.last_error:
            line += f": {dial.last_error}"
        click.echo(f"dialing         {dial.address}  {line}")
    click.echo(f"sessions        {len(current.sessions)}")
    for session in current.sessions:
        way = "in " if session.inbound else "out"
        who = session.remote_name
        if session.peer_id is not None:
            label = labels.get(session.peer_id, "")
            who = format_peer_id(session.peer_id) + (f" ({label})" if label else "")
        click.echo(
            f"  {who} {way} {session.address} {session.state} {session.classification}  "
            f"to send {session.lag.to_send}, to receive {session.lag.to_receive}; "
            f"changes {session.rows_sent:,} sent, {session.rows_received:,} received"
            + (f"  last error: {session.last_error}" if session.last_error else "")
        )


# -- snapshots ----------------------------------------------------------------------


@cli.command()
@DATABASE
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@JSON_OPTION
def snapshot(database: Path, out: Path, as_json: bool) -> None:
    """Write a consistent copy of DATABASE to OUT, even while it is in use.

    Restore it with `crpeer restore`, which makes the copy a new site. The
    identity key and trust store are not part of it.
    """
    take_snapshot(require_database(database), out)
    if as_json:
        echo_json({"database": os.fspath(database), "snapshot": os.fspath(out)})
    else:
        click.echo(f"snapshot written to {out}")


@cli.command()
@click.argument("snapshot_file", type=click.Path(dir_okay=False, path_type=Path))
@DATABASE
@JSON_OPTION
def restore(snapshot_file: Path, database: Path, as_json: bool) -> None:
    """Create DATABASE from SNAPSHOT_FILE as a new device.

    The copy gets a new site id; sync with the original resumes with what
    changed since the snapshot. Run `crpeer init DATABASE` next for its key.
    """
    site_id = restore_snapshot(snapshot_file, database)
    if as_json:
        echo_json({"database": os.fspath(database), "site_id": site_id.hex()})
    else:
        click.echo(f"restored {database} with the new site id {site_id.hex()}")


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run ``crpeer`` and return its exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="crpeer")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
