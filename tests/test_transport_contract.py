"""The Transport/Channel contract, run against every transport: the socket
ones on loopback, the memory one on a network of its own.

The helpers are in ``tests.transport_support``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peer.errors import ChannelClosed, ConnectError, FrameTooLarge
from tests.transport_support import (
    KINDS,
    WAIT,
    Loopback,
    assert_no_tasks_left,
    closed_address,
    make_transport,
    refuse_channel,
    tls_contexts,
)
from transports.base import Channel


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def loopback(kind: str) -> AsyncIterator[Loopback]:
    async with Loopback(kind) as pair:
        yield pair


def frames(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 7, 100, 5000, 70000])) for _ in range(count)]


async def test_many_frames_in_order_both_ways(loopback: Loopback) -> None:
    dialed, accepted = await loopback.pair()
    upstream, downstream = frames(300, seed=1), frames(300, seed=2)

    async def pump(sender: Channel, receiver: Channel, batch: list[bytes]) -> list[bytes]:
        async def send_all() -> None:
            for frame in batch:
                await sender.send(frame)

        sending = asyncio.create_task(send_all())
        got = [await asyncio.wait_for(receiver.recv(), WAIT) for _ in batch]
        await asyncio.wait_for(sending, WAIT)
        return got

    up, down = await asyncio.gather(
        pump(dialed, accepted, upstream), pump(accepted, dialed, downstream)
    )
    assert up == upstream
    assert down == downstream
    await dialed.close()


async def test_empty_frame(loopback: Loopback) -> None:
    dialed, accepted = await loopback.pair()
    await dialed.send(b"")
    await accepted.send(b"")
    assert await asyncio.wait_for(accepted.recv(), WAIT) == b""
    assert await asyncio.wait_for(dialed.recv(), WAIT) == b""


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_frame_at_limit_passes_one_over_is_refused(kind: str, direction: str) -> None:
    limit = 4096
    async with Loopback(kind, {"max_frame": limit}, {"max_frame": limit}) as loop:
        dialed, accepted = await loop.pair()
        sender, receiver = (dialed, accepted) if direction == "up" else (accepted, dialed)
        await sender.send(bytes(limit))
        assert await asyncio.wait_for(receiver.recv(), WAIT) == bytes(limit)
        with pytest.raises(FrameTooLarge):
            await sender.send(bytes(limit + 1))
        await sender.send(b"still open")
        assert await asyncio.wait_for(receiver.recv(), WAIT) == b"still open"


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_oversized_frame_from_remote_closes_the_channel(kind: str, direction: str) -> None:
    small, big = 4096, 8192
    server, client = ({"max_frame": small}, {"max_frame": big})
    if direction == "down":
        server, client = client, server
    async with Loopback(kind, server, client) as loop:
        dialed, accepted = await loop.pair()
        sender, receiver = (dialed, accepted) if direction == "up" else (accepted, dialed)
        with contextlib.suppress(ChannelClosed):  # HTTP learns of the refusal while sending
            await sender.send(bytes(small + 1))
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(receiver.recv(), WAIT)
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(sender.recv(), WAIT)


@pytest.mark.parametrize("closer", ["dialed", "accepted"])
async def test_close_from_either_side(loopback: Loopback, closer: str) -> None:
    dialed, accepted = await loopback.pair()
    first, other = (dialed, accepted) if closer == "dialed" else (accepted, dialed)
    await first.send(b"last words")
    await first.close()
    await first.close()  # idempotent
    assert await asyncio.wait_for(other.recv(), WAIT) == b"last words"
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(other.recv(), WAIT)
    with pytest.raises(ChannelClosed):
        await first.send(b"too late")
    with pytest.raises(ChannelClosed):
        await first.recv()


async def test_dial_closed_port_is_connect_error(kind: str) -> None:
    transport = make_transport(kind, listen=False)
    await transport.start(refuse_channel)
    address = closed_address(kind)
    with pytest.raises(ConnectError, match=address.split("//")[1].split("/")[0]):
        await asyncio.wait_for(transport.dial(address), WAIT)
    await transport.stop()


@pytest.mark.parametrize("stopper", ["server", "client"])
async def test_stop_closes_open_channels(kind: str, stopper: str) -> None:
    before = asyncio.all_tasks()
    loop = Loopback(kind)
    await loop.__aenter__()
    try:
        dialed, accepted = await loop.pair()
        stopping = loop.server if stopper == "server" else loop.client
        stop = asyncio.create_task(stopping.stop())
        for channel in (dialed, accepted):
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(channel.recv(), WAIT)
        loop.release()
        await asyncio.wait_for(stop, WAIT)
        assert loop.server.listen_addresses == ([] if stopper == "server" else [loop.address])
    finally:
        await loop.__aexit__(None, None, None)
    await assert_no_tasks_left(before)


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_unread_receiver_blocks_the_sender(loopback: Loopback, direction: str) -> None:
    dialed, accepted = await loopback.pair()
    sender, receiver = (dialed, accepted) if direction == "up" else (accepted, dialed)
    frame = os.urandom(64 * 1024)
    sent = 0
    blocked: asyncio.Task[None] | None = None
    for _ in range(2000):  # 128 MiB at most; loopback buffers hold far less
        task = asyncio.create_task(sender.send(frame))
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done:
            blocked = task
            break
        task.result()
        sent += 1
    assert blocked is not None, "send() never waited for the receiver"
    for _ in range(sent + 1):  # reading unblocks the sender; nothing is lost
        assert await asyncio.wait_for(receiver.recv(), WAIT) == frame
    await asyncio.wait_for(blocked, WAIT)


async def test_mutual_tls_reports_certificates(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        pytest.skip("the memory transport has no TLS")
    server_ssl, client_ssl, server_der, client_der = tls_contexts(tmp_path)
    async with Loopback(kind, {"server_ssl": server_ssl}, {"client_ssl": client_ssl}) as loop:
        assert loop.address.split("://")[0] in ("tcp", "wss", "https")
        dialed, accepted = await loop.pair()
        assert dialed.remote.certificate == server_der
        assert accepted.remote.certificate == client_der
        assert accepted.remote.inbound
        assert not dialed.remote.inbound
        await dialed.send(b"secret")
        assert await asyncio.wait_for(accepted.recv(), WAIT) == b"secret"
        await accepted.send(b"reply")
        assert await asyncio.wait_for(dialed.recv(), WAIT) == b"reply"
