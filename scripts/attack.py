#!/usr/bin/env python3
"""Attack a live ``crpeer serve`` on loopback and say which defences held.

Run ``python scripts/attack.py`` from the repository. It creates a temporary
folder with a target database, its identity and trust store, starts ``crpeer
serve`` on 127.0.0.1 (TCP, WebSocket and HTTP/SSE listeners, all TLS), runs a
trusted peer in this process that keeps writing rows to it, and then plays
each case below as an attacker would. It prints one line per case, ``held``
or ``FAILED: reason``, and exits with status 1 if any case failed (2 if the
target could not be started). The whole run is bounded (about a minute and a
half).

Cases (``--case NAME`` runs only those named; repeatable):

* ``plaintext`` -- a plaintext frame to each TLS listener is refused.
* ``garbage`` -- random bytes to each listener close the connection.
* ``no-client-cert`` -- a TLS client without a certificate gets no session.
* ``self-signed`` -- a self-signed certificate (not from the crpeer issuer)
  gets no session.
* ``oversized-preauth`` -- a self-minted identity announces an 8 MiB frame
  before authenticating: the target closes the connection while the
  attacker is still sending it.
* ``unauthenticated-connections`` -- more unauthenticated connections from
  one address than the target admits: the excess is closed at once, and the
  trusted peer still syncs.
* ``slow-header`` -- a client that trickles the opening bytes (TLS handshake,
  HTTP headers) on each transport is closed within the handshake deadline.
* ``pairing-burst`` -- a burst of wrong join secrets: at most a few are
  checked before the target stops answering them.
* ``site-id-impersonation`` -- a second trusted peer claims the first one's
  site id: it is refused and the first one keeps syncing.
* ``flood-rss`` -- rounds of a few hundred junk connections: the target's
  resident memory comes back near where it was, without growing round after
  round.

The functions are importable (the tests run a reduced set).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import msgpack  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from peer import events  # noqa: E402
from peer.identity import Identity, default_key_path  # noqa: E402
from peer.peer import Peer  # noqa: E402
from peer.retry import Backoff  # noqa: E402
from peer.store import Store  # noqa: E402
from peer.trust import TrustStore, default_trust_path  # noqa: E402
from transports.base import HANDSHAKE_TIMEOUT, PreAuthLimits  # noqa: E402
from transports.tcp import TcpTransport  # noqa: E402

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
BIG_FRAME = 8 * 1024 * 1024
"""What an attacker announces as its first frame (the largest frame a node accepts)."""
LOCAL = "127.0.0.1"
ATTACKER = "127.0.0.2"
"""Where attacks that count connections per address come from (loopback, not the trusted peer's)."""


class Failed(Exception):
    """A case found the target's defence did not hold; the message says how."""


# -- the target -------------------------------------------------------------------


@dataclass
class Target:
    """A ``crpeer serve`` child process and what it listens on."""

    folder: Path
    database: Path
    identity: Identity
    process: subprocess.Popen[bytes]
    addresses: dict[str, str] = field(default_factory=dict)
    """Listen address by scheme (``tcp``, ``wss``, ``https``)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """The target's resident memory now (VmRSS from /proc), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise Failed("the target has no VmRSS (did it exit?)")

    def open_files(self) -> int:
        """How many file descriptors the target holds now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def host_port(self, scheme: str) -> tuple[str, int]:
        rest = self.addresses[scheme].split("://", 1)[1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)

    def trust(self, peer_id: str) -> None:
        """Trust ``peer_id`` (the target picks the change up within a second)."""
        TrustStore.load(default_trust_path(self.database)).add(peer_id, label="attack.py")

    def set_join_secret(self, secret: str) -> None:
        TrustStore.load(default_trust_path(self.database)).set_join_secret(secret)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_database(path: Path) -> None:
    """A database with the ``notes`` CRR table."""
    store = Store(path)
    try:
        store.execute(SCHEMA)
        store.make_crr("notes")
    finally:
        store.close()


def start_target(
    folder: Path, *, trusted: Sequence[str] = (), within: float = 30.0, extra: Sequence[str] = ()
) -> Target:
    """Start ``crpeer serve`` on loopback in ``folder``, trusting the peer ids
    ``trusted``; raises Failed if it does not listen."""
    database = folder / "target.db"
    make_database(database)
    identity = Identity.load_or_create(default_key_path(database))
    trust = TrustStore.load(default_trust_path(database))
    for peer_id in trusted:
        trust.add(peer_id, label="attack.py")
    out, err = folder / "target.out", folder / "target.err"
    command = [sys.executable, "-m", "peer.cli", "serve", str(database), "--json", "--no-lan"]
    command += ["--tcp", f"{LOCAL}:0", "--ws", f"{LOCAL}:0", "--http", f"{LOCAL}:0", *extra]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=environment,
        )
    target = Target(folder, database, identity, process)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        lines = out.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].endswith("}"):
            for address in json.loads(lines[0])["addresses"]:
                target.addresses[address.split("://", 1)[0]] = address
            return target
        if process.poll() is not None:
            break
        time.sleep(0.05)
    target.stop()
    raise Failed(f"the target did not start: {err.read_text(encoding='utf-8')[-400:]}")


# -- attackers' tools --------------------------------------------------------------


def minted_identity(folder: Path, name: str) -> Identity:
    """A fresh identity the target does not trust (anyone can make one)."""
    return Identity.load_or_create(folder / f"{name}.key")


def no_verify_client(identity: Identity | None) -> ssl.SSLContext:
    """A TLS 1.3 client context that does not check the server, presenting ``identity``'s
    certificate (or none)."""
    if identity is not None:
        context = identity.client_ssl_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_stream(
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    source: str = LOCAL,
    within: float = 5.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(within):
        return await asyncio.open_connection(
            host, port, ssl=tls, local_addr=(source, 0), server_hostname="" if tls else None
        )


async def closed_within(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the other end closes (EOF or reset) within ``within`` seconds;
    whatever it sends meanwhile is read and dropped."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True
    return True


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection without a goodbye."""
    writer.transport.abort()
    writer.close()


def http_request(method: str, path: str, host: str, body_length: int = 0) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body_length or method == "POST":
        head += f"Content-Length: {body_length}\r\n"
    return (head + "\r\n").encode()


async def read_http_head(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    async with asyncio.timeout(within):
        return await reader.readuntil(b"\r\n\r\n")


def websocket_upgrade(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def websocket_frame_header(length: int) -> bytes:
    """A masked binary frame header (client to server) announcing ``length`` bytes."""
    return b"\x82\xff" + struct.pack(">Q", length) + b"\x00\x00\x00\x00"


async def sse_open_session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> str:
    """POST .../sessions on an open connection; the new session's id."""
    writer.write(http_request("POST", f"{path}/sessions", host))
    head = await read_http_head(reader)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    session: str = json.loads(body)["session"]
    return session


async def send_until_closed(
    writer: asyncio.StreamWriter, closed: asyncio.Task[bool], total: int, within: float
) -> int:
    """Write up to ``total`` zero bytes; how many were written before the other end
    closed (``closed`` is done, or writing fails); ``total`` if it never did within
    ``within`` seconds. The chunks are paced (64 KiB every 5 ms), so that what
    the kernel's buffers take in does not hide when the other end closed."""
    chunk = bytes(64 * 1024)
    sent = 0
    try:
        async with asyncio.timeout(within):
            while sent < total and not closed.done() and not writer.is_closing():
                writer.write(chunk[: total - sent])
                await writer.drain()
                sent += min(len(chunk), total - sent)
                await asyncio.sleep(0.005)
    except (OSError, ssl.SSLError, TimeoutError):
        pass
    return sent


# -- opening each transport as an unauthenticated client ----------------------------


async def opened(
    target: Target, scheme: str, tls: ssl.SSLContext | None, source: str = LOCAL
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``scheme``'s listener, ready for a first frame: TCP after
    TLS, WebSocket after the upgrade, HTTP/SSE after TLS. On failure nothing
    is left open."""
    host, port = target.host_port(scheme)
    reader, writer = await open_stream(host, port, tls=tls, source=source)
    if scheme == "wss":
        try:
            writer.write(websocket_upgrade(host, "/crpeer"))
            head = await read_http_head(reader)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise Failed(f"the WebSocket upgrade was answered {head[:40]!r}")
        except BaseException:
            abort(writer)
            raise
    return reader, writer


async def send_big_frame(target: Target, scheme: str, tls: ssl.SSLContext) -> int:
    """Announce an 8 MiB frame before authenticating and send it; the bytes of it
    sent before the target closed the connection."""
    reader, writer = await opened(target, scheme, tls)
    try:
        if scheme == "tcp":
            writer.write(struct.pack(">I", BIG_FRAME))
        elif scheme == "wss":
            writer.write(websocket_frame_header(BIG_FRAME))
        else:
            host, _ = target.host_port(scheme)
            session = await sse_open_session(reader, writer, host, "/crpeer")
            head = f"POST /crpeer/sessions/{session}/frames HTTP/1.1\r\nHost: {host}\r\n"
            head += f"Crpeer-Seq: 1\r\nContent-Length: {BIG_FRAME}\r\n\r\n"
            writer.write(head.encode())
        closed = asyncio.create_task(closed_within(reader, 10.0))
        sent = await send_until_closed(writer, closed, BIG_FRAME, within=10.0)
        closed.cancel()
        return sent
    finally:
        abort(writer)


async def junk_connection(target: Target, scheme: str, tls: ssl.SSLContext, kind: int) -> None:
    """One flood connection: garbage, an oversized frame, or a bare TLS handshake."""
    host, port = target.host_port(scheme)
    try:
        if kind == 0:
            reader, writer = await open_stream(host, port, tls=None)
        else:
            reader, writer = await opened(target, scheme, tls)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, Failed):
        return
    try:
        if kind == 0:
            writer.write(os.urandom(4096))
        elif kind == 1:
            if scheme == "tcp":
                writer.write(struct.pack(">I", BIG_FRAME) + bytes(256 * 1024))
            elif scheme == "wss":
                writer.write(websocket_frame_header(BIG_FRAME) + bytes(256 * 1024))
            else:
                head = f"POST /crpeer/sessions HTTP/1.1\r\nHost: {host}\r\n"
                head += f"Content-Length: {BIG_FRAME}\r\n\r\n"
                writer.write(head.encode() + bytes(256 * 1024))
        with contextlib.suppress(OSError, ssl.SSLError):  # TimeoutError included
            async with asyncio.timeout(0.5):
                await writer.drain()
                await reader.read(1)
    finally:
        abort(writer)


async def flood(target: Target, tls: ssl.SSLContext, connections: int, parallel: int = 100) -> None:
    """``connections`` junk connections spread over every listener, ``parallel`` at a time."""
    schemes = sorted(target.addresses)
    gate = asyncio.Semaphore(parallel)

    async def one(number: int) -> None:
        async with gate:
            await junk_connection(target, schemes[number % len(schemes)], tls, number % 3)

    await asyncio.gather(*(one(number) for number in range(connections)))


async def settle_rss(target: Target, seconds: float) -> int:
    """The target's RSS (KiB) after ``seconds`` of quiet."""
    await asyncio.sleep(seconds)
    return target.rss_kib()


def self_signed_client(folder: Path) -> ssl.SSLContext:
    """A TLS client presenting a self-signed Ed25519 certificate (no crpeer issuer)."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, None)
    )
    certificate_file, key_file = folder / "self-signed.pem", folder / "self-signed.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = no_verify_client(None)
    context.load_cert_chain(certificate_file, key_file)
    return context


# -- the arena: target, trusted peer, attacker's identity ----------------------------


@dataclass
class Arena:
    """Everything a case needs: the target, a trusted peer syncing with it, and
    the attacker's self-minted identity."""

    folder: Path
    target: Target
    trusted: Peer
    trusted_events: list[events.Event]
    target_reader: Store
    attacker: Identity
    row: int = 0

    def tls(self) -> ssl.SSLContext:
        return no_verify_client(self.attacker)

    async def still_syncs(self, within: float = 10.0) -> None:
        """A row written on the trusted peer reaches the target; raises Failed if not."""
        self.row += 1
        row = self.row
        await self.trusted.execute("INSERT INTO notes VALUES (?, ?)", (row, f"row {row}"))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.target_reader.execute("SELECT 1 FROM notes WHERE id = ?", (row,)):
                return
            await asyncio.sleep(0.05)
        raise Failed(f"a trusted peer's row did not reach the target within {within:g} s")

    def disconnects(self) -> int:
        return sum(isinstance(event, events.Disconnected) for event in self.trusted_events)


def trusted_node(folder: Path, name: str, target: Target, database: Path | None = None) -> Peer:
    """A Peer that trusts the target and that the target trusts, dialing its TCP listener."""
    database = database or folder / f"{name}.db"
    if not database.exists():
        make_database(database)
    identity = Identity.load_or_create(folder / f"{name}.key")
    trust = TrustStore.load(folder / f"{name}.trust.json")
    trust.add(target.identity.peer_id, label="target")
    target.trust(identity.peer_id)
    transport = TcpTransport(
        LOCAL,
        0,
        listen=False,
        server_ssl=identity.server_ssl_context(),
        client_ssl=identity.client_ssl_context(),
    )
    return Peer(
        str(database),
        [transport],
        name=name,
        connect=[target.addresses["tcp"]],
        identity=identity,
        trust=trust,
        backoff=Backoff(initial=0.05, maximum=0.5),
    )


@contextlib.asynccontextmanager
async def arena(folder: Path) -> AsyncIterator[Arena]:
    """Start the target and a trusted peer syncing with it; stop both at the end."""
    trusted_id = Identity.load_or_create(folder / "trusted.key").peer_id
    target = await asyncio.to_thread(start_target, folder, trusted=[trusted_id])
    try:
        spare = folder / "trusted-copy.db"  # the same site id, for the impostor
        make_database(folder / "trusted.db")
        shutil.copy(folder / "trusted.db", spare)
        trusted = trusted_node(folder, "trusted", target)
        seen: list[events.Event] = []
        trusted.subscribe(seen.append)
        reader = Store(target.database)
        try:
            async with trusted:
                place = Arena(folder, target, trusted, seen, reader, minted_identity(folder, "x"))
                await place.still_syncs(within=30.0)
                yield place
        finally:
            reader.close()
    finally:
        await asyncio.to_thread(target.stop)


# -- the cases ---------------------------------------------------------------------

Case = Callable[[Arena], Awaitable[None]]
SCHEMES = ("tcp", "wss", "https")


async def each_scheme(attack: Callable[[str], Awaitable[str | None]]) -> None:
    """Run ``attack`` on every listener at once; Failed with every reason it returned."""
    reasons = await asyncio.gather(*(attack(scheme) for scheme in SCHEMES))
    failures = [
        f"{scheme}: {reason}" for scheme, reason in zip(SCHEMES, reasons, strict=True) if reason
    ]
    if failures:
        raise Failed("; ".join(failures))


def opening_bytes(scheme: str, host: str) -> bytes:
    """What a client sends first on ``scheme`` (a frame, an upgrade, a session request)."""
    if scheme == "tcp":
        body = msgpack.packb([20, True, True, bytes(32)])
        return struct.pack(">I", len(body)) + body
    if scheme == "wss":
        return websocket_upgrade(host, "/crpeer")
    return http_request("POST", "/crpeer/sessions", host)


async def refused(
    target: Target, scheme: str, tls: ssl.SSLContext | None, payload: bytes | None
) -> str | None:
    """Connect (TLS with ``tls``), send ``payload`` (the opening if None); None if the
    target closed without opening anything, else why not."""
    host, port = target.host_port(scheme)
    try:
        reader, writer = await open_stream(host, port, tls=tls)
    except (OSError, ssl.SSLError, TimeoutError):
        return None  # refused during the handshake
    received = bytearray()
    try:
        writer.write(payload if payload is not None else opening_bytes(scheme, host))
        async with asyncio.timeout(8.0):
            while chunk := await reader.read(65536):
                received += chunk
    except (OSError, ssl.SSLError):
        pass
    except TimeoutError:
        return "the connection stayed open"
    finally:
        abort(writer)
    if b" 101 " in received or b" 201 " in received:
        return f"it answered {bytes(received[:40])!r}"
    return None


async def case_plaintext(place: Arena) -> None:
    await each_scheme(lambda scheme: refused(place.target, scheme, None, None))


async def case_garbage(place: Arena) -> None:
    junk = os.urandom(4096)

    async def both(scheme: str) -> str | None:
        plain, tls = await asyncio.gather(
            refused(place.target, scheme, None, junk),
            refused(place.target, scheme, place.tls(), junk),
        )
        return plain or tls

    await each_scheme(both)


async def case_no_client_cert(place: Arena) -> None:
    await each_scheme(lambda scheme: refused(place.target, scheme, no_verify_client(None), None))


async def case_self_signed(place: Arena) -> None:
    tls = self_signed_client(place.folder)
    await each_scheme(lambda scheme: refused(place.target, scheme, tls, None))


async def case_oversized_preauth(place: Arena) -> None:
    before = place.target.rss_kib()

    async def big(scheme: str) -> str | None:
        sent = await send_big_frame(place.target, scheme, place.tls())
        if sent >= BIG_FRAME // 2:
            return f"{sent} of {BIG_FRAME} bytes went in before the target closed"
        return None

    await each_scheme(big)
    grown = (place.target.rss_kib() - before) // 1024
    if grown > 16:
        raise Failed(f"the target grew {grown} MiB")
    await place.still_syncs()


async def case_unauthenticated_connections(place: Arena) -> None:
    allowed = PreAuthLimits().per_address
    tls = place.tls()

    async def hold(scheme: str) -> str | None:
        host, port = place.target.host_port(scheme)
        attempts = await asyncio.gather(
            *(open_stream(host, port, tls=tls, source=ATTACKER) for _ in range(allowed + 8)),
            return_exceptions=True,
        )
        streams = [item for item in attempts if not isinstance(item, BaseException)]
        try:
            closed = await asyncio.gather(*(closed_within(reader, 1.0) for reader, _ in streams))
            kept = closed.count(False)
            if kept > allowed:
                return f"{kept} unauthenticated connections from one address stayed open"
            await place.still_syncs()
            return None
        finally:
            for _, writer in streams:
                abort(writer)

    for scheme in SCHEMES:  # one listener at a time: each counts its own
        reason = await hold(scheme)
        if reason:
            raise Failed(f"{scheme}: {reason}")


async def trickle(
    target: Target, scheme: str, tls: bool, identity: Identity, within: float
) -> str | None:
    """Send the opening bytes one per second; None if the target closed the
    connection within ``within`` seconds."""
    host, port = target.host_port(scheme)
    try:
        reader, writer = await open_stream(
            host, port, tls=no_verify_client(identity) if tls else None
        )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        return f"could not connect: {exc!r}"
    # Without TLS: the first bytes of a TLS ClientHello; with it: the request.
    data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)
    if tls:
        data = opening_bytes(scheme, host)
    closed = asyncio.create_task(closed_within(reader, within))
    try:
        for byte in data:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)
        if not await closed:
            return f"still open after {within:g} s"
        return None
    finally:
        closed.cancel()
        abort(writer)


async def case_slow_header(place: Arena) -> None:
    within = HANDSHAKE_TIMEOUT + 4.0  # the TCP frame is bounded by authentication's deadline
    attempts = [(scheme, tls) for scheme in SCHEMES for tls in (False, True)]
    reasons = await asyncio.gather(
        *(trickle(place.target, scheme, tls, place.attacker, within) for scheme, tls in attempts)
    )
    failures = [
        f"{scheme}{' after TLS' if tls else ''}: {reason}"
        for (scheme, tls), reason in zip(attempts, reasons, strict=True)
        if reason
    ]
    if failures:
        raise Failed("; ".join(failures))


async def pairing_attempt(target: Target, identity: Identity) -> str:
    """One wrong join secret over TCP; ``checked`` if the target verified the
    proof and refused it, else what happened."""
    host, port = target.host_port("tcp")
    try:
        reader, writer = await open_stream(host, port, tls=no_verify_client(identity))
    except (OSError, ssl.SSLError, TimeoutError):
        return "refused"
    try:
        async with asyncio.timeout(10.0):
            # "I trust you and can pair": the target hosts, we join and prove first.
            for frame in ([20, True, True, os.urandom(32)], [21, os.urandom(32)]):
                body = msgpack.packb(frame)
                writer.write(struct.pack(">I", len(body)) + body)
                if frame[0] == 20:
                    (length,) = struct.unpack(">I", await reader.readexactly(4))
                    answer = msgpack.unpackb(await reader.readexactly(length))
                    if answer[0] != 20 or not answer[2]:
                        return "no pairing offered"
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            answer = msgpack.unpackb(await reader.readexactly(length))
            return "checked" if answer[0] == 8 and "pairing" in str(answer[3]) else "other"
    except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return "closed"
    finally:
        abort(writer)


async def case_pairing_burst(place: Arena) -> None:
    place.target.set_join_secret("correct horse battery staple")
    await asyncio.sleep(1.5)  # the target reloads its trust store every half second
    try:
        joiners = [minted_identity(place.folder, f"joiner{n}") for n in range(4)]
        results = list(
            await asyncio.gather(
                *(pairing_attempt(place.target, joiners[n % 4]) for n in range(40))
            )
        )
        deadline = time.monotonic() + 10.0
        while len(results) < 100 and time.monotonic() < deadline:
            results.append(await pairing_attempt(place.target, joiners[len(results) % 4]))
        checked = results.count("checked")
        if checked > 20:
            raise Failed(f"{checked} of {len(results)} wrong secrets were checked and answered")
    finally:
        TrustStore.load(default_trust_path(place.target.database)).clear_join_secret()
    await place.still_syncs()


async def case_site_id_impersonation(place: Arena) -> None:
    before = place.disconnects()
    impostor = trusted_node(
        place.folder, "impostor", place.target, database=place.folder / "trusted-copy.db"
    )
    seen: list[events.Event] = []
    impostor.subscribe(seen.append)
    await asyncio.sleep(1.5)  # the target picks up the new trusted peer
    async with impostor:
        await asyncio.sleep(4.0)
        await place.still_syncs()
    if place.disconnects() > before:
        raise Failed("a peer claiming the trusted peer's site id cut its session")
    if any(isinstance(event, events.Eose) for event in seen):
        raise Failed("a peer claiming another's site id got a session")


async def case_flood_rss(place: Arena) -> None:
    await flood_rss(place)


async def flood_rss(place: Arena, rounds: int = 3, connections: int = 300) -> list[int]:
    """Flood rounds; returns the RSS (KiB) at the baseline and after each round.
    Raises Failed if the last is over 32 MiB above the baseline, each round
    grew it by more than 2 MiB, or the target holds more open files after the
    floods than before."""
    settle = 3.0
    figures = [await settle_rss(place.target, settle)]
    files = place.target.open_files()
    for _ in range(rounds):
        await flood(place.target, place.tls(), connections)
        figures.append(await settle_rss(place.target, settle))
    grown = (figures[-1] - figures[0]) // 1024
    steps = [b - a for a, b in itertools.pairwise(figures[1:])]
    if grown > 32 or (steps and all(step > 2048 for step in steps)):
        raise Failed(f"RSS went {' -> '.join(str(f // 1024) for f in figures)} MiB")
    if place.target.open_files() > files:
        raise Failed(f"open files went {files} -> {place.target.open_files()}")
    await place.still_syncs()
    return figures


CASES: dict[str, Case] = {
    "plaintext": case_plaintext,
    "garbage": case_garbage,
    "no-client-cert": case_no_client_cert,
    "self-signed": case_self_signed,
    "oversized-preauth": case_oversized_preauth,
    "unauthenticated-connections": case_unauthenticated_connections,
    "slow-header": case_slow_header,
    "pairing-burst": case_pairing_burst,
    "site-id-impersonation": case_site_id_impersonation,
    "flood-rss": case_flood_rss,
}


async def run(names: Sequence[str], folder: Path, out: Callable[[str], None] = print) -> bool:
    """Run the cases ``names`` against one target; True if every one held."""
    held = True
    async with arena(folder) as place:
        for name in names:
            try:
                async with asyncio.timeout(60.0):
                    await CASES[name](place)
                if not place.target.alive():
                    raise Failed("the target died")
                out(f"{name}: held")
            except Failed as exc:
                held = False
                out(f"{name}: FAILED: {exc}")
            except TimeoutError:
                held = False
                out(f"{name}: FAILED: the case did not finish within 60 s")
    return held


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only this case")
    arguments = parser.parse_args(argv)
    names = arguments.case or list(CASES)
    with tempfile.TemporaryDirectory(prefix="crpeer-attack-") as folder:
        try:
            return 0 if asyncio.run(run(names, Path(folder))) else 1
        except Failed as exc:
            print(f"FAILED to set up: {exc}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
