"""Large transactions and large values: frames are cut by bytes as well as
rows, and a value larger than a frame travels in PART frames.

Layers: the pure protocol (SyncSession pairs), the store's byte-bounded
reads, then real peers on every transport, catch-up and live.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgpack
import pysqlite3.dbapi2 as sqlite3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer import crsqlite, events
from peer.changes import change_size
from peer.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, ValueTooLargeError
from peer.messages import (
    FRAME_OVERHEAD,
    Changes,
    CursorMessage,
    Hello,
    MessageType,
    Part,
    decode,
    encode,
)
from peer.peer import Peer
from peer.protocol import ChangesReceived, Limits, SyncSession
from peer.retry import Backoff
from peer.store import Change, LargeGroup, Store
from tests.support import Node, address, peek, wait_for
from tests.test_protocol import A_SITE, B_SITE, FINGERPRINT, ProtocolPair, deliver, session
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.memory import MemoryNetwork, MemoryTransport
from transports.websocket import WebSocketTransport

KB, MB = 1024, 1024 * 1024
FAST = Backoff(initial=0.02, maximum=0.3)


def big(version: int, value: bytes | str, seq: int = 0, site: bytes = A_SITE) -> Change:
    return ("items", b"\x01\x09\x01", "name", value, 1, version, site, 1, seq)


def kinds(frames: list[bytes]) -> list[MessageType]:
    return [MessageType(msgpack.unpackb(f)[0]) for f in frames]


# -- the pure protocol ------------------------------------------------------------------


@pytest.mark.parametrize("value", [os.urandom(200 * KB), "é" * (150 * KB), "x" * (300 * KB)])
def test_a_value_larger_than_a_frame_travels_in_parts(value: bytes | str) -> None:
    limits = Limits(max_frame_bytes=64 * KB)
    pair = ProtocolPair(limits)
    pair.a.send_changes([big(1, value)], final=True)
    frames = pair.a.data_to_send()
    assert kinds(frames)[-1] is MessageType.CHANGES
    assert set(kinds(frames)[:-1]) == {MessageType.PART}
    assert len(frames) > 2
    assert all(len(frame) <= limits.max_frame_bytes for frame in frames)
    received: list[Any] = []
    for frame in frames:
        received.extend(pair.b.receive(frame))
    assert received == [ChangesReceived([big(1, value)], True)]
    assert pair.b.pending_value_bytes == 0
    assert pair.a.credit == limits.window - 1  # the parts took no credit


def test_a_value_that_fits_a_frame_goes_inline() -> None:
    pair = ProtocolPair(Limits(max_frame_bytes=64 * KB))
    pair.a.send_changes([big(1, b"v" * (60 * KB))], final=True)
    assert kinds(pair.a.data_to_send()) == [MessageType.CHANGES]


def test_a_value_above_the_remote_limit_is_refused_before_anything_is_sent() -> None:
    pair = ProtocolPair(Limits(max_frame_bytes=64 * KB, max_value_bytes=100 * KB))
    credit, known = pair.a.credit, dict(pair.a.remote_cursor)
    with pytest.raises(ValueTooLargeError) as caught:
        pair.a.send_changes([big(1, "x"), big(2, b"v" * (100 * KB + 1))], final=True)
    assert (caught.value.origin, caught.value.version) == (A_SITE, 2)
    assert (caught.value.size, caught.value.limit) == (100 * KB + 1, 100 * KB)
    assert pair.a.data_to_send() == []
    assert pair.a.credit == credit
    assert pair.a.remote_cursor == known  # nothing counted as sent


def test_the_receiver_refuses_a_value_above_its_limit_and_drops_a_partial_one() -> None:
    # The sender believes the receiver takes 1 MiB; the receiver takes 100 KiB.
    sender = session(A_SITE, limits=Limits(max_frame_bytes=64 * KB))
    receiver = session(B_SITE, limits=Limits(max_frame_bytes=64 * KB, max_value_bytes=100 * KB))
    for s in (sender, receiver):
        s.hello()
    deliver(sender, receiver)
    deliver(receiver, sender)
    sender.send_cursor({})
    receiver.send_cursor({})
    deliver(sender, receiver)
    deliver(receiver, sender)
    assert sender.remote_limits is not None
    sender.remote_limits = type(sender.remote_limits)(64 * KB, MB)
    sender.send_changes([big(1, os.urandom(200 * KB))], final=True)
    frames = sender.data_to_send()
    with pytest.raises(RemoteProtocolError) as caught:
        receiver.receive(frames[0])
    assert caught.value.code is ErrorCode.VALUE_TOO_LARGE
    assert receiver.pending_value_bytes == 0
    # A value within the limit, cut off half-way: the session that drops
    # holds nothing of it any more.
    pair = ProtocolPair(Limits(max_frame_bytes=64 * KB))
    pair.a.send_changes([big(1, os.urandom(90 * KB))], final=True)
    first, *_ = pair.a.data_to_send()
    pair.b.receive(first)
    assert 0 < pair.b.pending_value_bytes <= 90 * KB
    pair.b.send_error(ErrorCode.SHUTDOWN)
    assert pair.b.pending_value_bytes == 0


def test_the_limit_holds_for_a_value_inside_one_frame_too() -> None:
    # max_value_bytes below the frame limit: an inline value is checked as well.
    receiver = Limits(max_frame_bytes=64 * KB, max_value_bytes=10 * KB)
    frame = encode(Changes([big(1, b"v" * (20 * KB))], True), 0)
    with pytest.raises(RemoteProtocolError) as caught:
        decode(
            frame,
            max_frame_bytes=receiver.max_frame_bytes,
            max_batch_rows=10,
            max_value_bytes=receiver.max_value_bytes,
        )
    assert caught.value.code is ErrorCode.VALUE_TOO_LARGE


@pytest.mark.parametrize(
    "tamper",
    ["past-total", "no-row-for-it", "row-without-parts", "changed-total", "bad-utf8"],
)
def test_parts_that_do_not_add_up_fail_the_session(tamper: str) -> None:
    pair = ProtocolPair(Limits(max_frame_bytes=64 * KB))
    value: bytes | str = "é" * (50 * KB) if tamper == "bad-utf8" else os.urandom(100 * KB)
    pair.a.send_changes([big(1, value)], final=True)
    frames = pair.a.data_to_send()
    n = 3  # the first frame number after HELLO, LIMITS and CURSOR
    parts = [decode(f, max_frame_bytes=1 << 30, max_batch_rows=10).message for f in frames[:-1]]
    assert all(isinstance(p, Part) for p in parts)
    forged: list[bytes]
    if tamper == "past-total":
        forged = [*frames[:-1], encode(Part(100 * KB, False, b"more"), n + len(parts))]
    elif tamper == "no-row-for-it":
        forged = [*frames[:-1], encode(Changes([big(1, "x")], True), n + len(parts))]
    elif tamper == "row-without-parts":
        row = decode(frames[-1], max_frame_bytes=1 << 30, max_batch_rows=10).message
        forged = [encode(row, n)]
    elif tamper == "changed-total":
        first = parts[0]
        assert isinstance(first, Part)
        forged = [frames[0], encode(Part(first.total + 1, False, b"x"), n + 1)]
    else:
        first = parts[0]
        assert isinstance(first, Part)
        chunk = b"\xff" + bytes(first.chunk)[1:]
        forged = [encode(Part(first.total, True, chunk), n), *frames[1:]]
    with pytest.raises(RemoteProtocolError) as caught:
        feed(pair.b, forged)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME
    assert pair.b.pending_value_bytes == 0


def feed(receiver: SyncSession, frames: list[bytes]) -> None:
    for frame in frames:
        receiver.receive(frame)


def test_a_protocol_2_remote_gets_byte_cut_frames_and_no_parts() -> None:
    ours = session(A_SITE, limits=Limits(max_frame_bytes=64 * KB))
    ours.hello()
    ours.data_to_send()
    ours.receive(encode(Hello(1, 2, B_SITE, "old", 0, FINGERPRINT, 100, 4, 9), 0))
    ours.receive(encode(CursorMessage({}), 1))
    ours.send_cursor({})
    assert kinds(ours.data_to_send()) == [MessageType.CURSOR]  # no LIMITS for v2
    assert ours.max_send_bytes == 64 * KB - FRAME_OVERHEAD
    ours.send_changes([big(1, b"v" * (50 * KB))], final=True)
    assert kinds(ours.data_to_send()) == [MessageType.CHANGES]
    with pytest.raises(ValueTooLargeError):
        ours.send_changes([big(2, b"v" * (70 * KB))], final=True)
    with pytest.raises(LocalProtocolError):
        ours.send_changes([big(2, "x" * KB, seq=n) for n in range(70)], final=True)


ROWS = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=8),
        st.binary(min_size=1, max_size=40),
        st.text(max_size=8),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=300)
        | st.binary(max_size=300),
        st.integers(0, 2**63 - 1),
        st.integers(1, 2**63 - 1),
        st.binary(min_size=16, max_size=16),
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**63 - 1),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ROWS, st.booleans(), st.integers(0, 2**63 - 1))
def test_change_size_bounds_the_encoded_frame(rows: list[Change], final: bool, n: int) -> None:
    frame = encode(Changes(rows, final), n)
    assert len(frame) <= FRAME_OVERHEAD + sum(map(change_size, rows))


# -- the store: pages cut by bytes --------------------------------------------------------


def bulk_store(tmp_path: Path, name: str) -> Store:
    store = Store(tmp_path / f"{name}.db")
    store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
    store.make_crr("notes")
    return store


def test_pages_and_large_groups_are_cut_by_bytes(tmp_path: Path) -> None:
    store = bulk_store(tmp_path, "a")
    for i in range(30):  # 30 transactions of 10 KB
        store.execute("INSERT INTO notes VALUES (?, randomblob(10240))", (i,))
    store.execute(  # one transaction of 40 rows of 10 KB
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 39) "
        "INSERT INTO notes SELECT 100 + i, randomblob(10240) FROM n"
    )
    store.execute("INSERT INTO notes VALUES (999, randomblob(300000))")
    budget = 100 * KB
    cursor: dict[bytes, int] = {}
    pages: list[list[Change]] = []
    groups: list[LargeGroup] = []
    read: list[Change] = []
    for _ in range(100):
        page = store.next_page(cursor, 5000, max_bytes=budget)
        if isinstance(page, LargeGroup):
            groups.append(page)
            chunks = list(store.read_group(page, 5000, budget))
            assert all(sum(map(change_size, c)) <= budget or len(c) == 1 for c in chunks)
            assert page.largest_value > budget or max(map(len, chunks)) > 1  # packed
            read += [change for c in chunks for change in c]
            cursor[page.origin] = page.version
            continue
        if not page:
            break
        assert sum(map(change_size, page)) <= budget
        pages.append(page)
        read += page
        cursor[store.site_id] = max(change[5] for change in page)
    assert sorted(read) == sorted(store.changes_since({}, 100_000))
    assert len(pages) >= 3
    assert [g.largest_value for g in groups] == [10240, 300000]


# -- real peers, every transport -----------------------------------------------------------


TRANSPORTS = ["memory", "tcp", "wss", "https"]


class Pair:
    """Peers a and b (file stores) over one transport kind: plaintext on the
    memory transport, TLS with pinned peer ids on the others."""

    def __init__(self, kind: str, tmp_path: Path, b_limits: Limits | None = None) -> None:
        self.kind = kind
        self.a, self.b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
        self.a.trust.add(self.b.identity.peer_id)
        self.b.trust.add(self.a.identity.peer_id)
        self.network = MemoryNetwork()
        self.b_limits = b_limits

    def _transport(self, node: Node) -> Transport:
        if self.kind == "memory":
            return MemoryTransport(self.network, node.name)
        if self.kind == "tcp":
            return node.tcp()
        kind = WebSocketTransport if self.kind == "wss" else HttpSseTransport
        return kind(
            "127.0.0.1",
            0,
            server_ssl=node.identity.server_ssl_context(),
            client_ssl=node.identity.client_ssl_context(),
        )

    def peer(self, node: Node, connect: list[str], limits: Limits | None = None) -> Peer:
        options: dict[str, Any] = (
            {"insecure": True}
            if self.kind == "memory"
            else {"identity": node.identity, "trust": node.trust}
        )
        peer = Peer(
            node.store,
            [self._transport(node)],
            name=node.name,
            connect=connect,
            limits=limits,
            backoff=FAST,
            **options,
        )
        peer.subscribe(node.seen.append)
        return peer

    def address_of(self, peer: Peer) -> str:
        return "memory://a" if self.kind == "memory" else address(peer)

    def close(self) -> None:
        self.a.close()
        self.b.close()


def summary(store: Store) -> tuple[int, int]:
    """Cheap to poll (reads no value): every write in these tests inserts new
    ids, and a transaction lands whole, so equal ids mean equal writes. Read
    by :func:`peek`, so a peer may run on ``store``."""
    (row,) = peek(store, "SELECT count(*), coalesce(sum(id), 0) FROM notes")
    return int(row[0]), int(row[1])


def content(store: Store) -> list[Any]:
    return peek(store, "SELECT id, typeof(body), body FROM notes ORDER BY id")


async def converge(a: Store, b: Store, within: float = 60.0) -> None:
    try:
        await wait_for(lambda: summary(a) == summary(b), within=within, interval=0.05)
    except AssertionError:
        sizes = "SELECT id, length(CAST(body AS BLOB)) FROM notes"
        differ = set(peek(a, sizes)) ^ set(peek(b, sizes))
        raise AssertionError(f"not converged: a {summary(a)}, b {summary(b)}: {differ}") from None
    assert content(a) == content(b)


def one_transaction(first_id: int, rows: int, size: int) -> str:
    """SQL for one transaction of ``rows`` blobs of ``size`` bytes."""
    return (
        f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows - 1}) "
        f"INSERT INTO notes SELECT {first_id} + i, randomblob({size}) FROM n"
    )


def failures(node: Node) -> list[events.Event]:
    return [e for e in node.seen if isinstance(e, events.SessionFailed | events.ValueTooLarge)]


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_large_transactions_and_values_catch_up_then_go_live(
    kind: str, tmp_path: Path
) -> None:
    pair = Pair(kind, tmp_path)
    a, b = pair.a, pair.b
    over_a_frame = 9 * MB
    # While b is away: 90 transactions of one 100 KB row, one of 120 such
    # rows, and single values from 1 KB to past a frame.
    for i in range(90):
        a.store.execute("INSERT INTO notes VALUES (?, randomblob(100000))", (i,))
    a.store.execute(one_transaction(1000, 120, 100_000))
    for n, size in enumerate([KB, MB, 8 * MB - 200, over_a_frame]):
        a.store.execute("INSERT INTO notes VALUES (?, randomblob(?))", (5000 + n, size))
    try:
        async with pair.peer(a, []) as pa:  # noqa: SIM117 - b dials the address a bound
            async with pair.peer(b, [pair.address_of(pa)]) as pb:
                await converge(a.store, b.store)
                # Live, both ways: a large transaction each, and a text value
                # past a frame (UTF-8, two bytes a character).
                await pa.execute(one_transaction(2000, 120, 100_000))
                await pb.execute(one_transaction(3000, 120, 100_000))
                await pa.execute("INSERT INTO notes VALUES (6000, ?)", ("é" * (5 * MB),))
                await pb.execute("INSERT INTO notes VALUES (6001, randomblob(?))", (over_a_frame,))
                await converge(a.store, b.store)
                assert summary(b.store)[0] == 90 + 120 + 4 + 2 * 120 + 2
                assert failures(a) == failures(b) == []
                assert len(pb.sessions) == 1
    finally:
        pair.close()


@pytest.mark.slow
async def test_a_64_mb_value_over_tcp(tmp_path: Path) -> None:
    pair = Pair("tcp", tmp_path)
    a, b = pair.a, pair.b
    a.store.execute("INSERT INTO notes VALUES (1, randomblob(?))", (64 * MB,))
    try:
        async with pair.peer(a, []) as pa:  # noqa: SIM117 - b dials the address a bound
            async with pair.peer(b, [pair.address_of(pa)]) as pb:
                await converge(a.store, b.store, within=120)
                await pb.execute("INSERT INTO notes VALUES (2, randomblob(?))", (64 * MB,))
                await converge(a.store, b.store, within=120)
                assert failures(a) == failures(b) == []
    finally:
        pair.close()


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([KB, 100 * KB, MB, 8 * MB, 8 * MB + 1, 17 * MB], id="1KB-17MB"),
        pytest.param([64 * MB], id="64MB", marks=pytest.mark.slow),
    ],
)
async def test_values_from_1_kb_to_64_mb_over_memory(tmp_path: Path, sizes: list[int]) -> None:
    pair = Pair("memory", tmp_path)
    a, b = pair.a, pair.b
    for n, size in enumerate(sizes):
        a.store.execute("INSERT INTO notes VALUES (?, randomblob(?))", (n, size))
    try:
        async with pair.peer(a, []) as pa:  # noqa: SIM117 - b dials the address a bound
            async with pair.peer(b, [pair.address_of(pa)]):
                await converge(a.store, b.store, within=120)
                for n, size in enumerate(sizes):  # live, text this time
                    await pa.execute("INSERT INTO notes VALUES (?, ?)", (100 + n, "t" * size))
                await converge(a.store, b.store, within=120)
                assert failures(a) == failures(b) == []
    finally:
        pair.close()


@pytest.mark.parametrize("size", [2 * MB, 9 * MB], ids=["in-a-page", "larger-than-a-frame"])
async def test_a_value_above_the_receivers_limit_is_an_event_not_a_loop(
    size: int, tmp_path: Path
) -> None:
    """b takes values up to 1 MiB. a's transaction with a larger one stops
    a's own changes to b (in order, whole transactions) with one event on
    a's side, the session stays up, and changes from another origin that a
    relays still reach b."""
    pair = Pair("memory", tmp_path)
    a, b = pair.a, pair.b
    c = Node(tmp_path / "c", "c")
    a.store.execute("INSERT INTO notes VALUES (1, 'small')")
    a.store.execute("INSERT INTO notes VALUES (2, randomblob(?))", (size,))
    a.store.execute("INSERT INTO notes VALUES (3, 'behind it')")
    c.store.execute("INSERT INTO notes VALUES (100, 'from c')")
    try:
        async with pair.peer(a, []) as pa:  # noqa: SIM117 - a listens before the others dial
            async with (
                pair.peer(b, ["memory://a"], Limits(max_value_bytes=MB)),
                pair.peer(c, ["memory://a"]) as pc,
            ):
                await wait_for(
                    lambda: [r[0] for r in b.rows()] == [1, 100], within=20, interval=0.05
                )
                await pa.execute("INSERT INTO notes VALUES (4, 'live from a')")
                await pc.execute("INSERT INTO notes VALUES (101, 'live from c')")
                await wait_for(
                    lambda: [r[0] for r in b.rows()] == [1, 100, 101], within=20, interval=0.05
                )
                # a's sender has read on past the blocked transaction once
                # more when c's next row, relayed by a, reaches b: a retry
                # of that transaction would have shown by then.
                await pc.execute("INSERT INTO notes VALUES (102, 'marker from c')")
                await wait_for(
                    lambda: [r[0] for r in b.rows()] == [1, 100, 101, 102], within=20, interval=0.05
                )
                too_large = [e for e in a.seen if isinstance(e, events.ValueTooLarge)]
                assert len(too_large) == 1
                (event,) = too_large
                assert event.remote.name == "b"
                assert event.error.origin == a.store.site_id
                assert (event.error.size, event.error.limit) == (size, MB)
                assert not [e for e in a.seen + b.seen if isinstance(e, events.SessionFailed)]
                assert sum(isinstance(e, events.Connected) for e in b.seen) == 1
                assert len(pa.sessions) == 2
                status = await pa.status()
                (to_b,) = [x for x in status.sessions if x.remote_name == "b"]
                assert to_b.last_error is not None
                assert "exceeds" in to_b.last_error
    finally:
        pair.close()
        c.close()


async def test_pages_spanning_frames_land_whole_between_two_peers(tmp_path: Path) -> None:
    """A large transaction and a value past a frame, each a page of several
    frames, land whole in the receiver's file store, at catch-up and live."""
    network = MemoryNetwork()
    stores = [Store(tmp_path / f"p{i}.db") for i in range(2)]
    for store in stores:
        store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
        store.make_crr("notes")
    a, b = stores
    a.execute(one_transaction(0, 120, 100_000))
    a.execute("INSERT INTO notes VALUES (500, randomblob(?))", (9 * MB,))
    peers = [
        Peer(
            s,
            [MemoryTransport(network, f"p{i}")],
            connect=["memory://p0"] if i else [],
            backoff=FAST,
            insecure=True,
        )
        for i, s in enumerate(stores)
    ]
    try:
        async with peers[0] as pa, peers[1]:
            await converge(a, b)
            await pa.execute(one_transaction(1000, 120, 100_000))
            await pa.execute("INSERT INTO notes VALUES (1500, ?)", ("t" * (9 * MB),))
            await converge(a, b)
    finally:
        for store in stores:
            store.close()


async def test_store_calls_and_migrations_wait_for_a_page_spanning_frames(
    tmp_path: Path,
) -> None:
    """While a page spanning frames holds its transaction open (a large value
    arriving in parts), a write through ``run_in_store``, a migration and a
    schema change noticed by the peer all wait for the page, instead of
    blocking the store thread that must finish it (SQLite's busy timeout,
    then "database is locked")."""
    path = tmp_path / "a.db"
    with Store(path) as store:
        store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
        store.make_crr("notes")
    peer = Peer(path, [], insecure=True, poll_interval=0.1)
    async with peer:
        async with peer._worker.page():  # what a session does for a page spanning frames
            write = asyncio.create_task(
                peer.run_in_store(peer.store.execute, "INSERT INTO notes VALUES (1, 'app')")
            )
            migrate = asyncio.create_task(
                peer.migrate(1, "ALTER TABLE notes ADD COLUMN tag TEXT", alter=["notes"])
            )
            # Both are parked behind the page (the migration's app call).
            await wait_for(lambda: peer._worker.waiting_for_page == 2)
            assert not write.done()
            assert not migrate.done()
        async with asyncio.timeout(10):
            await write
            await migrate
        tagged = await peer.run_in_store(peer.store.execute, "SELECT id, body, tag FROM notes")
        assert tagged == [(1, "app", None)]
        # A migration on the app's own connection, noticed by the peer's
        # watcher while a page is open: merging held rows waits for the page.
        held = [("notes", b"\x01\x09\x01", "n", 7, 1, 1, B_SITE, 1, 0)]
        await peer.run_in_store(peer.store.apply, held, hold_unknown=True, held_schema=2)
        assert await peer.run_in_store(peer.store.held_count) == 1
        other = sqlite3.connect(path, isolation_level=None)
        try:
            crsqlite.load(other)
            other.executescript(
                "SELECT crsql_begin_alter('notes'); ALTER TABLE notes ADD COLUMN n INTEGER;"
                "SELECT crsql_commit_alter('notes'); PRAGMA user_version = 2;"
            )
            other.execute("SELECT crsql_finalize()")
        finally:
            other.close()
        noticed = peer._local_writes.schema_changes_noticed
        async with peer._worker.page():
            # The watcher sees the schema change while the page is open: its
            # merge of the held row waits for the page.
            await wait_for(lambda: peer._local_writes.schema_changes_noticed > noticed)
        # The watcher's next poll merges the held row.
        await wait_for(lambda: peek(peer.store, "SELECT n FROM notes") == [(7,)])
        await peer.execute("UPDATE notes SET n = 8 WHERE id = 1")
        assert await peer.run_in_store(peer.store.execute, "SELECT n FROM notes") == [(8,)]
