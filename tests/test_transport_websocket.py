"""WebSocketTransport on loopback: text messages, stray HTTP, silent clients."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode

from peer.errors import ChannelClosed, ConfigError, ConnectError
from tests.transport_support import (
    WAIT,
    Loopback,
    assert_still_serving,
    free_port,
    raw_connection,
    read_until_closed,
    refuse_channel,
)
from transports.websocket import WebSocketTransport


async def test_text_message_closes_with_policy_violation() -> None:
    async with Loopback("ws") as loop:
        async with connect(loop.address, proxy=None) as rogue:
            await rogue.send("hello as text")
            accepted = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
            with pytest.raises(ChannelClosed, match="text"):
                await asyncio.wait_for(accepted.recv(), WAIT)
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(rogue.recv(), WAIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.POLICY_VIOLATION
        await assert_still_serving(loop)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /crpeer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n",
        bytes(range(256)) * 4,
    ],
    ids=["plain-get", "wrong-path", "garbage"],
)
async def test_stray_requests_are_refused(request_bytes: bytes) -> None:
    async with Loopback("ws") as loop:
        reader, writer = await raw_connection(loop.address)
        writer.write(request_bytes)
        answer = await read_until_closed(reader, writer)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
        assert loop.accepted.empty()
        await assert_still_serving(loop)


async def test_wrong_path_is_connect_error() -> None:
    async with Loopback("ws") as loop:
        with pytest.raises(ConnectError, match="404"):
            await loop.client.dial(loop.address.replace("/crpeer", "/other"))


async def test_silent_client_is_dropped_and_blocks_nobody() -> None:
    async with Loopback("ws", {"handshake_timeout": 0.3}) as loop:
        reader, writer = await raw_connection(loop.address)  # never sends the upgrade
        await assert_still_serving(loop)
        await read_until_closed(reader, writer)  # returns once the server gave up
        assert loop.accepted.empty()


async def test_keepalive_pings_keep_an_idle_channel_open() -> None:
    options = {"ping_interval": 0.05, "ping_timeout": 1.0}
    async with Loopback("ws", options, options) as loop:
        dialed, accepted = await loop.pair()
        await asyncio.sleep(0.3)  # several ping rounds with no frames
        await dialed.send(b"still here")
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"still here"


async def test_addresses_and_bad_dials() -> None:
    async with Loopback("ws") as loop:
        assert loop.address.startswith("ws://127.0.0.1:")
        assert loop.address.endswith("/crpeer")
        with pytest.raises(ConfigError):
            await loop.client.dial("http://127.0.0.1:1/crpeer")
        port = free_port()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await loop.client.dial(f"ws://127.0.0.1:{port}/crpeer")


async def test_dial_after_stop_is_connect_error() -> None:
    transport = WebSocketTransport(listen=False)
    await transport.start(refuse_channel)
    await transport.stop()
    with pytest.raises(ConnectError):
        await transport.dial("ws://127.0.0.1:1/crpeer")
