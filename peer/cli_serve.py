"""The long-running ``crpeer`` commands: ``serve`` and ``pair join``.

Both build one :class:`~peer.peer.Peer` from command-line options
(:class:`NodeOptions` -> :func:`build_peer`): the database, its identity key
and trust store next to it, and the transports asked for. TLS with the
node's identity is the default; ``--insecure`` runs plaintext without peer
authentication (tests and debugging only).

``serve`` runs until SIGINT or SIGTERM. With ``--json`` it prints one JSON
object per line: first ``{"event": "listening", ...}`` with the addresses to
dial, then every peer event. Otherwise it prints one line per noteworthy
event and, on a terminal, a progress bar per remote during catch-up (rows,
rate and time left, from the remote's backlog estimate). Every
``status_interval`` seconds it writes ``<database>.status.json`` for ``crpeer
status`` and removes it when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from peer import events
from peer.cli_common import (
    DATABASE,
    echo_json,
    event_to_dict,
    host_port_option,
    require_database,
    status_path,
    write_status_file,
)
from peer.errors import ConfigError, PairingError
from peer.identity import Identity, default_key_path, format_peer_id
from peer.peer import Peer
from peer.status import SessionHistory, peer_status
from peer.trust import TrustStore, default_trust_path
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.lan import LanTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

__all__ = ["EventPrinter", "NodeOptions", "build_peer", "node_options", "pair_join", "serve"]

_SCHEMES = ("tcp", "ws", "wss", "http", "https")


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """What a node is made of, as given on the command line."""

    database: Path
    tcp: tuple[str, int] = ("0.0.0.0", 0)
    ws: tuple[str, int] | None = None
    http: tuple[str, int] | None = None
    lan: bool = True
    connect: tuple[str, ...] = ()
    insecure: bool = False
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """More keyword arguments for ``Peer(...)``."""


def build_peer(options: NodeOptions, *, join_secret: str | None = None) -> tuple[Peer, Identity]:
    """A Peer for ``options`` and the node's identity (created on first use).

    The TCP listener is the LAN transport (TCP advertised over mDNS) unless
    ``lan`` is off. WebSocket and HTTP/SSE listen when asked for, and dial
    only when a ``connect`` address needs them. Raises ConfigError for a
    missing database or an address no transport handles, IdentityError for
    an unusable key file.
    """
    database = require_database(options.database)
    identity = Identity.load_or_create(default_key_path(database))
    server_ssl = client_ssl = None
    if not options.insecure:
        server_ssl, client_ssl = identity.server_ssl_context(), identity.client_ssl_context()
    tls: dict[str, Any] = {"server_ssl": server_ssl, "client_ssl": client_ssl}
    host, port = options.tcp
    transports: list[Transport] = [
        LanTransport(identity.peer_id, host=host, port=port, **tls)
        if options.lan
        else TcpTransport(host, port, **tls)
    ]
    schemes = {urlsplit(address).scheme for address in options.connect}
    if options.ws is not None:
        transports.append(WebSocketTransport(*options.ws, **tls))
    elif schemes & {"ws", "wss"}:
        transports.append(WebSocketTransport(listen=False, client_ssl=client_ssl))
    if options.http is not None:
        transports.append(HttpSseTransport(*options.http, **tls))
    elif schemes & {"http", "https"}:
        transports.append(HttpSseTransport(listen=False, client_ssl=client_ssl))
    security: dict[str, Any] = (
        {"insecure": True}
        if options.insecure
        else {
            "identity": identity,
            "trust": TrustStore.load(default_trust_path(database)),
            "join_secret": join_secret,
        }
    )
    peer = Peer(
        os.fspath(database),
        transports,
        name=options.name,
        connect=list(options.connect),
        **security,
        **options.extra,
    )
    return peer, identity


def _check_urls(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    for address in value:
        parts = urlsplit(address)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise click.BadParameter(
                f"{address!r} is not a URL like tcp://HOST:PORT, ws://HOST:PORT/crpeer "
                "or http://HOST:PORT/crpeer",
                ctx,
                param,
            )
    return value


def node_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every node-running command takes."""
    decorators = [
        DATABASE,
        click.option(
            "--tcp",
            metavar="HOST:PORT",
            callback=host_port_option,
            default="0.0.0.0:0",
            show_default=True,
            help="Where to listen for TCP (port 0: any free port).",
        ),
        click.option(
            "--ws",
            metavar="HOST:PORT",
            callback=host_port_option,
            help="Also listen for WebSocket at HOST:PORT.",
        ),
        click.option(
            "--http",
            metavar="HOST:PORT",
            callback=host_port_option,
            help="Also listen for HTTP/SSE at HOST:PORT.",
        ),
        click.option(
            "--lan/--no-lan",
            default=True,
            show_default=True,
            help="Advertise and discover peers on the LAN (mDNS).",
        ),
        click.option(
            "--connect",
            multiple=True,
            metavar="URL",
            callback=_check_urls,
            help="Dial this peer and keep redialing it (repeatable).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="Plaintext, no peer authentication: tests and debugging only.",
        ),
        click.option("--name", help="The name other peers see (default: part of the site id)."),
        click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


class EventPrinter:
    """Prints a node's events on stdout: JSON lines, or text lines.

    Subscribe :meth:`on_event`; events are held back until :meth:`listening`
    has printed the first line. In text mode, ``Progress`` events draw one
    progress bar per remote on ``console`` (stderr) when it is a terminal;
    each remote's EOSE removes its bar and prints a summary line. Call
    :meth:`close` at the end.
    """

    def __init__(self, *, as_json: bool, console: Console) -> None:
        self.as_json = as_json
        self.console = console
        self._held: list[events.Event] | None = []  # until the listening line is out
        self._progress: Progress | None = None
        self._tasks: dict[bytes, TaskID] = {}
        self._last: dict[bytes, events.Progress] = {}

    def listening(self, document: dict[str, Any]) -> None:
        if self.as_json:
            echo_json({"event": "listening", "time": time.time(), **document})
        else:
            peer_id = document["peer_id"]
            click.echo(f"crpeer serving {document['database']}")
            click.echo(f"  peer id  {format_peer_id(peer_id) if peer_id else '(insecure)'}")
            for address in document["addresses"]:
                click.echo(f"  listening on {address}")
        held, self._held = self._held or [], None
        for event in held:
            self.on_event(event)

    def on_event(self, event: events.Event) -> None:
        if self._held is not None:
            self._held.append(event)
        elif self.as_json:
            echo_json(event_to_dict(event, time.time()))
        else:
            self._text(event)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _text(self, event: events.Event) -> None:
        match event:
            case events.Connected(remote=remote):
                way = "from" if remote.inbound else "to"
                self._line(f"connected {way} {remote.name} ({remote.address})")
            case events.Progress(remote=remote):
                self._last[remote.site_id] = event
                self._show_progress(event)
            case events.Eose(remote=remote):
                self._end_progress(remote)
            case events.Changed(remote=remote, tables=tables, rows=rows):
                if remote.site_id not in self._tasks:
                    self._line(f"{rows} rows from {remote.name} ({', '.join(sorted(tables))})")
            case events.Outdated(remote=remote) as outdated:
                self._line(
                    f"{remote.name} has schema {outdated.remote_schema_version} "
                    f"(ours {outdated.local_schema_version}): {outdated.held_rows} rows held "
                    "until this database is migrated"
                )
            case events.Disconnected(remote=remote, error=error):
                self._end_progress(remote, finished=False)
                self._line(f"disconnected from {remote.name}" + (f": {error}" if error else ""))
            case events.SessionFailed(remote=None, address=address, error=error):
                self._line(f"refused {address}: {error}")
            case events.ValueTooLarge(remote=remote, error=error):
                self._line(f"cannot send to {remote.name}: {error}")
            case _:
                pass

    def _line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text)

    def _show_progress(self, event: events.Progress) -> None:
        if not self.console.is_terminal:
            return
        if self._progress is None:
            # The time left comes from the remote's backlog estimate (an upper bound).
            self._progress = Progress(
                TextColumn("catching up from {task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        site = event.remote.site_id
        left = event.remaining
        rate = f"{event.rate:,.0f} rows/s"
        left_text = "" if left is None else f"~{left:,.0f} s left"
        if site not in self._tasks:
            self._tasks[site] = self._progress.add_task(
                event.remote.name, total=event.rows_expected, rate=rate, left=left_text
            )
        self._progress.update(
            self._tasks[site],
            completed=event.rows_received,
            total=max(event.rows_expected, event.rows_received),
            rate=rate,
            left=left_text,
        )

    def _end_progress(self, remote: events.RemotePeer, *, finished: bool = True) -> None:
        task = self._tasks.pop(remote.site_id, None)
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
            if not self._tasks:
                self.close()
        last = self._last.pop(remote.site_id, None)
        if finished and last is not None and last.rows_received:
            self._line(
                f"caught up with {remote.name}: {last.rows_received:,} rows "
                f"in {last.elapsed:.1f} s ({last.rate:,.0f} rows/s)"
            )
        elif finished:
            self._line(f"caught up with {remote.name}")


def _addresses(peer: Peer) -> list[str]:
    return [address for t in peer.transports for address in t.listen_addresses]


async def run_serve(options: NodeOptions, *, as_json: bool, status_interval: float) -> None:
    """Run a node until SIGINT/SIGTERM (see the module docstring)."""
    peer, _ = build_peer(options)
    history = SessionHistory()
    peer.subscribe(history.record)
    reporter = EventPrinter(as_json=as_json, console=Console(stderr=True))
    peer.subscribe(reporter.on_event)
    status_file = status_path(options.database)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await peer.start()
        addresses = _addresses(peer)
        reporter.listening(
            {
                "database": os.fspath(options.database),
                "peer_id": peer.peer_id,
                "site_id": peer.site_id.hex(),
                "addresses": addresses,
                "pid": os.getpid(),
            }
        )
        while not stop.is_set():
            status = await peer_status(peer, history)
            write_status_file(
                status_file,
                {
                    "pid": os.getpid(),
                    "updated": time.time(),
                    "listen": addresses,
                    "status": status.as_dict(),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=status_interval)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        try:
            await peer.stop()
        finally:
            status_file.unlink(missing_ok=True)
            reporter.close()


@click.command()
@node_options
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between rewrites of DATABASE.status.json.",
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
    status_interval: float,
) -> None:
    """Sync DATABASE with peers until interrupted (Ctrl-C or SIGTERM).

    By default it listens for TCP with TLS on every interface and finds peers
    on the LAN by mDNS; only peers in the trust store sync (see `crpeer
    trust` and `crpeer pair`). It writes DATABASE.status.json every second
    for `crpeer status`.
    """
    options = NodeOptions(database, tcp, ws, http, lan, connect, insecure, name)
    require_database(database)
    asyncio.run(run_serve(options, as_json=as_json, status_interval=status_interval))


async def run_pair_join(options: NodeOptions, secret: str, within: float) -> str:
    """Connect with ``secret`` until a new peer is trusted; return its id.

    Raises PairingError if none is within ``within`` seconds.
    """
    trusted = TrustStore.load(default_trust_path(options.database)).list()
    before = {entry.peer_id for entry in trusted}
    peer, _ = build_peer(options, join_secret=secret)
    paired: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    failures: list[str] = []

    def on_event(event: events.Event) -> None:
        match event:
            case events.Connected(remote=events.RemotePeer(peer_id=str(peer_id))):
                if peer_id not in before and not paired.done():
                    paired.set_result(peer_id)
            case events.SessionFailed(error=error):
                failures.append(str(error))
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


@click.command("join")
@node_options
@click.option(
    "--secret",
    prompt="Join secret",
    hide_input=True,
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
    the secret, and exits once it is paired. Then run `crpeer serve`.
    """
    if insecure:
        raise ConfigError("pairing needs TLS: drop --insecure")
    options = NodeOptions(database, tcp, ws, http, lan, connect, False, name)
    require_database(database)
    peer_id = asyncio.run(run_pair_join(options, secret, timeout))
    if as_json:
        echo_json({"paired": peer_id})
    else:
        click.echo(f"paired with {format_peer_id(peer_id)}")
