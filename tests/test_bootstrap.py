"""A fresh device bootstraps from a snapshot (protocol 4), then catches up with changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
import pytest

import peer.protocol
from peer import events
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot
from peer.errors import SnapshotError, StoreError
from peer.peer import Peer
from peer.protocol import Limits
from peer.retry import Backoff
from peer.store import Store
from peer.store import snapshot as store_snapshot
from peer.store.snapshot import prepare_received, snapshot_reference
from tests.support import Node, address, wait_for
from transports.memory import MemoryNetwork, MemoryTransport
from transports.websocket import WebSocketTransport

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes "
    "(id INTEGER PRIMARY KEY NOT NULL, body TEXT NOT NULL DEFAULT '', n INTEGER, "
    "score REAL)"
)
FAST = Backoff(initial=0.01, maximum=0.2)
SOURCE_LIMITS = Limits(snapshot_threshold=100, max_frame_bytes=16 * 1024, window=2)
CHANGE_COLUMNS = 'SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes'


def new_store(path: Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.execute("CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v TEXT)")
    store.make_crr("notes")
    return store


def fill(store: Store, count: int, start: int = 0) -> None:
    store.executescript(
        "BEGIN;"
        + "".join(
            f"INSERT INTO notes VALUES ({i}, 'note {i}', {i * 7}, {i / 3});"
            for i in range(start, start + count)
        )
        + "COMMIT;"
    )


def notes(store: Store) -> list[Any]:
    return store.execute("SELECT * FROM notes ORDER BY id")


def changes(store: Store) -> list[Any]:
    return sorted(store.execute(CHANGE_COLUMNS), key=repr)


def fresh(store: Store) -> bool:
    """Whether ``store``'s file is fresh, read through a Store of its own at
    once (from an event callback, while a Peer runs on ``store``)."""
    with Store(store.path, read_only=True) as reader:
        return reader.is_fresh()


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if ".snapshot-" in name]


class Pair:
    """A source peer with rows and a fresh receiver dialing it, over memory."""

    def __init__(self, tmp_path: Path, rows: int = 400, *, accept: bool = True) -> None:
        self.network = MemoryNetwork()
        (tmp_path / "source").mkdir()
        (tmp_path / "fresh").mkdir()
        self.directory = tmp_path / "fresh"
        self.source_store = new_store(tmp_path / "source" / "db")
        self.source_store.execute("INSERT INTO settings VALUES ('theme', 'dark')")
        fill(self.source_store, rows)
        self.store = new_store(self.directory / "db")
        self.site = self.store.site_id
        self.events: list[events.Event] = []
        self.source = Peer(
            self.source_store,
            [MemoryTransport(self.network, "source")],
            limits=SOURCE_LIMITS,
            backoff=FAST,
            poll_interval=0.02,
            insecure=True,
        )
        self.receiver = Peer(
            self.store,
            [MemoryTransport(self.network, "fresh")],
            connect=["memory://source"],
            backoff=FAST,
            poll_interval=0.02,
            insecure=True,
            accept_snapshot=accept,
        )
        self.receiver.subscribe(self.events.append)

    def seen(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    async def same_notes(self) -> bool:
        """Both stores hold the same notes (each read on its peer's store thread)."""
        mine = await self.receiver.run_in_store(notes, self.store)
        return mine == await self.source.run_in_store(notes, self.source_store)

    async def converged(self) -> bool:
        return bool(self.seen(events.Eose)) and await self.same_notes()

    @contextlib.asynccontextmanager
    async def running(self, *, close: bool = True) -> AsyncIterator[Pair]:
        await self.source.start()
        await self.receiver.start()
        try:
            yield self
        finally:
            await self.receiver.stop()
            await self.source.stop()
            if close:
                self.store.close()
                self.source_store.close()


async def replayed(tmp_path: Path, source: Store) -> list[Any]:
    """What change replay produces in a fresh store from ``source``."""
    network = MemoryNetwork()
    (tmp_path / "replay").mkdir()
    store = new_store(tmp_path / "replay" / "db")
    a = Peer(source, [MemoryTransport(network, "a")], insecure=True, limits=SOURCE_LIMITS)
    b = Peer(
        store,
        [MemoryTransport(network, "b")],
        connect=["memory://a"],
        insecure=True,
        accept_snapshot=False,
        backoff=FAST,
    )
    seen: list[events.Event] = []
    b.subscribe(seen.append)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: any(isinstance(e, events.Eose) for e in seen), within=20)
        assert not any(isinstance(e, events.Bootstrapped) for e in seen)
        return await b.run_in_store(changes, store)
    finally:
        await b.stop()
        await a.stop()
        store.close()


async def test_fresh_peer_bootstraps_and_equals_change_replay(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    async with pair.running(close=False):
        await wait_for(pair.converged, within=20)
        (boot,) = pair.seen(events.Bootstrapped)
        source_version = await pair.source.run_in_store(pair.source_store.db_version)
        assert boot.cursor == {pair.source_store.site_id: source_version}
        assert pair.receiver.store is pair.store  # the app's Store, reopened in place
        assert pair.store.site_id == pair.site  # the site id its HELLO showed
        # The sender's local-only data stays its own.
        assert await pair.receiver.run_in_store(pair.store.execute, "SELECT * FROM settings") == []
        assert leftovers(pair.directory) == []
        assert leftovers(tmp_path / "source") == []
        # The replica goes on as a peer: a write of its own reaches the source.
        await pair.receiver.execute("INSERT INTO notes VALUES (100000, 'mine', 1, 0.5)")
        await wait_for(pair.same_notes, within=20)
        await pair.source.execute("DELETE FROM notes WHERE id = 100000")
        await wait_for(pair.same_notes, within=20)
        booted = await pair.receiver.run_in_store(changes, pair.store)
    try:
        expected = await replayed(tmp_path, pair.source_store)
    finally:
        pair.store.close()
        pair.source_store.close()
    assert booted == expected


async def test_writes_on_the_source_during_the_snapshot_arrive_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = Pair(tmp_path)
    make = OutgoingSnapshot.make

    def make_then_write(store: Store) -> OutgoingSnapshot:
        made = make(store)
        # On the source's read thread: the writes go through a connection of
        # their own (the store's main connection is its store thread's).
        with Store(store.path) as writer:
            writer.execute("INSERT INTO notes VALUES (5000, 'after the copy', 1, 1.0)")
            writer.execute("UPDATE notes SET body = 'changed after the copy' WHERE id = 3")
        return made

    monkeypatch.setattr(OutgoingSnapshot, "make", staticmethod(make_then_write))
    async with pair.running():
        await wait_for(pair.converged, within=20)
        (boot,) = pair.seen(events.Bootstrapped)
        source_version = await pair.source.run_in_store(pair.source_store.db_version)
        assert boot.cursor[pair.source_store.site_id] < source_version
        sql = "SELECT body FROM notes WHERE id IN (3, 5000) ORDER BY id"
        assert await pair.receiver.run_in_store(pair.store.execute, sql) == [
            ("changed after the copy",),
            ("after the copy",),
        ]
        changed = pair.seen(events.Changed)
        assert changed
        assert sum(event.rows for event in changed) < 20


def _tamper(monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]) -> None:
    make = OutgoingSnapshot.make

    def make_tampered(store: Store) -> OutgoingSnapshot:
        made = make(store)
        made._file.close()  # reopened below, after the change
        change(made.path)
        return OutgoingSnapshot(made.path, made.cursor)

    monkeypatch.setattr(OutgoingSnapshot, "make", staticmethod(make_tampered))


def _sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(os.fspath(path), isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data), 3 * page):
        data[offset + 8 : offset + 200] = os.urandom(192)
    path.write_bytes(bytes(data))


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "extra trigger": lambda path: _sql(
        path, "CREATE TRIGGER evil AFTER INSERT ON notes BEGIN DELETE FROM notes; END"
    ),
    "extra view": lambda path: _sql(path, "CREATE VIEW peek AS SELECT * FROM notes"),
    "other schema": lambda path: _sql(path, "ALTER TABLE notes ADD COLUMN extra TEXT"),
    "other schema version": lambda path: _sql(path, "PRAGMA user_version = 9"),
    "bad bookkeeping": lambda path: _sql(path, "INSERT INTO crpeer_cursor VALUES (x'00', 1)"),
    "integrity": _corrupt,
    # The extension adds one to a clock's counters without an overflow check.
    "counter past 2**62": lambda path: _sql(
        path, f'UPDATE "notes__crsql_clock" SET col_version = {2**62 + 1}'
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
async def test_refused_snapshot_leaves_receiver_unchanged_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tampering: str
) -> None:
    _tamper(monkeypatch, TAMPERINGS[tampering])
    await _refused_then_replayed(tmp_path)


async def test_snapshot_with_a_bad_sha256_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OutgoingSnapshot, "sha256", property(lambda self: bytes(32)))
    await _refused_then_replayed(tmp_path)


async def _refused_then_replayed(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    at_refusal: list[tuple[bool, list[str]]] = []

    def check(event: events.Event) -> None:
        if isinstance(event, events.SnapshotRefused):
            at_refusal.append((fresh(pair.store), leftovers(pair.directory)))

    pair.receiver.subscribe(check)
    async with pair.running():
        await wait_for(pair.converged, within=20)
        assert pair.seen(events.SnapshotRefused)
        assert not pair.seen(events.Bootstrapped)
        # Refused before anything touched the database; the file is gone after.
        assert at_refusal[0][0] is True
        assert pair.store.site_id == pair.site
        assert leftovers(pair.directory) == []
        assert sum(event.rows for event in pair.seen(events.Changed)) >= 400 * 3


async def test_a_peer_that_speaks_protocol_3_replays_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer.protocol, "PROTOCOL_VERSION", 3)
    pair = Pair(tmp_path)
    async with pair.running():
        await wait_for(pair.converged, within=20)
        assert not pair.seen(events.Bootstrapped)
        assert not pair.seen(events.SnapshotRefused)
        assert pair.receiver.sessions[0].session.version == 3


async def test_receiver_that_declines_snapshots_replays_changes(tmp_path: Path) -> None:
    pair = Pair(tmp_path, accept=False)
    async with pair.running():
        await wait_for(pair.converged, within=20)
        assert not pair.seen(events.Bootstrapped)
        assert sum(event.rows for event in pair.seen(events.Changed)) >= 400 * 3


async def test_interrupted_transfer_leaves_receiver_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = Pair(tmp_path, rows=1500)
    write = IncomingSnapshot.write
    parts = 0
    loop: asyncio.AbstractEventLoop | None = None
    at_cut: list[tuple[bool, list[str]]] = []

    def write_then_cut(self: IncomingSnapshot, chunk: bytes | memoryview) -> None:
        nonlocal parts
        parts += 1
        write(self, chunk)
        if parts == 3:
            assert loop is not None
            loop.call_soon_threadsafe(pair.network.cut, "fresh", "source")

    def check(event: events.Event) -> None:
        if isinstance(event, events.Disconnected) and not at_cut:
            at_cut.append((fresh(pair.store), leftovers(pair.directory)))

    monkeypatch.setattr(IncomingSnapshot, "write", write_then_cut)
    pair.receiver.subscribe(check)
    async with pair.running():
        loop = asyncio.get_running_loop()
        await wait_for(lambda: bool(at_cut), within=20)
        # Cut mid-stream: nothing installed, the partial file removed.
        assert at_cut[0] == (True, [])
        assert not pair.seen(events.Bootstrapped)
        # The next session starts over and bootstraps.
        await wait_for(pair.converged, within=20)
        assert len(pair.seen(events.Bootstrapped)) == 1
        assert parts > 3


def test_prepare_received_refuses_a_snapshot_that_knows_our_site(tmp_path: Path) -> None:
    with new_store(tmp_path / "a") as source, new_store(tmp_path / "b") as receiver:
        fill(source, 5)
        out = tmp_path / "copy"
        source.copy_into(out)
        reference = snapshot_reference(receiver)
        _sql(out, f"INSERT INTO crsql_site_id (site_id) VALUES (x'{receiver.site_id.hex()}')")
        with pytest.raises(SnapshotError, match="our site id"):
            prepare_received(out, reference)


def test_install_snapshot_refuses_a_store_that_is_no_longer_fresh(tmp_path: Path) -> None:
    with new_store(tmp_path / "a") as source, new_store(tmp_path / "b") as receiver:
        fill(source, 5)
        out = tmp_path / "copy"
        source.copy_into(out)
        prepare_received(out, snapshot_reference(receiver))
        receiver.execute("INSERT INTO notes VALUES (77, 'mine', 1, 1.0)")
        before = (tmp_path / "b").read_bytes()
        with pytest.raises(StoreError, match="no longer fresh"):
            receiver.install_snapshot(out)
        assert notes(receiver) == [(77, "mine", 1, 1.0)]
        assert (tmp_path / "b").read_bytes() == before


def test_install_snapshot_replaces_the_file_under_an_open_store(tmp_path: Path) -> None:
    with new_store(tmp_path / "a") as source, new_store(tmp_path / "b") as receiver:
        fill(source, 50)
        out = tmp_path / "copy"
        source.copy_into(out)
        cursor = prepare_received(out, snapshot_reference(receiver))
        site = receiver.site_id
        receiver.install_snapshot(out)
        assert not out.exists()
        assert receiver.site_id == site
        assert receiver.cursor() == cursor == {source.site_id: source.db_version()}
        assert notes(receiver) == notes(source)
        assert receiver.integrity_problems() == []
        # Every connection is on the new file: reads, merges and local writes.
        assert receiver.next_page({}, 1000, exclude={source.site_id}) == []
        receiver.execute("INSERT INTO notes VALUES (999, 'mine', 1, 1.0)")
        (page,) = [receiver.next_page({}, 1000, exclude={source.site_id})]
        assert isinstance(page, list)
        assert {change[6] for change in page} == {site}


def test_install_snapshot_refuses_while_another_connection_holds_the_file(
    tmp_path: Path,
) -> None:
    with new_store(tmp_path / "a") as source, new_store(tmp_path / "b") as receiver:
        fill(source, 20)
        out = tmp_path / "copy"
        source.copy_into(out)
        prepare_received(out, snapshot_reference(receiver))
        foreign = sqlite3.connect(os.fspath(tmp_path / "b"), isolation_level=None)
        try:
            foreign.execute("SELECT count(*) FROM notes").fetchone()
            with pytest.raises(StoreError, match="keeps the database open"):
                receiver.install_snapshot(out)
        finally:
            foreign.close()
        # Nothing moved; the store reopened on its own file and goes on.
        assert out.exists()
        assert notes(receiver) == []
        assert receiver.is_fresh()
        receiver.install_snapshot(out)
        assert notes(receiver) == notes(source)


@pytest.mark.parametrize("kind", ["wss", "tcp"])
async def test_bootstrap_over_tls(tmp_path: Path, kind: str) -> None:
    a, b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)

    def transport(node: Node) -> Any:
        if kind == "tcp":
            return node.tcp()
        return WebSocketTransport(
            "127.0.0.1",
            0,
            server_ssl=node.identity.server_ssl_context(),
            client_ssl=node.identity.client_ssl_context(),
        )

    try:
        for start in range(0, 600, 200):
            a.store.executescript(
                "BEGIN;"
                + "".join(
                    f"INSERT INTO notes VALUES ({i}, 'note {i}');"
                    for i in range(start, start + 200)
                )
                + "COMMIT;"
            )
        limits = Limits(snapshot_threshold=100, max_frame_bytes=32 * 1024)
        async with a.peer(transports=[transport(a)], limits=limits) as pa:  # noqa: SIM117
            async with b.peer([address(pa)], transports=[transport(b)]) as pb:
                await wait_for(lambda: any(isinstance(e, events.Eose) for e in b.seen), within=20)
                assert any(isinstance(e, events.Bootstrapped) for e in b.seen)
                assert b.rows() == a.rows()
                await pb.execute("INSERT INTO notes VALUES (5000, 'from b')")
                await wait_for(lambda: a.rows() == b.rows(), within=20)
                assert pb.sessions[0].peer_id == a.identity.peer_id
    finally:
        a.close()
        b.close()


async def test_a_peer_removes_snapshot_files_a_crash_left(tmp_path: Path) -> None:
    store = new_store(tmp_path / "db")
    partial = tmp_path / ".db.0123456789ab.snapshot-in"
    partial.write_bytes(b"half a database")
    other = tmp_path / ".other.0123456789ab.snapshot-in"  # another database's: kept
    other.write_bytes(b"x")
    peer = Peer(store, [], insecure=True)
    try:
        async with peer:
            assert not partial.exists()
            assert other.exists()
    finally:
        store.close()


def test_relabeling_sorts_its_index_builds_on_disk() -> None:
    """Relabeling a snapshot rebuilds an index over every clock row; with
    pysqlite3's SQLite (every temporary file in memory) that sort took about
    140 MB of RAM at 1,000,000 rows, so it runs on a SQLite that sorts on disk."""
    module = store_snapshot._relabeling_module()
    connection = module.connect(":memory:")
    try:
        options = {str(row[0]) for row in connection.execute("PRAGMA compile_options")}
    finally:
        connection.close()
    assert "TEMP_STORE=3" not in options, options


async def test_a_copy_made_for_a_session_that_ended_meanwhile_is_removed(tmp_path: Path) -> None:
    store = new_store(tmp_path / "source.db")
    fill(store, 2_000)
    store.close()
    peer = Peer(tmp_path / "source.db", insecure=True)
    await peer.start()
    try:
        making = asyncio.ensure_future(peer._host.make_snapshot())  # what a session asks for
        await asyncio.sleep(0)  # the copy has started on the read thread
        making.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await making
    finally:
        await peer.stop()
    assert not [name for name in os.listdir(tmp_path) if "snapshot-out" in name]
