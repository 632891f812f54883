"""``crpeer peers``, ``crpeer trust ...`` and ``crpeer pair ...``: who may sync.

The trust store is ``DATABASE.trust.json`` (:mod:`peer.trust`). A running
``crpeer serve`` reloads it when it changes, so these commands work while it
runs. ``crpeer pair join`` (also ``crpeer pair DATABASE --secret ...``) runs a
node for a while: it lives in :mod:`peer.cli_serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from peer.cli_common import (
    DATABASE,
    JSON_OPTION,
    CliFailure,
    CrpeerGroup,
    DefaultGroup,
    echo_json,
    peers_document,
    require_database,
    serve_state,
)
from peer.cli_serve import pair_join
from peer.identity import format_peer_id, parse_peer_id
from peer.status import PeerStatus
from peer.trust import TrustStore, default_trust_path

__all__ = ["pair", "peers", "trust"]


def _trust(database: Path) -> TrustStore:
    return TrustStore.load(default_trust_path(require_database(database)))


def _running_note(database: Path) -> None:
    if serve_state(database)[0] in {"running", "starting", "stale"}:
        click.echo("note: the running `crpeer serve` picks this up by itself", err=True)


@click.command()
@DATABASE
@JSON_OPTION
def peers(database: Path, as_json: bool) -> None:
    """List the trusted peers, and which are connected to the running serve."""
    trusted = _trust(database)
    state, document = serve_state(database)
    sessions = (
        PeerStatus.from_dict(document["status"]).sessions
        if state == "running" and document is not None
        else ()
    )
    document = peers_document(trusted, sessions if state == "running" else None)
    rows: list[dict[str, Any]] = document["peers"]
    if as_json:
        echo_json(document)
        return
    if not rows:
        click.echo("no trusted peers (add one with `crpeer trust add` or `crpeer pair`)")
    for row in rows:
        mark = {True: "connected", False: "offline", None: "-"}[row["connected"]]
        click.echo(f"{format_peer_id(row['peer_id'])}  {mark:<9}  {row['label']}")
    for session in sessions:
        if session.peer_id is None:
            click.echo(f"(insecure session with {session.remote_name} at {session.address})")


# -- trust ------------------------------------------------------------------------


@click.group(cls=CrpeerGroup)
def trust() -> None:
    """Manage the peer ids allowed to sync with DATABASE."""


@trust.command("list")
@DATABASE
@JSON_OPTION
def trust_list(database: Path, as_json: bool) -> None:
    """List the trusted peer ids."""
    entries = _trust(database).list()
    if as_json:
        echo_json(
            [
                {"peer_id": e.peer_id, "label": e.label, "added": e.added.isoformat()}
                for e in entries
            ]
        )
        return
    for entry in entries:
        added = entry.added.isoformat(timespec="seconds")
        click.echo(f"{format_peer_id(entry.peer_id)}  {added}  {entry.label}")


@trust.command("add")
@DATABASE
@click.argument("peer_id")
@click.option("--label", default="", help="A name for people, e.g. 'laptop'.")
@JSON_OPTION
def trust_add(database: Path, peer_id: str, label: str, as_json: bool) -> None:
    """Trust PEER_ID (as `crpeer id` shows it on the other device)."""
    entry = _trust(database).add(peer_id, label)
    if as_json:
        echo_json({"trusted": entry.peer_id, "label": entry.label})
    else:
        click.echo(f"trusted {format_peer_id(entry.peer_id)}" + (f" ({label})" if label else ""))
        _running_note(database)


@trust.command("remove")
@DATABASE
@click.argument("peer_id")
@JSON_OPTION
def trust_remove(database: Path, peer_id: str, as_json: bool) -> None:
    """Stop trusting PEER_ID; a running serve closes its sessions."""
    canonical = parse_peer_id(peer_id)
    if not _trust(database).remove(canonical):
        raise CliFailure(f"{format_peer_id(canonical)} was not trusted")
    if as_json:
        echo_json({"removed": canonical})
    else:
        click.echo(f"removed {format_peer_id(canonical)}")
        _running_note(database)


# -- pairing ------------------------------------------------------------------------


class _PairGroup(DefaultGroup):
    default = "join"


@click.group(cls=_PairGroup)
def pair() -> None:
    """Pair devices with a join secret.

    On the device that is already set up: `crpeer pair new-secret DATABASE`
    (then run `crpeer serve`). On the new one: `crpeer pair DATABASE --secret
    SECRET` (short for `crpeer pair join ...`). Clear the secret afterwards.
    """


pair.add_command(pair_join)


@pair.command("new-secret")
@DATABASE
@JSON_OPTION
def pair_new_secret(database: Path, as_json: bool) -> None:
    """Open joining with a new random join secret, and print it."""
    secret = _trust(database).rotate_join_secret()
    if as_json:
        echo_json({"join_secret": secret})
    else:
        click.echo(secret)
        click.echo("type it on the new device: crpeer pair DATABASE --secret ...", err=True)


@pair.command("show")
@DATABASE
@JSON_OPTION
def pair_show(database: Path, as_json: bool) -> None:
    """Print the current join secret, if joining is open."""
    secret = _trust(database).join_secret
    if as_json:
        echo_json({"join_secret": secret})
    elif secret is None:
        click.echo("joining is closed (no join secret)")
    else:
        click.echo(secret)


@pair.command("clear")
@DATABASE
@JSON_OPTION
def pair_clear(database: Path, as_json: bool) -> None:
    """Close joining: forget the join secret."""
    _trust(database).clear_join_secret()
    if as_json:
        echo_json({"join_secret": None})
    else:
        click.echo("joining is closed")
