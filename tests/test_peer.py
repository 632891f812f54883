"""Peers over the in-memory transport: catch-up, EOSE, live relay, faults."""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pysqlite3.dbapi2 as sqlite3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer import crsqlite, events
from peer.errors import ChannelClosed, ErrorCode, StoreError
from peer.messages import Changes, CursorMessage, Hello, LimitsMessage, Part, decode, encode
from peer.peer import Peer
from peer.peer_background import PeerBackground
from peer.protocol import Limits
from peer.retry import Backoff
from peer.store import Change, Store
from tests.hooked_store import HookedStore
from tests.support import holds_within, peek, scaled, wait_for
from transports.memory import MemoryNetwork, MemoryTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, n INTEGER)"
FAST = Backoff(initial=0.01, maximum=0.2)


def new_store(path: Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def hooked_store(path: str | Path) -> HookedStore:
    """A store like :func:`new_store` whose merges and reads call a test's hooks."""
    store = HookedStore(path, [SCHEMA])
    store.make_crr("notes")
    return store


def hook(cluster: Cluster, index: int) -> HookedStore:
    """Put a hooked store in place of the cluster's store ``index`` (before its peer is made)."""
    cluster.stores[index].close()
    store = cluster.stores[index] = hooked_store(cluster.directory / f"p{index}-hooked.db")
    return store


def rows(store: Store) -> list[Any]:
    """The notes of ``store``'s file, from any thread (see :func:`tests.support.peek`)."""
    return peek(store, "SELECT * FROM notes ORDER BY id")


class Cluster:
    """N peers on one MemoryNetwork, their stores files in a temporary folder
    of the cluster's own; closes everything and removes the folder on exit."""

    def __init__(self, count: int, seed: int = 0, limits: Limits | None = None) -> None:
        self.network = MemoryNetwork(seed=seed)
        self._folder = tempfile.TemporaryDirectory(prefix="crpeer-cluster-")
        self.directory = Path(self._folder.name)
        self.stores = [new_store(self.directory / f"p{i}.db") for i in range(count)]
        self.peers: list[Peer] = []
        self.limits = limits

    def peer(self, index: int, connect: list[int]) -> Peer:
        peer = Peer(
            self.stores[index],
            [MemoryTransport(self.network, f"p{index}")],
            name=f"p{index}",
            connect=[f"memory://p{i}" for i in connect],
            backoff=FAST,
            limits=self.limits,
            poll_interval=0.02,
            seed=index,
            insecure=True,
        )
        self.peers.append(peer)
        return peer

    def converged(self) -> bool:
        views = [rows(s) for s in self.stores]
        return all(v == views[0] for v in views)

    async def __aenter__(self) -> Cluster:
        for peer in self.peers:
            await peer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for peer in self.peers:
            await peer.stop()
        for store in self.stores:
            store.close()
        self._folder.cleanup()


async def test_catch_up_eose_then_live_across_a_line_of_three() -> None:
    cluster = Cluster(3)
    a, b, c = (cluster.peer(0, []), cluster.peer(1, [0]), cluster.peer(2, [1]))
    for i in range(50):
        cluster.stores[0].execute("INSERT INTO notes VALUES (?, 'from a', ?)", (i, i))
    seen: list[events.Event] = []
    c.subscribe(seen.append)
    async with cluster:
        await wait_for(lambda: len(rows(cluster.stores[2])) == 50)
        await wait_for(lambda: {events.Eose, events.Changed} <= {type(e) for e in seen})
        # c's catch-up from b may end (EOSE) before b has a's rows: those then
        # arrive live. Either way the handshake and cursor come first.
        session_events = [e for e in seen if not isinstance(e, events.DialState)]
        assert [type(e) for e in session_events[:2]] == [events.Connected, events.Synced]
        assert sum(isinstance(e, events.Eose) for e in seen) == 1
        # Live, both directions, through the middle peer.
        await c.execute("INSERT INTO notes VALUES (100, 'from c', 0)")
        await a.execute("UPDATE notes SET body = 'edited on a' WHERE id = 3")
        await wait_for(cluster.converged)
        assert rows(cluster.stores[0])[3][1] == "edited on a"
        assert len(rows(cluster.stores[0])) == 51
        changed = [e for e in seen if isinstance(e, events.Changed)]
        assert changed
        assert all(e.tables == frozenset({"notes"}) for e in changed)
        assert await b.run_in_store(b.store.held_count) == 0


async def test_nothing_is_echoed_to_where_it_came_from() -> None:
    cluster = Cluster(2)
    a, b = cluster.peer(0, []), cluster.peer(1, [0])
    async with cluster:
        await wait_for(lambda: len(a.sessions) == 1 and len(b.sessions) == 1)
        for i in range(20):
            await a.execute("INSERT INTO notes VALUES (?, 'x', ?)", (i, i))
        await wait_for(cluster.converged)
        # A marker each way: a session sends in the order its store holds the
        # changes, so an echo of what a side merged would go out before the
        # marker written after it, and be counted by the time the marker lands.
        await b.execute("INSERT INTO notes VALUES (100, 'marker from b', 0)")
        await wait_for(lambda: len(rows(cluster.stores[0])) == 21)
        await a.execute("INSERT INTO notes VALUES (101, 'marker from a', 0)")
        await wait_for(
            lambda: (
                len(rows(cluster.stores[1])) == 22
                and b.sessions[0].stats.rows_sent >= 2
                and a.sessions[0].stats.rows_sent >= 42
            )
        )
        assert b.sessions[0].stats.rows_sent == 2  # its marker's two changes, nothing of a's
        assert a.sessions[0].stats.rows_sent == 42  # its rows and marker, nothing of b's


async def test_a_relay_drops_what_the_remote_announced_while_the_read_waited() -> None:
    # Triangle: w writes; r and z both hear it from w directly. r's reads
    # are held (a busy read thread) until z has merged w's rows and
    # announced so (HAVE): r's read for z then returns w's rows, and r
    # sends none of them.
    cluster = Cluster(3)
    slow = hook(cluster, 1)
    reads: list[int] = []
    reading = threading.Event()  # r's read thread runs (cleared: it waits)
    reading.set()

    def held_read() -> None:
        reading.wait(scaled(10))

    slow.before_next_page = held_read
    slow.after_next_page = lambda page: reads.append(len(page) if isinstance(page, list) else -1)
    w, r, z = cluster.peer(0, []), cluster.peer(1, [0]), cluster.peer(2, [0, 1])
    try:
        async with cluster:
            await wait_for(lambda: all(len(p.sessions) == 2 for p in (w, r, z)))
            await wait_for(lambda: all(s.snapshot().state == "live" for s in r.sessions))
            caught_up = len(reads)  # r's catch-up reads are done
            to_z = next(s for s in r.sessions if s.remote is not None and s.remote.name == "p2")
            reading.clear()
            for i in range(20):
                await w.execute("INSERT INTO notes VALUES (?, 'from w', ?)", (i, i))
            await wait_for(cluster.converged)
            own, last = w.site_id, await w.run_in_store(cluster.stores[0].own_version)
            await wait_for(lambda: to_z.session.remote_cursor.get(own, 0) >= last)  # z's HAVE
            reading.set()
            await wait_for(lambda: any(count > 0 for count in reads[caught_up:]))
            # r did read w's rows for z ... A marker of r's own goes to z on
            # the same session after them: any of w's rows r sent would be
            # counted by the time it lands.
            await r.execute("INSERT INTO notes VALUES (100, 'marker from r', 0)")
            await wait_for(lambda: len(rows(cluster.stores[2])) == 21)
            assert to_z.stats.rows_sent == 2  # ... and sent z none of them: the marker's two
    finally:
        reading.set()


async def test_writes_from_another_connection_reach_peers_without_a_call(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    new_store(path).close()
    cluster = Cluster(1)
    cluster.stores.insert(0, Store(path))
    cluster.peer(0, [])
    cluster.peer(1, [0])
    async with cluster:
        other = sqlite3.connect(str(path), isolation_level=None)
        crsqlite.load(other)
        try:
            other.execute("INSERT INTO notes VALUES (1, 'written elsewhere', 1)")
        finally:
            other.execute("SELECT crsql_finalize()")
            other.close()
        await wait_for(lambda: rows(cluster.stores[1]) == [(1, "written elsewhere", 1)])


async def test_timing_observers_replaced_after_construction_are_the_ones_called() -> None:
    cluster = Cluster(2)
    writer = cluster.peer(0, [])
    reader = cluster.peer(1, [0])
    timed: list[str] = []
    reader.timing_observers = [lambda kind, seconds: timed.append(kind)]
    async with cluster:
        await writer.execute("INSERT INTO notes VALUES (1, 'timed', 1)")
        await wait_for(lambda: rows(cluster.stores[1]) == [(1, "timed", 1)])
        assert "apply" in timed


async def test_a_failing_poll_for_local_writes_is_logged_once_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = Cluster(2)
    store = hook(cluster, 0)
    writer = cluster.peer(0, [])
    cluster.peer(1, [0])
    failures: list[int] = []

    def failing_poll() -> None:
        if len(failures) < 5:
            failures.append(1)
            raise StoreError("disk I/O error")

    with caplog.at_level(logging.INFO, logger="crpeer.peer"):
        async with cluster:
            await wait_for(
                lambda: bool(writer.sessions) and writer.sessions[0].snapshot().state == "live"
            )
            store.after_change_marker = failing_poll
            # Past the catch-up, only the watcher's poll tells the session of this write.
            await writer.run_in_store(store.execute, "INSERT INTO notes VALUES (1, 'direct', 1)")
            await wait_for(lambda: rows(cluster.stores[1]) == [(1, "direct", 1)])
    assert len(failures) == 5
    warned = [r for r in caplog.records if "cannot poll the store" in r.getMessage()]
    assert len(warned) == 1
    assert "disk I/O error" in warned[0].getMessage()
    assert "polling the store for local writes again" in caplog.text


async def test_a_background_task_that_fails_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    background = PeerBackground([])

    async def broken() -> None:
        raise RuntimeError("watch broke")

    task = background.spawn(broken(), "crpeer-watch")
    with caplog.at_level(logging.ERROR, logger="crpeer.peer"):
        await asyncio.wait([task])
    assert "crpeer-watch stopped: watch broke" in caplog.text
    await background.stop()


async def test_writes_through_the_peers_own_store_reach_peers_without_a_call() -> None:
    cluster = Cluster(2)
    writer = cluster.peer(0, [])
    cluster.peer(1, [0])
    async with cluster:
        store = cluster.stores[0]
        await writer.run_in_store(store.execute, "INSERT INTO notes VALUES (1, 'direct', 1)")
        await wait_for(lambda: rows(cluster.stores[1]) == [(1, "direct", 1)])


async def test_merging_remote_changes_does_not_wake_the_watcher() -> None:
    # A wake makes the reader's idle session read the store for changes to
    # send: counting its reads counts the wakes.
    cluster = Cluster(2)
    store = hook(cluster, 1)
    writer = cluster.peer(0, [])
    reader = cluster.peer(1, [0])
    async with cluster:
        await wait_for(
            lambda: bool(reader.sessions) and reader.sessions[0].snapshot().state == "live"
        )
        reads: list[int] = []
        polls: list[int] = []
        store.after_next_page = lambda page: reads.append(1)
        store.after_change_marker = lambda: polls.append(1)
        for i in range(5):
            await writer.execute("INSERT INTO notes VALUES (?, 'remote', ?)", (i, i))
        await wait_for(lambda: len(rows(cluster.stores[1])) == 5)
        seen = len(polls)
        await wait_for(lambda: len(polls) >= seen + 3)  # the watcher saw the merges
        assert reads == []
        await reader.execute("INSERT INTO notes VALUES (99, 'local', 0)")
        await wait_for(lambda: len(rows(cluster.stores[0])) == 6)
        assert reads


async def test_a_session_cut_mid_catch_up_resumes_from_the_persisted_cursor() -> None:
    cluster = Cluster(2, limits=Limits(max_batch_rows=50, window=1))
    source = cluster.stores[0]
    source.executescript(
        "BEGIN;"
        + "".join(f"INSERT INTO notes VALUES ({i}, 'row', {i});" for i in range(2000))
        + "COMMIT;"
    )
    for i in range(2000, 2300):
        source.execute("INSERT INTO notes VALUES (?, 'single', ?)", (i, i))
    cluster.peer(0, [])
    receiver = cluster.peer(1, [0])
    origin, target = cluster.stores[0].site_id, cluster.stores[1]

    def snapshot() -> tuple[int, int]:
        # On the receiver's store thread, its own connection: no merge commits meanwhile.
        notes = target.execute("SELECT * FROM notes ORDER BY id")
        return len(notes), target.cursor().get(origin, 0)

    def consistent(count: int, version: int) -> bool:
        # Version 1 is the 2000-row transaction; each later version adds one row.
        return (count, version) == (0, 0) or count == 2000 + version - 1

    seen: list[events.Event] = []
    receiver.subscribe(seen.append)
    async with cluster:
        samples: list[tuple[int, int]] = []
        while len(samples) < 500 and (not samples or samples[-1][0] < 2300):
            samples.append(await receiver.run_in_store(snapshot))
            if len(samples) == 20:
                cluster.network.cut("p0", "p1")
        await wait_for(cluster.converged, within=30)
        samples.append(await receiver.run_in_store(snapshot))
    assert all(consistent(*sample) for sample in samples), samples
    assert samples[19][0] < 2300  # the cut came mid-catch-up
    assert any(isinstance(e, events.Disconnected) for e in seen)
    assert samples[-1] == (2300, 301)


def one_transaction_pair(
    tmp_path: Path, count: int, target: Store | None = None
) -> tuple[MemoryNetwork, Store, Store, Peer, Peer]:
    """A file store holding ``count`` rows written in one transaction, a fresh
    one (``target``, else a new one) dialing it, and their peers: frames of
    100 rows, a window of 2."""
    network = MemoryNetwork()
    source = new_store(tmp_path / "source.db")
    target = target or new_store(tmp_path / "target.db")
    source.executescript(
        "BEGIN;"
        + "".join(f"INSERT INTO notes VALUES ({i}, 'bulk', {i});" for i in range(count))
        + "COMMIT;"
    )
    limits = Limits(max_batch_rows=100, window=2)
    sender = Peer(source, [MemoryTransport(network, "s")], limits=limits, insecure=True)
    receiver = Peer(
        target,
        [MemoryTransport(network, "r")],
        connect=["memory://s"],
        limits=limits,
        backoff=FAST,
        insecure=True,
    )
    return network, source, target, sender, receiver


async def test_a_transaction_larger_than_a_frame_streams_into_one_commit(tmp_path: Path) -> None:
    network, source, target, sender, receiver = one_transaction_pair(tmp_path, 3000)
    seen: list[int] = []
    cut = False

    def app_reads(event: events.Event) -> None:
        # A Progress event follows each frame applied: the app reads while
        # the page is open.
        nonlocal cut
        if not isinstance(event, events.Progress):
            return
        seen.append(len(rows(target)))
        if not cut and event.rows_received > 1000:
            network.cut("s", "r")  # mid-page: the open transaction rolls back
            cut = True

    receiver.subscribe(app_reads)
    async with sender, receiver:
        await wait_for(lambda: len(rows(target)) == 3000, within=30)
        await receiver.execute("INSERT INTO notes VALUES (5000, 'app write after', 0)")
    assert cut
    assert len(seen) > 30  # the app read after every frame (6,000 changes, 100 a frame) ...
    assert set(seen) <= {0, 3000}  # ... and never saw half of the transaction
    assert target.cursor() == {source.site_id: 1}
    source.close()
    target.close()


async def test_an_app_write_during_an_open_page_waits_for_its_commit(tmp_path: Path) -> None:
    hooked = hooked_store(tmp_path / "target.db")
    _, source, target, sender, receiver = one_transaction_pair(tmp_path, 600, hooked)
    order: list[str] = []
    applying = threading.Event()  # the page's frames are applied (cleared: held)

    def held_frame(changes: Any, in_page: bool) -> None:
        if in_page:
            order.append("frame")
            applying.wait(scaled(10))

    hooked.before_apply = held_frame
    hooked.after_end_page = lambda commit: order.append(
        "page committed" if commit else "rolled back"
    )
    try:
        async with sender, receiver:
            await wait_for(lambda: "frame" in order)  # the page is open, its frame held
            write = asyncio.create_task(
                receiver.execute("INSERT INTO notes VALUES (5000, 'app write', 0)")
            )
            await wait_for(lambda: receiver._worker.waiting_for_page == 1)
            applying.set()
            await write
            order.append("app write")
            await wait_for(lambda: len(rows(target)) == 601)
    finally:
        applying.set()
    assert order.index("app write") > order.index("page committed")
    assert target.cursor() == {source.site_id: 1}
    source.close()
    target.close()


async def test_catch_up_reports_progress_until_eose() -> None:
    cluster = Cluster(2, limits=Limits(max_batch_rows=200))
    cluster.stores[0].executescript(
        "BEGIN;"
        + "".join(f"INSERT INTO notes VALUES ({i}, 'row', {i});" for i in range(1500))
        + "COMMIT;"
    )
    for i in range(1500, 1600):
        cluster.stores[0].execute("INSERT INTO notes VALUES (?, 'single', ?)", (i, i))
    cluster.peer(0, [])
    receiver = cluster.peer(1, [0])
    seen: list[events.Event] = []
    receiver.subscribe(seen.append)
    async with cluster:
        await wait_for(lambda: any(isinstance(e, events.Eose) for e in seen))
    progress = [e for e in seen if isinstance(e, events.Progress)]
    assert len(progress) > 2
    received = [p.rows_received for p in progress]
    assert received == sorted(received)
    assert progress[-1].rows_received == 3200  # 1,600 rows of 2 columns
    assert all(p.rows_expected >= p.rows_received for p in progress)
    assert progress[0].rows_expected == 3200  # the estimate is exact for a fresh peer
    assert progress[-1].rate > 0
    assert progress[-1].remaining == 0


async def test_a_newer_schema_is_held_then_applied_after_migration() -> None:
    cluster = Cluster(2)
    new_peer, old_peer = cluster.peer(0, []), cluster.peer(1, [0])
    cluster.stores[0].migrate(1, "ALTER TABLE notes ADD COLUMN color TEXT", alter=["notes"])
    cluster.stores[0].execute("INSERT INTO notes VALUES (1, 'colored', 1, 'red')")
    seen: list[events.Event] = []
    old_peer.subscribe(seen.append)
    async with cluster:
        await wait_for(lambda: any(isinstance(e, events.Outdated) for e in seen))
        outdated = next(e for e in seen if isinstance(e, events.Outdated))
        assert (outdated.local_schema_version, outdated.remote_schema_version) == (0, 1)
        assert rows(cluster.stores[1]) == [(1, "colored", 1)]
        # The older peer's own writes still reach the newer one.
        await old_peer.execute("INSERT INTO notes VALUES (2, 'old', 2)")
        await wait_for(lambda: len(rows(cluster.stores[0])) == 2)
        await old_peer.run_in_store(
            cluster.stores[1].migrate, 1, "ALTER TABLE notes ADD COLUMN color TEXT", alter=["notes"]
        )
        assert rows(cluster.stores[1]) == [(1, "colored", 1, "red"), (2, "old", 2, None)]
        assert await new_peer.run_in_store(new_peer.store.held_count) == 0


async def test_a_slow_receiver_slows_the_sender() -> None:
    window = 2
    cluster = Cluster(2, limits=Limits(max_batch_rows=10, window=window))
    for i in range(300):
        cluster.stores[0].execute("INSERT INTO notes VALUES (?, 'x', ?)", (i, i))
    slow = hook(cluster, 1)
    sender = cluster.peer(0, [])
    cluster.peer(1, [0])
    in_flight: list[int] = []
    window_used: list[bool] = []

    def slow_apply(changes: Any, in_page: bool) -> None:
        session = sender.sessions[0].session
        # Frames the sender sent that the receiver has not credited back yet.
        in_flight.append(window - session.credit)
        if not window_used:
            # The receiver holds its first frame until the sender has used
            # its whole window (and waits for credit).
            window_used.append(holds_within(lambda: session.credit == 0))
            in_flight.append(window - session.credit)

    slow.before_apply = slow_apply
    async with cluster:
        await wait_for(cluster.converged, within=30)
    assert window_used == [True]
    assert max(in_flight) == window


async def test_small_live_writes_wait_for_the_page_in_flight_and_go_out_together() -> None:
    # Nagle's rule: a short page is not sent while another is unapplied, so
    # writes made during a slow apply leave as one page, not one page each.
    cluster = Cluster(2, limits=Limits(window=4))
    slow = hook(cluster, 1)
    sender = cluster.peer(0, [])
    cluster.peer(1, [0])
    in_flight: list[int] = []
    applying = threading.Event()  # the receiver applies (cleared: it holds the page)

    def slow_apply(changes: Any, in_page: bool) -> None:
        in_flight.append(4 - sender.sessions[0].session.credit)
        applying.wait(scaled(10))

    slow.before_apply = slow_apply
    try:
        async with cluster:
            await wait_for(
                lambda: bool(sender.sessions) and sender.sessions[0].snapshot().eose_received
            )
            await sender.execute("INSERT INTO notes VALUES (0, 'live', 0)")
            await wait_for(lambda: bool(in_flight))  # the first page is held unapplied
            for i in range(1, 40):
                await sender.execute("INSERT INTO notes VALUES (?, 'live', ?)", (i, i))
            applying.set()
            await wait_for(lambda: len(rows(cluster.stores[1])) == 40)
    finally:
        applying.set()
    assert in_flight
    assert max(in_flight) == 1
    assert len(in_flight) <= 10  # 40 writes, a handful of pages


async def test_a_catch_up_of_transactions_that_leave_frames_part_full_still_pipelines() -> None:
    # 30-change-row transactions in 50-row frames: each frame is cut at 30
    # rows (the next transaction does not fit). That is not a short page:
    # the sender keeps several frames in flight instead of waiting for each.
    cluster = Cluster(2, limits=Limits(max_batch_rows=50, window=4))
    for tx in range(20):
        cluster.stores[0].execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 14) "
            "INSERT INTO notes SELECT ? * 15 + i, 'bulk', i FROM n",
            (tx,),
        )
    slow = hook(cluster, 1)
    sender = cluster.peer(0, [])
    cluster.peer(1, [0])
    in_flight: list[int] = []
    sizes: list[int] = []
    window_used: list[bool] = []

    def slow_apply(changes: Any, in_page: bool) -> None:
        session = sender.sessions[0].session
        in_flight.append(4 - session.credit)
        sizes.append(len(changes))
        if not window_used:
            # The receiver holds its first frame: a pipelining sender fills
            # its window meanwhile; one that waited for each frame would not.
            window_used.append(holds_within(lambda: session.credit == 0, within=5))
            in_flight.append(4 - session.credit)

    slow.before_apply = slow_apply
    async with cluster:
        await wait_for(cluster.converged, within=30)
    assert set(sizes) == {30}
    assert window_used == [True]
    assert max(in_flight) > 1


# -- hostile input ------------------------------------------------------------------


@pytest.fixture
async def lone_peer(tmp_path: Path) -> AsyncIterator[tuple[Peer, MemoryNetwork]]:
    """A peer to send hand-made frames to, its store a file in ``tmp_path``
    (a page spanning frames streams into one open transaction)."""
    network = MemoryNetwork()
    store = new_store(tmp_path / "target.db")
    peer = Peer(
        store,
        [MemoryTransport(network, "target")],
        name="target",
        backoff=FAST,
        limits=Limits(max_frame_bytes=64 * 1024),
        insecure=True,
    )
    await peer.start()
    yield peer, network
    await peer.stop()
    store.close()


async def talk(
    network: MemoryNetwork, name: str, frames: list[bytes]
) -> tuple[ErrorCode | None, int]:
    """Dial the target, send frames; return the error code it answered with."""
    transport = MemoryTransport(network, name, listen=False)
    await transport.start(lambda channel: channel.close())
    channel = await transport.dial("memory://target")
    hello = decode(await channel.recv(), max_frame_bytes=1 << 20, max_batch_rows=10)
    number = 0
    for frame in frames:
        await channel.send(frame)
    code = None
    try:
        for _ in range(10):
            answer = decode(
                await asyncio.wait_for(channel.recv(), 5),
                max_frame_bytes=1 << 20,
                max_batch_rows=10**6,
            )
            number = answer.number
            if type(answer.message).__name__ == "Error":
                code = answer.message.code  # type: ignore[union-attr]
                break
    except ChannelClosed:
        pass
    await transport.stop()
    assert isinstance(hello.message, Hello)
    return code, number


def hello_frame(site: bytes) -> bytes:
    return encode(Hello(1, 1, site, "hostile", 0, b"\0" * 16, 100, 4, 1), 0)


def v3_opening(site: bytes) -> list[bytes]:
    """HELLO (protocol 3), LIMITS and CURSOR: the frames before any PART."""
    return [
        encode(Hello(1, 3, site, "hostile", 0, b"\0" * 16, 100, 4, 1), 0),
        encode(LimitsMessage(1 << 20, 1 << 20), 1),
        encode(CursorMessage({}), 2),
    ]


@pytest.mark.parametrize(
    ("name", "frames", "expected"),
    [
        ("garbage", [b"\xc1\xff\x00 not msgpack"], ErrorCode.MALFORMED_FRAME),
        ("wrong-type", [msgpack.packb([1, 0, "one", 1, b"x" * 16])], ErrorCode.MALFORMED_FRAME),
        ("early-changes", [encode(Changes([], True), 0)], ErrorCode.UNEXPECTED_MESSAGE),
        ("oversized", [b"\x00" * (100 * 1024)], ErrorCode.FRAME_TOO_LARGE),
        (
            "unknown-table",
            [
                hello_frame(b"H" * 16),
                encode(CursorMessage({}), 1),
                encode(
                    Changes([("secret", b"\x01\t\x01", "x", 1, 1, 1, b"H" * 16, 1, 0)], True), 2
                ),
            ],
            ErrorCode.INVALID_CHANGE,
        ),
        (
            # A packed key with no columns: cr-sqlite would take the value as the key.
            "keyless",
            [
                hello_frame(b"H" * 16),
                encode(CursorMessage({}), 1),
                encode(Changes([("notes", b"\x00", "body", 7, 1, 1, b"H" * 16, 1, 0)], True), 2),
            ],
            ErrorCode.INVALID_CHANGE,
        ),
        (
            "value-too-large",
            [*v3_opening(b"V" * 16), encode(Part(1 << 40, False, b"x" * 1000), 3)],
            ErrorCode.VALUE_TOO_LARGE,
        ),
        (
            "parts-past-total",
            [*v3_opening(b"P" * 16), encode(Part(10, False, b"x" * 11), 3)],
            ErrorCode.MALFORMED_FRAME,
        ),
        (
            "value-without-parts",
            [
                *v3_opening(b"W" * 16),
                encode(
                    Changes(
                        [("notes", b"\x01\t\x01", "body", 1, 1, 1, b"W" * 16, 1, 0)], True, parted=0
                    ),
                    3,
                ),
            ],
            ErrorCode.MALFORMED_FRAME,
        ),
    ],
)
async def test_hostile_frames_get_a_specific_error_and_the_peer_keeps_serving(
    lone_peer: tuple[Peer, MemoryNetwork],
    name: str,
    frames: list[bytes],
    expected: ErrorCode,
    tmp_path: Path,
) -> None:
    peer, network = lone_peer
    code, _ = await talk(network, name, frames)
    assert code is expected
    assert rows(peer.store) == []
    # A well-behaved peer still syncs with it afterwards.
    friend = new_store(tmp_path / "friend.db")
    friend.execute("INSERT INTO notes VALUES (1, 'friend', 1)")
    async with Peer(
        friend,
        [MemoryTransport(network, f"friend-{name}")],
        connect=["memory://target"],
        backoff=FAST,
        insecure=True,
    ):
        await wait_for(lambda: rows(peer.store) == [(1, "friend", 1)])
    friend.close()


async def test_a_bad_page_keeps_the_pages_behind_it_from_landing(
    lone_peer: tuple[Peer, MemoryNetwork], tmp_path: Path
) -> None:
    peer, network = lone_peer
    source = new_store(tmp_path / "source.db")
    source.execute("INSERT INTO notes VALUES (1, 'first', 1)")
    first = source.changes_since({}, 100)
    source.execute("INSERT INTO notes VALUES (3, 'third', 3)")
    third = source.changes_since({source.site_id: 1}, 100)
    bad: list[Change] = [("secret", b"\x01\t\x02", "x", 1, 1, 1, b"H" * 16, 1, 0)]
    frames = [hello_frame(source.site_id), encode(CursorMessage({}), 1)]
    frames += [encode(Changes(page, True), n) for n, page in enumerate([first, bad, third], 2)]
    code, _ = await talk(network, "bad-page", frames)
    assert code is ErrorCode.INVALID_CHANGE
    await peer.run_in_store(lambda: None)  # behind any apply still under way
    # The three pages came back to back: the first landed, the one after the
    # bad one did not (its group would move the cursor past what failed).
    assert rows(peer.store) == [(1, "first", 1)]
    assert await peer.run_in_store(peer.store.cursor) == {source.site_id: 1}
    source.close()


# -- convergence under random topologies and cuts ------------------------------------------


@st.composite
def topologies(
    draw: st.DrawFn,
) -> tuple[int, list[tuple[int, int]], list[tuple[str, int, int]], int]:
    count = draw(st.integers(3, 6))
    # A random spanning tree keeps the graph connected, plus random extra links.
    edges = [(i, draw(st.integers(0, i - 1))) for i in range(1, count)]
    extra = draw(
        st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)), max_size=4)
    )
    edges += [(a, b) for a, b in extra if a != b]
    actions = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("write"), st.integers(0, count - 1), st.integers(0, 5)),
                st.tuples(st.just("delete"), st.integers(0, count - 1), st.integers(0, 5)),
                st.tuples(st.just("cut"), st.integers(0, len(edges) - 1), st.just(0)),
            ),
            min_size=1,
            max_size=25,
        )
    )
    return count, edges, actions, draw(st.integers(0, 2**16))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_random_topologies_with_cuts_converge_to_the_oracle(
    scenario: tuple[int, list[tuple[int, int]], list[tuple[str, int, int]], int],
) -> None:
    asyncio.run(_converge(*scenario))


async def _converge(
    count: int, edges: list[tuple[int, int]], actions: list[tuple[str, int, int]], seed: int
) -> None:
    cluster = Cluster(count, seed=seed)
    dials: dict[int, list[int]] = {i: [] for i in range(count)}
    for a, b in edges:
        dials[a].append(b)
    for i in range(count):
        cluster.peer(i, dials[i])
    oracle = new_store(cluster.directory / "oracle.db")
    rng = random.Random(seed)
    # Stores of the peers' files owned by this thread (a peer's own store is
    # its threads').
    readers = [Store(store.path) for store in cluster.stores]
    async with cluster:
        for kind, who, key in actions:
            if kind == "write":
                await cluster.peers[who].execute(
                    "INSERT INTO notes VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    (key, f"p{who}-{rng.random():.6f}", who),
                )
            elif kind == "delete":
                await cluster.peers[who].execute("DELETE FROM notes WHERE id = ?", (key,))
            else:
                a, b = edges[who]
                cluster.network.cut(f"p{a}", f"p{b}")
            # Everything committed anywhere goes to the oracle as it happens.
            for reader in readers:
                while batch := reader.changes_since(oracle.cursor(), 500, exclude={oracle.site_id}):
                    oracle.apply(batch)
            if rng.choice([False, False, True]):
                # Let the cluster work between actions: until a random peer's
                # store thread has run what was queued on it so far.
                await cluster.peers[rng.randrange(count)].run_in_store(lambda: None)
        await wait_for(lambda: all(rows(s) == rows(oracle) for s in cluster.stores), within=30)
    for reader in readers:
        reader.close()
    oracle.close()
