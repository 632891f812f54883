"""In-process mode: N Peers on one event loop over a seeded MemoryNetwork.

Each peer has its own database file in the run's directory and its own
store thread. Partitions and link faults are the memory network's own
(:meth:`~transports.memory.MemoryNetwork.partition`,
:meth:`~transports.memory.MemoryNetwork.set_faults`).

A **kill** here is the closest honest model one process allows: first every
link of the peer is cut and blocked (frames in flight are lost, both ends
see the connection break at once, no SHUTDOWN or CLOSE frame reaches
anyone), then the Peer object is torn down and discarded; a restart opens a
new Peer on the same file. What it cannot do is stop SQLite mid-transaction
(the peer dies between two store calls, and its connection is closed
normally, which changes nothing on disk); the process mode's SIGKILL covers
that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from peer import events
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Change, Cursor, SqlValue
from peer.testing.database import (
    capture_write,
    migrate_on_own_connection,
    migrations_to,
    prepare_database,
    table_digests,
    vector,
)
from peer.testing.driver import ClusterDriver, HarnessError, SessionCounts
from peer.testing.plan import Plan
from peer.testing.scenario import Join, Scenario
from transports.memory import LinkFaults, MemoryNetwork, MemoryTransport

__all__ = ["InProcessDriver"]


class InProcessDriver(ClusterDriver):
    """Peers ``p0 .. p{N-1}`` with databases ``<directory>/p{i}.db``."""

    mode = "inproc"

    def __init__(self, scenario: Scenario, directory: Path) -> None:
        self.scenario = scenario
        self.spec = scenario.cluster
        self.directory = directory
        self.network = MemoryNetwork(seed=scenario.seed)
        self.names = self.spec.names
        self._peers: list[Peer | None] = [None] * self.spec.peers
        self._dials: list[list[str]] = [[] for _ in self.names]
        self._incarnation = [0] * self.spec.peers
        self._rates = [1.0] * self.spec.peers
        self._partitioned: set[frozenset[int]] = set()
        self._down: set[int] = set()
        self._counts = SessionCounts()
        self._closed = False

    @property
    def sessions(self) -> SessionCounts:
        return self._counts

    async def start(self, plan: Plan) -> None:
        for dialer, listener in plan.edges:
            self._dials[dialer].append(f"memory://{self.names[listener]}")
        for index in range(self.spec.peers):
            prepare_database(self._path(index), self.spec.schema)
        late = {f.peer for f in self.scenario.faults if isinstance(f, Join)}
        self._down |= late  # started by their Join (restart)
        self._apply_blocks()
        for index in range(self.spec.peers):
            if index not in late:
                await self._launch(index)

    async def write(self, peer: int, sql: str, params: Mapping[str, SqlValue]) -> list[Change]:
        node = self._alive(peer)
        changes = await node.run_in_store(capture_write, node.store, sql, params)
        node.notify_local_change()
        return changes

    async def migrate(self, peer: int, version: int, own_connection: bool) -> None:
        node, schema = self._peers[peer], self.spec.schema
        if node is None or own_connection:
            # On a thread: the file's write lock may be held by a page that
            # this event loop must finish.
            with ThreadPoolExecutor(1, thread_name_prefix="harness-migrate") as pool:
                await asyncio.get_running_loop().run_in_executor(
                    pool,
                    migrate_on_own_connection,
                    self._path(peer),
                    migrations_to(schema, 0, version),
                )
            return
        current = await node.run_in_store(node.store.schema_version)
        for change in migrations_to(schema, current, version):
            await node.migrate(change.version, change.sql, alter=change.alter)

    async def kill(self, peer: int) -> None:
        node = self._alive(peer)
        self._peers[peer] = None
        self._down.add(peer)
        self._apply_blocks()
        await node.stop()

    async def restart(self, peer: int) -> None:
        if self._peers[peer] is not None:
            raise HarnessError(f"{self.names[peer]} is already running")
        self._down.discard(peer)
        self._apply_blocks()
        await self._launch(peer)

    async def set_blocked(self, pairs: set[frozenset[int]]) -> None:
        self._partitioned = set(pairs)
        self._apply_blocks()

    async def set_link_faults(self, faults: Mapping[tuple[int, int], LinkFaults]) -> None:
        self.network.clear_faults()
        for (a, b), link in faults.items():
            self.network.set_faults(self.names[a], self.names[b], link)

    async def set_clock_rate(self, peer: int, rate: float) -> None:
        self._rates[peer] = rate
        node = self._peers[peer]
        if node is not None:
            node.backoff = self._backoff(peer)

    async def vector(self, peer: int) -> tuple[bytes, Cursor] | None:
        node = self._peers[peer]
        return None if node is None else await node.run_in_store(vector, node.store)

    async def digests(self, peer: int) -> dict[str, str] | None:
        node = self._peers[peer]
        return None if node is None else await node.run_in_store(table_digests, node.store)

    def traffic(self) -> dict[str, int]:
        stats = self.network.stats().values()
        return {
            "bytes_sent": sum(s.bytes_sent for s in stats),
            "frames_sent": sum(s.frames_sent for s in stats),
            "frames_dropped": sum(s.frames_dropped for s in stats),
            "frames_duplicated": sum(s.frames_duplicated for s in stats),
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for index, node in enumerate(self._peers):
            self._peers[index] = None
            if node is not None:
                await node.stop()

    # -- internals ------------------------------------------------------------------

    def _path(self, index: int) -> Path:
        return self.directory / f"{self.names[index]}.db"

    def _alive(self, peer: int) -> Peer:
        node = self._peers[peer]
        if node is None:
            raise HarnessError(f"{self.names[peer]} is down")
        return node

    def _backoff(self, peer: int) -> Backoff:
        base, rate = self.spec.backoff, self._rates[peer]
        return replace(base, initial=base.initial / rate, maximum=base.maximum / rate)

    def _apply_blocks(self) -> None:
        """Partition pairs, plus every pair with a peer that is down."""
        pairs = set(self._partitioned)
        pairs |= {frozenset((d, o)) for d in self._down for o in range(self.spec.peers) if o != d}
        self.network.heal()
        for pair in pairs:
            a, b = sorted(pair)
            self.network.partition([self.names[a]], [self.names[b]])

    async def _launch(self, index: int) -> None:
        spec, name = self.spec, self.names[index]
        self._incarnation[index] += 1
        node = Peer(
            self._path(index),
            [MemoryTransport(self.network, name)],
            name=name,
            connect=self._dials[index],
            limits=spec.limits,
            poll_interval=spec.poll_interval,
            ping_interval=spec.ping_interval,
            idle_timeout=spec.idle_timeout,
            backoff=self._backoff(index),
            seed=self.scenario.seed * 1_000_003 + index * 1009 + self._incarnation[index],
            insecure=True,
        )
        node.subscribe(self._count)
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        self._peers[index] = node

    def _count(self, event: events.Event) -> None:
        if isinstance(event, events.Connected):
            self._counts.opened += 1
        elif isinstance(event, events.Disconnected):
            self._counts.ended += 1
            if event.error is not None:
                self._counts.failed += 1
        elif isinstance(event, events.Bootstrapped):
            self._counts.bootstrapped += 1
        elif isinstance(event, events.SnapshotRefused):
            self._counts.snapshots_refused += 1
