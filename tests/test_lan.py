"""LanTransport: the pure dial decisions, and two transports meeting on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets

import pytest

from peer.errors import ChannelClosed, ConfigError
from tests.support import wait_for
from tests.test_mdns import LOOPBACK, WAIT_S, loopback_multicast  # noqa: F401 (fixture)
from transports.base import Channel
from transports.lan import LanTransport, choose_address, should_dial, tcp_address
from transports.mdns import IpInterface

LOCAL: list[IpInterface] = [
    ipaddress.ip_interface("127.0.0.1/8"),
    ipaddress.ip_interface("192.168.1.10/24"),
    ipaddress.ip_interface("fd00:1::10/64"),
]


def test_should_dial_is_a_deterministic_tie_break() -> None:
    assert should_dial("aaa", "bbb")
    assert not should_dial("bbb", "aaa")
    assert not should_dial("aaa", "aaa"), "never dial ourselves"
    ids = ["node10", "node2", "Z", "a", "node1"]
    for x in ids:
        for y in ids:
            if x != y:
                assert should_dial(x, y) != should_dial(y, x), "exactly one side dials"


@pytest.mark.parametrize(
    ("advertised", "expected"),
    [
        (["10.9.9.9", "192.168.1.20"], "192.168.1.20"),  # our subnet beats routed
        (["127.0.0.1", "10.9.9.9"], "10.9.9.9"),  # loopback only as a last resort
        (["127.0.0.1"], "127.0.0.1"),  # same-host tests
        (["fd00:1::20", "10.9.9.9"], "10.9.9.9"),  # IPv4 first
        (["2001:db8::1", "fd00:1::20"], "fd00:1::20"),  # IPv6 on our link beats routed IPv6
        (["169.254.3.4", "fe80::1%2", "2001:db8::1"], "2001:db8::1"),
        (["169.254.3.4", "fe80::1%2"], "169.254.3.4"),
        (["::1", "127.0.0.1"], "127.0.0.1"),
        (["192.168.1.20", "192.168.1.21"], "192.168.1.20"),  # ties keep advertised order
        (["not-an-ip", "0.0.0.0", "224.0.0.251", "10.1.1.1"], "10.1.1.1"),
        (["not-an-ip", "0.0.0.0"], None),
        ([], None),
    ],
)
def test_choose_address(advertised: list[str], expected: str | None) -> None:
    assert choose_address(advertised, LOCAL) == expected


def test_loopback_interface_does_not_make_127_slash_8_our_subnet() -> None:
    assert choose_address(["127.0.0.2", "10.9.9.9"], LOCAL) == "10.9.9.9"


def test_tcp_address() -> None:
    assert tcp_address("10.0.0.1", 7) == "tcp://10.0.0.1:7"
    assert tcp_address("fe80::1%2", 7) == "tcp://[fe80::1%2]:7"


async def _echo(channel: Channel) -> None:
    try:
        while True:
            await channel.send(await channel.recv())
    except ChannelClosed:
        pass
    finally:
        await channel.close()


@pytest.mark.usefixtures("loopback_multicast")
async def test_two_lan_transports_meet_on_loopback() -> None:
    service_type = f"_crp{secrets.token_hex(4)}._tcp.local."
    small, large = (
        LanTransport(peer_id, host="127.0.0.1", interfaces=LOOPBACK, service_type=service_type)
        for peer_id in ("peer-a", "peer-b")
    )
    to_dial: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    small.set_discovery_handler(lambda address, peer_id: to_dial.put_nowait((address, peer_id)))
    wrongly_told: list[str] = []
    large.set_discovery_handler(lambda address, peer_id: wrongly_told.append(peer_id))
    try:
        await asyncio.gather(small.start(_echo), large.start(_echo))
        address, peer_id = await asyncio.wait_for(to_dial.get(), WAIT_S)
        assert (address, peer_id) == (large.listen_addresses[0], "peer-b")
        assert address.startswith("tcp://127.0.0.1:")
        channel = await small.dial(address)
        try:
            await channel.send(b"ping")
            assert await asyncio.wait_for(channel.recv(), WAIT_S) == b"ping"
        finally:
            await channel.close()
        await wait_for(lambda: "peer-a" in large.discovered, within=WAIT_S, interval=0.05)
        assert set(large.discovered) == {"peer-a"}
        assert set(small.discovered) == {"peer-b"}
    finally:
        await asyncio.gather(small.stop(), large.stop())
    assert to_dial.empty()
    assert wrongly_told == [], "the larger peer id must not be told to dial"


async def test_bad_interface_list_is_refused_at_start() -> None:
    lan = LanTransport("peer-a", host="127.0.0.1", interfaces=["eth0"])
    try:
        with pytest.raises(ConfigError):
            await lan.start(_echo)
    finally:
        await lan.stop()
    assert lan.listen_addresses == []


def test_host_must_be_an_ip_or_wildcard() -> None:
    with pytest.raises(ConfigError):
        LanTransport("peer-a", host="localhost")
