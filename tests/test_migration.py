"""Live schema migrations: no connection goes stale, held rows travel on.

File stores (a reader and a sync connection beside the main one) and real
peers over the memory transport; migrations through the documented API
(``Peer.migrate``, ``Store.migrate`` + ``Peer.refresh_schema``) and by the
app on its own connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite, events
from peer.errors import StoreError
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Change, Store
from tests.support import peek, wait_for
from transports.memory import MemoryNetwork, MemoryTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS sch (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
ADD_C = "ALTER TABLE sch ADD COLUMN c TEXT"
FAST = Backoff(initial=0.01, maximum=0.2)


def new_store(path: Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("sch")
    return store


def migrate_on_own_connection(path: Path, version: int, sql: str) -> None:
    """What an app does without crpeer's API: its own connection, cr-sqlite's
    begin/commit alter, and the schema version."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        crsqlite.load(conn)
        conn.executescript(
            f"BEGIN; SELECT crsql_begin_alter('sch'); {sql}; SELECT crsql_commit_alter('sch');"
            f" PRAGMA user_version = {version}; COMMIT;"
        )
        conn.execute("SELECT crsql_finalize()")
    finally:
        conn.close()


def cells(changes: list[Change]) -> set[tuple[str, Any]]:
    return {(change[2], change[3]) for change in changes}


def rows(store: Store) -> list[Any]:
    return store.execute("SELECT * FROM sch ORDER BY id")


def peer_rows(store: Store) -> list[Any]:
    """:func:`rows` for a store a Peer runs on, read by :func:`peek`."""
    return peek(store, "SELECT * FROM sch ORDER BY id")


# -- the store's connections ---------------------------------------------------


def test_the_reader_serves_changes_after_a_migration_through_the_api(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        store.execute("INSERT INTO sch VALUES (1, 'before')")
        assert cells(store.changes_since({}, 100)) == {("body", "before")}
        store.migrate(1, ADD_C, alter=["sch"])
        store.execute("INSERT INTO sch VALUES (2, 'after', 'new')")
        store.execute("UPDATE sch SET body = 'edited' WHERE id = 1")
        page = store.changes_since({}, 100)
        assert cells(page) >= {("body", "edited"), ("body", "after"), ("c", "new")}
        assert store.backlog_estimate({}) >= 3


def test_a_migration_on_the_apps_own_connection_leaves_no_connection_stale(
    tmp_path: Path,
) -> None:
    with new_store(tmp_path / "a.db") as store, new_store(tmp_path / "b.db") as other:
        store.execute("INSERT INTO sch VALUES (1, 'before')")
        # Every connection of the store has read crsql_changes and the clocks.
        assert store.own_version() == 1
        store.changes_since({}, 100)
        store.apply(other.changes_since({}, 100))
        migrate_on_own_connection(tmp_path / "a.db", 1, ADD_C)
        other.migrate(1, ADD_C, alter=["sch"])
        # The main connection: a statement naming the new column compiles, and
        # the local write records a change for it.
        store.execute("INSERT INTO sch VALUES (2, 'after', 'new')")
        assert store.own_version() == 2
        # The reader serves it.
        assert ("c", "new") in cells(store.changes_since({}, 100))
        # The sync connection merges rows of the new column.
        other.execute("INSERT INTO sch VALUES (3, 'remote', 'remote c')")
        result = store.apply(other.changes_since({}, 100))
        assert (result.merged, result.held) == (2, 0)
        assert rows(store) == [(1, "before", None), (2, "after", "new"), (3, "remote", "remote c")]
        assert store.schema_version() == 1


def test_held_rows_keep_the_schema_version_they_need(tmp_path: Path) -> None:
    with new_store(tmp_path / "new.db") as new, new_store(tmp_path / "old.db") as old:
        new.migrate(3, ADD_C, alter=["sch"])
        new.execute("INSERT INTO sch VALUES (1, 'b', 'c')")
        assert old.held_schema == 0
        result = old.apply(new.changes_since({}, 100), hold_unknown=True, held_schema=3)
        assert (result.merged, result.held) == (1, 1)
        assert old.held_schema == 3
    with Store(tmp_path / "old.db") as reopened:
        assert reopened.held_schema == 3


def test_a_held_schema_column_is_added_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    with new_store(path) as store:
        store.execute("INSERT INTO sch VALUES (1, 'x')")
        store.execute("PRAGMA user_version = 4")
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:  # a crpeer_held table as older versions made it, with one held row
        conn.executescript(
            "DROP TABLE crpeer_held; CREATE TABLE crpeer_held (origin BLOB NOT NULL,"
            " local_version INTEGER NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,"
            " tbl TEXT NOT NULL, pk BLOB NOT NULL, cid TEXT NOT NULL, val ANY,"
            " col_version INTEGER NOT NULL, cl INTEGER NOT NULL,"
            " applied INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (origin, version, tbl, pk, cid));"
            " INSERT INTO crpeer_held VALUES (x'00', 1, 1, 0, 'sch', x'01', 'c', 'v', 1, 1, 0);"
        )
    finally:
        conn.close()
    with Store(path) as store:
        assert store.held_schema == 5  # it needs at least the next version
        assert store.held_count() == 1


# -- peers -----------------------------------------------------------------------


class Line:
    """Peers on file stores over one MemoryNetwork, each dialing the one before."""

    def __init__(self, directory: Path, count: int, poll_interval: float = 0.02) -> None:
        self.directory = directory
        self.network = MemoryNetwork(seed=1)
        self.stores = [new_store(directory / f"n{i}.db") for i in range(count)]
        self.seen: list[list[events.Event]] = [[] for _ in range(count)]
        self.peers = [
            Peer(
                store,
                [MemoryTransport(self.network, f"n{i}")],
                name=f"n{i}",
                connect=[f"memory://n{i - 1}"] if i else [],
                backoff=FAST,
                poll_interval=poll_interval,
                seed=i,
                insecure=True,
            )
            for i, store in enumerate(self.stores)
        ]
        for peer, seen in zip(self.peers, self.seen, strict=True):
            peer.subscribe(seen.append)

    def store_errors(self) -> list[events.SessionFailed]:
        return [
            event
            for seen in self.seen
            for event in seen
            if isinstance(event, events.SessionFailed) and isinstance(event.error, StoreError)
        ]

    def failures(self, index: int) -> list[events.SessionFailed]:
        return [e for e in self.seen[index] if isinstance(e, events.SessionFailed)]

    def converged(self) -> bool:
        views = [peer_rows(store) for store in self.stores]
        return all(view == views[0] for view in views)

    async def held(self, index: int) -> int:
        """Peer ``index``'s held rows, read on its store thread."""
        return await self.peers[index].run_in_store(self.stores[index].held_count)

    async def holds(self, index: int, count: int) -> bool:
        return await self.held(index) == count

    async def __aenter__(self) -> Line:
        for peer in self.peers:
            await peer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for peer in self.peers:
            await peer.stop()
        for store in self.stores:
            store.close()


async def test_a_peer_migrated_through_the_api_keeps_sending(tmp_path: Path) -> None:
    async with Line(tmp_path, 2) as line:
        a, b = line.peers
        await a.execute("INSERT INTO sch VALUES (1, 'one')")
        await wait_for(lambda: peer_rows(line.stores[1]) == [(1, "one")], within=15)
        # The call sequence an app used before Peer.migrate existed.
        await a.run_in_store(line.stores[0].migrate, 1, ADD_C, alter=["sch"])
        await a.refresh_schema()
        await a.execute("UPDATE sch SET body = 'edited' WHERE id = 1")
        await a.execute("INSERT INTO sch VALUES (2, 'two', 'c2')")
        # b is older: the old column arrives, the new one is held.
        await wait_for(lambda: peer_rows(line.stores[1]) == [(1, "edited"), (2, "two")], within=15)
        await wait_for(lambda: line.holds(1, 1), within=15)
        assert any(isinstance(e, events.Outdated) for e in line.seen[1])
        await b.migrate(1, ADD_C, alter=["sch"])
        assert peer_rows(line.stores[1]) == [(1, "edited", None), (2, "two", "c2")]
        await b.execute("UPDATE sch SET c = 'from b' WHERE id = 1")
        await a.execute("UPDATE sch SET c = 'from a' WHERE id = 2")
        await wait_for(line.converged, within=15)
        assert peer_rows(line.stores[0]) == [(1, "edited", "from b"), (2, "two", "from a")]
        assert not line.store_errors()


async def test_a_migration_on_the_apps_own_connection_is_noticed(tmp_path: Path) -> None:
    async with Line(tmp_path, 2) as line:
        a, b = line.peers
        await b.migrate(1, ADD_C, alter=["sch"])  # b is ahead
        await a.execute("INSERT INTO sch VALUES (1, 'one')")
        await wait_for(lambda: peer_rows(line.stores[1]) == [(1, "one", None)], within=15)
        migrate_on_own_connection(tmp_path / "n0.db", 1, ADD_C)
        # Written through the peer and through another connection.
        await a.execute("INSERT INTO sch VALUES (2, 'two', 'c2')")
        conn = sqlite3.connect(str(tmp_path / "n0.db"), isolation_level=None)
        crsqlite.load(conn)
        conn.execute("UPDATE sch SET c = 'c1', body = 'uno' WHERE id = 1")
        conn.execute("SELECT crsql_finalize()")
        conn.close()
        await wait_for(
            lambda: peer_rows(line.stores[1]) == [(1, "uno", "c1"), (2, "two", "c2")], within=15
        )
        await wait_for(
            lambda: [s.session.local.schema_version for s in a.sessions] == [1], within=15
        )
        await b.execute("UPDATE sch SET c = 'from b' WHERE id = 2")
        await wait_for(line.converged, within=15)
        assert not line.store_errors()
        assert await line.held(1) == 0


async def test_frames_carry_a_migration_before_the_sessions_reconnect(tmp_path: Path) -> None:
    """The peer has not noticed the migration yet (a long poll interval), its
    session still announces version 0: its frames say what their rows need."""
    async with Line(tmp_path, 2, poll_interval=30.0) as line:
        a, _ = line.peers
        await a.execute("INSERT INTO sch VALUES (1, 'one')")
        await wait_for(lambda: peer_rows(line.stores[1]) == [(1, "one")], within=15)
        migrate_on_own_connection(tmp_path / "n0.db", 1, ADD_C)
        await a.execute("INSERT INTO sch VALUES (2, 'two', 'c2')")
        await wait_for(lambda: peer_rows(line.stores[1]) == [(1, "one"), (2, "two")], within=15)
        await wait_for(lambda: line.holds(1, 1), within=15)
        assert [s.session.local.schema_version for s in a.sessions] == [0]
        assert not line.failures(0)
        assert not line.failures(1)


async def test_held_rows_travel_with_their_schema_along_a_line(tmp_path: Path) -> None:
    """n0 — n1 — n2: n0 migrated, n1 and n2 not. n2 holds n0's rows for the
    new column (served on by n1) instead of failing, and gets all else."""
    line = Line(tmp_path, 3)
    line.stores[0].migrate(1, ADD_C, alter=["sch"])
    async with line:
        n0, n1, n2 = line.peers
        for i in range(20):
            await n0.execute("INSERT INTO sch VALUES (?, 'from n0', ?)", (i, f"c{i}"))
            await n1.execute("INSERT INTO sch VALUES (?, 'from n1')", (100 + i,))
        await n2.execute("INSERT INTO sch VALUES (200, 'from n2')")
        expected = [(i, "from n0") for i in range(20)] + [(100 + i, "from n1") for i in range(20)]
        everything = [*expected, (200, "from n2")]
        await wait_for(lambda: peer_rows(line.stores[2]) == everything, within=15)
        await wait_for(lambda: line.holds(2, 20), within=15)
        assert await line.held(1) == 20
        assert line.stores[2].held_schema == 1
        assert not [e for e in line.failures(2) if "unknown column" in str(e.error)]
        assert not [e for e in line.failures(1) if "invalid" in str(e.error).lower()]
        await n1.migrate(1, ADD_C, alter=["sch"])
        await n2.migrate(1, ADD_C, alter=["sch"])
        await n2.execute("UPDATE sch SET c = 'n2' WHERE id = 100")
        await wait_for(line.converged, within=15)
        assert peer_rows(line.stores[2])[0] == (0, "from n0", "c0")
        assert peer_rows(line.stores[0])[20] == (100, "from n1", "n2")
        assert [await line.held(index) for index in range(3)] == [0, 0, 0]
        assert not line.store_errors()


def test_rows_held_without_a_stated_schema_need_the_next_version(tmp_path: Path) -> None:
    with new_store(tmp_path / "new.db") as new, new_store(tmp_path / "old.db") as old:
        old.execute("PRAGMA user_version = 4")
        new.migrate(5, ADD_C, alter=["sch"])
        new.execute("INSERT INTO sch VALUES (1, 'b', 'c')")
        old.apply(new.changes_since({}, 100), hold_unknown=True)
        assert old.held_schema == old.served_schema == 5
