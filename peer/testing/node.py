"""One harness peer in its own process: ``python -m peer.testing.node``.

Started by :class:`peer.testing.process.ProcessDriver`, never by hand. The
node opens a prepared database (``--db``), starts a Peer with a TcpTransport
on ``127.0.0.1:--port`` (0: any free port) in plaintext with the
:class:`~peer.protocol.Limits` given (``--max-frame-bytes`` and the rest;
default: crpeer's), prints one line
``{"event": "ready", "port": P, "site_id": HEX, "pid": N}`` on stdout, then
answers JSON commands read from stdin, one per line, each
``{"id": N, "op": ..., ...}`` answered by ``{"id": N, "ok": true, ...}`` or
``{"id": N, "ok": false, "error": TEXT}``:

- ``dial`` ``peers: {name: address}``: remember the addresses, dial them for
  good;
- ``write`` ``sql``, ``params``: run one write (see
  :func:`peer.testing.database.capture_write`: sized and many-row writes are
  expanded here, so the pipe carries only their seeds); answers ``changes``
  (the committed changes, msgpack+base64);
- ``vector``: answers ``site_id`` and ``cursor`` (``{hex origin: version}``);
- ``digests``: answers ``digests`` (``{table: sha256}``);
- ``block`` ``names``: the partition: refuse to dial those peers, close any
  session with them, and close a new one as soon as its hello names them;
- ``faults`` ``links: {name: {drop, duplicate, reorder, delay, bandwidth}}``:
  applied to every frame this node sends to that peer: ``delay`` (a
  ``[lo, hi]`` uniform range) and ``bandwidth`` (bytes/s) as a pause before
  the frame, ``drop + duplicate + reorder`` as the probability of resetting
  the connection instead (TCP neither loses nor reorders frames);
- ``rate`` ``rate``: the clock rate: backoff delays last ``1 / rate``;
- ``stats``: answers ``bytes_sent`` and ``sessions`` (opened, ended, failed);
- ``stop``: answers, then stops the peer cleanly and exits 0.

End of stdin (the parent died) stops the node too. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sys
import time
from dataclasses import replace
from typing import Any

from peer import events
from peer.errors import ChannelClosed, ConnectError, CrpeerError
from peer.peer import Peer
from peer.protocol import Limits
from peer.retry import Backoff
from peer.testing.database import (
    capture_write,
    encode_changes,
    migrate_on_own_connection,
    table_digests,
    vector,
)
from peer.testing.driver import SessionCounts
from peer.testing.migrations import SchemaChange
from transports.base import Channel, ChannelHandler, RemoteInfo, Transport
from transports.memory import LinkFaults
from transports.tcp import TcpTransport

__all__ = ["main"]

log = logging.getLogger("crpeer.harness.node")


class _Rules:
    """What the parent told this node about links: blocks, faults, names."""

    def __init__(self, seed: int) -> None:
        self.addresses: dict[str, str] = {}
        self.blocked: set[str] = set()
        self.faults: dict[str, LinkFaults] = {}
        self.random = random.Random(seed)
        self.bytes_sent = 0
        self.peer: Peer | None = None

    def name_of(self, channel: Channel) -> str | None:
        """The remote peer's name: from the address dialed, else from the session."""
        for name, address in self.addresses.items():
            if not channel.remote.inbound and channel.remote.address == address:
                return name
        for driver in self.peer.sessions if self.peer else []:
            remote = driver.snapshot().remote
            if driver.channel is channel and remote is not None:
                return remote.name
        return None


class _RuledChannel(Channel):
    """A channel that obeys the node's rules for the peer at its other end."""

    def __init__(self, inner: Channel, rules: _Rules) -> None:
        self._inner, self._rules = inner, rules
        self._name: str | None = None

    @property
    def remote(self) -> RemoteInfo:
        return self._inner.remote

    def _remote_name(self) -> str | None:
        if self._name is None:
            self._name = self._rules.name_of(self)
        return self._name

    async def _check(self) -> None:
        if self._remote_name() in self._rules.blocked:
            await self._inner.close()
            raise ChannelClosed("partitioned by the harness")

    async def send(self, frame: bytes) -> None:
        await self._check()
        name = self._remote_name()
        faults = self._rules.faults.get(name) if name else None
        if faults is not None:
            rng = self._rules.random
            if rng.random() < min(1.0, faults.drop + faults.duplicate + faults.reorder):
                await self._inner.close()
                raise ChannelClosed("connection reset by the harness")
            pause = rng.uniform(*faults.delay)
            if faults.bandwidth:
                pause += len(frame) / faults.bandwidth
            await asyncio.sleep(pause)
        await self._inner.send(frame)
        self._rules.bytes_sent += len(frame)

    async def recv(self) -> bytes:
        await self._check()
        frame = await self._inner.recv()
        await self._check()
        return frame

    def authenticated(self) -> None:
        self._inner.authenticated()

    async def close(self) -> None:
        await self._inner.close()


class _RuledTransport(Transport):
    """A TcpTransport whose channels obey :class:`_Rules`."""

    scheme = "tcp"

    def __init__(self, inner: TcpTransport, rules: _Rules) -> None:
        self._inner, self._rules = inner, rules

    @property
    def listen_addresses(self) -> list[str]:
        return self._inner.listen_addresses

    async def start(self, handler: ChannelHandler) -> None:
        async def ruled(channel: Channel) -> None:
            await handler(_RuledChannel(channel, self._rules))

        await self._inner.start(ruled)

    async def stop(self) -> None:
        await self._inner.stop()

    async def dial(self, address: str) -> Channel:
        blocked = {self._rules.addresses.get(name) for name in self._rules.blocked}
        if address in blocked:
            raise ConnectError(f"cannot reach {address}: partitioned by the harness")
        return _RuledChannel(await self._inner.dial(address), self._rules)


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _wait_for_port(port: int, within: float) -> None:
    """A restarted node reuses its port: wait (bounded) until it can be bound."""
    deadline = time.monotonic() + within
    while port:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)


class _Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rules = _Rules(args.seed)
        self.counts = SessionCounts()
        self.base_backoff = Backoff(args.backoff_initial, args.backoff_max)
        self.transport = TcpTransport("127.0.0.1", args.port)
        self.peer = Peer(
            args.db,
            [_RuledTransport(self.transport, self.rules)],
            name=args.name,
            poll_interval=args.poll_interval,
            ping_interval=args.ping_interval,
            idle_timeout=args.idle_timeout,
            backoff=self.base_backoff,
            limits=Limits(
                max_frame_bytes=args.max_frame_bytes,
                max_batch_rows=args.max_batch_rows,
                window=args.window,
                max_value_bytes=args.max_value_bytes,
                snapshot_threshold=args.snapshot_threshold,
            ),
            seed=args.seed,
            insecure=True,
        )
        self.rules.peer = self.peer
        self.peer.subscribe(self._on_event)
        self.stopping = False

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Connected):
            self.counts.opened += 1
            if event.remote.name in self.rules.blocked:
                asyncio.get_running_loop().create_task(self._close_blocked())
        elif isinstance(event, events.Disconnected):
            self.counts.ended += 1
            self.counts.failed += event.error is not None
        elif isinstance(event, events.Bootstrapped):
            self.counts.bootstrapped += 1
        elif isinstance(event, events.SnapshotRefused):
            self.counts.snapshots_refused += 1

    async def _close_blocked(self) -> None:
        for driver in self.peer.sessions:
            remote = driver.snapshot().remote
            if remote is not None and remote.name in self.rules.blocked:
                with contextlib.suppress(CrpeerError):
                    await driver.channel.close()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        peer, store = self.peer, self.peer.store
        if op == "write":
            changes = await peer.run_in_store(
                capture_write, store, command["sql"], command["params"]
            )
            peer.notify_local_change()
            return {"changes": encode_changes(changes)}
        if op == "vector":
            site, cursor = await peer.run_in_store(vector, store)
            return {"site_id": site.hex(), "cursor": {o.hex(): v for o, v in cursor.items()}}
        if op == "digests":
            return {"digests": await peer.run_in_store(table_digests, store)}
        if op == "dial":
            for name, address in command["peers"].items():
                self.rules.addresses[name] = address
                peer.connect(address)
            return {}
        if op == "block":
            self.rules.blocked = set(command["names"])
            await self._close_blocked()
            return {}
        if op == "faults":
            self.rules.faults = {
                name: LinkFaults(
                    f["drop"], f["duplicate"], f["reorder"], tuple(f["delay"]), f["bandwidth"]
                )
                for name, f in command["links"].items()
            }
            return {}
        if op == "rate":
            rate = float(command["rate"])
            base = self.base_backoff
            peer.backoff = replace(base, initial=base.initial / rate, maximum=base.maximum / rate)
            return {}
        if op == "migrate":
            migrations = [
                SchemaChange(int(c["version"]), str(c["sql"]), tuple(c["alter"]))
                for c in command["changes"]
            ]
            if command["own_connection"]:
                await asyncio.to_thread(migrate_on_own_connection, self.args.db, migrations)
                return {}
            current = await peer.run_in_store(store.schema_version)
            for change in migrations:
                if change.version > current:
                    await peer.migrate(change.version, change.sql, alter=change.alter)
            return {}
        if op == "stats":
            return {"bytes_sent": self.rules.bytes_sent, "sessions": self.counts.to_dict()}
        if op == "stop":
            self.stopping = True
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def serve(self, lines: asyncio.StreamReader) -> None:
        await self.peer.start()
        port = int(self.transport.listen_addresses[0].rsplit(":", 1)[1])
        site_id = self.peer.site_id.hex()
        _emit({"event": "ready", "port": port, "site_id": site_id, "pid": os.getpid()})
        while not self.stopping:
            line = await lines.readline()
            if not line:
                break
            command = json.loads(line)
            try:
                answer = {"id": command.get("id"), "ok": True, **await self.handle(command)}
            except (CrpeerError, KeyError, TypeError, ValueError) as exc:
                answer = {"id": command.get("id"), "ok": False, "error": repr(exc)}
            _emit(answer)


async def _amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    lines = asyncio.StreamReader(limit=1 << 24)
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    node = _Node(args)
    try:
        await node.serve(lines)
    finally:
        await node.peer.stop()
        pipe.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the node until ``stop`` or end of stdin."""
    parser = argparse.ArgumentParser(prog="python -m peer.testing.node")
    parser.add_argument("--db", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--ping-interval", type=float, default=0.3)
    parser.add_argument("--idle-timeout", type=float, default=1.5)
    parser.add_argument("--backoff-initial", type=float, default=0.02)
    parser.add_argument("--backoff-max", type=float, default=0.5)
    defaults = Limits()
    parser.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes)
    parser.add_argument("--max-batch-rows", type=int, default=defaults.max_batch_rows)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--max-value-bytes", type=int, default=defaults.max_value_bytes)
    parser.add_argument("--snapshot-threshold", type=int, default=defaults.snapshot_threshold)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s",
    )
    _wait_for_port(args.port, within=10.0)
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
