"""One LAN node for the network-namespace tests; run inside a namespace.

``python -m tests.lan_node --peer-id ID [--lan] [--seconds N]`` runs on every
interface of its namespace, with no peer address given, and prints one JSON
object per line on stdout.

Without ``--lan``: :class:`~transports.mdns.MdnsDiscovery` advertising port 9:

- ``{"event": "ready", "peer_id": ..., "port": 9}`` once advertised;
- ``{"event": "found", "peer_id": ..., "addresses": [...], "port": ...}``;
- ``{"event": "lost", "peer_id": ...}``.

With ``--lan``: a :class:`~transports.lan.LanTransport` that echoes every frame
it receives, and dials each peer its discovery handler reports (those with a
larger id), sends one frame and waits for it to come back:

- ``{"event": "ready", "peer_id": ..., "addresses": [listen addresses]}``;
- ``{"event": "inbound", "host": ..., "address": ...}`` per inbound channel;
- ``{"event": "found", "peer_id": ..., "address": ...}`` per peer to dial;
- ``{"event": "echo", "peer_id": ..., "address": ..., "ok": true}`` (or
  ``"ok": false`` with ``"error"``).

With ``--peer DB``: a whole :class:`~peer.peer.Peer` (plaintext, ``insecure``)
on database ``DB`` (a ``notes`` table), over a LanTransport; each stdin line
``insert ID BODY`` writes a row:

- ``{"event": "ready", "peer_id": ..., "addresses": [listen addresses]}``;
- ``{"event": "connected", "remote": name, "address": ..., "inbound": ...}``;
- ``{"event": "changed", "remote": name, "address": ..., "rows": n}`` per merge.

``--watch-interval`` sets how often the node looks at its addresses (it
re-advertises when they change: a ``found`` event then repeats with the new
address, and a ``--lan`` node pings it again there).

It exits cleanly when stdin reaches EOF or after ``--seconds`` (a hard bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from peer import events
from peer.errors import CrpeerError
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from transports.base import Channel
from transports.lan import LanTransport
from transports.mdns import DiscoveredPeer, MdnsDiscovery

__all__ = ["main"]


def emit(**fields: object) -> None:
    """Write one JSON line to stdout, flushed so the test sees it at once."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _stdin_closed(on_line: Callable[[str], None] | None = None) -> asyncio.Event:
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    pending = b""

    def readable() -> None:
        nonlocal pending
        chunk = os.read(fd, 4096)
        if not chunk:
            loop.remove_reader(fd)
            closed.set()
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if on_line is not None:
                on_line(line.decode())

    loop.add_reader(fd, readable)
    return closed


async def _wait_for_end(seconds: float, on_line: Callable[[str], None] | None = None) -> None:
    closed = _stdin_closed(on_line)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed.wait(), seconds)
    asyncio.get_running_loop().remove_reader(sys.stdin.fileno())


async def run_discovery(peer_id: str, seconds: float, watch_interval: float) -> None:
    """Advertise a dummy port and report what is found until the end."""
    discovery = MdnsDiscovery(peer_id, 9, watch_interval=watch_interval)

    def found(peer: DiscoveredPeer) -> None:
        emit(event="found", peer_id=peer.peer_id, addresses=list(peer.addresses), port=peer.port)

    try:
        await discovery.start(found, lambda lost: emit(event="lost", peer_id=lost))
        emit(event="ready", peer_id=peer_id, port=9)
        await _wait_for_end(seconds)
    finally:
        await discovery.stop()


async def _echo(channel: Channel) -> None:
    host = urlsplit(channel.remote.address).hostname
    emit(event="inbound", host=host, address=channel.remote.address)
    try:
        while True:
            await channel.send(await channel.recv())
    except CrpeerError:
        pass
    finally:
        await channel.close()


async def _ping(transport: LanTransport, address: str, peer_id: str) -> None:
    frame = f"hello {peer_id} from {transport.peer_id}".encode()
    try:
        channel = await transport.dial(address)
        try:
            await channel.send(frame)
            ok = await asyncio.wait_for(channel.recv(), 5.0) == frame
        finally:
            await channel.close()
        emit(event="echo", peer_id=peer_id, address=address, ok=ok)
    except (CrpeerError, TimeoutError) as exc:
        emit(event="echo", peer_id=peer_id, address=address, ok=False, error=repr(exc))


async def run_lan(peer_id: str, seconds: float, watch_interval: float) -> None:
    """Run a LanTransport that echoes inbound frames and pings discovered peers."""
    transport = LanTransport(peer_id, watch_interval=watch_interval)
    pings: set[asyncio.Task[None]] = set()

    def discovered(address: str, remote_id: str) -> None:
        emit(event="found", peer_id=remote_id, address=address)
        task = asyncio.get_running_loop().create_task(_ping(transport, address, remote_id))
        pings.add(task)
        task.add_done_callback(pings.discard)

    transport.set_discovery_handler(discovered)
    try:
        await transport.start(_echo)
        emit(event="ready", peer_id=peer_id, addresses=transport.listen_addresses)
        await _wait_for_end(seconds)
    finally:
        for task in list(pings):
            task.cancel()
        await asyncio.gather(*pings, return_exceptions=True)
        await transport.stop()


async def run_peer(peer_id: str, seconds: float, watch_interval: float, database: str) -> None:
    """Run a Peer over LAN that writes the rows stdin asks for and reports its sessions."""
    store = Store(database)
    store.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
    store.make_crr("notes")
    transport = LanTransport(peer_id, watch_interval=watch_interval)
    peer = Peer(
        store,
        [transport],
        name=peer_id,
        insecure=True,
        backoff=Backoff(initial=0.1, maximum=1.0),
        ping_interval=0.5,
        idle_timeout=2.0,
    )
    writes: set[asyncio.Task[object]] = set()

    def report(event: events.Event) -> None:
        match event:
            case events.Connected(remote=remote):
                emit(
                    event="connected",
                    remote=remote.name,
                    address=remote.address,
                    inbound=remote.inbound,
                )
            case events.Changed(remote=remote, rows=rows):
                emit(event="changed", remote=remote.name, address=remote.address, rows=rows)
            case _:
                pass

    def command(line: str) -> None:
        verb, row_id, body = line.split(" ", 2)
        assert verb == "insert", line
        write = peer.execute("INSERT INTO notes VALUES (?, ?)", (int(row_id), body))
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(write)
        writes.add(task)
        task.add_done_callback(writes.discard)

    peer.subscribe(report)
    try:
        async with peer:
            emit(event="ready", peer_id=peer_id, addresses=transport.listen_addresses)
            await _wait_for_end(seconds, command)
            await asyncio.gather(*writes)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run one node until stdin closes or time runs out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--lan", action="store_true", help="LanTransport with echo and dial")
    parser.add_argument("--seconds", type=float, default=30.0, help="hard bound on the run")
    parser.add_argument(
        "--watch-interval", type=float, default=3.0, help="seconds between looks at the addresses"
    )
    parser.add_argument("--peer", metavar="DB", help="a whole Peer over LAN on database DB")
    args = parser.parse_args(argv)
    if args.peer:
        asyncio.run(run_peer(args.peer_id, args.seconds, args.watch_interval, args.peer))
        return
    runner = run_lan if args.lan else run_discovery
    asyncio.run(runner(args.peer_id, args.seconds, args.watch_interval))


if __name__ == "__main__":
    main()
