"""Mutual TLS 1.3 between identities, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from peer.errors import UntrustedPeerError
from peer.identity import Identity, peer_id_from_certificate, universal_issuer_certificate
from peer.trust import TrustStore

GREETING = b"hello from the server"


@dataclass
class Server:
    port: int
    client_ids: list[str] = field(default_factory=list)
    """Peer ids of the clients whose TLS handshake completed, in order."""


@contextlib.asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """A loopback server that greets every client that completes the handshake."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        server.client_ids.append(peer_id_from_certificate(ssl_object.getpeercert(True)))
        writer.write(GREETING)
        await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    listener = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=context)
    server = Server(listener.sockets[0].getsockname()[1])
    async with listener:
        yield server


async def connect(port: int, context: ssl.SSLContext) -> tuple[str, bytes]:
    """The server's peer id and what it sent; raises ssl.SSLError or
    ConnectionError when the connection is refused."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            server_id = peer_id_from_certificate(ssl_object.getpeercert(True))
            received = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not received:
        raise ConnectionError("the server closed without a greeting")
    return server_id, received


async def assert_refused(port: int, context: ssl.SSLContext) -> None:
    # In TLS 1.3 the client finishes its handshake before the server checks
    # the client's certificate, so the refusal may show only on the first read.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(port, context)


def foreign_identity(folder: Path) -> tuple[Path, Path]:
    """A certificate and key issued by some CA other than the universal issuer."""
    ca_key, leaf_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crpeer universal issuer v1")])
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]))
        .issuer_name(ca_name)  # same name as the real issuer, different key
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, None)
    )
    certificate_file, key_file = folder / "foreign.pem", folder / "foreign.key"
    certificate_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_file, key_file


def bare_client_context() -> ssl.SSLContext:
    """A client that trusts the universal issuer but presents no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=universal_issuer_certificate())
    return context


@pytest.fixture
def alice(tmp_path: Path) -> Identity:
    return Identity.load_or_create(tmp_path / "alice.key")


@pytest.fixture
def bob(tmp_path: Path) -> Identity:
    return Identity.load_or_create(tmp_path / "bob.key")


async def test_mutual_handshake_tells_each_side_the_other_peer_id(
    alice: Identity, bob: Identity
) -> None:
    async with tls_server(alice.server_ssl_context()) as server:
        server_id, received = await connect(server.port, bob.client_ssl_context())
    assert received == GREETING
    assert server_id == alice.peer_id
    assert server.client_ids == [bob.peer_id]


async def test_client_without_certificate_is_refused(alice: Identity) -> None:
    async with tls_server(alice.server_ssl_context()) as server:
        await assert_refused(server.port, bare_client_context())
    assert server.client_ids == []


async def test_client_certificate_from_another_ca_is_refused(
    alice: Identity, tmp_path: Path
) -> None:
    context = bare_client_context()
    context.load_cert_chain(*foreign_identity(tmp_path))
    async with tls_server(alice.server_ssl_context()) as server:
        await assert_refused(server.port, context)
    assert server.client_ids == []


async def test_server_certificate_from_another_ca_is_refused(
    alice: Identity, tmp_path: Path
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*foreign_identity(tmp_path))
    async with tls_server(context) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(server.port, alice.client_ssl_context())


async def test_tls_1_2_is_refused(alice: Identity, bob: Identity) -> None:
    context = bob.client_ssl_context()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_server(alice.server_ssl_context()) as server:
        await assert_refused(server.port, context)
    assert server.client_ids == []


async def test_man_in_the_middle_shows_up_as_a_different_peer_id(
    alice: Identity, bob: Identity, tmp_path: Path
) -> None:
    bob_trust = TrustStore.load(tmp_path / "bob.trust.json")
    bob_trust.add(alice.peer_id, "alice")
    mallory = Identity.load_or_create(tmp_path / "mallory.key")
    async with tls_server(mallory.server_ssl_context()) as server:
        server_id, _ = await connect(server.port, bob.client_ssl_context())
    assert server_id == mallory.peer_id != alice.peer_id
    with pytest.raises(UntrustedPeerError):
        bob_trust.check(server_id)


def test_a_certificate_forged_for_someone_elses_key_is_useless(
    alice: Identity, tmp_path: Path
) -> None:
    # Anyone can sign with the public issuer key, even a certificate for
    # Alice's public key, but TLS then needs Alice's private key to use it.
    issuer_seed = hashes.Hash(hashes.SHA256())
    issuer_seed.update(b"crpeer universal issuer v1")
    issuer_key = Ed25519PrivateKey.from_private_bytes(issuer_seed.finalize())
    issuer = x509.load_der_x509_certificate(universal_issuer_certificate())
    now = dt.datetime.now(dt.UTC)
    alice_public = x509.load_der_x509_certificate(alice.certificate_der).public_key()
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, alice.peer_id)]))
        .issuer_name(issuer.subject)
        .public_key(alice_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(issuer_key, None)
    )
    forged.verify_directly_issued_by(issuer)
    assert peer_id_from_certificate(forged.public_bytes(serialization.Encoding.DER)) == (
        alice.peer_id
    )
    mallory = Identity.load_or_create(tmp_path / "mallory.key")
    forged_file = tmp_path / "forged.pem"
    forged_file.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ssl.SSLError, match=r"KEY_VALUES_MISMATCH"):
        context.load_cert_chain(forged_file, mallory.key_path)
