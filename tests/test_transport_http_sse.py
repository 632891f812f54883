"""HttpSseTransport on loopback: the session protocol spoken by hand, replay,
idle sessions, authorization, and a client going through a forward proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peer.errors import ChannelClosed, ConnectError, FrameTooLarge
from tests.support import wait_for
from tests.transport_support import WAIT, Loopback, raw_connection, self_signed, tls_contexts
from transports._sse_client import ClientChannel
from transports.base import RemoteInfo

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "host"}


class ForwardProxy:
    """A plain-HTTP forward proxy on 127.0.0.1 that streams responses and
    forwards only to loopback; ``drop_streams()`` cuts every open response,
    and the next ``cut_frames`` frame POSTs are cut before any answer."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.cut_frames = 0
        self._upstreams: set[aiohttp.ClientResponse] = set()

    async def __aenter__(self) -> ForwardProxy:
        app = web.Application(client_max_size=1 << 24)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._http = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()
        await self._http.close()

    def drop_streams(self) -> None:
        for upstream in list(self._upstreams):
            upstream.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert request.url.host == "127.0.0.1", "the test proxy only forwards to loopback"
        self.requests.append(f"{request.method} {request.path}")
        if request.method == "POST" and request.path.endswith("/frames") and self.cut_frames:
            self.cut_frames -= 1
            assert request.transport is not None
            request.transport.close()  # the connection breaks: no answer at all
            return web.Response(status=204)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._http.request(
            request.method, request.url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP | {"content-length"}:
                    response.headers[name] = value
            await response.prepare(request)
            self._upstreams.add(upstream)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:
                pass  # dropped on purpose
            finally:
                self._upstreams.discard(upstream)
            return response


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def open_session(http: aiohttp.ClientSession, loop: Loopback) -> str:
    async with http.post(f"{loop.address}/sessions") as response:
        assert response.status == 201
        offer = await response.json()
    return f"{loop.address}/sessions/{offer['session']}"


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[int, bytes]]:
    """The next ``count`` frame events of an event stream, skipping heartbeats."""
    events: list[tuple[int, bytes]] = []
    fields: dict[str, str] = {}
    for _ in range(count * 10 + 100):
        line = (await asyncio.wait_for(response.content.readline(), WAIT)).decode().rstrip("\n")
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "id" in fields:
            events.append((int(fields["id"]), base64.b64decode(fields["data"])))
            fields = {}
            if len(events) == count:
                return events
    raise AssertionError(f"only {len(events)} events arrived")


async def test_unknown_session_is_404(http: aiohttp.ClientSession) -> None:
    async with Loopback("http") as loop:
        url = f"{loop.address}/sessions/no-such-session"
        for method, suffix, headers in [
            ("GET", "/events", {}),
            ("POST", "/frames", {"Crpeer-Seq": "1"}),
            ("POST", "/ack", {"Crpeer-Ack": "0"}),
            ("DELETE", "", {}),
        ]:
            async with http.request(method, url + suffix, headers=headers) as response:
                assert response.status == 404, (method, suffix)


async def test_oversized_body_is_413_and_ends_the_session(http: aiohttp.ClientSession) -> None:
    async with Loopback("http", {"max_frame": 1000}) as loop:
        url = await open_session(http, loop)
        accepted = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        post = http.post(url + "/frames", data=bytes(1001), headers={"Crpeer-Seq": "1"})
        async with post as response:
            assert response.status == 413
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(accepted.recv(), WAIT)
        async with http.get(url + "/events") as response:
            assert response.status == 404


@pytest.mark.parametrize("seq", [None, "", "abc", "-1", "1_0", "\uff11", "9" * 40])
async def test_malformed_frame_post_is_400(http: aiohttp.ClientSession, seq: str | None) -> None:
    async with Loopback("http") as loop:
        url = await open_session(http, loop)
        headers = {} if seq is None else {"Crpeer-Seq": seq}
        async with http.post(url + "/frames", data=b"x", headers=headers) as response:
            assert response.status == 400
        async with http.post(url + "/ack", headers={"Crpeer-Ack": "5"}) as response:
            assert response.status == 400  # nothing was sent yet


async def test_garbage_on_the_socket_does_not_stop_the_server() -> None:
    async with Loopback("http") as loop:
        reader, writer = await raw_connection(loop.address)
        writer.write(b"POST /crpeer/sessions HTTP/1.1\r\nContent-Length: zz\r\n\r\n" + bytes(99))
        answer = await asyncio.wait_for(reader.read(65536), WAIT)
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        silent = await raw_connection(loop.address)  # never speaks
        dialed, accepted = await loop.pair()
        await dialed.send(b"ping")
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"ping"
        silent[1].close()
        await silent[1].wait_closed()


async def test_retried_post_is_delivered_once(http: aiohttp.ClientSession) -> None:
    async with Loopback("http") as loop:
        url = await open_session(http, loop)
        accepted = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        for seq, body, status in [("1", b"a", 204), ("1", b"a", 204), ("3", b"c", 409)]:
            post = http.post(url + "/frames", data=body, headers={"Crpeer-Seq": seq})
            async with post as response:
                assert response.status == status
        async with http.post(url + "/frames", data=b"b", headers={"Crpeer-Seq": "2"}) as response:
            assert response.status == 204
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"a"
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"b"


async def test_event_stream_resumes_from_last_event_id(http: aiohttp.ClientSession) -> None:
    async with Loopback("http") as loop:
        url = await open_session(http, loop)
        accepted = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        for frame in (b"one", b"two", b"three"):
            await accepted.send(frame)
        async with http.get(url + "/events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert await read_events(response, 3) == [(1, b"one"), (2, b"two"), (3, b"three")]
        async with http.get(url + "/events", headers={"Last-Event-ID": "1"}) as response:
            assert await read_events(response, 2) == [(2, b"two"), (3, b"three")]
        async with http.post(url + "/ack", headers={"Crpeer-Ack": "2"}) as response:
            assert response.status == 204
        await accepted.send(b"four")
        async with http.get(url + "/events", headers={"Last-Event-ID": "3"}) as response:
            assert await read_events(response, 1) == [(4, b"four")]
        async with http.get(url + "/events", headers={"Last-Event-ID": "1"}) as response:
            assert response.status == 410  # frame 2 was acknowledged: cannot replay from 1
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(accepted.recv(), WAIT)


async def test_idle_session_is_closed(http: aiohttp.ClientSession) -> None:
    async with Loopback("http", {"session_idle_timeout": 0.3}) as loop:
        url = await open_session(http, loop)  # and then never comes back
        accepted = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        with pytest.raises(ChannelClosed, match="idle"):
            await asyncio.wait_for(accepted.recv(), WAIT)
        async with http.get(url + "/events") as response:
            assert response.status == 404


async def test_live_session_with_heartbeats_outlives_the_idle_timeout() -> None:
    async with Loopback("http", {"session_idle_timeout": 0.3}) as loop:
        dialed, accepted = await loop.pair()
        await asyncio.sleep(1.0)  # several idle timeouts, kept alive by the event stream
        await accepted.send(b"still here")
        assert await asyncio.wait_for(dialed.recv(), WAIT) == b"still here"


async def test_authorize_hook_can_refuse(http: aiohttp.ClientSession) -> None:
    seen: list[RemoteInfo] = []

    async def authorize(remote: RemoteInfo) -> bool:
        seen.append(remote)
        return False

    async with Loopback("http", {"authorize": authorize}) as loop:
        with pytest.raises(ConnectError, match="403"):
            await loop.client.dial(loop.address)
        async with http.post(f"{loop.address}/sessions") as response:
            assert response.status == 403
        assert loop.accepted.empty()
        assert seen[0].inbound
        assert seen[0].address.startswith("http://127.0.0.1:")


async def test_session_is_bound_to_the_client_certificate(tmp_path: Path) -> None:
    server_ssl, client_ssl, _, _ = tls_contexts(tmp_path)
    _, other_crt, other_key = self_signed(tmp_path, "other")
    server_ssl.load_verify_locations(cafile=other_crt)  # trusted, but not the session's owner
    async with Loopback("http", {"server_ssl": server_ssl}, {"client_ssl": client_ssl}) as loop:
        url = f"{loop.address}/sessions"
        owner = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
        async with owner, owner.post(url) as response:
            url += "/" + (await response.json())["session"]
        client_ssl.load_cert_chain(other_crt, other_key)
        other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
        async with other, other.get(url + "/events") as response:
            assert response.status == 403


async def test_through_a_forward_proxy_with_a_dropped_stream() -> None:
    async with ForwardProxy() as proxy, Loopback("http", client={"proxy": proxy.url}) as loop:
        dialed, accepted = await loop.pair()
        await dialed.send(b"up through the proxy")
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"up through the proxy"
        for n in range(5):
            await accepted.send(b"before %d" % n)
        assert [await asyncio.wait_for(dialed.recv(), WAIT) for _ in range(3)] == [
            b"before 0",
            b"before 1",
            b"before 2",
        ]
        proxy.drop_streams()
        for n in range(5):
            await accepted.send(b"after %d" % n)
        received = [await asyncio.wait_for(dialed.recv(), WAIT) for _ in range(7)]
        assert received == [b"before 3", b"before 4"] + [b"after %d" % n for n in range(5)]
        assert proxy.requests.count(f"GET {dialed_path(loop)}") >= 2  # it reconnected
        assert any(request.startswith("POST") for request in proxy.requests)


def frame_posts(proxy: ForwardProxy) -> int:
    return sum(1 for r in proxy.requests if r.startswith("POST") and r.endswith("/frames"))


async def test_a_frame_post_cut_three_times_is_retried_and_delivered_once() -> None:
    async with ForwardProxy() as proxy, Loopback("http", client={"proxy": proxy.url}) as loop:
        dialed, accepted = await loop.pair()
        proxy.cut_frames = 3
        await asyncio.wait_for(dialed.send(b"through a flaky link"), WAIT)
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"through a flaky link"
        await dialed.send(b"next")
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"next"
        assert frame_posts(proxy) == 3 + 1 + 1


async def test_a_frame_post_cut_four_times_closes_the_channel() -> None:
    async with ForwardProxy() as proxy, Loopback("http", client={"proxy": proxy.url}) as loop:
        dialed, _accepted = await loop.pair()
        proxy.cut_frames = 10
        with pytest.raises(ChannelClosed, match="unreachable"):
            await asyncio.wait_for(dialed.send(b"never arrives"), WAIT)
        assert frame_posts(proxy) == 4  # the attempts per request
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(dialed.recv(), WAIT)


def dialed_path(loop: Loopback) -> str:
    (session,) = (entry.channel for entry in loop._all)
    return f"/crpeer/sessions/{session_id(session)}/events"


def session_id(channel: object) -> str:
    identifier = getattr(channel, "id", None)
    assert isinstance(identifier, str)
    return identifier


async def test_a_close_given_up_on_still_lets_go_of_the_http_client() -> None:
    async with Loopback("http") as loop:
        dialed, _ = await loop.pair()
        assert isinstance(dialed, ClientChannel)
        # The caller's timeout cancels the close while it is still under way.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dialed.close(), 0.0001)
        await wait_for(lambda: dialed._http.closed)  # its connections are released all the same
