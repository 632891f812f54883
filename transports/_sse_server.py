"""The server side of the HTTP/SSE transport: sessions and the aiohttp app serving them.

See ``transports.http_sse`` for the exchange. :class:`SseServer` routes the
requests under one path to the :class:`ServerSession` they name and ends idle
sessions; each session is the server's :class:`~transports.base.Channel`.

Before authentication (:meth:`ServerSession.authenticated`) a session and
every connection that carried one of its requests count among the listener's
unauthenticated ones (:class:`~transports.base.PreAuthLimits`); a connection
counts from the moment it is handed over after the TLS handshake until it
carries a request of an authenticated session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, cast

from aiohttp import web

from peer.errors import ChannelClosed, FrameTooLarge, TransportError
from transports._addresses import socket_address
from transports._admission import Admission, Ticket, note_accepted, remote_host
from transports._channel import peer_certificate
from transports._queues import FrameQueue, Signal
from transports._sse_wire import ACK, CLOSE_EVENT, HEARTBEAT, SEQ, encode_event, encode_offer
from transports.base import Channel, PreAuthLimits, RemoteInfo

__all__ = ["Authorize", "ServerSession", "SseServer"]

Authorize = Callable[[RemoteInfo], Awaitable[bool]]
"""Decides whether a client may open a session (the security layer's hook)."""

log = logging.getLogger("transports.http_sse")


class ServerSession(Channel):
    """The server's side of one session: an inbox fed by POSTs, and a replay
    buffer of numbered frames streamed to (and acknowledged by) the client.

    Until :meth:`authenticated`, frames from the client are capped at
    ``preauth_max_frame`` and the inbox holds one; ``ticket`` is the
    session's place among the unauthenticated ones (released then, or when
    the session ends) and ``connections`` the places of the connections that
    carried its requests (released then; if the session ends first, they
    count until they close).
    """

    def __init__(
        self,
        remote: RemoteInfo,
        window: int,
        max_frame: int,
        forget: Callable[[str], Any],
        *,
        preauth_max_frame: int,
        ticket: Ticket,
    ) -> None:
        self.id = secrets.token_urlsafe(16)
        self._remote = remote
        self._window = window
        self._max_frame = max_frame
        self.recv_limit = min(max_frame, preauth_max_frame)
        self.is_authenticated = False
        self._ticket = ticket
        self.connections: list[Ticket] = []
        self._forget = forget
        self.inbox = FrameQueue(self.recv_limit)
        self.received = 0  # Crpeer-Seq of the last frame accepted from the client
        self._outbox: deque[tuple[int, bytes]] = deque()  # sent, not yet acknowledged
        self._unacked = 0
        self._sent = 0
        self._acked = 0
        self._changed = Signal()
        self._streams = 0  # a newer event stream replaces an older one
        self.closed = False
        self.last_seen = asyncio.get_running_loop().time()

    @property
    def remote(self) -> RemoteInfo:
        return self._remote

    async def send(self, frame: bytes) -> None:
        if len(frame) > self._max_frame:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds {self._max_frame}")
        while not self.closed and self._outbox and self._unacked + len(frame) > self._window:
            await self._changed.waiter().wait()
        if self.closed:
            raise ChannelClosed(f"channel to {self._remote.address} is closed")
        self._sent += 1
        self._outbox.append((self._sent, frame))
        self._unacked += len(frame)
        self._changed.fire()

    async def recv(self) -> bytes:
        return (await self.inbox.get())[1]

    async def close(self) -> None:
        self.end(ChannelClosed(f"channel to {self._remote.address} is closed"), discard=True)

    def authenticated(self) -> None:
        if not self.is_authenticated:
            self.is_authenticated = True
            self.recv_limit = self._max_frame
            self.inbox.set_limit(self._window)
            self._ticket.release()
            for ticket in self.connections:
                ticket.release()
            self.connections.clear()

    def end(self, error: TransportError, *, discard: bool = False) -> None:
        """End the session; frames already sent still go out on the stream."""
        self.inbox.close(error, discard=discard)
        if not self.closed:
            self.closed = True
            self._ticket.release()
            # Its connections still count until they close or carry an
            # authenticated session's request.
            self.connections.clear()
            self._forget(self.id)
            self._changed.fire()

    def ack(self, upto: int) -> bool:
        if upto > self._sent:
            return False
        while self._outbox and self._outbox[0][0] <= upto:
            self._unacked -= len(self._outbox.popleft()[1])
        self._acked = max(self._acked, upto)
        self._changed.fire()
        return True

    def can_resume(self, last: int) -> bool:
        return self._acked <= last <= self._sent

    async def stream(self, response: web.StreamResponse, cursor: int, heartbeat: float) -> None:
        """Write frames after ``cursor`` as they come, until the session ends
        (then ``event: close``), a newer stream replaces this one, or the
        connection breaks."""
        self._streams += 1
        generation = self._streams
        self._changed.fire()  # an older stream of this session returns
        loop = asyncio.get_running_loop()
        try:
            while True:
                changed = self._changed.waiter()
                start = cursor + 1 - self._outbox[0][0] if self._outbox else 0
                pending = list(islice(self._outbox, max(start, 0), None))
                if pending:
                    await response.write(b"".join(map(encode_event, pending)))
                    cursor, self.last_seen = pending[-1][0], loop.time()
                elif generation != self._streams:
                    return
                elif self.closed:
                    await response.write(CLOSE_EVENT)
                    return
                else:
                    try:
                        async with asyncio.timeout(heartbeat):
                            await changed.wait()
                    except TimeoutError:
                        await response.write(HEARTBEAT)
                        self.last_seen = loop.time()
        except OSError:
            return  # the client went away; it may come back with Last-Event-ID


class SseServer:
    """Serves sessions under ``path`` (``POST path/sessions`` and below).

    ``accept`` gets each new session (its channel) and must start its handler
    without waiting. ``authorize`` may refuse a session before it is created;
    a session with no request and no stream activity for ``idle`` seconds
    ends. ``deadline`` bounds the TLS handshake, the wait for a request's
    headers on an open connection, and (before authentication) the wait for
    a frame's body. ``preauth`` bounds unauthenticated sessions and
    connections and their frames. Lifecycle: ``await start(...)``, then
    :meth:`close` (ends every session, refuses new ones) and ``await
    wait_closed()``.
    """

    def __init__(
        self,
        scheme: str,
        path: str,
        *,
        accept: Callable[[ServerSession], None],
        authorize: Authorize | None,
        max_frame: int,
        window: int,
        idle: float,
        close_timeout: float,
        deadline: float,
        preauth: PreAuthLimits,
    ) -> None:
        self._scheme = scheme
        self._path = path
        self._accept = accept
        self._authorize = authorize
        self._max_frame = max_frame
        self._window = window
        self._idle = idle
        self._close_timeout = close_timeout
        self._deadline = deadline
        self._preauth = preauth
        self._admission = Admission(preauth, log, f"{scheme} {path}")
        self._tickets: dict[asyncio.BaseTransport, Ticket] = {}
        self._listener: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._sessions: dict[str, ServerSession] = {}
        self._closing = False

    @property
    def addresses(self) -> list[str]:
        """The base URLs it serves (after start)."""
        if self._listener is None:
            return []
        return [
            socket_address(self._scheme, sock.getsockname(), self._path)
            for sock in self._listener.sockets
        ]

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on ``host:port``; raises TransportError if it cannot be bound.

        The listener is asyncio's, serving aiohttp's protocol behind
        :class:`_Admitted`; aiohttp's own keep-alive timer, set to the
        deadline, closes a connection that has not sent a whole request's
        headers within it (from its start, or from the last answer)."""
        app = web.Application(client_max_size=self._max_frame)
        sessions = f"{self._path}/sessions"
        app.router.add_post(sessions, self._open)
        app.router.add_get(sessions + "/{id}/events", self._events)
        app.router.add_post(sessions + "/{id}/frames", self._frames)
        app.router.add_post(sessions + "/{id}/ack", self._ack)
        app.router.add_delete(sessions + "/{id}", self._delete)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self._close_timeout,
            keepalive_timeout=self._deadline,
            lingering_time=0,  # a refused body is not read on, to keep the connection
        )
        await self._runner.setup()
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self._protocol,
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=self._deadline if ssl_context else None,
            )
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._admission.listener = ", ".join(self.addresses)
        self._reaper = asyncio.create_task(self._reap(), name="crpeer-sse-reaper")

    def _protocol(self) -> asyncio.Protocol:
        assert self._runner is not None
        assert self._runner.server is not None
        return _Admitted(cast(asyncio.Protocol, self._runner.server()), self)

    def admit_connection(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; False if it must be closed now."""
        ticket = (
            None
            if self._closing
            else self._admission.admit(remote_host(transport.get_extra_info("peername")))
        )
        if ticket is not None:
            self._tickets[transport] = ticket
        return ticket is not None

    def forget_connection(self, transport: asyncio.BaseTransport) -> None:
        ticket = self._tickets.pop(transport, None)
        if ticket is not None:
            ticket.release()

    def close(self) -> None:
        """End every session and refuse new ones; needs no await."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        if self._reaper is not None:
            self._reaper.cancel()
        for session in list(self._sessions.values()):
            session.end(ChannelClosed("transport stopped"))

    async def wait_closed(self) -> None:
        """Finish what :meth:`close` started: stop serving (waiting up to
        ``close_timeout`` for requests in progress)."""
        if self._reaper is not None:
            await asyncio.gather(self._reaper, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _open(self, request: web.Request) -> web.Response:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        if peer is None:
            raise web.HTTPServiceUnavailable()
        address = socket_address(self._scheme, peer)
        remote = RemoteInfo(self._scheme, address, True, peer_certificate(transport))
        if self._authorize is not None and not await self._authorize(remote):
            raise web.HTTPForbidden()
        if self._closing:
            raise web.HTTPServiceUnavailable()
        ticket = self._admission.admit(remote_host(peer))
        if ticket is None:
            raise web.HTTPServiceUnavailable(headers={"Connection": "close"})
        session = ServerSession(
            remote,
            self._window,
            self._max_frame,
            self._forget,
            preauth_max_frame=self._preauth.max_frame,
            ticket=ticket,
        )
        self._note_connection(session, request)
        self._sessions[session.id] = session
        self._accept(session)
        offer = encode_offer(session.id, self._window, self._idle / 3)
        return web.Response(status=201, text=offer, content_type="application/json")

    def _session(self, request: web.Request) -> ServerSession:
        session = self._sessions.get(request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound()
        if peer_certificate(request.transport) != session.remote.certificate:
            raise web.HTTPForbidden()
        session.last_seen = asyncio.get_running_loop().time()
        self._note_connection(session, request)
        return session

    def _note_connection(self, session: ServerSession, request: web.Request) -> None:
        """The request's connection counts as long as ``session`` is not authenticated."""
        transport = request.transport
        ticket = self._tickets.get(transport) if transport is not None else None
        if ticket is None:
            return
        if session.is_authenticated:
            ticket.release()
        elif ticket not in session.connections:
            session.connections.append(ticket)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        last = _number(request, "Last-Event-ID", default=0)
        if not session.can_resume(last):
            session.end(ChannelClosed(f"{session.remote.address} resumed at event {last}"))
            raise web.HTTPGone()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        await session.stream(response, last, self._idle / 3)
        return response

    async def _frames(self, request: web.Request) -> web.Response:
        session = self._session(request)
        seq = _number(request, SEQ)
        length = request.content_length
        if length is None:
            raise web.HTTPLengthRequired(headers={"Connection": "close"})
        if length > session.recv_limit:
            when = "" if session.is_authenticated else " before authentication"
            session.end(
                FrameTooLarge(f"{session.remote.address} sent a frame of {length} bytes{when}")
            )
            raise web.HTTPRequestEntityTooLarge(
                session.recv_limit, length, headers={"Connection": "close"}
            )
        try:
            async with asyncio.timeout(None if session.is_authenticated else self._deadline):
                frame = await request.read()
        except TimeoutError:
            session.end(ChannelClosed(f"{session.remote.address} sent a frame too slowly"))
            raise web.HTTPRequestTimeout(headers={"Connection": "close"}) from None
        if seq == session.received + 1:
            session.received = seq
            try:
                await session.inbox.put(seq, frame)
            except ChannelClosed:
                raise web.HTTPGone() from None
        elif seq > session.received:
            raise web.HTTPConflict(text=f"expected {SEQ} {session.received + 1}\n")
        return web.Response(status=204)  # a retried POST (seq already received) lands here too

    async def _ack(self, request: web.Request) -> web.Response:
        if not self._session(request).ack(_number(request, ACK)):
            raise web.HTTPBadRequest(text="acknowledged a frame never sent\n")
        return web.Response(status=204)

    async def _delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        session.end(ChannelClosed(f"{session.remote.address} closed the channel"))
        return web.Response(status=204)

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._idle / 4)
            for session in list(self._sessions.values()):
                if loop.time() - session.last_seen > self._idle:
                    session.end(ChannelClosed(f"{session.remote.address} idle too long"))


class _Admitted(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the listener's admission:
    a connection over the limits is aborted before aiohttp sees it."""

    def __init__(self, inner: asyncio.Protocol, server: SseServer) -> None:
        note_accepted()  # made when the connection is accepted, before TLS
        self._inner: asyncio.Protocol | None = inner
        self._server = server
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server.admit_connection(transport):
            self._inner = None
            cast(asyncio.Transport, transport).abort()
            return
        self._transport = transport
        assert self._inner is not None
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.forget_connection(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)


def _number(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.headers.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(text=f"missing or bad {name} header\n")
    return int(raw)
