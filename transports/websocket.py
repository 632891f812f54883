"""WebSocket transport: one binary WebSocket message per frame.

Built on the ``websockets`` library (its asyncio implementation), which does
the HTTP upgrade, masking, fragmentation, keepalive pings and the closing
handshake. This module only maps messages to frames and library errors to
crpeer errors.

Addresses are ``ws://HOST:PORT/PATH`` or, with TLS, ``wss://HOST:PORT/PATH``.
A text message from the remote is a protocol violation: the connection is
closed with code 1008 and the owner gets :class:`~peer.errors.ChannelClosed`.
An incoming message over ``max_frame`` (before authentication: over the
pre-auth cap) closes the connection with code 1009 and the owner gets
:class:`~peer.errors.FrameTooLarge`; the library checks a frame's length from
its header, before reading its payload.

The listener counts unauthenticated connections from the moment the library
hands them over, after the TLS handshake (bounded by ``handshake_timeout``)
and before the HTTP upgrade (:class:`~transports.base.PreAuthLimits`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from peer.errors import ChannelClosed, ConfigError, ConnectError, FrameTooLarge, TransportError
from transports._addresses import parse_address, socket_address
from transports._admission import Admission, Ticket, note_accepted, remote_host
from transports._channel import ChannelBase, peer_certificate
from transports._handlers import HandlerTasks
from transports.base import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    Channel,
    ChannelHandler,
    PreAuthLimits,
    RemoteInfo,
    Transport,
)

__all__ = ["WebSocketTransport"]

log = logging.getLogger(__name__)


class _AdmittedConnection(ServerConnection):
    """A server connection that takes a place among the listener's
    unauthenticated ones when the library hands it over, or is aborted."""

    def __init__(self, *args: Any, admission: Admission, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        note_accepted()  # made when the connection is accepted, before TLS
        self.admission = admission
        self.ticket: Ticket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ticket = self.admission.admit(remote_host(transport.get_extra_info("peername")))
        if self.ticket is None:
            cast(asyncio.Transport, transport).abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ticket is not None:
            self.ticket.release()
        super().connection_lost(exc)


def _set_max_size(connection: Connection, limit: int) -> None:
    """Change the largest message ``connection`` accepts from now on."""
    protocol: Any = connection.protocol
    # websockets >= 15 names it max_message_size; before, max_size.
    name = "max_message_size" if hasattr(protocol, "max_message_size") else "max_size"
    setattr(protocol, name, limit)


class _WebSocketChannel(ChannelBase):
    """A channel over one open WebSocket connection (client or server side)."""

    def __init__(
        self,
        connection: Connection,
        remote: RemoteInfo,
        max_frame: int,
        preauth_max_frame: int,
        on_close: Callable[[_WebSocketChannel], None],
    ) -> None:
        ticket = connection.ticket if isinstance(connection, _AdmittedConnection) else None
        super().__init__(
            remote,
            max_frame=max_frame,
            preauth_max_frame=preauth_max_frame,
            ticket=ticket,
            on_close=on_close,
        )
        self._connection = connection

    def _lift_limit(self) -> None:
        _set_max_size(self._connection, self._recv_limit)

    async def send(self, frame: bytes) -> None:
        self._check_send(frame)
        try:
            await self._connection.send(frame)
        except ConnectionClosed as exc:
            raise self._translate(exc) from exc

    async def recv(self) -> bytes:
        self._check_open()
        try:
            message = await self._connection.recv()
        except ConnectionClosed as exc:
            raise self._translate(exc) from exc
        if isinstance(message, str):
            await self._connection.close(CloseCode.POLICY_VIOLATION, "binary frames only")
            raise ChannelClosed(f"{self._remote.address} sent a text message")
        return message

    async def _release(self) -> None:
        try:
            await self._connection.close()  # bounded by the library's close_timeout
        except BaseException:
            self._connection.transport.abort()  # the caller gave up: drop the socket
            raise

    def _translate(self, exc: ConnectionClosed) -> ChannelClosed | FrameTooLarge:
        if exc.sent and exc.sent.code == CloseCode.MESSAGE_TOO_BIG and not exc.rcvd_then_sent:
            return FrameTooLarge(f"{self._remote.address} sent a message over {self._recv_limit}")
        return ChannelClosed(f"connection to {self._remote.address} closed: {exc}")


class WebSocketTransport(Transport):
    """Listens on ``HOST:PORT/PATH`` and dials ``ws://``/``wss://`` addresses.

    ``server_ssl`` makes the listener ``wss``; ``client_ssl`` is used to dial
    ``wss://`` addresses (the library's default context when ``None``). With
    TLS, :attr:`RemoteInfo.certificate` is the remote's certificate (DER) when
    it presented one. ``ping_interval``/``ping_timeout`` drive the library's
    keepalive: a remote that stops answering pings is disconnected.
    ``handshake_timeout`` bounds the TLS handshake and, again, the WebSocket
    upgrade (its request headers included), both when dialing and accepting;
    ``close_timeout`` bounds the closing handshake and how long :meth:`stop`
    waits for handlers before cancelling them. ``preauth`` bounds
    unauthenticated connections and their frames
    (:class:`~transports.base.PreAuthLimits`).
    Connections go direct: proxies from the environment are ignored.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str = "/crpeer",
        listen: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        close_timeout: float = 5.0,
        preauth: PreAuthLimits | None = None,
    ) -> None:
        self.scheme = "wss" if server_ssl is not None else "ws"
        self._host = host
        self._port = port
        self._path = path
        self._listen = listen
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._preauth = preauth or PreAuthLimits()
        self._admission = Admission(self._preauth, log, f"{self.scheme} {host}:{port}")
        self._options: dict[str, Any] = {
            # Raised per connection once it is authenticated (_lift_limit).
            "max_size": min(max_frame, self._preauth.max_frame),
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "open_timeout": handshake_timeout,
            "close_timeout": close_timeout,
            "compression": None,
        }
        self._max_frame = max_frame
        self._handlers = HandlerTasks("WebSocketTransport", log, grace=close_timeout)
        self._server: Server | None = None
        self._channels: set[_WebSocketChannel] = set()
        self._stopped = False

    @property
    def listen_addresses(self) -> list[str]:
        if self._server is None:
            return []
        return [
            socket_address(self.scheme, sock.getsockname(), self._path)
            for sock in self._server.sockets
        ]

    async def start(self, handler: ChannelHandler) -> None:
        """Start listening (when ``listen``); raises TransportError if the
        address cannot be bound."""
        self._handlers.set(handler)
        if not self._listen:
            return
        try:
            self._server = await serve(
                self._serve,
                self._host,
                self._port,
                ssl=self._server_ssl,
                process_request=self._check_path,
                server_header=None,
                create_connection=cast(
                    type[ServerConnection],
                    functools.partial(_AdmittedConnection, admission=self._admission),
                ),
                **self._options,
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._admission.listener = ", ".join(self.listen_addresses)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()  # rejects handshakes in progress, closes open connections
        await asyncio.gather(*(channel.close() for channel in list(self._channels)))
        await self._handlers.stop()
        if self._server is not None:
            await self._server.wait_closed()

    async def dial(self, address: str) -> Channel:
        """Open a WebSocket to ``address``; raises ConnectError on refusal,
        unreachable host, rejected upgrade, TLS failure or timeout."""
        scheme = parse_address(address, ("ws", "wss"), "ws:// or wss://").scheme
        if self._stopped:
            raise ConnectError(f"cannot dial {address}: transport is stopped")
        tls: dict[str, Any] = (
            {"ssl": self._client_ssl} if scheme == "wss" and self._client_ssl else {}
        )
        try:
            connection = await connect(
                address, proxy=None, user_agent_header=None, **tls, **self._options
            )
        except InvalidURI as exc:
            raise ConfigError(f"bad WebSocket address {address!r}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectError(f"cannot connect to {address}: {exc!r}") from exc
        return self._channel(connection, scheme, address, inbound=False)

    def _channel(
        self, connection: Connection, scheme: str, address: str, *, inbound: bool
    ) -> _WebSocketChannel:
        certificate = peer_certificate(connection.transport)
        channel = _WebSocketChannel(
            connection,
            RemoteInfo(scheme, address, inbound, certificate),
            self._max_frame,
            self._preauth.max_frame,
            self._channels.discard,
        )
        self._channels.add(channel)
        return channel

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != self._path:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def _serve(self, connection: ServerConnection) -> None:
        """Runs in the library's per-connection task; the connection lives as
        long as this coroutine does."""
        address = socket_address(self.scheme, connection.remote_address)
        await self._handlers.serve(self._channel(connection, self.scheme, address, inbound=True))
