"""The store's main connection: the app's SQL, the schema, and the state.

A :class:`MainConnection` owns the connection the app's statements run on
(:meth:`peer.store.Store.execute`), migrations, and the reads of the
bookkeeping's state (cursor, versions, site owners). It is used from one
thread: a Peer's "crpeer-store" thread, which also runs the merger; a Store
used directly: the caller's. While a Peer runs on the store, every use of
the connection from another thread raises StoreError (see
:mod:`peer.store.owner`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3

import peer.store.bookkeeping as bookkeeping
import peer.store.schema as schema
from peer import crsqlite
from peer.changes import Cursor
from peer.errors import SchemaError, StoreError
from peer.store.connection import (
    Location,
    close_connection,
    quick_check,
    quote_identifier,
    sync_file,
)
from peer.store.owner import OwnerThread

__all__ = ["MainConnection"]


class MainConnection:
    """Opens the main connection on ``location``: with ``read_only``, only
    if the file already is a crpeer database (nothing is written); otherwise
    in WAL mode, with the bookkeeping tables created and every clock table
    indexed. Raises StoreError if the file is not a usable database.

    Its attributes ``site_id``, ``held_schema`` and ``user_version`` are what
    the database said at open (plain values, read from any thread); every
    method and :attr:`conn` check :attr:`owner` first.
    """

    def __init__(self, location: Location, *, name: str) -> None:
        self._schema = schema.SchemaCache()
        conn = location.connect(extension=False)
        try:
            names = {table for (table,) in conn.execute("SELECT name FROM sqlite_master")}
            if location.read_only and not {"crsql_site_id", "crpeer_cursor"} <= names:
                raise StoreError(
                    f"{name} has no crpeer tables yet: it is not a crpeer database "
                    f"(run `crpeer init {name}` to make it one)"
                )
            crsqlite.load(conn)
            if not location.read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                bookkeeping.create_tables(conn)
                schema.index_clocks(conn, self._schema.read(conn)[0])
            (site_id,) = conn.execute("SELECT crsql_site_id()").fetchone()
            self.held_schema = bookkeeping.held_schema(conn)
            self.user_version = schema.user_version(conn)
            self._cookie = schema.cookie(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{name} is not a usable database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self.site_id = bytes(site_id)
        self._conn = conn
        self._busy_timeout_ms = location.busy_timeout_ms
        self.owner = OwnerThread("main connection")
        """The thread that alone may use the connection while a Peer runs."""

    @property
    def conn(self) -> Any:
        """The connection (for the reads that need no refresh); raises
        StoreError on a thread other than :attr:`owner`'s."""
        self.owner.check()
        return self._conn

    def close(self) -> None:
        """Close the connection (from any thread, once no other uses it)."""
        close_connection(self._conn)

    def current(self) -> Any:
        """The connection, brought up to date first if the schema changed
        since it last looked (another connection migrated)."""
        self.owner.check()
        conn = self._conn
        now = schema.cookie(conn)
        if now != self._cookie:
            schema.refresh(conn)
            self._cookie = now
        return conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Any:
        """The sqlite cursor of one statement run (autocommit)."""
        return self.current().execute(sql, params)

    def executescript(self, script: str) -> None:
        conn = self.current()
        try:
            conn.executescript(script)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def integrity_problems(self, limit: int) -> list[str]:
        return quick_check(self.conn, limit)

    def crr_schema(self) -> schema.CrrSchema:
        return self._schema.read(self.conn)

    def make_crr(self, tables: Sequence[str]) -> None:
        schema.make_crr(self.conn, tables)
        schema.index_clocks(self.conn, self.crr_schema()[0])

    def migrate(
        self, version: int, sql: str, alter: Sequence[str], new_crrs: Sequence[str]
    ) -> None:
        """Run the migration's one transaction (raises SchemaError, changing nothing)."""
        script = schema.migration_script(version, sql, alter, new_crrs)
        conn = self.current()
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SchemaError(f"migration to version {version} failed: {exc}") from exc
        schema.index_clocks(conn, self.crr_schema()[0])

    def change_marker(self) -> tuple[int, int]:
        data, db = (
            self.current()
            .execute("SELECT data_version, crsql_db_version() FROM pragma_data_version")
            .fetchone()
        )
        return int(data), int(db)

    def cursor(self) -> Cursor:
        return bookkeeping.persisted_cursor(self.conn)

    def own_version(self) -> int:
        row = (
            self.current()
            .execute("SELECT max(db_version) FROM crsql_changes WHERE site_id = ?", (self.site_id,))
            .fetchone()
        )
        return int(row[0] or 0)

    def local_high_water(self) -> int:
        highs = " UNION ALL ".join(
            "SELECT max(db_version) AS high FROM "
            f"{quote_identifier(table + '__crsql_clock')} WHERE site_id = 0"
            for table in self.crr_schema()[0]
        )
        if not highs:
            return 0
        (high,) = self.conn.execute(f"SELECT coalesce(max(high), 0) FROM ({highs})").fetchone()
        return int(high)

    def is_fresh(self) -> bool:
        return bookkeeping.is_fresh(self.current(), list(self.crr_schema()[0]))

    def checkpoint(self, truncate: bool) -> tuple[bool, int, int]:
        """``PRAGMA wal_checkpoint`` without waiting for anyone (busy timeout 0):
        ``(done, wal_pages, checkpointed_pages)``, ``done`` False when a reader
        or writer was in the way. Nothing is lost either way."""
        mode = "TRUNCATE" if truncate else "PASSIVE"
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy, log, done = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return busy == 0, int(log), int(done)

    def copy_sites_into(self, snapshot: str | Path) -> None:
        """Make ``crpeer_sites`` of the database file ``snapshot`` this one's (durably)."""
        sites = self.conn.execute("SELECT site_id, peer_id FROM crpeer_sites").fetchall()
        target = sqlite3.connect(os.fspath(snapshot), isolation_level=None)
        try:
            target.execute("BEGIN IMMEDIATE")
            target.execute("DELETE FROM crpeer_sites")
            target.executemany("INSERT INTO crpeer_sites (site_id, peer_id) VALUES (?, ?)", sites)
            target.execute("COMMIT")
        finally:
            target.close()
        sync_file(snapshot)


def replace_file(path: str, snapshot: str | Path) -> None:
    """Move ``snapshot`` over the database file at ``path`` (atomic), once
    every connection to it is closed; raises StoreError, leaving it as it
    was, if another connection keeps it open (its ``-wal`` file stays)."""
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError("another connection keeps the database open: cannot replace it")
    os.replace(snapshot, path)
    Path(f"{path}-shm").unlink(missing_ok=True)
    wal.unlink(missing_ok=True)
    sync_file(Path(path).parent)
