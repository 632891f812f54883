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
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from peer.errors import (
    ChannelClosed,
    ConfigError,
    ConnectError,
    FrameTooLarge,
    TransportError,
)
from transports.base import DEFAULT_MAX_FRAME, Channel, ChannelHandler, RemoteInfo, Transport

__all__ = ["Authorize", "HttpSseTransport"]

log = logging.getLogger(__name__)

Authorize = Callable[[RemoteInfo], Awaitable[bool]]
"""Decides whether a client may open a session (the security layer's hook)."""

_SEQ = "Crpeer-Seq"
_ACK = "Crpeer-Ack"
_ATTEMPTS = 4  # per request, when the connection breaks; then the channel is closed
_BACKOFF = 0.05  # seconds, doubled on every further attempt


class _Signal:
    """Wakes every task waiting on :meth:`waiter` when fired; fire() needs no await."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


class _FrameQueue:
    """Bounded FIFO of numbered frames. put() waits while ``limit`` bytes are
    queued (a single frame always fits); get() waits while empty. After
    close(error): put() raises ChannelClosed; get() returns what is left, then
    raises ``error`` once, then ChannelClosed."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._size = 0
        self._limit = limit
        self._error: TransportError | None = None
        self.closed = False
        self._changed = _Signal()

    async def put(self, number: int, frame: bytes) -> None:
        while not self.closed and self._items and self._size + len(frame) > self._limit:
            await self._changed.waiter().wait()
        if self.closed:
            raise ChannelClosed("channel is closed")
        self._items.append((number, frame))
        self._size += len(frame)
        self._changed.fire()

    async def get(self) -> tuple[int, bytes]:
        while not self._items and not self.closed:
            await self._changed.waiter().wait()
        if self._items:
            number, frame = self._items.popleft()
            self._size -= len(frame)
            self._changed.fire()
            return number, frame
        error, self._error = self._error, None
        raise error or ChannelClosed("channel is closed")

    def close(self, error: TransportError, *, discard: bool = False) -> None:
        if not self.closed:
            self.closed, self._error = True, error
        if discard:
            self._items.clear()
        self._changed.fire()


class _ServerSession(Channel):
    """The server's side of one session: an inbox fed by POSTs, and a replay
    buffer of numbered frames streamed to (and acknowledged by) the client."""

    def __init__(
        self, remote: RemoteInfo, window: int, max_frame: int, forget: Callable[[str], Any]
    ) -> None:
        self.id = secrets.token_urlsafe(16)
        self._remote = remote
        self._window = window
        self._max_frame = max_frame
        self._forget = forget
        self.inbox = _FrameQueue(window)
        self.received = 0  # Crpeer-Seq of the last frame accepted from the client
        self._outbox: deque[tuple[int, bytes]] = deque()  # sent, not yet acknowledged
        self._unacked = 0
        self._sent = 0
        self._acked = 0
        self._changed = _Signal()
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

    def end(self, error: TransportError, *, discard: bool = False) -> None:
        """End the session; frames already sent still go out on the stream."""
        self.inbox.close(error, discard=discard)
        if not self.closed:
            self.closed = True
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
                    await response.write(b"".join(map(_event, pending)))
                    cursor, self.last_seen = pending[-1][0], loop.time()
                elif generation != self._streams:
                    return
                elif self.closed:
                    await response.write(b"event: close\ndata:\n\n")
                    return
                else:
                    try:
                        async with asyncio.timeout(heartbeat):
                            await changed.wait()
                    except TimeoutError:
                        await response.write(b":\n\n")
                        self.last_seen = loop.time()
        except OSError:
            return  # the client went away; it may come back with Last-Event-ID


class _ClientChannel(Channel):
    """The client's side of one session: a task follows the event stream
    (reconnecting after drops); send() POSTs; recv() acknowledges."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        remote: RemoteInfo,
        stream: aiohttp.ClientResponse,
        window: int,
        timeout: aiohttp.ClientTimeout,
        *,
        max_frame: int,
        proxy: str | None,
        close_timeout: float,
        on_close: Callable[[_ClientChannel], None],
    ) -> None:
        self._http = http
        self._url = url
        self._remote = remote
        self._max_frame = max_frame
        self._proxy = proxy
        self._close_timeout = close_timeout
        self._on_close = on_close
        self._timeout = timeout
        self._inbox = _FrameQueue(window + max_frame)
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._received = self._consumed = self._acked = 0
        self._ended = False  # the server knows the session is over
        self._following = True  # the reader task still follows the event stream
        self._closed = False
        self._acker: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._follow(stream), name="crpeer-sse-events")

    @property
    def remote(self) -> RemoteInfo:
        return self._remote

    async def send(self, frame: bytes) -> None:
        if self._closed or self._inbox.closed:
            raise ChannelClosed(f"channel to {self._remote.address} is closed")
        if len(frame) > self._max_frame:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds {self._max_frame}")
        async with self._send_lock:
            self._seq += 1
            await self._post("/frames", frame, {_SEQ: str(self._seq)})

    async def recv(self) -> bytes:
        self._consumed, frame = await self._inbox.get()
        if self._acker is None or self._acker.done():
            self._acker = asyncio.create_task(self._acknowledge(), name="crpeer-sse-ack")
        return frame

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        error = ChannelClosed(f"channel to {self._remote.address} is closed")
        self._inbox.close(error, discard=True)
        if self._following:  # else it is telling the server the session is over: let it
            self._reader.cancel()
        if self._acker is not None:
            self._acker.cancel()
        tasks = [task for task in (self._reader, self._acker) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._end_session()
        await self._http.close()
        self._on_close(self)

    async def _post(self, suffix: str, body: bytes, headers: dict[str, str]) -> None:
        """POST with retries on broken connections; any answer but 204 fails the channel."""
        for attempt in range(_ATTEMPTS):
            if self._closed:
                raise ChannelClosed(f"channel to {self._remote.address} is closed")
            try:
                async with self._http.post(
                    self._url + suffix, data=body, headers=headers, proxy=self._proxy
                ) as response:
                    await response.read()
                    status = response.status
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == _ATTEMPTS - 1:
                    error = ChannelClosed(f"{self._remote.address} unreachable: {exc!r}")
                    self._inbox.close(error)
                    raise error from exc
                await asyncio.sleep(_BACKOFF * 2**attempt)
        if status != 204:
            self._ended = self._ended or status in (404, 410, 413)
            error = ChannelClosed(f"{self._remote.address} answered {status} to {suffix}")
            self._inbox.close(error)
            raise error

    async def _acknowledge(self) -> None:
        with_error = False
        while self._acked < self._consumed and not with_error:
            upto = self._consumed
            try:
                await self._post("/ack", b"", {_ACK: str(upto)})
            except ChannelClosed:
                with_error = True  # the inbox is closed; recv() reports it
            self._acked = upto

    async def _follow(self, stream: aiohttp.ClientResponse | None) -> None:
        """Follow the event stream (``stream`` first) until the session ends
        or it cannot be resumed."""
        failures = 0
        error: TransportError
        try:
            while True:
                try:
                    stream = stream or await _get_events(
                        self._http, self._url, self._received, self._proxy, self._timeout
                    )
                    await self._stream(stream)
                    failures = 0
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures += 1
                    if failures >= _ATTEMPTS:
                        error = ChannelClosed(f"event stream from {self._remote.address}: {exc!r}")
                        break
                except TransportError as exc:
                    error = exc
                    break
                stream = None
                await asyncio.sleep(_BACKOFF * 2**failures)
        finally:
            if stream is not None:
                stream.release()
        self._following = False
        self._inbox.close(error)
        await self._end_session()

    async def _stream(self, response: aiohttp.ClientResponse) -> None:
        """Read one event-stream response; returns if it drops, raises
        TransportError if the session is over."""
        async with response:
            if response.status != 200:
                self._ended = response.status in (404, 410)
                raise ChannelClosed(f"{self._remote.address} answered {response.status}")
            connection = response.connection
            if _certificate(connection and connection.transport) != self._remote.certificate:
                raise ChannelClosed(f"{self._remote.address} changed its certificate")
            parser = _SseParser(self._max_frame)
            async for chunk in response.content.iter_any():
                for number, frame in parser.feed(chunk):
                    if number < 0:
                        self._ended = True
                        raise ChannelClosed(f"{self._remote.address} closed the channel")
                    if number > self._received:  # else a replay of a frame we have
                        if number != self._received + 1:
                            raise ChannelClosed(f"{self._remote.address} skipped frames")
                        await self._inbox.put(number, frame)
                        self._received = number

    async def _end_session(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._http.delete(self._url, proxy=self._proxy)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("could not end session at %s: %r", self._url, exc)


class HttpSseTransport(Transport):
    """Serves sessions under ``http[s]://HOST:PORT/PATH`` and dials such URLs.

    ``server_ssl`` makes the listener ``https``; ``client_ssl`` is used for
    ``https://`` dials (default verification when ``None``). With TLS,
    :attr:`RemoteInfo.certificate` is the remote's certificate (DER).
    ``proxy`` (``http://HOST:PORT``) is used for every client request.
    ``authorize`` may refuse a session before it is created. ``send_buffer``
    bounds each session's unacknowledged server-to-client bytes (and the
    queue of received frames). ``handshake_timeout`` bounds a dial;
    ``close_timeout`` bounds closing and how long :meth:`stop` waits for
    handlers and requests before cancelling them.
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
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.scheme = "https" if server_ssl is not None else "http"
        self._host = host
        self._port = port
        self._path = path.rstrip("/")
        self._listen = listen
        self._max_frame = max_frame
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._idle = session_idle_timeout
        self._proxy = proxy
        self._authorize = authorize
        self._window = send_buffer
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._handler: ChannelHandler | None = None
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._sessions: dict[str, _ServerSession] = {}
        self._clients: set[_ClientChannel] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def listen_addresses(self) -> list[str]:
        if self._runner is None:
            return []
        return [_url(self.scheme, name, self._path) for name in self._runner.addresses]

    async def start(self, handler: ChannelHandler) -> None:
        """Start serving (when ``listen``); raises TransportError if the
        address cannot be bound."""
        if self._handler is not None:
            raise ConfigError("HttpSseTransport.start() called twice")
        self._handler = handler
        if not self._listen:
            return
        app = web.Application(client_max_size=self._max_frame)
        sessions = f"{self._path}/sessions"
        app.router.add_post(sessions, self._open)
        app.router.add_get(sessions + "/{id}/events", self._events)
        app.router.add_post(sessions + "/{id}/frames", self._frames)
        app.router.add_post(sessions + "/{id}/ack", self._ack)
        app.router.add_delete(sessions + "/{id}", self._delete)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._close_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._server_ssl)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise TransportError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._reaper = asyncio.create_task(self._reap(), name="crpeer-sse-reaper")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
        for session in list(self._sessions.values()):
            session.end(ChannelClosed("transport stopped"))
        await asyncio.gather(*(client.close() for client in list(self._clients)))
        if self._handlers:
            _, late = await asyncio.wait(self._handlers, timeout=self._close_timeout)
            for task in late:
                log.warning("channel handler did not return after stop(); cancelling it")
                task.cancel()
        tasks = [*self._handlers, *([self._reaper] if self._reaper else [])]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def dial(self, address: str) -> Channel:
        """Open a session at ``address`` and its event stream; raises
        ConnectError if the server is unreachable, refuses (403, 404...) or
        does not answer within ``handshake_timeout``."""
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http:// or https:// address: {address!r}")
        if self._stopped:
            raise ConnectError(f"cannot dial {address}: transport is stopped")
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._client_ssl or True),
            timeout=aiohttp.ClientTimeout(sock_connect=self._handshake_timeout),
        )
        url = address.rstrip("/") + "/sessions"
        try:
            async with asyncio.timeout(self._handshake_timeout):
                async with http.post(url, proxy=self._proxy) as response:
                    if response.status != 201:
                        raise ConnectError(f"{address} refused a session: {response.status}")
                    session_id, window, heartbeat = _offer(await response.json())
                url = f"{url}/{session_id}"
                timeout = aiohttp.ClientTimeout(
                    sock_connect=self._handshake_timeout, sock_read=3 * heartbeat
                )
                stream = await _get_events(http, url, 0, self._proxy, timeout)
            if stream.status != 200:
                stream.release()
                raise ConnectError(f"{address} answered {stream.status} for the event stream")
        except BaseException as exc:
            await http.close()
            if isinstance(exc, aiohttp.ClientError | TimeoutError | ValueError):
                raise ConnectError(f"cannot connect to {address}: {exc!r}") from exc
            raise
        certificate = _certificate(stream.connection.transport if stream.connection else None)
        channel = _ClientChannel(
            http,
            url,
            RemoteInfo(parts.scheme, address, False, certificate),
            stream,
            window,
            timeout,
            max_frame=self._max_frame,
            proxy=self._proxy,
            close_timeout=self._close_timeout,
            on_close=self._clients.discard,
        )
        self._clients.add(channel)
        return channel

    async def _open(self, request: web.Request) -> web.Response:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        if peer is None:
            raise web.HTTPServiceUnavailable()
        remote = RemoteInfo(self.scheme, _url(self.scheme, peer, ""), True, _certificate(transport))
        if self._authorize is not None and not await self._authorize(remote):
            raise web.HTTPForbidden()
        if self._stopped:
            raise web.HTTPServiceUnavailable()
        session = _ServerSession(remote, self._window, self._max_frame, self._forget)
        self._sessions[session.id] = session
        task = asyncio.create_task(self._serve(session), name="crpeer-sse-handler")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        offer = {"session": session.id, "window": self._window, "heartbeat": self._idle / 3}
        return web.Response(status=201, text=json.dumps(offer), content_type="application/json")

    async def _serve(self, session: _ServerSession) -> None:
        assert self._handler is not None
        try:
            await self._handler(session)
        except Exception:
            log.exception("channel handler for %s failed", session.remote.address)
        finally:
            await session.close()

    def _session(self, request: web.Request) -> _ServerSession:
        session = self._sessions.get(request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound()
        if _certificate(request.transport) != session.remote.certificate:
            raise web.HTTPForbidden()
        session.last_seen = asyncio.get_running_loop().time()
        return session

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
        seq = _number(request, _SEQ)
        try:
            if (request.content_length or 0) > self._max_frame:
                raise web.HTTPRequestEntityTooLarge(self._max_frame, request.content_length or 0)
            frame = await request.read()
        except web.HTTPRequestEntityTooLarge:
            session.end(FrameTooLarge(f"{session.remote.address} sent a frame over the limit"))
            raise
        if seq == session.received + 1:
            session.received = seq
            try:
                await session.inbox.put(seq, frame)
            except ChannelClosed:
                raise web.HTTPGone() from None
        elif seq > session.received:
            raise web.HTTPConflict(text=f"expected {_SEQ} {session.received + 1}\n")
        return web.Response(status=204)  # a retried POST (seq already received) lands here too

    async def _ack(self, request: web.Request) -> web.Response:
        if not self._session(request).ack(_number(request, _ACK)):
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


class _SseParser:
    """Splits an event stream into ``(id, frame)``; ``(-1, b"")`` is the close
    event. A line longer than a max_frame event raises FrameTooLarge."""

    def __init__(self, max_frame: int) -> None:
        self._max_frame = max_frame
        self._max_line = len(b"data: ") + 4 * -(-max_frame // 3)
        self._buffer = bytearray()
        self._scanned = 0  # no newline in _buffer[:_scanned]
        self._fields: dict[bytes, bytes] = {}

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buffer += chunk
        events, start = [], 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line, start = bytes(self._buffer[start:end]).rstrip(b"\r"), end + 1
            if line and not line.startswith(b":"):
                name, _, value = line.partition(b":")
                self._fields[name] = value.removeprefix(b" ")
            elif not line and self._fields:
                events.append(self._dispatch())
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._scanned > self._max_line:
            raise FrameTooLarge(f"event stream line over {self._max_line} bytes")
        return events

    def _dispatch(self) -> tuple[int, bytes]:
        fields, self._fields = self._fields, {}
        if fields.get(b"event") == b"close":
            return -1, b""
        try:
            number, frame = int(fields[b"id"]), base64.b64decode(fields[b"data"], validate=True)
        except (KeyError, ValueError) as exc:
            raise ChannelClosed("malformed event in the event stream") from exc
        if len(frame) > self._max_frame:
            raise FrameTooLarge(f"event of {len(frame)} bytes exceeds {self._max_frame}")
        return number, frame


async def _get_events(
    http: aiohttp.ClientSession,
    url: str,
    last: int,
    proxy: str | None,
    limits: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    headers = {"Last-Event-ID": str(last)}
    return await http.get(url + "/events", headers=headers, proxy=proxy, timeout=limits)


def _offer(answer: Any) -> tuple[str, int, float]:
    """(session id, window, heartbeat) from a ``POST /sessions`` answer; ValueError if malformed."""
    if not isinstance(answer, dict):
        raise ValueError("the session offer is not an object")
    session, window, heartbeat = (
        answer.get("session"),
        answer.get("window"),
        answer.get("heartbeat"),
    )
    if not (
        isinstance(session, str)
        and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session)
        and isinstance(window, int)
        and isinstance(heartbeat, int | float)
        and heartbeat > 0
    ):
        raise ValueError(f"malformed session offer {answer!r:.200}")
    return session, window, float(heartbeat)


def _event(entry: tuple[int, bytes]) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (entry[0], base64.b64encode(entry[1]))


def _certificate(transport: asyncio.BaseTransport | None) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object else None


def _number(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.headers.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(text=f"missing or bad {name} header\n")
    return int(raw)


def _url(scheme: str, sockname: Any, path: str) -> str:
    host, port = sockname[0], sockname[1]
    return f"{scheme}://[{host}]:{port}{path}" if ":" in host else f"{scheme}://{host}:{port}{path}"
