"""HTTP/SSE transport: frames over plain HTTP requests and Server-Sent Events.

For networks that only let HTTP through (proxies included). aiohttp does all
the HTTP; this module only defines the exchange. Under the base URL ``P``
(``http[s]://HOST:PORT/PATH``), one logical connection is a session:

* ``POST P/sessions`` opens it: ``201 {"session", "window", "heartbeat"}``;
  the id is random (128 bits), urlsafe, and bound to the client's TLS
  certificate (another certificate gets 403). An ``authorize`` hook may refuse
  the session (403) before it is created.
* ``GET P/sessions/ID/events`` is the server-to-client stream: each frame is one
  event, ``id: N`` (1, 2, 3...) and ``data: BASE64``; ``:`` lines are
  heartbeats; ``event: close`` ends the session. A client that lost the stream
  reconnects with ``Last-Event-ID`` and gets every later frame again.
* ``POST P/sessions/ID/frames`` carries one client-to-server frame as the raw
  body, numbered by the ``Crpeer-Seq`` header (1, 2, 3...) so a retried POST is
  delivered once. Over ``max_frame``: 413 and the session ends.
* ``POST P/sessions/ID/ack`` with ``Crpeer-Ack: N`` says the client's owner has
  consumed every frame up to N. Unacknowledged frames stay in the server's
  replay buffer; when it holds ``send_buffer`` bytes the server's ``send``
  waits (flow control). Resuming from before the acknowledged point, or past
  the last frame sent, is refused (410) and ends the session.
* ``DELETE P/sessions/ID`` ends the session. Unknown ids get 404; a session
  with no request and no stream activity for ``session_idle_timeout`` ends.

This module is the transport; the wire format is in ``_sse_wire``, the server
side (sessions, routes) in ``_sse_server``, the client side in ``_sse_client``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from peer.errors import ConnectError
from transports._addresses import parse_address
from transports._handlers import HandlerTasks
from transports._sse_client import ClientChannel, open_session
from transports._sse_server import Authorize, ServerSession, SseServer
from transports.base import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    Channel,
    ChannelHandler,
    PreAuthLimits,
    Transport,
)

__all__ = ["Authorize", "HttpSseTransport"]

log = logging.getLogger(__name__)


class HttpSseTransport(Transport):
    """Serves sessions under ``http[s]://HOST:PORT/PATH`` and dials such URLs.

    ``server_ssl`` makes the listener ``https``; ``client_ssl`` is used for
    ``https://`` dials (default verification when ``None``). With TLS,
    :attr:`RemoteInfo.certificate` is the remote's certificate (DER).
    ``proxy`` (``http://HOST:PORT``) is used for every client request.
    ``authorize`` may refuse a session before it is created. ``send_buffer``
    bounds each session's unacknowledged server-to-client bytes (and the
    queue of received frames). ``handshake_timeout`` bounds a dial and, on
    the listener, the TLS handshake, the wait for each request's headers and
    (before authentication) for a frame's body; ``close_timeout`` bounds
    closing and how long :meth:`stop` waits for handlers and requests before
    cancelling them. ``preauth`` bounds unauthenticated sessions and
    connections and their frames (:class:`~transports.base.PreAuthLimits`).
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
        session_idle_timeout: float = 30.0,
        proxy: str | None = None,
        authorize: Authorize | None = None,
        send_buffer: int = 1024 * 1024,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        close_timeout: float = 5.0,
        preauth: PreAuthLimits | None = None,
    ) -> None:
        self.scheme = "https" if server_ssl is not None else "http"
        self._host = host
        self._port = port
        self._listen = listen
        self._max_frame = max_frame
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._proxy = proxy
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._preauth = preauth or PreAuthLimits()
        self._handlers = HandlerTasks("HttpSseTransport", log, grace=close_timeout)
        self._server = SseServer(
            self.scheme,
            path.rstrip("/"),
            accept=self._accept,
            authorize=authorize,
            max_frame=max_frame,
            window=send_buffer,
            idle=session_idle_timeout,
            close_timeout=close_timeout,
            deadline=handshake_timeout,
            preauth=self._preauth,
        )
        self._clients: set[ClientChannel] = set()
        self._stopped = False

    @property
    def listen_addresses(self) -> list[str]:
        return self._server.addresses

    async def start(self, handler: ChannelHandler) -> None:
        """Start serving (when ``listen``); raises TransportError if the
        address cannot be bound."""
        self._handlers.set(handler)
        if self._listen:
            await self._server.start(self._host, self._port, self._server_ssl)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.close()
        await asyncio.gather(*(client.close() for client in list(self._clients)))
        await self._handlers.stop()
        await self._server.wait_closed()

    async def dial(self, address: str) -> Channel:
        """Open a session at ``address`` and its event stream; raises
        ConnectError if the server is unreachable, refuses (403, 404...) or
        does not answer within ``handshake_timeout``."""
        parts = parse_address(address, ("http", "https"), "http:// or https://")
        if self._stopped:
            raise ConnectError(f"cannot dial {address}: transport is stopped")
        channel = await open_session(
            address,
            parts.scheme,
            client_ssl=self._client_ssl,
            proxy=self._proxy,
            max_frame=self._max_frame,
            preauth_max_frame=self._preauth.max_frame,
            handshake_timeout=self._handshake_timeout,
            close_timeout=self._close_timeout,
            on_close=self._clients.discard,
        )
        self._clients.add(channel)
        return channel

    def _accept(self, session: ServerSession) -> None:
        self._handlers.spawn(session, "crpeer-sse-handler")
