"""A ``crpeer`` node built from command-line options, for ``serve`` and ``pair join``.

:class:`NodeOptions` says what the node is made of; :func:`build_peer` makes
the :class:`~peer.peer.Peer` (the database, its identity key and trust store
next to it, and the transports asked for); :func:`node_options` adds the
options both commands share; :func:`node_guard` holds the database's
instance lock and checks the file while a node runs on it. TLS with the
node's identity is the default; ``--insecure`` runs plaintext without peer
authentication (tests and debugging only).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from peer.cli_common import DATABASE, host_port_option, require_database
from peer.cli_database import InstanceLock, check_health
from peer.cli_logs import SERVE_LOGGER
from peer.errors import ConfigError
from peer.identity import Identity, default_key_path
from peer.peer import Peer
from peer.store import Store
from peer.trust import TrustStore, default_trust_path
from transports._addresses import parse_address
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.lan import LanTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

__all__ = ["NodeOptions", "build_peer", "check_dial_address", "node_guard", "node_options"]

_SCHEMES = ("tcp", "ws", "wss", "http", "https")
_URL_FORMS = "tcp://HOST:PORT, ws://HOST:PORT/crpeer or http://HOST:PORT/crpeer"


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


def build_peer(
    options: NodeOptions, *, join_secret: str | None = None, store: Store | None = None
) -> tuple[Peer, Identity]:
    """A Peer for ``options`` and the node's identity (created on first use).

    The peer opens the database itself, unless ``store`` (opened on it by
    the caller, who closes it after the peer stops) is given.

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
        store if store is not None else os.fspath(database),
        transports,
        name=options.name,
        connect=list(options.connect),
        **security,
        **options.extra,
    )
    return peer, identity


def check_dial_address(address: str) -> None:
    """Raise ConfigError, saying what is wrong, unless ``address`` can be dialed:
    a known scheme, a host, and a port from 1 to 65535 (``tcp://`` needs one;
    ``ws``/``http`` default to their scheme's)."""
    if urlsplit(address).scheme not in _SCHEMES:
        raise ConfigError(f"{address!r} is not a URL like {_URL_FORMS}")
    parts = parse_address(address, _SCHEMES, _URL_FORMS)
    if parts.scheme == "tcp" and parts.port is None:
        raise ConfigError(f"{address!r} has no port: write tcp://HOST:PORT")
    if parts.port == 0:
        raise ConfigError(f"{address!r}: port 0 cannot be dialed (use 1-65535)")


def _check_urls(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    for address in value:
        try:
            check_dial_address(address)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
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


@contextlib.contextmanager
def node_guard(database: Path) -> Iterator[None]:
    """Hold ``database``'s instance lock and check the file before a node runs on it.

    Raises ConfigError if another node runs on it or ``PRAGMA quick_check``
    finds it damaged, StoreError if it is not a usable database. Logs a
    warning (stderr, in the ``--log-format``) when no table replicates.
    """
    require_database(database)
    with InstanceLock(database):
        check_health(database)
        with Store(database) as store:
            replicated = store.crr_columns()
        if not replicated:
            logging.getLogger(SERVE_LOGGER).warning(
                "%s has no replicated tables, so nothing syncs; "
                "make one with `crpeer crr %s TABLE`",
                database,
                database,
            )
        yield
