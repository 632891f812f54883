"""MdnsDiscovery with real multicast DNS on the loopback interface.

Every test browses its own random service type, so parallel runs and other
mDNS users on this host cannot see or disturb each other.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from zeroconf import IPVersion
from zeroconf._dns import DNSPointer
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

from peer.errors import ConfigError
from tests.support import scaled, wait_for
from transports.mdns import DiscoveredPeer, MdnsDiscovery, peer_from_properties

LOOPBACK = ["127.0.0.1"]
WAIT_S = 10.0


def _multicast_on_loopback_works() -> bool:
    """Send one multicast datagram over lo to a random port and see it arrive."""
    group, token = "224.0.0.251", secrets.token_bytes(16)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("", 0))
        mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        try:
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, struct.pack("b", 1))
            tx.sendto(token, (group, rx.getsockname()[1]))
        except OSError:
            return False
        rx.settimeout(0.5)
        try:
            while True:
                if rx.recv(64) == token:
                    return True
        except OSError:
            return False


def _lo_multicast_flag() -> bool:
    flags = int(open("/sys/class/net/lo/flags").read(), 16)  # noqa: SIM115
    return bool(flags & 0x1000)  # IFF_MULTICAST


@pytest.fixture(scope="module")
def loopback_multicast() -> Iterator[None]:
    """Make sure multicast works on lo; turn the lo MULTICAST flag on only if needed (root)."""
    if _multicast_on_loopback_works():
        yield
        return
    if os.geteuid() != 0 or _lo_multicast_flag():
        pytest.skip("multicast does not work on lo (and `ip link set lo multicast on` needs root)")
    subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
    try:
        if not _multicast_on_loopback_works():
            pytest.skip("multicast does not work on lo even with the MULTICAST flag")
        yield
    finally:
        subprocess.run(["ip", "link", "set", "lo", "multicast", "off"], check=True)


@pytest.fixture
def service_type() -> str:
    return f"_crp{secrets.token_hex(4)}._tcp.local."


class Seen:
    """Records what a discovery reported; ``fail`` makes ``on_found`` raise after recording."""

    def __init__(self, *, fail: bool = False) -> None:
        self.found: list[DiscoveredPeer] = []
        self.lost: list[str] = []
        self._fail = fail
        self._changed = asyncio.Event()

    def on_found(self, peer: DiscoveredPeer) -> None:
        self.found.append(peer)
        self._changed.set()
        if self._fail:
            raise RuntimeError("callback bug")

    def on_lost(self, peer_id: str) -> None:
        self.lost.append(peer_id)
        self._changed.set()

    def ids(self) -> set[str]:
        return {p.peer_id for p in self.found}

    async def until(self, condition: Callable[[], bool], within: float = WAIT_S) -> None:
        """Wait until ``condition`` holds; fail the test after ``scaled(within)`` seconds."""
        try:
            async with asyncio.timeout(scaled(within)):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"condition not met within {scaled(within):g} s") from None


@pytest.fixture
async def raw_zc(loopback_multicast: None) -> AsyncIterator[AsyncZeroconf]:
    """A bare zeroconf on lo, for adverts MdnsDiscovery would never send."""
    aiozc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    yield aiozc
    await aiozc.async_close()


async def register_raw(
    aiozc: AsyncZeroconf, service_type: str, name: str, port: int, txt: dict[str, str]
) -> AsyncServiceInfo:
    info = AsyncServiceInfo(
        service_type,
        f"{name}.{service_type}",
        port=port,
        properties=txt,
        parsed_addresses=LOOPBACK,
    )
    await (await aiozc.async_register_service(info))
    return info


def hold_name_quietly(
    aiozc: AsyncZeroconf, service_type: str, name: str, port: int, txt: dict[str, str]
) -> None:
    """Answer for `name` without announcing it first.

    A responder answers a probe by unicast to port 5353 when it multicast the
    record lately (RFC 6762 5.4). On one host every responder shares that
    port, so the kernel may hand the answer to any of them; a record that was
    never announced is defended by multicast, which every responder hears.
    """
    info = AsyncServiceInfo(
        service_type,
        f"{name}.{service_type}",
        port=port,
        properties=txt,
        parsed_addresses=LOOPBACK,
        server=f"{name}-host.local.",
    )
    aiozc.zeroconf.registry.async_add(info)


async def test_two_peers_find_each_other_and_notice_goodbye(
    loopback_multicast: None, service_type: str
) -> None:
    seen_a, seen_b = Seen(), Seen()
    a = MdnsDiscovery("alpha", 4101, service_type=service_type, interfaces=LOOPBACK)
    b = MdnsDiscovery("bravo", 4102, service_type=service_type, interfaces=LOOPBACK)
    try:
        await asyncio.gather(
            a.start(seen_a.on_found, seen_a.on_lost), b.start(seen_b.on_found, seen_b.on_lost)
        )
        await seen_a.until(lambda: "bravo" in seen_a.ids())
        await seen_b.until(lambda: "alpha" in seen_b.ids())
        assert seen_a.found[-1] == DiscoveredPeer("bravo", ("127.0.0.1",), 4102, 1)
        assert seen_b.found[-1] == DiscoveredPeer("alpha", ("127.0.0.1",), 4101, 1)
        await b.stop()
        await seen_a.until(lambda: seen_a.lost == ["bravo"])
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert seen_a.ids() == {"bravo"}, "a peer must never report itself"
    assert seen_b.ids() == {"alpha"}
    assert seen_b.lost == []


async def test_bad_adverts_are_ignored(raw_zc: AsyncZeroconf, service_type: str) -> None:
    seen = Seen()
    a = MdnsDiscovery("alpha", 4201, service_type=service_type, interfaces=LOOPBACK)
    bad = {
        "future": {"id": "future", "pv": "99"},
        "noid": {"pv": "1"},
        "nopv": {"id": "nopv"},
        "textpv": {"id": "textpv", "pv": "one"},
        "emptyid": {"id": "", "pv": "1"},
    }
    try:
        await a.start(seen.on_found, seen.on_lost)
        await asyncio.gather(
            *(register_raw(raw_zc, service_type, name, 4202, txt) for name, txt in bad.items()),
            register_raw(raw_zc, service_type, "good", 4203, {"id": "good", "pv": "1"}),
        )
        await seen.until(lambda: "good" in seen.ids())
        # A good advert registered after all of them: once it is seen, the
        # bad ones, older, had their chance to slip through.
        await register_raw(raw_zc, service_type, "later", 4204, {"id": "later", "pv": "1"})
        await seen.until(lambda: "later" in seen.ids())
    finally:
        await a.stop()
    assert seen.ids() == {"good", "later"}


async def test_pointer_to_a_foreign_name_is_ignored(
    raw_zc: AsyncZeroconf, service_type: str
) -> None:
    seen = Seen()
    a = MdnsDiscovery("alpha", 4251, service_type=service_type, interfaces=LOOPBACK)
    try:
        await a.start(seen.on_found, seen.on_lost)
        hostile = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for alias in ("evil._other._tcp.local.", "no-type-at-all.", f"x{service_type}"):
            pointer = DNSPointer(service_type, _TYPE_PTR, _CLASS_IN, 120, alias)
            hostile.add_answer_at_time(pointer, 0)
        raw_zc.zeroconf.async_send(hostile)
        await register_raw(raw_zc, service_type, "good", 4252, {"id": "good", "pv": "1"})
        await seen.until(lambda: "good" in seen.ids())
    finally:
        await a.stop()
    assert seen.ids() == {"good"}


async def test_cancelled_start_leaves_nothing_running(
    loopback_multicast: None, service_type: str
) -> None:
    a = MdnsDiscovery("alpha", 4261, service_type=service_type, interfaces=LOOPBACK)
    starting = asyncio.create_task(a.start(lambda _p: None, lambda _i: None))
    await asyncio.sleep(0.1)  # inside the ~1 s of name probing
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert a.instance_name is None
    with pytest.raises(ConfigError):
        await a.start(lambda _p: None, lambda _i: None)


async def test_port_change_reports_the_peer_again(raw_zc: AsyncZeroconf, service_type: str) -> None:
    seen = Seen()
    a = MdnsDiscovery("alpha", 4301, service_type=service_type, interfaces=LOOPBACK)
    try:
        await a.start(seen.on_found, seen.on_lost)
        info = await register_raw(raw_zc, service_type, "mover", 4302, {"id": "mover", "pv": "1"})
        await seen.until(lambda: [p.port for p in seen.found] == [4302])
        info.port = 4303
        await (await raw_zc.async_update_service(info))
        await seen.until(lambda: [p.port for p in seen.found] == [4302, 4303])
    finally:
        await a.stop()
    assert seen.found[-1] == DiscoveredPeer("mover", ("127.0.0.1",), 4303, 1)
    assert seen.lost == []


async def test_name_clash_renames_and_stays_findable(
    raw_zc: AsyncZeroconf, service_type: str
) -> None:
    hold_name_quietly(raw_zc, service_type, "alpha", 4401, {"id": "impostor", "pv": "1"})
    seen_a, seen_b = Seen(), Seen()
    a = MdnsDiscovery("alpha", 4402, service_type=service_type, interfaces=LOOPBACK)
    b = MdnsDiscovery("bravo", 4403, service_type=service_type, interfaces=LOOPBACK)
    try:
        await a.start(seen_a.on_found, seen_a.on_lost)
        assert a.instance_name is not None
        assert a.instance_name != f"alpha.{service_type}"
        await b.start(seen_b.on_found, seen_b.on_lost)
        await seen_b.until(lambda: {"alpha", "impostor"} <= seen_b.ids())
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert {p.port for p in seen_b.found if p.peer_id == "alpha"} == {4402}
    assert "alpha" not in seen_a.ids()


async def test_failing_callback_does_not_stop_discovery(
    loopback_multicast: None, service_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen_a, seen_b = Seen(fail=True), Seen()
    a = MdnsDiscovery("alpha", 4501, service_type=service_type, interfaces=LOOPBACK)
    b = MdnsDiscovery("bravo", 4502, service_type=service_type, interfaces=LOOPBACK)
    try:
        await a.start(seen_a.on_found, seen_a.on_lost)
        await b.start(seen_b.on_found, seen_b.on_lost)
        await seen_a.until(lambda: seen_a.ids() == {"bravo"})
        await seen_b.until(lambda: "alpha" in seen_b.ids())
        await b.stop()
        await seen_a.until(lambda: seen_a.lost == ["bravo"])
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert "callback bug" in caplog.text


async def test_a_moved_peer_is_reported_at_its_new_address_only(
    loopback_multicast: None, service_type: str
) -> None:
    """The advertiser's address source changes (as a laptop's network does):
    the other side reports it again with the new address, and not the old."""
    current = ["127.0.0.1"]
    polls = 0

    def addresses() -> list[str]:
        nonlocal polls
        polls += 1
        return current

    seen_a, seen_b = Seen(), Seen()
    a = MdnsDiscovery(
        "alpha",
        4701,
        service_type=service_type,
        interfaces=LOOPBACK,
        address_source=addresses,
        watch_interval=0.05,
    )
    b = MdnsDiscovery("bravo", 4702, service_type=service_type, interfaces=LOOPBACK)
    try:
        await asyncio.gather(
            a.start(seen_a.on_found, seen_a.on_lost), b.start(seen_b.on_found, seen_b.on_lost)
        )
        await seen_b.until(lambda: "alpha" in seen_b.ids())
        assert seen_b.found[-1].addresses == ("127.0.0.1",)
        # A record the new advert supersedes is flushed only if it was last
        # heard over a second ago (RFC 6762 10.2): let the startup announcements end.
        await asyncio.sleep(1.5)
        current = ["127.0.0.2", "127.0.0.3"]
        await seen_b.until(lambda: seen_b.found[-1].addresses != ("127.0.0.1",))
        assert sorted(seen_b.found[-1].addresses) == ["127.0.0.2", "127.0.0.3"]
        assert seen_b.found[-1].port == 4701
        await asyncio.sleep(1.5)
        current = []  # no address at all: the last advert stays
        before = polls
        await wait_for(lambda: polls >= before + 5)  # the watch saw it, several times
        current = ["127.0.0.4"]
        await seen_b.until(lambda: seen_b.found[-1].addresses == ("127.0.0.4",))
        assert a.advertised_addresses() == ["127.0.0.4"]
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert [sorted(p.addresses) for p in seen_b.found] == [
        ["127.0.0.1"],
        ["127.0.0.2", "127.0.0.3"],
        ["127.0.0.4"],
    ]
    assert seen_b.lost == [], "a move is an update, not a goodbye"


def test_peer_from_properties() -> None:
    accepted = {1}
    good: dict[bytes, bytes | None] = {b"id": b"p1", b"pv": b"1", b"extra": None}
    assert peer_from_properties(good, ["10.0.0.2"], 9, accepted) == DiscoveredPeer(
        "p1", ("10.0.0.2",), 9, 1
    )
    assert peer_from_properties(good, [], 9, accepted) is None
    assert peer_from_properties(good, ["10.0.0.2"], None, accepted) is None
    assert peer_from_properties(good, ["10.0.0.2"], 9, {2}) is None
    broken_adverts: list[dict[bytes, bytes | None]] = [
        {b"pv": b"1"},
        {b"id": b"p1"},
        {b"id": None, b"pv": b"1"},
        {b"id": b"\xff\xfe", b"pv": b"1"},
        {b"id": b"p1", b"pv": b"-1"},
        {b"id": b"p1", b"pv": b"\xd9\xa1"},
        {b"id": b"a\nb", b"pv": b"1"},
    ]
    for broken in broken_adverts:
        assert peer_from_properties(broken, ["10.0.0.2"], 9, accepted) is None, broken


@pytest.mark.parametrize(
    ("peer_id", "port", "kwargs"),
    [
        ("", 1, {}),
        ("x" * 300, 1, {}),
        ("tab\tid", 1, {}),
        ("p", 0, {}),
        ("p", 70000, {}),
        ("p", 1, {"service_type": "_crpeer._udp.local."}),
        ("p", 1, {"interfaces": "eth0"}),
        ("p", 1, {"interfaces": ["not-an-ip"]}),
        ("p", 1, {"addresses": ["localhost"]}),
        ("p", 1, {"addresses": ["127.0.0.1"], "address_source": lambda: ["127.0.0.1"]}),
        ("p", 1, {"watch_interval": 0}),
    ],
)
def test_bad_configuration_is_refused(peer_id: str, port: int, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MdnsDiscovery(peer_id, port, **kwargs)  # type: ignore[arg-type]


async def test_start_twice_is_refused(loopback_multicast: None, service_type: str) -> None:
    a = MdnsDiscovery("alpha", 4601, service_type=service_type, interfaces=LOOPBACK)
    try:
        await a.start(lambda _p: None, lambda _i: None)
        with pytest.raises(ConfigError):
            await a.start(lambda _p: None, lambda _i: None)
    finally:
        await a.stop()
        await a.stop()
