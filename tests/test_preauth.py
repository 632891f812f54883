"""What an unauthenticated connection may cost a listener, on every socket transport.

Real listeners on 127.0.0.1: frames before ``Channel.authenticated()`` are
capped (an oversized one is refused from its length, while the client is
still sending it); unauthenticated connections are bounded per address and
in total; a client that trickles its opening bytes (TLS handshake, HTTP
headers, a frame's body) is closed within the handshake deadline; and a
trusted peer keeps syncing while an attacker holds every place its address
has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from peer.errors import ChannelClosed, FrameTooLarge
from peer.messages import MAX_NAME_LENGTH, PROTOCOL_MIN, PROTOCOL_VERSION, Hello, encode
from peer.peer import Peer
from tests.support import Node, wait_for
from tests.transport_support import Loopback, make_transport, tls_contexts
from transports._admission import Reclaimer
from transports.base import PREAUTH_MAX_FRAME, Channel, PreAuthLimits, Transport
from transports.http_sse import HttpSseTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

SOCKETS = ["tcp", "ws", "http"]
BIG = 8 * 1024 * 1024
"""An attacker's first frame: the largest a node accepts after authentication."""


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def connect(
    address: str, *, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = host_port(address)
    async with asyncio.timeout(5.0):
        return await asyncio.open_connection(
            host, port, local_addr=(source, 0), ssl=tls, server_hostname="" if tls else None
        )


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True
    return True


async def send_paced(writer: asyncio.StreamWriter, closed: asyncio.Task[bool], total: int) -> int:
    """Send ``total`` zero bytes, 64 KiB every 5 ms, until the server closed;
    how many were sent (pacing keeps the kernel's buffers from hiding the close)."""
    sent = 0
    with contextlib.suppress(OSError):
        while sent < total and not closed.done() and not writer.is_closing():
            writer.write(bytes(min(65536, total - sent)))
            await writer.drain()
            sent += min(65536, total - sent)
            await asyncio.sleep(0.005)
    return sent


class Listener:
    """A listening transport whose handler only reads (as authentication does),
    recording how each channel ended."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.errors: list[Exception] = []

    async def handle(self, channel: Channel) -> None:
        try:
            while True:
                await channel.recv()
        except (ChannelClosed, FrameTooLarge) as exc:
            self.errors.append(exc)

    @property
    def address(self) -> str:
        return self.transport.listen_addresses[0]


@contextlib.asynccontextmanager
async def listening(kind: str, **options: Any) -> AsyncIterator[Listener]:
    listener = Listener(make_transport(kind, **options))
    await listener.transport.start(listener.handle)
    try:
        yield listener
    finally:
        await listener.transport.stop()


# -- frames before authentication -----------------------------------------------------


def test_the_preauth_cap_holds_the_largest_hello() -> None:
    # The remote may send its HELLO before this side has finished authenticating.
    hello = Hello(
        protocol_min=PROTOCOL_MIN,
        protocol_max=PROTOCOL_VERSION,
        site_id=bytes(16),
        name="\U0001f600" * MAX_NAME_LENGTH,
        schema_version=2**63 - 1,
        schema_fingerprint=bytes(32),
        max_batch_rows=10_000_000,
        window=2**31,
        nonce=2**63 - 1,
    )
    assert len(encode(hello, 2**32)) < PREAUTH_MAX_FRAME


@pytest.mark.parametrize("kind", SOCKETS)
@pytest.mark.parametrize("direction", ["up", "down"])
async def test_frames_are_capped_until_the_channel_is_authenticated(
    kind: str, direction: str
) -> None:
    async with Loopback(kind) as loop:
        dialed, accepted = await loop.pair(authenticated=False)
        sender, receiver = (dialed, accepted) if direction == "up" else (accepted, dialed)
        await sender.send(bytes(PREAUTH_MAX_FRAME))
        assert await asyncio.wait_for(receiver.recv(), 10) == bytes(PREAUTH_MAX_FRAME)
        receiver.authenticated()
        receiver.authenticated()  # idempotent
        await sender.send(bytes(PREAUTH_MAX_FRAME * 4))
        assert await asyncio.wait_for(receiver.recv(), 10) == bytes(PREAUTH_MAX_FRAME * 4)

        dialed, accepted = await loop.pair(authenticated=False)
        sender, receiver = (dialed, accepted) if direction == "up" else (accepted, dialed)
        with contextlib.suppress(ChannelClosed):  # HTTP learns of the refusal while sending
            await sender.send(bytes(PREAUTH_MAX_FRAME + 1))
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(receiver.recv(), 10)


async def oversized_opening(kind: str, address: str) -> int:
    """Announce an 8 MiB first frame on a raw connection and send it; the bytes
    of it sent before the listener closed the connection."""
    host, _ = host_port(address)
    reader, writer = await connect(address)
    try:
        if kind == "tcp":
            writer.write(struct.pack(">I", BIG))
        elif kind == "ws":
            upgrade = (
                f"GET /crpeer HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            writer.write(upgrade.encode())
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            writer.write(b"\x82\xff" + struct.pack(">Q", BIG) + bytes(4))
        else:
            writer.write(f"POST /crpeer/sessions HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            session = (await reader.readexactly(length)).split(b'"session": "')[1].split(b'"')[0]
            writer.write(
                f"POST /crpeer/sessions/{session.decode()}/frames HTTP/1.1\r\nHost: {host}\r\n"
                f"Crpeer-Seq: 1\r\nContent-Length: {BIG}\r\n\r\n".encode()
            )
        closed = asyncio.create_task(closed_within(reader, 10.0))
        sent = await send_paced(writer, closed, BIG)
        assert await closed, "the listener kept the connection open"
        return sent
    finally:
        drop(writer)


@pytest.mark.parametrize("kind", SOCKETS)
async def test_an_oversized_preauth_frame_is_refused_while_it_is_still_being_sent(
    kind: str,
) -> None:
    async with listening(kind) as listener:
        sent = await oversized_opening(kind, listener.address)
        assert sent < BIG // 4, f"{sent} bytes of the frame went in before the close"
        await wait_for(lambda: bool(listener.errors), 5.0)
        assert isinstance(listener.errors[0], FrameTooLarge)


# -- how many unauthenticated connections -------------------------------------------


async def hold_open(address: str, source: str, count: int) -> list[asyncio.StreamWriter]:
    """``count`` raw connections from ``source`` that the listener keeps open."""
    writers = []
    for _ in range(count):
        reader, writer = await connect(address, source=source)
        writers.append(writer)
        if await closed_within(reader, 0.3):
            for each in writers:
                drop(each)
            raise AssertionError(f"admitted connection {len(writers)} from {source} was closed")
    return writers


async def refused_at_once(address: str, source: str, tls: ssl.SSLContext | None = None) -> bool:
    """Whether a new connection from ``source`` is closed at once (well before
    the 10 s handshake deadline), during the TLS handshake or after it."""
    try:
        reader, writer = await connect(address, source=source, tls=tls)
    except (OSError, ssl.SSLError):
        return True
    try:
        return await closed_within(reader, 1.0)
    finally:
        drop(writer)


def drop(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()
    writer.close()


@pytest.mark.parametrize("kind", SOCKETS)
async def test_unauthenticated_connections_are_bounded_per_address_and_in_total(
    kind: str,
) -> None:
    limits = PreAuthLimits(total=5, per_address=3)
    held: list[asyncio.StreamWriter] = []
    async with listening(kind, preauth=limits) as listener:
        try:
            held += await hold_open(listener.address, "127.0.0.2", 3)
            assert await refused_at_once(listener.address, "127.0.0.2")
            held += await hold_open(listener.address, "127.0.0.3", 2)
            assert await refused_at_once(listener.address, "127.0.0.4")  # the total
            drop(held.pop(0))  # one place is free again, once the listener sees the close

            async def admitted() -> bool:
                try:
                    held.extend(await hold_open(listener.address, "127.0.0.4", 1))
                except AssertionError:  # refused: the close is not seen yet
                    return False
                return True

            await wait_for(admitted, within=5.0)
        finally:
            for writer in held:
                drop(writer)


@pytest.mark.parametrize("kind", SOCKETS)
async def test_an_authenticated_channel_gives_back_its_place(kind: str) -> None:
    limits = PreAuthLimits(total=8, per_address=2)
    async with Loopback(kind, {"preauth": limits}) as loop:
        for _ in range(4):  # more than the address has places: each gave its place back
            dialed, accepted = await loop.pair(authenticated=True)
            await dialed.send(b"hello")
            assert await asyncio.wait_for(accepted.recv(), 10) == b"hello"


def secure_transport(kind: str, node: Node, **options: Any) -> Transport:
    tls: dict[str, Any] = {
        "server_ssl": node.identity.server_ssl_context(),
        "client_ssl": node.identity.client_ssl_context(),
    }
    if kind == "tcp":
        return TcpTransport(**tls, **options)
    if kind == "ws":
        return WebSocketTransport(**tls, **options)
    return HttpSseTransport(**tls, **options)


@pytest.mark.parametrize("kind", SOCKETS)
async def test_a_trusted_peer_syncs_while_an_attacker_fills_its_address_places(
    kind: str, tmp_path: Path
) -> None:
    limits = PreAuthLimits(total=64, per_address=4)
    host, guest = Node(tmp_path / "host", "host"), Node(tmp_path / "guest", "guest")
    host.trust.add(guest.identity.peer_id)
    guest.trust.add(host.identity.peer_id)
    attacker = Node(tmp_path / "attacker", "attacker")
    attacker_tls = attacker.identity.client_ssl_context()
    attacker_tls.verify_mode = ssl.CERT_NONE
    held: list[asyncio.StreamWriter] = []
    server = host.peer(transports=[secure_transport(kind, host, preauth=limits)])
    try:
        async with server:
            address = server.transports[0].listen_addresses[0]
            for _ in range(4):
                held.append((await connect(address, source="127.0.0.2", tls=attacker_tls))[1])
            assert await refused_at_once(address, "127.0.0.2", attacker_tls)
            client: Peer = guest.peer(
                connect=[address], transports=[secure_transport(kind, guest, listen=False)]
            )
            async with client:
                await client.execute("INSERT INTO notes VALUES (1, 'through the flood')")
                await wait_for(lambda: host.rows() == [(1, "through the flood")], 20.0)
    finally:
        for writer in held:
            drop(writer)
        for node in (host, guest, attacker):
            node.close()


# -- handshake and header deadlines ---------------------------------------------------

DEADLINE = 1.0
OPENINGS = {
    "tls": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
    "ws-headers": b"GET /crpeer HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + b"X: y\r\n" * 9,
    "http-headers": b"POST /crpeer/sessions HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 9,
}


@pytest.mark.parametrize(
    ("kind", "phase"),
    [
        ("tcp", "tls"),
        ("ws", "tls"),
        ("http", "tls"),
        ("ws", "headers"),
        ("http", "headers"),
        ("http", "body"),
    ],
)
async def test_a_client_trickling_its_opening_is_closed_within_the_deadline(
    kind: str, phase: str, tmp_path: Path
) -> None:
    server_ssl, client_ssl, _, _ = tls_contexts(tmp_path)
    options: dict[str, Any] = {"handshake_timeout": DEADLINE, "server_ssl": server_ssl}
    async with listening(kind, **options) as listener:
        tls = None if phase == "tls" else client_ssl
        reader, writer = await connect(listener.address, tls=tls)
        if phase == "body":
            writer.write(b"POST /crpeer/sessions HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            session = (await reader.readexactly(length)).split(b'"session": "')[1].split(b'"')[0]
            writer.write(
                b"POST /crpeer/sessions/%s/frames HTTP/1.1\r\nHost: x\r\nCrpeer-Seq: 1\r\n"
                b"Content-Length: 1000\r\n\r\n" % session
            )
            opening = bytes(100)
        else:
            opening = OPENINGS[phase if phase == "tls" else f"{kind}-{phase}"]
        started = time.monotonic()
        closed = asyncio.create_task(closed_within(reader, 5 * DEADLINE))
        try:
            for byte in opening:  # one byte every 50 ms: 5 s for 100 bytes
                if closed.done():
                    break
                with contextlib.suppress(OSError):
                    writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            assert await closed, "the trickling client was kept"
            # The test is about the handshake deadline: bounded generously (3x), kept.
            assert time.monotonic() - started < 3 * DEADLINE
        finally:
            closed.cancel()
            drop(writer)


async def test_an_http_connection_still_counts_after_its_unauthenticated_session_ends() -> None:
    async with listening("http", preauth=PreAuthLimits(total=8, per_address=2)) as listener:
        reader, writer = await connect(listener.address, source="127.0.0.2")
        held = [writer]
        try:
            writer.write(b"POST /crpeer/sessions HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            session = (await reader.readexactly(length)).split(b'"session": "')[1].split(b'"')[0]
            writer.write(b"DELETE /crpeer/sessions/%s HTTP/1.1\r\nHost: x\r\n\r\n" % session)
            assert b" 204 " in await reader.readuntil(b"\r\n\r\n")
            held += await hold_open(listener.address, "127.0.0.2", 1)
            assert await refused_at_once(listener.address, "127.0.0.2")
        finally:
            for each in held:
                drop(each)


async def test_the_reclaimer_collects_after_a_burst_and_once_more_after_it_ends() -> None:
    reclaimer = Reclaimer(burst=3, delay=0.05)
    for _ in range(2):
        reclaimer.note_accepted()
    await asyncio.sleep(0.15)
    assert reclaimer.collections == 0  # no burst yet
    for _ in range(3):
        reclaimer.note_accepted()
    await asyncio.sleep(0.02)
    reclaimer.note_accepted()  # the burst goes on while a collection is pending
    await wait_for(lambda: reclaimer.collections == 2, 5.0)
    await asyncio.sleep(0.15)
    assert reclaimer.collections == 2  # and stops with it
