"""The crpeer demo: four devices keep one notes table in sync, live and encrypted.

Run it with ``./scripts/demo`` (``--help`` for options). No configuration:
every device gets a fresh database, key and trust store in a temporary
directory. The *laptop* listens on the LAN (TCP, found by mDNS), WebSocket and
HTTP/SSE, and prints a join secret; the *desktop* finds it by mDNS, the
*phone* dials its WebSocket, the *tablet* its HTTP/SSE endpoint; each pairs
with the secret over TLS 1.3. Then everyone edits, the tablet goes offline
and comes back, and the demo ends with a verdict (exit 0 when every device
holds the same notes). mDNS stays on the loopback interface unless ``--lan``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peer import events
from peer.identity import Identity
from peer.pairing import format_peer_id
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from peer.trust import TrustStore
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.lan import LanTransport
from transports.websocket import WebSocketTransport

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, author TEXT)"
)
BACKOFF = Backoff(initial=0.05, maximum=1.0)


def digest(rows: list[tuple[Any, ...]]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:12]


class Device:
    """One device: a database, a key, a trust store, and (while online) a Peer."""

    def __init__(self, directory: Path, name: str, demo: Demo) -> None:
        self.name = name
        self.demo = demo
        self.store = Store(directory / f"{name}.db")
        self.store.execute(SCHEMA)
        self.store.make_crr("notes")
        self.identity = Identity.load_or_create(directory / f"{name}.key")
        self.trust = TrustStore.load(directory / f"{name}.trust.json")
        self.peer: Peer | None = None

    def tls(self) -> dict[str, object]:
        return {
            "server_ssl": self.identity.server_ssl_context(),
            "client_ssl": self.identity.client_ssl_context(),
        }

    async def go_online(
        self,
        transports: Sequence[Transport],
        connect: Sequence[str] = (),
        secret: str | None = None,
    ) -> Peer:
        self.peer = Peer(
            self.store,
            transports,
            name=self.name,
            connect=connect,
            identity=self.identity,
            trust=self.trust,
            join_secret=secret,
            backoff=BACKOFF,
        )
        self.peer.subscribe(self.show)
        await self.peer.start()
        return self.peer

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the device's notes: through its Peer while online (the store
        belongs to the Peer's threads then), else from the store directly."""
        if self.peer is not None:
            return await self.peer.run_in_store(self.store.execute, sql)
        return self.store.execute(sql)

    async def digest(self) -> str:
        return digest(await self.query("SELECT id, body, author FROM notes ORDER BY id"))

    async def go_offline(self) -> None:
        if self.peer is not None:
            await self.peer.stop()
            self.peer = None

    def show(self, event: events.Event) -> None:
        say = self.demo.say
        match event:
            case events.Connected(remote=remote):
                say(f"{self.name}: connected to {remote.name} over {remote.transport} (TLS)")
            case events.Eose(remote=remote):
                say(f"{self.name}: caught up with {remote.name}")
            case events.Changed(remote=remote, rows=rows):
                say(f"{self.name}: {rows} change rows from {remote.name}")
            case events.SessionFailed(error=error):
                say(f"{self.name}: session failed: {error}")

    async def write(self, note_id: int, body: str) -> None:
        assert self.peer is not None
        await self.peer.execute(
            "INSERT INTO notes VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
            "SET body = excluded.body, author = excluded.author",
            (note_id, body, self.name),
        )
        self.demo.say(f"{self.name} writes note {note_id}: {body!r}")


class Demo:
    def __init__(self, directory: Path, lan: bool) -> None:
        self.started = time.monotonic()
        self.lan_interfaces: str | list[str] = "all" if lan else ["127.0.0.1"]
        self.lan_host = "0.0.0.0" if lan else "127.0.0.1"
        names = ["laptop", "desktop", "phone", "tablet"]
        self.devices = {name: Device(directory, name, self) for name in names}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.2f}s] {text}", flush=True)

    def lan(self, device: Device) -> LanTransport:
        return LanTransport(
            device.identity.peer_id,
            host=self.lan_host,
            interfaces=self.lan_interfaces,
            **device.tls(),  # type: ignore[arg-type]
        )

    async def converge(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len({await d.digest() for d in self.devices.values()}) == 1:
                return True
            await asyncio.sleep(0.05)
        return False

    async def run(self, keep_running: bool) -> bool:
        laptop, desktop, phone, tablet = self.devices.values()
        secret = laptop.trust.rotate_join_secret()
        self.say(f"laptop peer id {format_peer_id(laptop.identity.peer_id)}")
        self.say(f"laptop join secret: {secret}")
        websocket = WebSocketTransport("127.0.0.1", 0, **laptop.tls())  # type: ignore[arg-type]
        http = HttpSseTransport("127.0.0.1", 0, **laptop.tls())  # type: ignore[arg-type]
        await laptop.go_online([self.lan(laptop), websocket, http])
        ws_url, http_url = websocket.listen_addresses[0], http.listen_addresses[0]
        self.say(f"laptop listens on LAN (mDNS), {ws_url} and {http_url}")
        await laptop.write(1, "shopping: milk, eggs")
        await desktop.go_online([self.lan(desktop)], secret=secret)
        await phone.go_online(
            [WebSocketTransport("127.0.0.1", 0, listen=False, **phone.tls())],  # type: ignore[arg-type]
            connect=[ws_url],
            secret=secret,
        )
        await tablet.go_online(
            [HttpSseTransport("127.0.0.1", 0, listen=False, **tablet.tls())],  # type: ignore[arg-type]
            connect=[http_url],
            secret=secret,
        )
        paired = await self.converge(20)
        self.say(f"all four paired and caught up: {paired}")
        for index, device in enumerate(self.devices.values()):
            await device.write(10 + index, f"hello from the {device.name}")
        await phone.write(1, "shopping: milk, eggs, bread")
        await desktop.write(1, "shopping: milk, eggs, coffee")
        await self.converge(10)
        self.say("the tablet goes offline; the others keep writing")
        await tablet.go_offline()
        await phone.write(20, "written while the tablet was away")
        await desktop.write(21, "this too")
        await asyncio.sleep(0.3)
        self.say("the tablet comes back and resumes from its cursor")
        await tablet.go_online(
            [HttpSseTransport("127.0.0.1", 0, listen=False, **tablet.tls())],  # type: ignore[arg-type]
            connect=[http_url],
        )
        converged = await self.converge(30)
        while keep_running:
            await asyncio.sleep(2)
            await phone.write(99, f"tick at {time.strftime('%H:%M:%S')}")
        return converged

    async def report(self) -> None:
        print()
        for device in self.devices.values():
            count = (await device.query("SELECT count(*) FROM notes"))[0][0]
            trusted = len(device.trust.list())
            print(
                f"  {device.name:8} {count} notes  digest {await device.digest()}  trusts {trusted}"
            )
        shared = await self.devices["laptop"].query("SELECT body, author FROM notes WHERE id = 1")
        print(f"  note 1, edited concurrently, settled on: {shared[0] if shared else None}")
        print("  (cr-sqlite merges per column: each column keeps its own last writer)")

    async def close(self) -> None:
        for device in self.devices.values():
            await device.go_offline()
            device.store.close()


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="crpeer-demo-") as directory:
        demo = Demo(Path(directory), args.lan)
        try:
            converged = await asyncio.wait_for(
                demo.run(args.keep_running), timeout=None if args.keep_running else 60
            )
            await demo.report()
        finally:
            await demo.close()
        print(f"verdict: {'converged' if converged else 'DIVERGED'} ({len(demo.devices)} devices)")
        return 0 if converged else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lan", action="store_true", help="advertise on every interface")
    parser.add_argument("--keep-running", action="store_true", help="keep writing until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
