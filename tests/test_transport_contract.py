"""The Transport/Channel contract, run against every transport on loopback.

Also home of the helpers the per-transport tests share: ``make_transport``,
``Loopback`` (a listening and a dialing transport with the accepted channels
handed to the test), ``tls_contexts`` (self-signed mutual TLS 1.3) and
``free_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peer.errors import ChannelClosed, ConnectError, FrameTooLarge
from transports.base import Channel, Transport
from transports.http_sse import HttpSseTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

KINDS = ["tcp", "ws", "http"]
WAIT = 10.0  # bound on every single wait; generous, never a speed assertion


def make_transport(kind: str, *, listen: bool = True, **options: Any) -> Transport:
    """A transport of ``kind`` on 127.0.0.1, port 0, short close timeouts."""
    options.setdefault("close_timeout", 2.0)
    if kind == "tcp":
        return TcpTransport(listen=listen, **options)
    if kind == "ws":
        return WebSocketTransport(listen=listen, **options)
    return HttpSseTransport(listen=listen, **options)


class Accepted:
    """An inbound channel handed to the test; its handler returns on release()."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.released = asyncio.Event()


class Loopback:
    """A listening transport and a dialing transport of the same kind.

    ``pair()`` dials and returns ``(dialed, accepted)``. On exit every handler
    is released, both transports stop, and no task they created may remain.
    """

    def __init__(
        self, kind: str, server: dict[str, Any] | None = None, client: dict[str, Any] | None = None
    ) -> None:
        self.server = make_transport(kind, **(server or {}))
        self.client = make_transport(kind, listen=False, **(client or {}))
        self.accepted: asyncio.Queue[Accepted] = asyncio.Queue()
        self._all: list[Accepted] = []

    async def _handle(self, channel: Channel) -> None:
        entry = Accepted(channel)
        self._all.append(entry)
        await self.accepted.put(entry)
        await entry.released.wait()

    async def _refuse(self, channel: Channel) -> None:
        raise AssertionError("a dial-only transport accepted a channel")

    async def __aenter__(self) -> Loopback:
        self._tasks_before = asyncio.all_tasks()
        await self.server.start(self._handle)
        await self.client.start(self._refuse)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
        await self.client.stop()
        await self.server.stop()
        await assert_no_tasks_left(self._tasks_before)

    @property
    def address(self) -> str:
        return self.server.listen_addresses[0]

    async def pair(self) -> tuple[Channel, Channel]:
        dialed = await asyncio.wait_for(self.client.dial(self.address), WAIT)
        accepted = await asyncio.wait_for(self.accepted.get(), WAIT)
        return dialed, accepted.channel

    def release(self) -> None:
        for entry in self._all:
            entry.released.set()


async def assert_no_tasks_left(before: set[asyncio.Task[Any]]) -> None:
    """Fail if a task started after ``before`` is still pending (other than this one)."""
    await asyncio.sleep(0)  # let tasks that finished in stop() run their done callbacks
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, f"tasks left behind: {left}"


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_address(kind: str) -> str:
    port = free_port()
    return {
        "tcp": f"tcp://127.0.0.1:{port}",
        "ws": f"ws://127.0.0.1:{port}/crpeer",
        "http": f"http://127.0.0.1:{port}/crpeer",
    }[kind]


def self_signed(directory: Path, name: str) -> tuple[bytes, Path, Path]:
    """A self-signed EC P-256 certificate: (DER, cert PEM path, key PEM path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert.public_bytes(serialization.Encoding.DER), cert_path, key_path


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, bytes, bytes]:
    """Mutual TLS 1.3: (server context, client context, server DER, client DER).

    Each side trusts exactly the other's self-signed certificate.
    """
    server_der, server_crt, server_key = self_signed(directory, "server")
    client_der, client_crt, client_key = self_signed(directory, "client")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for context, (crt, key), trusted in (
        (server, (server_crt, server_key), client_der),
        (client, (client_crt, client_key), server_der),
    ):
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=trusted)
        context.load_cert_chain(crt, key)
    return server, client, server_der, client_der


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
    await transport.start(_never)
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


async def _never(channel: Channel) -> None:
    raise AssertionError("unexpected inbound channel")
