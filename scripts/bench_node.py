#!/usr/bin/env python3
"""Child processes of scripts/bench.py: one benchmark role per process.

``bench_node.py ROLE [options]``; every role prints its results as JSON
lines on stdout (nothing else goes there) and logs errors to stderr. A role
ends by itself, or when it gets SIGTERM, or when its stdin reaches EOF (the
parent closes it, or died): then it stops its peers cleanly and exits. So a
child never outlives the benchmark that started it.

Roles (the parent, scripts/bench.py, holds the timing contract):

- ``serve``: a peer holding ``--db`` listens on ``--transport`` and prints
  ``{"address": ...}``; it runs until stopped.
- ``catchup``: a fresh peer dials ``--connect`` and prints ``{"seconds",
  "change_rows", "rows", "peak_rss_mb"}`` once ``--expect`` change rows have
  merged, timed from just before ``Peer.start()``. With
  ``--app-write-interval S`` the app writes meanwhile (see :class:`AppWrites`)
  and the line adds ``"write_waits_ms"``. It replays changes (it declines
  snapshots) unless ``--bootstrap``: then it takes a snapshot and the line
  comes at the EOSE after it, adding ``"snapshot_bytes"``. ``--wide``: the
  4-column table :data:`WIDE_TABLE` instead of :data:`TABLE`.
- ``memory-sync``: ``serve`` and ``catchup`` in this one process over the
  memory transport (in-process by nature).
- ``live-reader`` / ``live-writer``: one-row writes over TCP+TLS, one every
  ``--interval`` s (open loop); the reader prints ``{"address"}``, then
  ``{"latencies_ms": [...]}``.
- ``relay``: a line of 5 peers in this process over TCP+TLS loopback; prints
  ``{"latencies_ms": [...]}`` from a write on the first to its arrival on the
  last, one write in flight at a time (all five share one CPU here, so an
  open loop would measure queueing on that CPU, not the relay path).
- ``mesh``: 20 peers in a seeded random mesh in this process over the memory
  transport; prints ``{"seconds"}`` from the first of the random writes until
  every peer holds the same table.

Latency samples carry their write time in the row (``score`` =
``time.monotonic_ns()`` at the write); CLOCK_MONOTONIC is one clock for every
process on the machine, so a reader in another process can subtract it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from peer import events
from peer.errors import CrpeerError
from peer.identity import Identity
from peer.peer import Peer
from peer.protocol import Limits
from peer.retry import Backoff
from peer.store import Store
from peer.trust import TrustStore
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.memory import MemoryNetwork, MemoryTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

__all__ = ["SCHEMA", "TABLE", "TRANSPORTS", "WIDE_SCHEMA", "WIDE_TABLE", "main"]

TABLE = "bench"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER)"
)
WIDE_TABLE = "bench_wide"
WIDE_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {WIDE_TABLE} "
    "(id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER, note TEXT)"
)
"""The 4-column table of the bootstrap benchmark (3 change rows per row)."""
TRANSPORTS = ("memory", "tcp", "websocket", "http_sse")
APP_TABLE = "app_log"
APP_SCHEMA = f"CREATE TABLE IF NOT EXISTS {APP_TABLE} (id INTEGER PRIMARY KEY NOT NULL, at INTEGER)"
"""A plain (non-CRR) table the receiving app writes to during a catch-up."""
CHANGE_ROWS_PER_ROW = 2
"""An insert into the bench table gives one change row per non-key column."""
_FAST = Backoff(initial=0.02, maximum=0.3)
_UPSERT = (
    f"INSERT INTO {TABLE} (id, name, score) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, score = excluded.score"
)


class Failed(Exception):
    """A role could not produce its figure (reported to the parent, exit code 1)."""


# -- shared pieces -----------------------------------------------------------------


def emit(**fields: Any) -> None:
    """One result line for the parent."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def open_store(path: Path, *, wide: bool = False) -> Store:
    store = Store(path)
    store.execute(WIDE_SCHEMA if wide else SCHEMA)
    store.make_crr(WIDE_TABLE if wide else TABLE)
    return store


def peak_rss_mb() -> float:
    """This process's own peak resident set so far, in MB.

    Linux's ``VmHWM`` (in KiB): the high-water mark of this process's memory
    since it was executed. Not ``ru_maxrss``, which a process inherits across
    fork and exec, so a child of a large ``bench.py`` would report the
    parent's size. Elsewhere, ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def make_transport(kind: str, identity: Identity, *, listen: bool) -> Transport:
    """A TLS transport of ``kind`` on loopback (port chosen by the OS)."""
    server, client = identity.server_ssl_context(), identity.client_ssl_context()
    if kind == "tcp":
        return TcpTransport("127.0.0.1", 0, listen=listen, server_ssl=server, client_ssl=client)
    if kind == "websocket":
        return WebSocketTransport(
            "127.0.0.1", 0, listen=listen, server_ssl=server, client_ssl=client
        )
    if kind == "http_sse":
        return HttpSseTransport("127.0.0.1", 0, listen=listen, server_ssl=server, client_ssl=client)
    raise Failed(f"no TLS transport {kind!r}")


def tuning(args: argparse.Namespace | None) -> dict[str, Any]:
    """Peer keyword arguments for the sync experiments (``--batch-rows``,
    ``--window``, ``--poll-interval``); the Peer's defaults otherwise."""
    if args is None:
        return {}
    options: dict[str, Any] = {}
    if args.batch_rows or args.window:
        defaults = Limits()
        options["limits"] = Limits(
            max_batch_rows=args.batch_rows or defaults.max_batch_rows,
            window=args.window or defaults.window,
        )
    if args.poll_interval:
        options["poll_interval"] = args.poll_interval
    return options


def secure_peer(
    store: Store,
    transport: Transport,
    key: Path,
    trust: Path,
    args: argparse.Namespace | None = None,
    connect: Sequence[str] = (),
    *,
    accept_snapshot: bool = False,
) -> Peer:
    return Peer(
        store,
        [transport],
        connect=list(connect),
        identity=Identity.load_or_create(key),
        trust=TrustStore.load(trust),
        backoff=_FAST,
        accept_snapshot=accept_snapshot,
        **tuning(args),
    )


class Arrivals:
    """Counts merged change rows from Changed events, with their arrival times."""

    def __init__(self) -> None:
        self.rows = 0
        self.pages: list[tuple[int, int]] = []
        """``(monotonic_ns at the event, change rows merged)`` in arrival order."""
        self.eose = asyncio.Event()
        self.snapshot_bytes = 0
        self._changed = asyncio.Event()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Changed):
            self.pages.append((time.monotonic_ns(), event.rows))
            self.rows += event.rows
            self._changed.set()
        elif isinstance(event, events.Eose):
            self.eose.set()
        elif isinstance(event, events.Bootstrapped):
            self.snapshot_bytes = event.bytes

    async def wait_rows(self, goal: int, within: float) -> None:
        """Until ``goal`` change rows merged; raises Failed after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                while self.rows < goal:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise Failed(f"{self.rows} of {goal} change rows arrived within {within} s") from None


def latencies_ms(arrivals: Arrivals, sent_ns: Sequence[int]) -> list[float]:
    """Match rows (in write order) to the pages they arrived in.

    Each sample row is CHANGE_ROWS_PER_ROW change rows and the writer wrote
    them one after the other, so the k-th sample arrived in the page where the
    running count of change rows first exceeds k * CHANGE_ROWS_PER_ROW.
    """
    out: list[float] = []
    pages = iter(arrivals.pages)
    at, upto = 0, 0
    for index, sent in enumerate(sent_ns):
        while upto <= index * CHANGE_ROWS_PER_ROW:
            at, rows = next(pages)
            upto += rows
        out.append((at - sent) / 1e6)
    return out


class AppWrites:
    """An app writing while its peer syncs: open-loop one-row inserts into
    the plain table ``APP_TABLE`` through ``Peer.execute``.

    From :meth:`start`, one write is due every ``interval`` s and is issued as
    a task of its own at its due time, whatever became of the ones before (a
    write held up does not delay the next one's issue). Each records, in ms,
    how long after its due time its ``Peer.execute`` returned, so a late start
    on a busy event loop counts as waiting too. Call :meth:`stop` to end it.
    """

    def __init__(self, peer: Peer, interval: float) -> None:
        self.peer = peer
        self.interval = interval
        self.waits_ms: list[float] = []
        self.errors: list[str] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._issuer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._issuer = asyncio.create_task(self._issue())

    async def _issue(self) -> None:
        start = time.monotonic()
        index = 0
        while True:
            due = start + index * self.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self._write(index + 1, due))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            index += 1

    async def _write(self, row_id: int, due: float) -> None:
        try:
            await self.peer.execute(
                f"INSERT INTO {APP_TABLE} (id, at) VALUES (?, ?)", (row_id, time.monotonic_ns())
            )
        except CrpeerError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.waits_ms.append((time.monotonic() - due) * 1e3)

    async def stop(self, within: float) -> list[float]:
        """Issue no more; wait up to ``within`` s for the writes in flight.

        Returns every write's wait in ms. Raises Failed if a write failed or
        is still waiting after ``within`` s.
        """
        if self._issuer is not None:
            self._issuer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._issuer
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=within)
            if late:
                for task in late:
                    task.cancel()
                raise Failed(f"{len(late)} app writes still waiting after {within} s")
        if self.errors:
            raise Failed(f"{len(self.errors)} app writes failed: {self.errors[0]}")
        return self.waits_ms


async def until_stopped() -> None:
    await asyncio.Event().wait()


# -- roles -------------------------------------------------------------------------


async def role_serve(args: argparse.Namespace) -> None:
    store = Store(args.db)
    try:
        transport = make_transport(args.transport, Identity.load_or_create(args.key), listen=True)
        async with secure_peer(store, transport, args.key, args.trust, args) as peer:
            emit(address=transport.listen_addresses[0], site_id=peer.site_id.hex())
            await until_stopped()
    finally:
        store.close()


async def role_catchup(args: argparse.Namespace) -> None:
    store = open_store(args.db, wide=args.wide)
    try:
        if args.app_write_interval:
            store.execute(APP_SCHEMA)
        transport = make_transport(args.transport, Identity.load_or_create(args.key), listen=False)
        peer = secure_peer(
            store,
            transport,
            args.key,
            args.trust,
            args,
            connect=[args.connect],
            accept_snapshot=args.bootstrap,
        )
        await _catch_up(peer, store, args)
    finally:
        store.close()


async def role_memory_sync(args: argparse.Namespace) -> None:
    network = MemoryNetwork(seed=0)
    source, store = Store(args.source), open_store(args.db)
    try:
        sender = Peer(
            source,
            [MemoryTransport(network, "sender")],
            insecure=True,
            **tuning(args),
        )
        receiver = Peer(
            store,
            [MemoryTransport(network, "receiver", listen=False)],
            connect=["memory://sender"],
            insecure=True,
            backoff=_FAST,
            accept_snapshot=args.bootstrap,
            **tuning(args),
        )
        async with sender:
            await _catch_up(receiver, store, args)
    finally:
        source.close()
        store.close()


async def _catch_up(peer: Peer, store: Store, args: argparse.Namespace) -> None:
    arrivals = Arrivals()
    peer.subscribe(arrivals)
    started, cpu = time.perf_counter(), time.process_time()
    async with peer:
        writes = AppWrites(peer, args.app_write_interval) if args.app_write_interval else None
        if writes is not None:
            writes.start()
        extra: dict[str, Any] = {}
        if args.bootstrap:
            try:
                await asyncio.wait_for(arrivals.eose.wait(), args.timeout)
            except TimeoutError:
                raise Failed(f"no EOSE within {args.timeout} s") from None
            if not arrivals.snapshot_bytes:
                raise Failed("caught up without a snapshot")
            extra["snapshot_bytes"] = arrivals.snapshot_bytes
        else:
            await arrivals.wait_rows(args.expect, args.timeout)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        rss = peak_rss_mb()
        if writes is not None:
            extra["write_waits_ms"] = await writes.stop(args.timeout)
        table = WIDE_TABLE if args.wide else TABLE
        (rows,) = (await peer.run_in_store(store.execute, f"SELECT count(*) FROM {table}"))[0]
        emit(
            seconds=seconds,
            change_rows=arrivals.rows,
            rows=rows,
            peak_rss_mb=rss,
            cpu_s=cpu,
            **extra,
        )


async def role_live_reader(args: argparse.Namespace) -> None:
    store = open_store(args.db)
    try:
        transport = make_transport("tcp", Identity.load_or_create(args.key), listen=True)
        arrivals = Arrivals()
        async with secure_peer(store, transport, args.key, args.trust) as peer:
            peer.subscribe(arrivals)
            emit(address=transport.listen_addresses[0])
            await arrivals.wait_rows(args.samples * CHANGE_ROWS_PER_ROW, args.timeout)
            rows = await peer.run_in_store(
                store.execute, f"SELECT id, score FROM {TABLE} ORDER BY id"
            )
            emit(latencies_ms=latencies_ms(arrivals, [score for _, score in rows]))
    finally:
        store.close()


async def role_live_writer(args: argparse.Namespace) -> None:
    store = open_store(args.db)
    try:
        transport = make_transport("tcp", Identity.load_or_create(args.key), listen=False)
        arrivals = Arrivals()
        peer = secure_peer(store, transport, args.key, args.trust, connect=[args.connect])
        peer.subscribe(arrivals)
        async with peer:
            await asyncio.wait_for(arrivals.eose.wait(), args.timeout)
            await asyncio.sleep(0.2)
            await write_samples(peer, args.samples, args.interval)
            emit(written=args.samples)
            await until_stopped()
    finally:
        store.close()


async def write_samples(
    peer: Peer, samples: int, interval: float, arrivals: Arrivals | None = None
) -> None:
    """``samples`` one-row writes. Open loop (``arrivals`` None): one every
    ``interval`` s whatever happens to them. Closed loop: each waits until the
    previous one arrived (``arrivals`` counts them), then ``interval`` s more."""
    start = time.monotonic()
    for index in range(samples):
        await peer.execute(
            f"INSERT INTO {TABLE} (id, name, score) VALUES (?, ?, ?)",
            (index + 1, "live", time.monotonic_ns()),
        )
        if arrivals is None:
            await asyncio.sleep(max(0.0, start + (index + 1) * interval - time.monotonic()))
        else:
            await arrivals.wait_rows((index + 1) * CHANGE_ROWS_PER_ROW, 30.0)
            await asyncio.sleep(interval)


async def role_relay(args: argparse.Namespace) -> None:
    """A line p0 - p1 - ... - p4; p(i+1) dials p(i); every hop is TCP+TLS."""
    folder = Path(args.dir)
    count = args.peers
    keys = [folder / f"p{i}.key" for i in range(count)]
    trusts = [folder / f"p{i}.trust.json" for i in range(count)]
    identities = [Identity.load_or_create(key) for key in keys]
    for i in range(count):
        trust = TrustStore.load(trusts[i])
        for j in (i - 1, i + 1):
            if 0 <= j < count:
                trust.add(identities[j].peer_id)
    stores = [open_store(folder / f"p{i}.db") for i in range(count)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            peers: list[Peer] = []
            for i in range(count):
                transport = make_transport("tcp", identities[i], listen=True)
                connect = [peers[-1].transports[0].listen_addresses[0]] if peers else []
                peer = secure_peer(stores[i], transport, keys[i], trusts[i], connect=connect)
                await stack.enter_async_context(peer)
                peers.append(peer)
            arrivals = Arrivals()
            peers[-1].subscribe(arrivals)
            await _settled(peers, [1] + [2] * (count - 2) + [1], args.timeout)
            await asyncio.sleep(0.2)
            await write_samples(peers[0], args.samples, args.interval, arrivals)
            await arrivals.wait_rows(args.samples * CHANGE_ROWS_PER_ROW, args.timeout)
            rows = await peers[-1].run_in_store(
                stores[-1].execute, f"SELECT id, score FROM {TABLE} ORDER BY id"
            )
            emit(latencies_ms=latencies_ms(arrivals, [score for _, score in rows]))
    finally:
        for store in stores:
            store.close()


async def _settled(peers: Sequence[Peer], degrees: Sequence[int], within: float) -> None:
    """Until every peer has its sessions, each past EOSE both ways."""

    def ready() -> bool:
        return all(
            len(peer.sessions) == degree
            and all(s.snapshot().state == "live" for s in peer.sessions)
            for peer, degree in zip(peers, degrees, strict=True)
        )

    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            raise Failed(f"peers did not connect within {within} s")
        await asyncio.sleep(0.02)


def random_mesh(count: int, degree: int, rng: random.Random) -> set[tuple[int, int]]:
    """A connected random graph: a random spanning tree plus random extra edges
    until the mean degree is about ``degree``. Edges are ``(dialer, listener)``."""
    order = list(range(count))
    rng.shuffle(order)
    edges = {(order[i], order[rng.randrange(i)]) for i in range(1, count)}
    linked = {frozenset(edge) for edge in edges}
    while len(edges) < count * degree // 2:
        a, b = rng.sample(range(count), 2)
        if frozenset((a, b)) not in linked:
            linked.add(frozenset((a, b)))
            edges.add((a, b))
    return edges


async def role_mesh(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    rng = random.Random(args.seed)
    count = args.peers
    edges = random_mesh(count, args.degree, rng)
    degrees = [sum(i in edge for edge in edges) for i in range(count)]
    network = MemoryNetwork(seed=args.seed)
    stores = [open_store(folder / f"m{i}.db") for i in range(count)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            peers = [
                Peer(
                    stores[i],
                    [MemoryTransport(network, f"m{i}")],
                    connect=[f"memory://m{b}" for a, b in sorted(edges) if a == i],
                    insecure=True,
                    backoff=_FAST,
                    seed=args.seed + i,
                )
                for i in range(count)
            ]
            for peer in peers:
                await stack.enter_async_context(peer)
            await _settled(peers, degrees, args.timeout)
            plan: list[list[tuple[int, str, int]]] = [[] for _ in range(count)]
            for n in range(args.writes):
                row_id = rng.randrange(1, args.keys + 1)
                plan[rng.randrange(count)].append((row_id, f"w{n}", rng.randrange(1_000_000)))
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(
                *(_write_all(peer, writes) for peer, writes in zip(peers, plan, strict=True))
            )
            written = time.perf_counter() - started
            await _converged(peers, stores, started + args.timeout)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            emit(seconds=seconds, writes_issued_s=written, edges=len(edges), cpu_s=cpu)
    finally:
        for store in stores:
            store.close()


async def _write_all(peer: Peer, writes: Sequence[tuple[int, str, int]]) -> None:
    for row in writes:
        await peer.execute(_UPSERT, row)


async def _converged(peers: Sequence[Peer], stores: Sequence[Store], deadline: float) -> None:
    """Until every peer's table is the same (checked every 50 ms).

    Each peer's table is read as one text value, so a check costs its store
    thread one step instead of one per row (each step gives up the GIL, and
    taking it back from the busy event loop is what a check would cost).
    """
    query = (
        "SELECT count(*), group_concat(quote(id) || ' ' || quote(name) || ' ' || quote(score), "
        f"',' ORDER BY id) FROM {TABLE}"
    )
    while True:
        tables = await asyncio.gather(
            *(
                peer.run_in_store(store.execute, query)
                for peer, store in zip(peers, stores, strict=True)
            )
        )
        if all(table == tables[0] for table in tables[1:]):
            return
        if time.perf_counter() > deadline:
            raise Failed("the mesh did not converge in time")
        await asyncio.sleep(0.05)


ROLES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "serve": role_serve,
    "catchup": role_catchup,
    "memory-sync": role_memory_sync,
    "live-reader": role_live_reader,
    "live-writer": role_live_writer,
    "relay": role_relay,
    "mesh": role_mesh,
}


# -- process plumbing --------------------------------------------------------------


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--transport", choices=TRANSPORTS, default="tcp")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--trust", type=Path)
    parser.add_argument("--connect", default="")
    parser.add_argument("--expect", type=int, default=0, help="change rows to wait for")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--writes", type=int, default=1_000)
    parser.add_argument("--keys", type=int, default=1_000, help="distinct row ids in the mesh")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--batch-rows", type=int, default=0, help="Limits.max_batch_rows")
    parser.add_argument("--window", type=int, default=0, help="Limits.window")
    parser.add_argument("--poll-interval", type=float, default=0.0, help="Peer poll_interval")
    parser.add_argument(
        "--bootstrap", action="store_true", help="catchup: take a snapshot (not changes)"
    )
    parser.add_argument("--wide", action="store_true", help="catchup: the 4-column table")
    parser.add_argument(
        "--app-write-interval",
        type=float,
        default=0.0,
        help="catchup: s between the app's writes during the catch-up (0: none)",
    )
    return parser.parse_args(argv)


@contextlib.asynccontextmanager
async def stop_on_signal_or_eof(task: asyncio.Task[Any]) -> AsyncIterator[None]:
    """Cancel ``task`` on SIGTERM/SIGINT or when stdin reaches EOF (parent gone)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    stdin = sys.stdin.fileno()

    watch = stat.S_ISFIFO(os.fstat(stdin).st_mode)  # a pipe from the parent

    def readable() -> None:
        with contextlib.suppress(OSError):
            if os.read(stdin, 4096):
                return
        loop.remove_reader(stdin)
        task.cancel()

    if watch:
        loop.add_reader(stdin, readable)
    try:
        yield
    finally:
        if watch:
            loop.remove_reader(stdin)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def run(args: argparse.Namespace) -> int:
    task = asyncio.create_task(ROLES[args.role](args))
    async with stop_on_signal_or_eof(task):
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except Failed as exc:
            emit(error=str(exc))
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    return asyncio.run(run(parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
