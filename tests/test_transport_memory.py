"""MemoryTransport: the Channel contract in memory, and its injected faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from peer.errors import ChannelClosed, ConfigError, ConnectError, FrameTooLarge
from transports.base import Channel, RemoteInfo
from transports.memory import LinkFaults, LinkStats, MemoryNetwork, MemoryTransport

WAIT_S = 5.0


class Node:
    """A started transport whose handler hands each inbound channel to the test."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.transport = MemoryTransport(network, name)
        self.accepted: asyncio.Queue[Channel] = asyncio.Queue()
        self.release = asyncio.Event()

    async def handler(self, channel: Channel) -> None:
        await self.accepted.put(channel)
        await self.release.wait()

    async def accept(self) -> Channel:
        async with asyncio.timeout(WAIT_S):
            return await self.accepted.get()

    async def dial(self, other: Node) -> tuple[Channel, Channel]:
        """Dial ``other``; returns (our outbound end, its inbound end)."""
        outbound = await self.transport.dial(f"memory://{other.transport.name}")
        return outbound, await other.accept()

    async def stop(self) -> None:
        self.release.set()
        await self.transport.stop()


StartNode = Callable[[MemoryNetwork, str], Awaitable[Node]]


@pytest.fixture
async def start_node() -> AsyncIterator[StartNode]:
    started: list[Node] = []

    async def start(network: MemoryNetwork, name: str) -> Node:
        node = Node(network, name)
        await node.transport.start(node.handler)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


async def send_all(channel: Channel, frames: list[bytes]) -> None:
    async with asyncio.timeout(WAIT_S):
        for frame in frames:
            await channel.send(frame)


async def recv_n(channel: Channel, count: int) -> list[bytes]:
    async with asyncio.timeout(WAIT_S):
        return [await channel.recv() for _ in range(count)]


async def recv_until_closed(channel: Channel, limit: int = 1000) -> list[bytes]:
    """Every frame until ChannelClosed (at most ``limit``, within WAIT_S)."""
    received: list[bytes] = []
    async with asyncio.timeout(WAIT_S):
        for _ in range(limit):
            try:
                received.append(await channel.recv())
            except ChannelClosed:
                return received
    raise AssertionError(f"channel still open after {limit} frames")


def numbered(count: int) -> list[bytes]:
    return [f"frame-{i}".encode() for i in range(count)]


async def test_round_trip_in_order_both_ways(start_node: StartNode) -> None:
    network = MemoryNetwork(queue_frames=4)
    a, b = await start_node(network, "a"), await start_node(network, "b")
    out, inb = await a.dial(b)
    assert out.remote == RemoteInfo("memory", "memory://b", inbound=False)
    assert inb.remote == RemoteInfo("memory", "memory://a", inbound=True)
    assert a.transport.listen_addresses == ["memory://a"]
    frames = numbered(20)  # more than the queue holds: sender and receiver interleave
    forth = await asyncio.gather(send_all(out, frames), recv_n(inb, 20))
    back = await asyncio.gather(send_all(inb, frames[::-1]), recv_n(out, 20))
    assert forth[1] == frames
    assert back[1] == frames[::-1]
    assert network.stats()[("a", "b")] == LinkStats(
        frames_sent=20,
        bytes_sent=sum(map(len, frames)),
        frames_delivered=20,
        bytes_delivered=sum(map(len, frames)),
    )


async def test_sender_waits_while_the_receiver_does_not_read(start_node: StartNode) -> None:
    network = MemoryNetwork(queue_frames=3)
    a, b = await start_node(network, "a"), await start_node(network, "b")
    out, inb = await a.dial(b)
    await send_all(out, numbered(3))
    blocked = asyncio.create_task(out.send(b"fourth"))
    done, _ = await asyncio.wait({blocked}, timeout=0.1)
    assert not done
    assert await recv_n(inb, 1) == [b"frame-0"]
    async with asyncio.timeout(WAIT_S):
        await blocked
    assert await recv_n(inb, 3) == [b"frame-1", b"frame-2", b"fourth"]


async def test_close_drains_then_gives_channel_closed(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a, b = await start_node(network, "a"), await start_node(network, "b")
    out, inb = await a.dial(b)
    await send_all(out, [b"one", b"two"])
    await out.close()
    await out.close()
    with pytest.raises(ChannelClosed):
        await out.send(b"late")
    with pytest.raises(ChannelClosed):
        await inb.send(b"to nobody")
    assert await recv_until_closed(inb) == [b"one", b"two"]


async def test_close_wakes_a_blocked_sender(start_node: StartNode) -> None:
    network = MemoryNetwork(queue_frames=1)
    a, b = await start_node(network, "a"), await start_node(network, "b")
    out, inb = await a.dial(b)
    await send_all(out, [b"fills the queue"])
    blocked = asyncio.create_task(out.send(b"waits"))
    await asyncio.sleep(0)
    await inb.close()
    with pytest.raises(ChannelClosed):
        async with asyncio.timeout(WAIT_S):
            await blocked


async def test_frame_limits(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a = await start_node(network, "a")
    small = MemoryTransport(network, "small", max_frame=8)
    await small.start(a.handler)
    try:
        out = await small.dial("memory://a")
        inb = await a.accept()
        with pytest.raises(FrameTooLarge):
            await out.send(b"x" * 9)
        await send_all(out, [b"x" * 8])  # still open after refusing a frame
        assert await recv_n(inb, 1) == [b"x" * 8]
        await send_all(inb, [b"y" * 9, b"after"])
        with pytest.raises(FrameTooLarge):
            await recv_n(out, 1)
        with pytest.raises(ChannelClosed):
            await out.recv()
    finally:
        await small.stop()


async def test_dial_errors(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a = await start_node(network, "a")
    with pytest.raises(ConnectError):
        await a.transport.dial("memory://nobody")
    for bad in ("tcp://a", "memory://", "memory://a/b"):
        with pytest.raises(ConfigError):
            await a.transport.dial(bad)
    dialer = MemoryTransport(network, "dialer", listen=False)
    await dialer.start(a.handler)
    assert dialer.listen_addresses == []
    await dialer.stop()
    with pytest.raises(ConnectError):
        await dialer.dial("memory://a")


async def test_listener_names_are_unique_until_stop(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a = await start_node(network, "a")
    second = MemoryTransport(network, "a")
    with pytest.raises(ConfigError):
        await second.start(a.handler)
    with pytest.raises(ConfigError):
        await a.transport.start(a.handler)
    await a.stop()
    again = await start_node(network, "a")
    assert again.transport.listen_addresses == ["memory://a"]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        MemoryNetwork(queue_frames=0)
    with pytest.raises(ConfigError):
        MemoryTransport(MemoryNetwork(), "has/slash")
    for bad in (
        {"drop": 1.5},
        {"duplicate": -0.1},
        {"delay": (0.2, 0.1)},
        {"bandwidth": 0.0},
    ):
        with pytest.raises(ConfigError):
            LinkFaults(**bad)


async def test_partition_cuts_and_refuses_until_heal(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a, b, c = [await start_node(network, name) for name in "abc"]
    ab, ba = await a.dial(b)
    ac, ca = await a.dial(c)
    await send_all(ab, [b"lost in the cut"])
    waiting = asyncio.create_task(ab.recv())
    await asyncio.sleep(0)
    network.partition(["a"], ["b"])
    for end in (ab, ba):
        with pytest.raises(ChannelClosed):
            await end.send(b"x")
        with pytest.raises(ChannelClosed):
            await end.recv()
    with pytest.raises(ChannelClosed):
        async with asyncio.timeout(WAIT_S):
            await waiting
    with pytest.raises(ConnectError):
        await a.transport.dial("memory://b")
    with pytest.raises(ConnectError):
        await b.transport.dial("memory://a")
    await send_all(ac, [b"still fine"])
    assert await recv_n(ca, 1) == [b"still fine"]
    network.heal()
    ab2, ba2 = await a.dial(b)
    await send_all(ab2, [b"healed"])
    assert await recv_n(ba2, 1) == [b"healed"]


async def test_cut_breaks_open_channels_once(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a, b = await start_node(network, "a"), await start_node(network, "b")
    ab, ba = await a.dial(b)
    await send_all(ab, [b"queued, then lost"])
    network.cut("b", "a")
    with pytest.raises(ChannelClosed):
        await ba.recv()
    with pytest.raises(ChannelClosed):
        await ab.send(b"x")
    ab2, ba2 = await a.dial(b)
    await send_all(ba2, [b"new channel"])
    assert await recv_n(ab2, 1) == [b"new channel"]


async def transfer(out: Channel, inb: Channel, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` on ``out`` then close it; return all ``inb`` received."""

    async def send_then_close() -> None:
        await send_all(out, frames)
        await out.close()

    received, _ = await asyncio.gather(recv_until_closed(inb), send_then_close())
    return received


async def exchange(
    start_node: StartNode, network: MemoryNetwork, faults: LinkFaults, frames: list[bytes]
) -> list[bytes]:
    """Start nodes a and b, put ``faults`` on a -> b, and transfer ``frames``."""
    a, b = await start_node(network, "a"), await start_node(network, "b")
    network.set_faults("a", "b", faults, both_ways=False)
    out, inb = await a.dial(b)
    return await transfer(out, inb, frames)


async def test_drop_everything(start_node: StartNode) -> None:
    network = MemoryNetwork()
    assert await exchange(start_node, network, LinkFaults(drop=1.0), numbered(5)) == []
    stats = network.stats()[("a", "b")]
    assert (stats.frames_sent, stats.frames_dropped, stats.frames_delivered) == (5, 5, 0)


async def test_duplicate_everything(start_node: StartNode) -> None:
    network = MemoryNetwork()
    received = await exchange(start_node, network, LinkFaults(duplicate=1.0), [b"x", b"y", b"z"])
    assert received == [b"x", b"x", b"y", b"y", b"z", b"z"]
    assert network.stats()[("a", "b")].frames_duplicated == 3


async def test_reorder_swaps_neighbours(start_node: StartNode) -> None:
    network = MemoryNetwork()
    frames = numbered(5)
    received = await exchange(start_node, network, LinkFaults(reorder=1.0), frames)
    # The last frame is held for a successor that never comes; close flushes it.
    assert received == [frames[1], frames[0], frames[3], frames[2], frames[4]]


async def test_delay_keeps_order(start_node: StartNode) -> None:
    network = MemoryNetwork(seed=3)
    frames = numbered(10)
    faults = LinkFaults(delay=(0.001, 0.02))
    assert await exchange(start_node, network, faults, frames) == frames


async def test_delay_and_bandwidth_hold_frames_back(start_node: StartNode) -> None:
    network = MemoryNetwork()
    a, b = await start_node(network, "a"), await start_node(network, "b")
    network.set_faults("a", "b", LinkFaults(delay=(0.02, 0.02), bandwidth=100_000))
    out, inb = await a.dial(b)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    frames = [bytes([i]) * 1000 for i in range(4)]
    await send_all(out, frames)
    assert await recv_n(inb, 4) == frames
    # A lower bound only: the link never delivers before its own schedule.
    assert loop.time() - sent_at >= 0.02 + 4 * 1000 / 100_000
    network.clear_faults()
    await send_all(out, [b"clean"])
    assert await recv_n(inb, 1) == [b"clean"]


async def test_same_seed_same_delivery(start_node: StartNode) -> None:
    faults = LinkFaults(drop=0.3, duplicate=0.3, reorder=0.3)
    frames = numbered(60)
    runs: list[tuple[list[bytes], dict[tuple[str, str], LinkStats]]] = []
    for seed in (7, 7, 8):
        network = MemoryNetwork(seed=seed)
        received = await exchange(start_node, network, faults, frames)
        runs.append((received, network.stats()))
    assert runs[0] == runs[1]
    assert runs[0][0] != frames
    assert runs[0][0] != runs[2][0]


async def test_a_link_draws_the_same_whatever_other_links_do(start_node: StartNode) -> None:
    faults = LinkFaults(drop=0.3, duplicate=0.3, reorder=0.3)
    frames = numbered(40)
    alone = await exchange(start_node, MemoryNetwork(seed=5), faults, frames)
    network = MemoryNetwork(seed=5)
    c, d = await start_node(network, "c"), await start_node(network, "d")
    network.set_faults("c", "d", faults)
    cd, dc = await c.dial(d)
    noise = asyncio.create_task(transfer(cd, dc, numbered(40)))
    assert await exchange(start_node, network, faults, frames) == alone
    assert await noise != numbered(40)


async def test_stop_leaves_no_tasks_and_closes_channels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = asyncio.all_tasks()
    network = MemoryNetwork(queue_frames=2)
    listener = MemoryTransport(network, "echo", close_timeout=0.05)
    dialer = MemoryTransport(network, "client", listen=False)
    accepted: list[Channel] = []

    async def echo(channel: Channel) -> None:
        accepted.append(channel)
        if len(accepted) == 3:
            await asyncio.Event().wait()  # ignores the close: stop() must cancel it
        while True:
            await channel.send(await channel.recv())

    await listener.start(echo)
    await dialer.start(echo)
    network.set_faults("echo", "client", LinkFaults(delay=(0.01, 0.05)))
    channels = [await dialer.dial("memory://echo") for _ in range(3)]
    await send_all(channels[0], [b"ping"])
    blocked = asyncio.create_task(send_all(channels[1], numbered(10)))
    await asyncio.sleep(0.01)
    await listener.stop()
    await listener.stop()
    for channel in channels:
        await recv_until_closed(channel)
        with pytest.raises(ChannelClosed):
            await channel.send(b"x")
    with pytest.raises(ChannelClosed):
        await blocked
    await dialer.stop()
    assert listener.listen_addresses == []
    assert asyncio.all_tasks() == before
    assert "did not return after stop(); cancelling it" in caplog.text
