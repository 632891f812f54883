"""Helpers the transport tests share.

``make_transport`` and ``Loopback`` (a listening and a dialing transport of
one kind, with the accepted channels handed to the test); raw sockets to poke
a listener by hand (``raw_connection``, ``read_until_closed``);
``tls_contexts`` (self-signed mutual TLS 1.3); ``free_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from transports.base import Channel, Transport
from transports.http_sse import HttpSseTransport
from transports.memory import MemoryNetwork, MemoryTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

KINDS = ["tcp", "ws", "http", "memory"]
"""Every transport kind ``make_transport`` builds; all but ``memory`` use sockets."""
WAIT = 10.0  # bound on every single wait; generous, never a speed assertion


def make_transport(
    kind: str, *, listen: bool = True, network: MemoryNetwork | None = None, **options: Any
) -> Transport:
    """A transport of ``kind`` with short close timeouts: on 127.0.0.1, port 0,
    or for ``memory`` named ``server`` (``client`` when not listening) on
    ``network`` (a new one if ``None``)."""
    options.setdefault("close_timeout", 2.0)
    if kind == "tcp":
        return TcpTransport(listen=listen, **options)
    if kind == "ws":
        return WebSocketTransport(listen=listen, **options)
    if kind == "http":
        return HttpSseTransport(listen=listen, **options)
    if kind == "memory":
        name = "server" if listen else "client"
        return MemoryTransport(network or MemoryNetwork(), name, listen=listen, **options)
    raise ValueError(f"unknown transport kind {kind!r}")


class Accepted:
    """An inbound channel handed to the test; its handler returns on release()."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.released = asyncio.Event()


class Loopback:
    """A listening transport and a dialing transport of the same kind (on one
    memory network for ``memory``).

    ``pair()`` dials and returns ``(dialed, accepted)``, both marked
    authenticated (as a Peer does after authentication) unless told not to.
    On exit every handler is released, both transports stop, and no task
    they created may remain.
    """

    def __init__(
        self, kind: str, server: dict[str, Any] | None = None, client: dict[str, Any] | None = None
    ) -> None:
        network = MemoryNetwork() if kind == "memory" else None
        self.server = make_transport(kind, network=network, **(server or {}))
        self.client = make_transport(kind, listen=False, network=network, **(client or {}))
        self.accepted: asyncio.Queue[Accepted] = asyncio.Queue()
        self._all: list[Accepted] = []

    async def _handle(self, channel: Channel) -> None:
        entry = Accepted(channel)
        self._all.append(entry)
        await self.accepted.put(entry)
        await entry.released.wait()

    async def __aenter__(self) -> Loopback:
        self._tasks_before = asyncio.all_tasks()
        await self.server.start(self._handle)
        await self.client.start(refuse_channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
        await self.client.stop()
        await self.server.stop()
        await assert_no_tasks_left(self._tasks_before)

    @property
    def address(self) -> str:
        return self.server.listen_addresses[0]

    async def pair(self, *, authenticated: bool = True) -> tuple[Channel, Channel]:
        dialed = await asyncio.wait_for(self.client.dial(self.address), WAIT)
        accepted = await asyncio.wait_for(self.accepted.get(), WAIT)
        if authenticated:
            dialed.authenticated()
            accepted.channel.authenticated()
        return dialed, accepted.channel

    def release(self) -> None:
        for entry in self._all:
            entry.released.set()


async def refuse_channel(channel: Channel) -> None:
    """A channel handler for transports that should accept nothing."""
    raise AssertionError("unexpected inbound channel")


async def assert_still_serving(loop: Loopback) -> None:
    """A fresh pair of ``loop`` exchanges a frame each way."""
    dialed, accepted = await loop.pair()
    await dialed.send(b"ping")
    assert await asyncio.wait_for(accepted.recv(), WAIT) == b"ping"
    await accepted.send(b"pong")
    assert await asyncio.wait_for(dialed.recv(), WAIT) == b"pong"
    await dialed.close()


async def assert_no_tasks_left(before: set[asyncio.Task[Any]]) -> None:
    """Fail if a task started after ``before`` is still pending (other than this one)."""
    await asyncio.sleep(0)  # let tasks that finished in stop() run their done callbacks
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, f"tasks left behind: {left}"


async def raw_connection(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the host and port of a socket transport's ``address``."""
    parts = urlsplit(address)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Everything the server sends on a raw connection until it closes it
    (EOF or reset); then closes our end. Fails if the server keeps it open."""
    received = b""
    try:
        for _ in range(1000):
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    raise AssertionError("the server kept the connection open")


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_address(kind: str) -> str:
    """An address of ``kind`` where nobody listens."""
    if kind == "memory":
        return "memory://nobody"
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
