"""The client side of the HTTP/SSE transport: opening a session and its channel.

See ``transports.http_sse`` for the exchange. :func:`open_session` does the
dial (``POST .../sessions``, then the event stream); :class:`ClientChannel`
follows the event stream, POSTs frames and acknowledges what its owner read.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
from collections.abc import Callable

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from peer.errors import ChannelClosed, ConnectError, TransportError
from peer.retry import Backoff
from transports._channel import ChannelBase, peer_certificate
from transports._queues import FrameQueue
from transports._sse_wire import ACK, SEQ, EventParser, parse_offer
from transports.base import RemoteInfo

__all__ = ["ClientChannel", "open_session"]

log = logging.getLogger("transports.http_sse")

_RAW_BODY_BYTES = 1 << 20
_ATTEMPTS = 4  # per request, when the connection breaks; then the channel is closed
_BACKOFF = Backoff(initial=0.05, maximum=1.0)
_BROKEN = (aiohttp.ClientError, TimeoutError)  # a broken connection: worth another attempt


def _retrying() -> AsyncRetrying:
    """Up to ``_ATTEMPTS`` attempts while the connection breaks, then the last error."""
    return AsyncRetrying(
        wait=_BACKOFF.wait(),
        retry=retry_if_exception_type(_BROKEN),
        stop=stop_after_attempt(_ATTEMPTS),
        reraise=True,
    )


async def open_session(
    address: str,
    scheme: str,
    *,
    client_ssl: ssl.SSLContext | None,
    proxy: str | None,
    max_frame: int,
    preauth_max_frame: int,
    handshake_timeout: float,
    close_timeout: float,
    on_close: Callable[[ClientChannel], None],
) -> ClientChannel:
    """Open a session at ``address`` (the server's base URL) and its event stream.

    ``scheme`` is the address's (``http`` or ``https``). Raises ConnectError
    if the server is unreachable, refuses (403, 404...) or does not answer
    within ``handshake_timeout``. Idle connections are let go after half of
    ``handshake_timeout``, before a server with the same deadline closes them.
    """
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=client_ssl or True, keepalive_timeout=handshake_timeout / 2
        ),
        timeout=aiohttp.ClientTimeout(sock_connect=handshake_timeout),
    )
    url = address.rstrip("/") + "/sessions"
    try:
        async with asyncio.timeout(handshake_timeout):
            async with http.post(url, proxy=proxy) as response:
                if response.status != 201:
                    raise ConnectError(f"{address} refused a session: {response.status}")
                session_id, window, heartbeat = parse_offer(await response.json())
            url = f"{url}/{session_id}"
            timeout = aiohttp.ClientTimeout(sock_connect=handshake_timeout, sock_read=3 * heartbeat)
            stream = await _get_events(http, url, 0, proxy, timeout)
        if stream.status != 200:
            stream.release()
            raise ConnectError(f"{address} answered {stream.status} for the event stream")
    except BaseException as exc:
        await asyncio.shield(http.close())
        if isinstance(exc, aiohttp.ClientError | TimeoutError | ValueError):
            raise ConnectError(f"cannot connect to {address}: {exc!r}") from exc
        raise
    certificate = peer_certificate(stream.connection.transport if stream.connection else None)
    return ClientChannel(
        http,
        url,
        RemoteInfo(scheme, address, False, certificate),
        stream,
        window,
        timeout,
        max_frame=max_frame,
        preauth_max_frame=preauth_max_frame,
        proxy=proxy,
        close_timeout=close_timeout,
        on_close=on_close,
    )


class ClientChannel(ChannelBase):
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
        preauth_max_frame: int,
        proxy: str | None,
        close_timeout: float,
        on_close: Callable[[ClientChannel], None],
    ) -> None:
        super().__init__(
            remote, max_frame=max_frame, preauth_max_frame=preauth_max_frame, on_close=on_close
        )
        self._parser: EventParser | None = None
        self._http = http
        self._url = url
        self._proxy = proxy
        self._close_timeout = close_timeout
        self._timeout = timeout
        self._inbox = FrameQueue(window + max_frame)
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._received = self._consumed = self._acked = 0
        self._ended = False  # the server knows the session is over
        self._following = True  # the reader task still follows the event stream
        self._acker: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._follow(stream), name="crpeer-sse-events")

    async def send(self, frame: bytes) -> None:
        self._check_send(frame, broken=self._inbox.closed)
        async with self._send_lock:
            self._seq += 1
            await self._post("/frames", frame, {SEQ: str(self._seq)})

    async def recv(self) -> bytes:
        self._consumed, frame = await self._inbox.get()
        if self._acker is None or self._acker.done():
            self._acker = asyncio.create_task(self._acknowledge(), name="crpeer-sse-ack")
        return frame

    def _lift_limit(self) -> None:
        if self._parser is not None:
            self._parser.set_limit(self._recv_limit)

    async def _release(self) -> None:
        error = ChannelClosed(f"channel to {self._remote.address} is closed")
        self._inbox.close(error, discard=True)
        if self._following:  # else it is telling the server the session is over: let it
            self._reader.cancel()
        if self._acker is not None:
            self._acker.cancel()
        tasks = [task for task in (self._reader, self._acker) if task is not None]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._end_session()
        finally:
            # Even when the caller gives up on a slow close (a timeout cancels
            # it), the HTTP client and its connections are let go.
            await asyncio.shield(self._http.close())

    async def _post(self, suffix: str, body: bytes, headers: dict[str, str]) -> None:
        """POST with retries on broken connections; any answer but 204 fails the channel."""
        try:
            status: int = await _retrying()(self._post_once, suffix, body, headers)
        except _BROKEN as exc:
            error = ChannelClosed(f"{self._remote.address} unreachable: {exc!r}")
            self._inbox.close(error)
            raise error from exc
        if status != 204:
            self._ended = self._ended or status in (404, 410, 413)
            error = ChannelClosed(f"{self._remote.address} answered {status} to {suffix}")
            self._inbox.close(error)
            raise error

    async def _post_once(self, suffix: str, body: bytes, headers: dict[str, str]) -> int:
        """One POST attempt; its answer's status."""
        self._check_open()
        # aiohttp warns about (and writes in one go) a body of raw bytes over
        # 1 MiB; a BytesIO goes in chunks, yielding to the loop.
        data = io.BytesIO(body) if len(body) > _RAW_BODY_BYTES else body
        async with self._http.post(
            self._url + suffix, data=data, headers=headers, proxy=self._proxy
        ) as response:
            await response.read()
            return response.status

    async def _acknowledge(self) -> None:
        with_error = False
        while self._acked < self._consumed and not with_error:
            upto = self._consumed
            try:
                await self._post("/ack", b"", {ACK: str(upto)})
            except ChannelClosed:
                with_error = True  # the inbox is closed; recv() reports it
            self._acked = upto

    async def _follow(self, stream: aiohttp.ClientResponse | None) -> None:
        """Follow the event stream (``stream`` first) until the session ends
        or it cannot be resumed.

        A stream that drops is resumed; ``_ATTEMPTS`` breaks in a row without
        a stream in between close the channel.
        """
        error: TransportError
        try:
            while True:
                try:
                    async for attempt in _retrying():
                        with attempt:
                            stream = stream or await _get_events(
                                self._http, self._url, self._received, self._proxy, self._timeout
                            )
                            response, stream = stream, None
                            await self._stream(response)
                except _BROKEN as exc:
                    error = ChannelClosed(f"event stream from {self._remote.address}: {exc!r}")
                    break
                except TransportError as exc:
                    error = exc
                    break
                # The stream dropped after it was open: resume it, after a
                # pause so a server ending every stream at once is not hammered.
                await asyncio.sleep(_BACKOFF.initial)
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
            if peer_certificate(connection and connection.transport) != self._remote.certificate:
                raise ChannelClosed(f"{self._remote.address} changed its certificate")
            parser = self._parser = EventParser(self._recv_limit)
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


async def _get_events(
    http: aiohttp.ClientSession,
    url: str,
    last: int,
    proxy: str | None,
    limits: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    headers = {"Last-Event-ID": str(last)}
    return await http.get(url + "/events", headers=headers, proxy=proxy, timeout=limits)
