"""TcpTransport and StreamChannel on loopback: hostile input, TLS timeouts, IPv6."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from pathlib import Path

import pytest

from peer.errors import ChannelClosed, ConfigError, ConnectError, FrameTooLarge, TransportError
from tests.support import wait_for
from tests.transport_support import (
    WAIT,
    Loopback,
    assert_no_tasks_left,
    assert_still_serving,
    raw_connection,
    read_until_closed,
    refuse_channel,
    tls_contexts,
)
from transports.base import RemoteInfo
from transports.tcp import StreamChannel, TcpTransport


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"\xff\xff\xff\xff" + b"x" * 100, FrameTooLarge),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", FrameTooLarge),
        (b"\x00\x00\x00\x10" + b"short", ChannelClosed),
        (random.Random(7).randbytes(3000), TransportError),
    ],
    ids=["huge-length", "http-get", "truncated", "random"],
)
async def test_garbage_closes_that_connection_only(
    garbage: bytes, error: type[TransportError]
) -> None:
    async with Loopback("tcp") as loop:
        reader, writer = await raw_connection(loop.address)
        writer.write(garbage)
        if error is ChannelClosed:
            writer.write_eof()
        hostile = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        with pytest.raises(error):
            await asyncio.wait_for(hostile.recv(), WAIT)
        await read_until_closed(reader, writer)
        await assert_still_serving(loop)


async def test_silent_client_does_not_block_others() -> None:
    async with Loopback("tcp") as loop:
        reader, writer = await raw_connection(loop.address)
        silent = (await asyncio.wait_for(loop.accepted.get(), WAIT)).channel
        await assert_still_serving(loop)
        writer.close()
        await writer.wait_closed()
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(silent.recv(), WAIT)
        assert not await reader.read()


async def test_tls_handshake_timeout_drops_silent_client(tmp_path: Path) -> None:
    server_ssl, client_ssl, _, _ = tls_contexts(tmp_path)
    server = {"server_ssl": server_ssl, "handshake_timeout": 0.3}
    async with Loopback("tcp", server, {"client_ssl": client_ssl}) as loop:
        reader, writer = await raw_connection(loop.address)  # never sends a ClientHello
        await assert_still_serving(loop)
        await read_until_closed(reader, writer)
        assert loop.accepted.empty()


async def test_stop_during_tls_handshake_leaves_nothing(tmp_path: Path) -> None:
    server_ssl, _, _, _ = tls_contexts(tmp_path)
    before = asyncio.all_tasks()
    transport = TcpTransport(server_ssl=server_ssl, handshake_timeout=60.0)
    await transport.start(refuse_channel)
    reader, writer = await raw_connection(transport.listen_addresses[0])
    # The server has accepted it: its TLS handshake is under way.
    await wait_for(lambda: any(t.get_name() == "crpeer-tcp-accept" for t in asyncio.all_tasks()))
    await asyncio.wait_for(transport.stop(), WAIT)
    await assert_no_tasks_left(before)
    await read_until_closed(reader, writer)


async def test_dial_times_out_when_tls_never_answers(tmp_path: Path) -> None:
    _, client_ssl, _, _ = tls_contexts(tmp_path)
    silent = await asyncio.start_server(_hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    transport = TcpTransport(listen=False, client_ssl=client_ssl, handshake_timeout=0.3)
    await transport.start(refuse_channel)
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(transport.dial(f"tcp://127.0.0.1:{port}"), WAIT)
    await transport.stop()
    silent.close()
    await silent.wait_closed()


@pytest.mark.parametrize("address", ["udp://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:5", "x"])
async def test_malformed_address_is_config_error(address: str) -> None:
    transport = TcpTransport(listen=False)
    await transport.start(refuse_channel)
    with pytest.raises(ConfigError):
        await transport.dial(address)
    await transport.stop()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not available")
    async with Loopback("tcp", {"host": "::1"}) as loop:
        assert loop.address.startswith("tcp://[::1]:")
        await assert_still_serving(loop)


async def test_listen_addresses_give_the_bound_port() -> None:
    async with Loopback("tcp") as loop:
        assert loop.address.startswith("tcp://127.0.0.1:")
        assert int(loop.address.rsplit(":", 1)[1]) > 0
        assert loop.client.listen_addresses == []


async def test_stream_channel_over_any_stream_pair() -> None:
    accepted: asyncio.Queue[StreamChannel] = asyncio.Queue()
    closed: list[StreamChannel] = []

    def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = RemoteInfo("test", "inbound", inbound=True)
        accepted.put_nowait(StreamChannel(reader, writer, remote, on_close=closed.append))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    dialed = StreamChannel(reader, writer, RemoteInfo("test", "out", inbound=False), max_frame=10)
    inbound = await asyncio.wait_for(accepted.get(), WAIT)
    await dialed.send(b"0123456789")
    assert await asyncio.wait_for(inbound.recv(), WAIT) == b"0123456789"
    await inbound.send(b"0123456789A")  # inbound allows 8 MiB, dialed only 10 bytes
    with pytest.raises(FrameTooLarge):
        await asyncio.wait_for(dialed.recv(), WAIT)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(inbound.recv(), WAIT)
    await inbound.close()
    assert closed == [inbound]
    server.close()
    await server.wait_closed()


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the dialer gives up
    writer.close()


async def test_a_close_given_up_on_drops_the_socket(tmp_path: Path) -> None:
    """A remote that never answers the TLS goodbye: a close the caller stops
    waiting for (a timeout cancels it) still lets go of the socket."""
    server_ssl, client_ssl, _, _ = tls_contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    release = threading.Event()

    def silent_after_handshake() -> None:
        conn, _ = listener.accept()
        with server_ssl.wrap_socket(conn, server_side=True) as tls:
            release.wait(10)  # never reads the client's close_notify
            del tls

    thread = threading.Thread(target=silent_after_handshake)
    thread.start()
    client = TcpTransport(listen=False, client_ssl=client_ssl, close_timeout=30.0)
    try:
        channel = await client.dial(f"tcp://127.0.0.1:{port}")
        assert isinstance(channel, StreamChannel)
        raw = channel._writer.get_extra_info("socket")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.close(), 0.05)
        # Closed, not waiting 30 s for the goodbye.
        await wait_for(lambda: raw.fileno() == -1, within=5.0)
    finally:
        release.set()
        await client.stop()
        await asyncio.to_thread(thread.join)
        listener.close()
