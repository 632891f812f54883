"""TCP transport: length-prefixed frames over asyncio streams, optionally TLS.

Wire format: every frame is a 4-byte big-endian length followed by that many
bytes. A length over the channel's limit (``max_frame``; before
authentication the pre-auth cap) closes the connection before the payload
is read (:class:`~peer.errors.FrameTooLarge`).

The listener counts unauthenticated connections from the moment it accepts
them, before the TLS handshake (:class:`~transports.base.PreAuthLimits`).

Addresses are ``tcp://HOST:PORT`` (IPv6: ``tcp://[::1]:PORT``).

:class:`StreamChannel` is the framing on its own, over any connected
``(asyncio.StreamReader, asyncio.StreamWriter)`` pair; other stream transports
(LAN discovery) build on it and on :class:`TcpTransport`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable

from peer.errors import ChannelClosed, ConfigError, ConnectError, TransportError
from transports._addresses import parse_address, socket_address
from transports._admission import Admission, Ticket, note_accepted, remote_host
from transports._channel import ChannelBase, peer_certificate
from transports._handlers import HandlerTasks
from transports.base import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    PREAUTH_MAX_FRAME,
    Channel,
    ChannelHandler,
    PreAuthLimits,
    RemoteInfo,
    Transport,
)

__all__ = ["StreamChannel", "TcpTransport"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")


class StreamChannel(ChannelBase):
    """Length-prefixed frames over a connected asyncio stream pair.

    ``reader``/``writer`` must already be connected (and TLS-wrapped, if
    wanted); the channel owns them from now on and closes the writer in
    :meth:`close`. ``remote`` is reported as-is. ``close_timeout`` bounds the
    clean shutdown (TLS close_notify) before the connection is aborted.
    ``on_close`` is called once, after the connection is closed; transports use
    it to forget the channel. ``preauth_max_frame`` and ``ticket``: see
    :class:`~transports._channel.ChannelBase`.

    One task may call :meth:`recv` at a time; :meth:`send` may be called from
    several tasks (each frame is written whole).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        remote: RemoteInfo,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        preauth_max_frame: int = PREAUTH_MAX_FRAME,
        ticket: Ticket | None = None,
        close_timeout: float = 5.0,
        on_close: Callable[[StreamChannel], None] | None = None,
    ) -> None:
        super().__init__(
            remote,
            max_frame=max_frame,
            preauth_max_frame=preauth_max_frame,
            ticket=ticket,
            on_close=on_close,
        )
        self._reader = reader
        self._writer = writer
        self._close_timeout = close_timeout

    async def send(self, frame: bytes) -> None:
        """Write one frame and wait until the transport's buffer drains."""
        self._check_send(frame, broken=self._writer.is_closing())
        try:
            self._writer.writelines([_HEADER.pack(len(frame)), frame])
            await self._writer.drain()
        except OSError as exc:  # ConnectionError and ssl.SSLError included
            raise ChannelClosed(f"connection to {self._remote.address} broke: {exc}") from exc

    async def recv(self) -> bytes:
        """Read the next frame; an oversized length closes the connection."""
        self._check_open()
        try:
            (length,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
            if length > self._recv_limit:
                error = self._too_large(length)
                self._writer.transport.abort()  # no goodbye: the rest is not read
                await self.close()
                raise error
            return await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError) as exc:
            await self.close()
            raise ChannelClosed(f"connection to {self._remote.address} closed") from exc

    async def _release(self) -> None:
        self._writer.close()
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass  # the connection broke while closing: closed all the same
        except BaseException:
            # The caller gave up (cancelled): drop the socket rather than
            # leave it to a TLS goodbye that may never come.
            self._writer.transport.abort()
            raise


class TcpTransport(Transport):
    """Listens on and dials ``tcp://`` addresses; TLS when contexts are given.

    ``server_ssl`` wraps accepted connections (the TLS handshake must finish
    within ``handshake_timeout`` or the connection is dropped); ``client_ssl``
    wraps dialed ones. With TLS, :attr:`RemoteInfo.certificate` is the
    remote's certificate (DER) when it presented one. ``preauth`` bounds
    unauthenticated connections and their frames
    (:class:`~transports.base.PreAuthLimits`). ``close_timeout`` bounds each
    channel's clean close and how long :meth:`stop` waits for handlers to
    return before cancelling them.
    """

    scheme = "tcp"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listen: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        close_timeout: float = 5.0,
        preauth: PreAuthLimits | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._listen = listen
        self._max_frame = max_frame
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._preauth = preauth or PreAuthLimits()
        self._admission = Admission(self._preauth, log, f"tcp {host}:{port}")
        self._handlers = HandlerTasks("TcpTransport", log, grace=close_timeout)
        self._server: asyncio.Server | None = None
        self._channels: set[StreamChannel] = set()
        self._handshakes: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopped = False

    @property
    def listen_addresses(self) -> list[str]:
        if self._server is None:
            return []
        return [socket_address(self.scheme, sock.getsockname()) for sock in self._server.sockets]

    async def start(self, handler: ChannelHandler) -> None:
        """Start listening (when ``listen``); raises TransportError if the
        address cannot be bound."""
        self._handlers.set(handler)
        if not self._listen:
            return
        try:
            self._server = await asyncio.start_server(self._accepted, self._host, self._port)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._admission.listener = ", ".join(self.listen_addresses)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for task, writer in self._handshakes.items():
            writer.transport.abort()  # the task may not have started: it cannot clean up
            task.cancel()
        await asyncio.gather(*(channel.close() for channel in list(self._channels)))
        await self._handlers.stop()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def dial(self, address: str) -> Channel:
        """Connect to ``address``; raises ConnectError on refusal, unreachable
        host, TLS failure or timeout (``handshake_timeout``)."""
        parts = parse_address(address, ("tcp",), "tcp://HOST:PORT")
        if parts.port is None:
            raise ConfigError(f"not a tcp://HOST:PORT address: {address!r}")
        if self._stopped:
            raise ConnectError(f"cannot dial {address}: transport is stopped")
        try:
            async with asyncio.timeout(self._handshake_timeout):
                reader, writer = await asyncio.open_connection(
                    parts.hostname,
                    parts.port,
                    ssl=self._client_ssl,
                    ssl_handshake_timeout=self._handshake_timeout if self._client_ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"cannot connect to {address}: {exc!r}") from exc
        return self._channel(reader, writer, address, inbound=False)

    def _channel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        *,
        inbound: bool,
        ticket: Ticket | None = None,
    ) -> StreamChannel:
        certificate = peer_certificate(writer.transport)
        channel = StreamChannel(
            reader,
            writer,
            RemoteInfo(self.scheme, address, inbound, certificate),
            max_frame=self._max_frame,
            preauth_max_frame=self._preauth.max_frame,
            ticket=ticket,
            close_timeout=self._close_timeout,
            on_close=self._channels.discard,
        )
        self._channels.add(channel)
        return channel

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        note_accepted()
        ticket = (
            None
            if self._stopped
            else self._admission.admit(remote_host(writer.get_extra_info("peername")))
        )
        if ticket is None:
            writer.transport.abort()
            return
        task = asyncio.create_task(self._serve(reader, writer, ticket), name="crpeer-tcp-accept")
        self._handshakes[task] = writer
        task.add_done_callback(lambda done: self._handshakes.pop(done, None))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        address = socket_address(self.scheme, writer.get_extra_info("peername"))
        if self._server_ssl is not None:
            try:
                await writer.start_tls(
                    self._server_ssl, ssl_handshake_timeout=self._handshake_timeout
                )
            except BaseException as exc:
                ticket.release()
                writer.transport.abort()
                if isinstance(exc, OSError | TimeoutError):
                    log.debug("TLS handshake with %s failed: %r", address, exc)
                    return
                raise
        # From here on the handler owns the connection: move this task from
        # the handshake set (cancelled at once on stop) to the handler tasks.
        task = asyncio.current_task()
        assert task is not None
        del self._handshakes[task]
        channel = self._channel(reader, writer, address, inbound=True, ticket=ticket)
        await self._handlers.serve(channel)
