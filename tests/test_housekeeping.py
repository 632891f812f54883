"""The ``-wal`` file returns under its limit once a long reader is gone and the node is idle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pysqlite3.dbapi2 as sqlite3
import pytest
from click.testing import CliRunner

from peer.cli import cli
from peer.cli_events import human_bytes
from peer.housekeeping import WalHousekeeper, wal_size
from peer.peer import Peer
from peer.store import JOURNAL_SIZE_LIMIT, Store
from tests.support import wait_for

LIMIT = 256 * 1024


def make_database(path: Path, limit: int = LIMIT) -> Store:
    store = Store(path, journal_size_limit=limit)
    store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
    store.make_crr("notes")
    return store


def test_every_connection_of_a_store_has_the_journal_size_limit(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        store.next_page({}, 1)  # the reader opens its connection at its first read
        store.apply([])  # the merger at its first merge
        main, merger, reader = store._main.conn, store._merger._conn, store._reader._conn
        connections = {id(c): c for c in (main, reader, merger)}
        assert len(connections) == 3
        for conn in connections.values():
            assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT


def test_checkpoint_waits_for_nobody_and_reports_a_reader_in_the_way(tmp_path: Path) -> None:
    with make_database(tmp_path / "a.db") as store:
        reader = sqlite3.connect(store.path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM notes").fetchone()
            store.execute("INSERT INTO notes (id, body) VALUES (1, 'x')")
            assert store.checkpoint(truncate=True)[0] is False
            reader.execute("COMMIT")
            done, _, _ = store.checkpoint(truncate=True)
            assert done
            assert wal_size(store.path) == 0
            assert store.execute("SELECT body FROM notes") == [("x",)]
        finally:
            reader.close()


async def test_the_wal_shrinks_under_the_limit_after_a_long_reader_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_database(tmp_path / "a.db")
    peer = Peer(store, [], insecure=True)
    reader = sqlite3.connect(store.path, isolation_level=None)
    housekeeper = WalHousekeeper(peer, idle_after=0.3, min_interval=0.0, poll=0.05)
    task: asyncio.Task[None] | None = None
    try:
        await peer.start()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM notes").fetchone()  # holds its snapshot
        body = "x" * 200
        for start in range(0, 6000, 500):
            await peer.execute(
                "WITH RECURSIVE n(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM n WHERE v < ?) "
                "INSERT INTO notes (id, body) SELECT v, ? FROM n",
                (start, start + 499, body),
            )
        grown = wal_size(store.path)
        assert grown > 4 * LIMIT
        caplog.set_level(logging.DEBUG, logger="crpeer.housekeeping")
        task = asyncio.create_task(housekeeper.run())
        # Idle, it tried a checkpoint, but the reader is in the way.
        await wait_for(lambda: "checkpoint of" in caplog.text and "postponed" in caplog.text)
        assert housekeeper.checkpoints == 0
        assert wal_size(store.path) >= grown
        reader.execute("COMMIT")  # the long reader goes away
        await wait_for(lambda: housekeeper.checkpoints > 0, within=15.0)
        assert wal_size(store.path) <= LIMIT
        rows = await peer.execute("SELECT count(*) FROM notes")
        assert rows == [(6000,)]
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reader.close()
        await peer.stop()
        store.close()


async def test_no_checkpoint_while_writes_keep_coming(tmp_path: Path) -> None:
    store = make_database(tmp_path / "a.db")
    peer = Peer(store, [], insecure=True)
    now = [0.0]
    housekeeper = WalHousekeeper(peer, idle_after=5.0, min_interval=60.0, clock=lambda: now[0])
    try:
        await peer.start()
        for n in range(4):
            await peer.execute("INSERT INTO notes (id, body) VALUES (?, 'x')", (n,))
            now[0] += 3.0
            assert not await housekeeper.tick()
        now[0] += 3.0
        assert not await housekeeper.tick()  # 3 s since the last commit was seen
        now[0] += 3.0
        assert await housekeeper.tick()
        await peer.execute("INSERT INTO notes (id, body) VALUES (99, 'x')")
        assert not await housekeeper.tick()
        now[0] += 10.0
        assert not await housekeeper.tick()  # idle, but within min_interval
        now[0] += 60.0
        assert await housekeeper.tick()
    finally:
        await peer.stop()
        store.close()


def test_status_shows_the_wal_size(tmp_path: Path) -> None:
    database = tmp_path / "a.db"
    assert CliRunner().invoke(cli, ["init", str(database)]).exit_code == 0
    with make_database(database) as store:  # an open writer keeps its -wal
        store.execute("INSERT INTO notes (id, body) VALUES (1, ?)", ("x" * 5000,))
        size = wal_size(database)
        assert size > 0
        report = CliRunner().invoke(cli, ["status", str(database), "--json"])
        assert json.loads(report.stdout)["wal"] == {"bytes": size}
        text = CliRunner().invoke(cli, ["status", str(database)]).stdout
        assert f"wal file        {human_bytes(size)}" in text
