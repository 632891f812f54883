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

import asyncio
import contextlib
import json
import os
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from peer.identity import Identity, default_key_path  # noqa: E402
from peer.store import Store  # noqa: E402
from peer.trust import TrustStore, default_trust_path  # noqa: E402

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


def start_target(folder: Path, *, within: float = 30.0, extra: Sequence[str] = ()) -> Target:
    """Start ``crpeer serve`` on loopback in ``folder``; raises Failed if it does not listen."""
    database = folder / "target.db"
    make_database(database)
    identity = Identity.load_or_create(default_key_path(database))
    TrustStore.load(default_trust_path(database))
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
    writer.transport.abort()


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


async def send_until_closed(writer: asyncio.StreamWriter, total: int, within: float) -> int:
    """Write up to ``total`` zero bytes; how many were written before the other end
    closed (``total`` if it never did within ``within`` seconds)."""
    chunk = bytes(64 * 1024)
    sent = 0
    try:
        async with asyncio.timeout(within):
            while sent < total:
                writer.write(chunk[: total - sent])
                await writer.drain()
                sent += min(len(chunk), total - sent)
    except (OSError, ssl.SSLError, TimeoutError):
        pass
    return sent


# -- opening each transport as an unauthenticated client ----------------------------


async def opened(
    target: Target, scheme: str, tls: ssl.SSLContext | None, source: str = LOCAL
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``scheme``'s listener that has reached the first frame:
    TCP after TLS, WebSocket after the upgrade, HTTP/SSE with a session open
    (the session id is in the writer's ``crpeer_session`` extra... kept by the caller)."""
    host, port = target.host_port(scheme)
    reader, writer = await open_stream(host, port, tls=tls, source=source)
    if scheme == "wss":
        writer.write(websocket_upgrade(host, "/crpeer"))
        head = await read_http_head(reader)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            abort(writer)
            raise Failed(f"the WebSocket upgrade was answered {head[:40]!r}")
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
        drain = asyncio.create_task(closed_within(reader, 10.0))
        sent = await send_until_closed(writer, BIG_FRAME, within=10.0)
        drain.cancel()
        return sent
    finally:
        abort(writer)


async def junk_connection(target: Target, scheme: str, tls: ssl.SSLContext, kind: int) -> None:
    """One flood connection: garbage, an oversized frame, or a bare TLS handshake."""
    host, port = target.host_port(scheme)
    try:
        if kind == 0:
            reader, writer = await open_stream(host, port, tls=None)
            writer.write(os.urandom(4096))
        else:
            reader, writer = await opened(target, scheme, tls)
            if kind == 1:
                if scheme == "tcp":
                    writer.write(struct.pack(">I", BIG_FRAME) + bytes(256 * 1024))
                elif scheme == "wss":
                    writer.write(websocket_frame_header(BIG_FRAME) + bytes(256 * 1024))
                else:
                    head = f"POST /crpeer/sessions HTTP/1.1\r\nHost: {host}\r\n"
                    head += f"Content-Length: {BIG_FRAME}\r\n\r\n"
                    writer.write(head.encode() + bytes(256 * 1024))
        with contextlib.suppress(OSError, ssl.SSLError):
            async with asyncio.timeout(0.5):
                await writer.drain()
                await reader.read(1)
        abort(writer)
    except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, Failed):
        pass


async def flood(target: Target, tls: ssl.SSLContext, connections: int, parallel: int = 100) -> None:
    """``connections`` junk connections spread over every listener, ``parallel`` at a time."""
    schemes = sorted(target.addresses)
    gate = asyncio.Semaphore(parallel)

    async def one(number: int) -> None:
        async with gate:
            await junk_connection(target, schemes[number % len(schemes)], tls, number % 3)

    await asyncio.gather(*(one(number) for number in range(connections)))


def settle_rss(target: Target, seconds: float) -> int:
    """The target's RSS (KiB) after ``seconds`` of quiet."""
    time.sleep(seconds)
    return target.rss_kib()
