"""The long-running ``crpeer`` commands: ``serve`` and ``pair join``.

Both build one :class:`~peer.peer.Peer` from command-line options with
:mod:`peer.cli_node` (:class:`NodeOptions` -> :func:`build_peer`, whose names
this module re-exports) and run it under :func:`node_guard`.

``serve`` runs until SIGINT or SIGTERM. With ``--json`` it prints one JSON
object per line: first ``{"event": "listening", ...}`` with the addresses to
dial, then every peer event. Otherwise it prints one line per noteworthy
event and, on a terminal, a progress bar per remote during catch-up (rows,
rate and time left, from the remote's backlog estimate). Every
``status_interval`` seconds it writes ``<database>.status.json`` for ``crpeer
status`` and removes it when it stops. ``--log-format json`` turns those lines
into JSON log records on stderr (:mod:`peer.cli_logs`); ``--config FILE``
gives every option's default (:mod:`peer.cli_config`). While it runs, a
:class:`~peer.housekeeping.WalHousekeeper` truncates the ``-wal`` file when
the node is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from peer import events
from peer.admin import AdminOptions, AdminServer, TokenMode
from peer.cli_common import echo_json, parse_host_port, status_path, write_status_file
from peer.cli_config import CONFIG_OPTION
from peer.cli_database import damage_message
from peer.cli_events import EventPrinter
from peer.cli_logs import LOG_FORMATS, SERVE_LOGGER, use_log_format
from peer.cli_node import NodeOptions, build_peer, check_dial_address, node_guard, node_options
from peer.errors import (
    ConfigError,
    CrpeerError,
    InvalidChangeError,
    PairingError,
    SecurityError,
    StoreError,
)
from peer.filelock import lock_path
from peer.housekeeping import WalHousekeeper, wal_size
from peer.identity import format_peer_id
from peer.pairing import WRONG_SECRET, normalize_join_secret
from peer.peer import Peer
from peer.protocol import Limits
from peer.store import JOURNAL_SIZE_LIMIT, Store
from peer.trust import TrustStore, default_trust_path

__all__ = [
    "EventPrinter",
    "NodeOptions",
    "build_peer",
    "check_dial_address",
    "node_guard",
    "node_options",
    "pair_join",
    "serve",
]

_DEFAULT_LIMITS = Limits()


def _addresses(peer: Peer) -> list[str]:
    return [address for t in peer.transports for address in t.listen_addresses]


def _labels(database: Path) -> Callable[[str], str]:
    """A peer id's label in ``database``'s trust store ("" if none), read fresh each time."""
    trust = TrustStore.load(default_trust_path(database))

    def label(peer_id: str) -> str:
        with contextlib.suppress(CrpeerError):
            trust.reload_if_changed()
        return next((e.label for e in trust.list() if e.peer_id == peer_id), "")

    return label


async def run_serve(
    options: NodeOptions,
    *,
    as_json: bool,
    status_interval: float,
    log_format: str = "text",
    wal_limit: int = JOURNAL_SIZE_LIMIT,
    admin: AdminOptions | None = None,
) -> None:
    """Run a node until SIGINT/SIGTERM (see the module docstring), with the
    admin listener (:mod:`peer.admin`) when ``admin`` is given.

    Raises ConfigError if the database turns out damaged while serving: the
    sessions stop, an ``error`` event says why, and the node does not go on.
    """
    store = Store(options.database, journal_size_limit=wal_limit)
    try:
        peer, _ = build_peer(options, store=store)
    except BaseException:
        store.close()
        raise
    labels = _labels(options.database) if not options.insecure else None
    log = logging.getLogger(SERVE_LOGGER) if log_format == "json" else None
    reporter = EventPrinter(as_json=as_json, console=Console(stderr=True), labels=labels, log=log)
    peer.subscribe(reporter.on_event)
    admin_server = (
        AdminServer(peer, admin, database=options.database, lan=options.lan, wal_limit=wal_limit)
        if admin
        else None
    )
    status_file = status_path(options.database)
    interrupted, store_failed, wake = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def watch(event: events.Event) -> None:
        # InvalidChangeError is the remote's fault, not the store's.
        error = event.error if isinstance(event, events.SessionFailed) else None
        if isinstance(error, StoreError) and not isinstance(error, InvalidChangeError):
            store_failed.set()
            wake.set()

    def interrupt() -> None:
        interrupted.set()
        wake.set()

    peer.subscribe(watch)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    damage: str | None = None
    housekeeping: asyncio.Task[None] | None = None
    try:
        await peer.start()
        housekeeping = asyncio.create_task(WalHousekeeper(peer).run(), name="crpeer-housekeeping")
        addresses = _addresses(peer)
        if admin_server is not None:
            await admin_server.start(addresses)
        reporter.listening(
            {
                **_admin_document(admin_server),
                "database": os.fspath(options.database),
                "peer_id": peer.peer_id,
                "site_id": peer.site_id.hex(),
                "addresses": addresses,
                "lan": options.lan,
                "connect": list(options.connect),
                "pid": os.getpid(),
            }
        )
        while not interrupted.is_set():
            if store_failed.is_set():  # a store error in a session: is the file damaged?
                store_failed.clear()
                problems = await peer.run_in_store(peer.store.integrity_problems)
                if problems:
                    damage = damage_message(options.database, problems)
                    reporter.error(damage)
                    break
            status = await peer.status()
            write_status_file(
                status_file,
                {
                    "pid": os.getpid(),
                    "updated": time.time(),
                    "listen": addresses,
                    "wal_bytes": wal_size(options.database),
                    "wal_limit": wal_limit,
                    "status": status.as_dict(),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=status_interval)
            wake.clear()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if housekeeping is not None:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
        try:
            if admin_server is not None:
                await admin_server.stop()
            await peer.stop()
        finally:
            store.close()
            status_file.unlink(missing_ok=True)
            lock_path(status_file).unlink(missing_ok=True)  # serve is its only writer
            reporter.close()
    if damage is not None:
        raise ConfigError(damage)


def _admin_document(server: AdminServer | None) -> dict[str, Any]:
    if server is None:
        return {}
    token = server.token_file
    return {"admin": server.url, "admin_token_file": None if token is None else os.fspath(token)}


def _admin_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_host_port(value, default_host="127.0.0.1")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@CONFIG_OPTION
@node_options
@click.option(
    "--admin",
    metavar="HOST:PORT",
    callback=_admin_option,
    help="Serve metrics, a JSON API and a status page at HOST:PORT "
    "(PORT alone: on 127.0.0.1). Off by default.",
)
@click.option(
    "--admin-token",
    type=click.Choice(["auto", "required"]),
    default="auto",
    show_default=True,
    help="auto: a token only when --admin is not a loopback address; required: always. "
    "The token is kept in DATABASE.admin-token.",
)
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between rewrites of DATABASE.status.json.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="CRPEER_LOG_FORMAT",
    help="json: one JSON object per log line on stderr (env: CRPEER_LOG_FORMAT).",
)
@click.option(
    "--wal-limit",
    type=click.IntRange(min=0),
    default=JOURNAL_SIZE_LIMIT,
    show_default=True,
    metavar="BYTES",
    help="Cut the -wal file back to this size after checkpoints.",
)
@click.option(
    "--max-frame-bytes",
    type=click.IntRange(min=1024),
    default=_DEFAULT_LIMITS.max_frame_bytes,
    show_default=True,
    help="Largest frame accepted from a peer.",
)
@click.option(
    "--max-batch-rows",
    type=click.IntRange(min=1),
    default=_DEFAULT_LIMITS.max_batch_rows,
    show_default=True,
    help="Most changes per frame accepted (and sent).",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=_DEFAULT_LIMITS.window,
    show_default=True,
    help="Frames a peer may have in flight to this node.",
)
@click.option(
    "--snapshot/--no-snapshot",
    default=True,
    show_default=True,
    help="While DATABASE is fresh (nothing synced yet), take a snapshot from a "
    "peer instead of replaying its changes (the file is replaced in place).",
)
def serve(
    database: Path,
    tcp: tuple[str, int],
    ws: tuple[str, int] | None,
    http: tuple[str, int] | None,
    lan: bool,
    connect: tuple[str, ...],
    insecure: bool,
    name: str | None,
    as_json: bool,
    admin: tuple[str, int] | None,
    admin_token: TokenMode,
    status_interval: float,
    log_format: str,
    wal_limit: int,
    max_frame_bytes: int,
    max_batch_rows: int,
    window: int,
    snapshot: bool,
) -> None:
    """Sync DATABASE with peers until interrupted (Ctrl-C or SIGTERM).

    By default it listens for TCP with TLS on every interface and finds peers
    on the LAN by mDNS; only peers in the trust store sync (see `crpeer
    trust` and `crpeer pair`). It writes DATABASE.status.json every second
    for `crpeer status`. One node runs per database (DATABASE.lock); a
    damaged database is refused at start and stops the node while serving.

    --config FILE (or CRPEER_CONFIG) reads every option from a TOML file;
    options given here override it (`crpeer config check FILE` checks one).
    With --admin it serves /metrics, /api/... and a status page.
    """
    limits = Limits(max_frame_bytes, max_batch_rows, window)
    extra: dict[str, Any] = {} if limits == _DEFAULT_LIMITS else {"limits": limits}
    if not snapshot:
        extra["accept_snapshot"] = False
    options = NodeOptions(database, tcp, ws, http, lan, connect, insecure, name, extra)
    admin_options = AdminOptions(*admin, admin_token) if admin else None
    undo_log_format = use_log_format(log_format)
    try:
        with node_guard(database):
            asyncio.run(
                run_serve(
                    options,
                    as_json=as_json,
                    status_interval=status_interval,
                    log_format=log_format,
                    wal_limit=wal_limit,
                    admin=admin_options,
                )
            )
    finally:
        undo_log_format()


async def run_pair_join(options: NodeOptions, secret: str, within: float) -> tuple[str, bool]:
    """Connect with ``secret`` until a new peer is trusted; return its id and
    True, or the id of a ``--connect`` device already trusted and False.

    Raises PairingError at once on a definite refusal: any refusal by a
    ``--connect`` device (a wrong secret, a device that does not accept
    joins), a wrong secret from any device, an address that cannot work;
    and if no device accepts within ``within`` seconds.
    """
    trusted = TrustStore.load(default_trust_path(options.database)).list()
    before = {entry.peer_id for entry in trusted}
    peer, _ = build_peer(options, join_secret=secret)
    paired: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
    failures: list[str] = []

    def refused(address: str, error: CrpeerError) -> None:
        if not paired.done():
            paired.set_exception(PairingError(f"{address} refused pairing: {error}"))

    def on_event(event: events.Event) -> None:
        match event:
            case events.Connected(remote=events.RemotePeer(peer_id=str(peer_id), inbound=inbound)):
                if paired.done():
                    return
                if peer_id not in before:
                    paired.set_result((peer_id, True))
                elif not inbound and not options.lan:  # a --connect device, paired before
                    paired.set_result((peer_id, False))
            case events.SessionFailed(address=address, error=PairingError() as error) if (
                WRONG_SECRET in str(error)
            ):
                refused(address, error)  # the same secret cannot work on a retry
            case events.SessionFailed(error=error):
                failures.append(str(error))
            case events.DialState(state="backing_off", address=address, error=SecurityError()):
                assert event.error is not None
                refused(address, event.error)  # a --connect device said no
            case events.DialState(state="failed", address=address, error=error):
                refused(address, error or ConfigError("cannot be dialed"))
            case events.DialState(state="backing_off", address=address, error=error):
                failures.append(f"{address}: {error}")
            case _:
                pass

    peer.subscribe(on_event)
    try:
        await peer.start()
        try:
            return await asyncio.wait_for(paired, within)
        except TimeoutError:
            reason = f" (last failure: {failures[-1]})" if failures else ""
            raise PairingError(
                f"no device accepted the join secret within {within:g} s{reason}"
            ) from None
    finally:
        await peer.stop()


def _check_secret(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            normalize_join_secret(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.command("join")
@node_options
@click.option(
    "--secret",
    prompt="Join secret",
    hide_input=True,
    callback=_check_secret,
    help="The join secret shown by `crpeer pair new-secret` on the other device.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    help="Seconds to wait for a device to accept the secret.",
)
def pair_join(
    database: Path,
    tcp: tuple[str, int],
    ws: tuple[str, int] | None,
    http: tuple[str, int] | None,
    lan: bool,
    connect: tuple[str, ...],
    insecure: bool,
    name: str | None,
    as_json: bool,
    secret: str,
    timeout: float,
) -> None:
    """Join a device that holds a join secret: both then trust each other.

    Reaches the device at --connect, or on the LAN, proves this side knows
    the secret, and exits once it is paired, or at once when the device
    refuses (with the reason). Then run `crpeer serve`.
    """
    if insecure:
        raise click.UsageError("pairing needs TLS: drop --insecure")
    if not lan and not connect:
        raise click.UsageError("--no-lan needs --connect URL: otherwise no device can be reached")
    options = NodeOptions(database, tcp, ws, http, lan, connect, False, name)
    with node_guard(database):
        peer_id, new = asyncio.run(run_pair_join(options, secret, timeout))
    if as_json:
        echo_json({"paired": peer_id, "new": new})
    else:
        click.echo(f"{'paired' if new else 'already paired'} with {format_peer_id(peer_id)}")
