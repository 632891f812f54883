"""The ``crpeer`` command line.

::

    crpeer init notes.db                     # database + identity key + trust store
    crpeer sql notes.db "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT)"
    crpeer crr notes.db notes                # replicate the table
    crpeer pair new-secret notes.db          # let another device join
    crpeer serve notes.db                    # sync until Ctrl-C (LAN + TCP, TLS)
    crpeer status notes.db                   # what the running serve reports

Exit status: 0 on success, 1 when the command failed (one line on stderr,
``crpeer: error: ...``), 2 for a usage error. Commands whose output is data
take ``--json``. Long-running commands live in :mod:`peer.cli_serve`,
snapshots in :mod:`peer.store_snapshot`, shared helpers in
:mod:`peer.cli_common`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from peer.cli_common import (
    DATABASE,
    JSON_OPTION,
    CrpeerGroup,
    echo_json,
    json_value,
    log_to_stderr,
    open_store,
    require_database,
    serve_state,
)
from peer.cli_serve import serve
from peer.cli_trust import pair, peers, trust
from peer.errors import ConfigError
from peer.identity import Identity, default_key_path, format_peer_id
from peer.status import PeerStatus
from peer.store import Store
from peer.store_snapshot import restore_snapshot, take_snapshot
from peer.trust import TrustStore, default_trust_path

__all__ = ["cli", "main"]


@click.group(cls=CrpeerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crpeer", prog_name="crpeer")
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-vv: debug).")
def cli(verbose: int) -> None:
    """Peer-to-peer replication of SQLite databases (cr-sqlite).

    Every command takes the database path first; the identity key
    (DATABASE.key) and trust store (DATABASE.trust.json) live next to it.
    """
    click.get_current_context().call_on_close(log_to_stderr(verbose))


for _command in (serve, peers, trust, pair):
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
    changes nothing.
    """
    if database.is_dir():
        raise ConfigError(f"{database} is a directory, not a database")
    with Store(database) as store:
        site_id = store.site_id
    identity = Identity.load_or_create(default_key_path(database))
    trust = TrustStore.load(default_trust_path(database))
    if not trust.path.exists():
        trust.clear_join_secret()  # writes the empty store
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
def crr(database: Path, tables: tuple[str, ...]) -> None:
    """Replicate TABLES: make them conflict-free replicated relations.

    Each needs a primary key, and NOT NULL columns need defaults. Every
    device must have the same tables.
    """
    with open_store(database) as store:
        store.make_crr(*tables)
    click.echo(f"replicating {', '.join(tables)}")


@cli.command()
@DATABASE
@click.argument("statement")
@click.option(
    "-p", "--param", "params", multiple=True, help="A value for the next `?` (repeatable)."
)
@JSON_OPTION
def sql(database: Path, statement: str, params: tuple[str, ...], as_json: bool) -> None:
    """Run one SQL STATEMENT on DATABASE and print the rows it returns.

    A running `crpeer serve` notices the change and syncs it. Text output is
    tab-separated (NULL for null, x'..' for blobs); --json prints a list of
    rows (blobs as {"hex": ...}).
    """
    with open_store(database) as store:
        rows = store.execute(statement, params)
    if as_json:
        echo_json(json_value(rows))
        return
    for row in rows:
        click.echo("\t".join(_text(value) for value in row))


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"x'{value.hex()}'"
    return str(value)


# -- status -------------------------------------------------------------------------


def _local_status(database: Path) -> PeerStatus:
    """What the database itself says, without a running node."""
    key = default_key_path(database)
    peer_id = Identity.load_or_create(key).peer_id if key.exists() else None
    with open_store(database) as store:
        local = {**store.cursor(), store.site_id: store.own_version()}
        return PeerStatus(
            site_id=store.site_id.hex(),
            peer_id=peer_id,
            name="",
            db_version=store.db_version(),
            schema_version=store.schema_version(),
            held_rows=store.held_count(),
            cursor={origin.hex(): version for origin, version in sorted(local.items())},
        )


@cli.command()
@DATABASE
@JSON_OPTION
def status(database: Path, as_json: bool) -> None:
    """Show DATABASE's sync status, as its running `crpeer serve` reports it.

    Without a running serve (or with one silent for more than 5 s: stale),
    shows what the database itself holds, and no sessions.
    """
    require_database(database)
    state, document = serve_state(database)
    if state == "running" and document is not None:
        current = PeerStatus.from_dict(document["status"])
    else:
        current = _local_status(database)
    serve_info: dict[str, Any] = {"state": state}
    if document is not None:
        serve_info |= {
            "pid": document.get("pid"),
            "updated": document["updated"],
            "age": round(time.time() - float(document["updated"]), 3),
            "listen": document.get("listen", []),
        }
    if as_json:
        echo_json({"database": os.fspath(database), "serve": serve_info, **current.as_dict()})
        return
    click.echo(f"database        {database}")
    click.echo(f"peer id         {format_peer_id(current.peer_id) if current.peer_id else '-'}")
    click.echo(f"site id         {current.site_id}")
    if state == "stopped":
        click.echo("serve           not running")
    else:
        line = f"{state} (pid {serve_info['pid']}, updated {serve_info['age']:.1f} s ago)"
        click.echo(f"serve           {line}")
        for address in serve_info["listen"] if state == "running" else []:
            click.echo(f"listening on    {address}")
    click.echo(f"db version      {current.db_version}")
    click.echo(f"schema version  {current.schema_version}")
    click.echo(f"held rows       {current.held_rows}")
    click.echo(f"sessions        {len(current.sessions)}")
    for session in current.sessions:
        way = "in " if session.inbound else "out"
        click.echo(
            f"  {session.remote_name:<16} {way} {session.address:<28} {session.state:<11} "
            f"{session.classification:<12} to send {session.lag.to_send} "
            f"to receive {session.lag.to_receive}  rows {session.rows_sent} sent "
            f"{session.rows_received} received"
            + (f"  last error: {session.last_error}" if session.last_error else "")
        )


# -- snapshots ----------------------------------------------------------------------


@cli.command()
@DATABASE
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def snapshot(database: Path, out: Path) -> None:
    """Write a consistent copy of DATABASE to OUT, even while it is in use.

    Restore it with `crpeer restore`, which makes the copy a new site. The
    identity key and trust store are not part of it.
    """
    take_snapshot(require_database(database), out)
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
