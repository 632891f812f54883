"""The one package that speaks SQL: a cr-sqlite database and its sync bookkeeping.

A :class:`Store` opens a database with the cr-sqlite extension loaded. Apps
write with ordinary SQL (through :meth:`Store.execute` or their own
connection that loaded the extension); crpeer reads and merges changes.

The bookkeeping beside the app's tables (:mod:`peer.store.bookkeeping`)
makes a **cursor** a version vector ``{origin site_id: origin version}``:
:meth:`Store.changes_since` serves every change of each origin above the
cursor, in ascending order and whole groups (one origin transaction) only,
and :meth:`Store.apply` merges a batch and advances the persisted cursor in
one transaction. Changes for a schema this database lacks yet are *held*
until a migration adds what they need.

Schema changes
--------------
Every connection of the store notices a schema change made through any
connection before it next reads or merges changes (see
:mod:`peer.store.schema`).

Connections and threads
-----------------------
A store is three objects, each owning one connection, each used from one
thread; no lock guards any of them:

- the **main connection** (:class:`~peer.store.main.MainConnection`: the
  app's SQL, migrations, the bookkeeping's state) and the **merger**
  (:class:`~peer.store.merger.Merger`: merges, held rows, pages spanning
  frames): a Peer runs both on its "crpeer-store" thread;
- the **reader** (:class:`~peer.store.reader.ChangeReader`: pages, the
  backlog, snapshot copies; a large group through a
  :class:`~peer.store.reader.GroupReader` with a connection of its own): a
  Peer runs it on its "crpeer-read" thread. It reads committed data only
  (WAL), so reads and merges never wait for each other.

The connections of the merger and the reader open at their first use, on
the thread that uses them. :meth:`Store.close` and
:meth:`Store.install_snapshot` close all of them: call them where no other
thread uses the store meanwhile.

A Store used directly (the CLI, tests, an app before it hands the store to
a Peer) is used from one thread at a time, any thread. A Store handed to a
Peer belongs to the Peer's threads while it runs: its StoreWorker binds the
main connection and the merger to the store thread and the reader to the
read thread when it opens (:meth:`Store.bind_threads`) and unbinds them
when it closes (:meth:`Store.unbind_threads`); meanwhile a call from any
other thread raises StoreError instead of racing the Peer on a connection
(see :mod:`peer.store.owner`). The app then goes through
``peer.execute(...)`` or ``peer.run_in_store(fn, ...)`` (which runs ``fn``
on the store thread), or opens a Store of its own on the same file; once
the Peer stopped, the Store is the app's again. The attributes
:attr:`Store.site_id`, :attr:`Store.path`, :attr:`Store.in_memory`,
:attr:`Store.read_only`, :attr:`Store.served_schema` and
:attr:`Store.held_schema` are plain values, safe to read from any thread.

``":memory:"`` opens a private temporary file (see
:func:`peer.store.connection.locate`), removed at :meth:`Store.close`: an
in-memory store works exactly as a file store does.
"""

from __future__ import annotations

import shutil
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import peer.store.schema as schema
from peer.changes import SENTINEL_CID, SITE_ID_LENGTH, Change, Cursor, SqlValue
from peer.errors import StoreError
from peer.packed_pk import KeyShape
from peer.store.bookkeeping import persisted_cursor
from peer.store.connection import (
    JOURNAL_SIZE_LIMIT,
    create_private_file,
    file_integrity_problems,
    locate,
    translate_errors,
)
from peer.store.main import MainConnection, replace_file
from peer.store.merger import APPLY_SLICE_ROWS, ApplyResult, Merger
from peer.store.pages import LargeGroup
from peer.store.reader import ChangeReader
from peer.store.sync_facade import SyncFacade

__all__ = [
    "APPLY_SLICE_ROWS",
    "JOURNAL_SIZE_LIMIT",
    "SENTINEL_CID",
    "SITE_ID_LENGTH",
    "ApplyResult",
    "Change",
    "Cursor",
    "LargeGroup",
    "SqlValue",
    "Store",
    "create_private_file",
    "file_integrity_problems",
    "persisted_cursor",
]


class Store(SyncFacade):
    """A cr-sqlite database opened for syncing: the facade over its
    :class:`~peer.store.main.MainConnection`, :class:`~peer.store.merger.Merger`
    and :class:`~peer.store.reader.ChangeReader` (the module docstring says
    which thread runs which). The app's SQL, the schema, the file and the
    lifecycle are here; the sync side (pages to send, merges, held rows, the
    cursor, site owners) comes from :class:`~peer.store.sync_facade.SyncFacade`.

    ``Store(path)`` opens (or creates, with mode 0600) the database at ``path``
    (``":memory:"`` for a private temporary one), in WAL mode, with cr-sqlite
    loaded and the bookkeeping tables created; :meth:`close` (or ``with``)
    when done. ``read_only=True`` opens an existing crpeer database without
    writing to it. ``journal_size_limit`` bounds the ``-wal`` file once it is
    checkpointed (:meth:`checkpoint`). Raises ExtensionError if cr-sqlite
    cannot be loaded, StoreError if the file is not a usable database
    (read-only: or not a crpeer database).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        read_only: bool = False,
        journal_size_limit: int = JOURNAL_SIZE_LIMIT,
    ) -> None:
        self.read_only = read_only
        self._location, temporary = locate(
            str(path),
            read_only=read_only,
            busy_timeout_ms=int(busy_timeout_ms),
            journal_size_limit=int(journal_size_limit),
        )
        self.in_memory = self._location.in_memory
        """Opened as ``":memory:"``: :attr:`path` is a private temporary file,
        removed at :meth:`close` (or when the store is garbage-collected)."""
        self.path = self._location.target if self.in_memory else str(path)
        """The database file (for ``":memory:"``, the temporary file standing for it)."""
        self._remove_files = weakref.finalize(
            self, shutil.rmtree, temporary or "", ignore_errors=True
        )
        if temporary is None:
            self._remove_files.detach()
        self._closed = False
        self._threads: tuple[threading.Thread, threading.Thread] | None = None
        try:
            self._open()
        except BaseException:
            self._remove_files()
            raise

    def _open(self) -> None:
        """Open the main connection and make the merger and the reader (at
        start, and after :meth:`install_snapshot` replaced the file); they
        open their connections at their first use."""
        self._main = MainConnection(self._location, name=self.path)
        self.site_id = self._main.site_id
        self._merger = Merger(self._location, self.site_id, self._main.held_schema)
        self._reader = ChangeReader(
            self._location, self.site_id, read_schema=self._main.user_version
        )
        self._bind_owners()

    # -- the threads of a running Peer --------------------------------------

    def bind_threads(self, store_thread: threading.Thread, read_thread: threading.Thread) -> None:
        """Give the store to a running Peer's threads (its StoreWorker calls
        this once both run, before either uses the store): from now on the
        main connection and the merger are used from ``store_thread`` only,
        the reader from ``read_thread`` only, and a call from any other
        thread raises StoreError. Raises StoreError if the store belongs to
        a running Peer already. Undo with :meth:`unbind_threads`."""
        if self._threads is not None:
            raise StoreError("this store already belongs to a running Peer")
        self._threads = (store_thread, read_thread)
        self._bind_owners()

    def unbind_threads(self) -> None:
        """Make the store usable from any thread again (one at a time): the
        Peer's StoreWorker calls it once both its threads stopped."""
        self._threads = None
        self._bind_owners()

    def _bind_owners(self) -> None:
        """Bind (or unbind) each connection's owner as :attr:`_threads` says,
        also for the objects :meth:`install_snapshot` makes anew."""
        if self._threads is None:
            for owner in (self._main.owner, self._merger.owner, self._reader.owner):
                owner.unbind()
            return
        store_thread, read_thread = self._threads
        self._main.owner.bind(store_thread)
        self._merger.owner.bind(store_thread)
        self._reader.owner.bind(read_thread)

    def close(self) -> None:
        """Finalize cr-sqlite and close every connection; remove the files of
        an in-memory store. Idempotent. Call it once no thread uses the store
        any more (a Peer: after its read thread stopped)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close_connections(gone=True)
        finally:
            self._remove_files()

    def _close_connections(self, *, gone: bool) -> None:
        try:
            self._reader.close(gone=gone)
            self._merger.close(gone=gone)
        finally:
            self._main.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the app's SQL and the schema: the main connection ----------------

    @translate_errors
    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return all its rows."""
        rows: list[tuple[Any, ...]] = self._main.execute(sql, params).fetchall()
        return rows

    @translate_errors
    def executescript(self, script: str) -> None:
        """Run several statements; wrap them in BEGIN/COMMIT to make them atomic."""
        self._main.executescript(script)

    @translate_errors
    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]], int]:
        """Run one statement (autocommit): its column names, its rows, and the
        rows it changed (0 for a statement that writes none)."""
        cursor = self._main.execute(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        columns = [column[0] for column in cursor.description or ()]
        changed = cursor.rowcount if cursor.rowcount > 0 and not columns else 0
        return columns, rows, changed

    def make_crr(self, *tables: str) -> None:
        """Turn existing tables into conflict-free replicated relations.

        Raises SchemaError if a table is missing or unsuitable (cr-sqlite
        requires a primary key and NOT NULL defaults on non-pk columns).
        """
        self._main.make_crr(tables)

    def migrate(
        self, version: int, sql: str, *, alter: Sequence[str] = (), new_crrs: Sequence[str] = ()
    ) -> int:
        """Migrate the schema to ``version`` in one transaction.

        Runs ``sql`` between ``crsql_begin_alter`` / ``crsql_commit_alter`` for
        each CRR in ``alter``, makes ``new_crrs`` CRRs, sets ``PRAGMA
        user_version``, then merges the held changes that now fit. Returns how
        many held rows were merged. Raises SchemaError (and changes nothing)
        if any step fails.
        """
        self._main.migrate(version, sql, alter, new_crrs)
        return self.apply_held()

    @translate_errors
    def schema_cookie(self) -> int:
        """SQLite's schema cookie (``PRAGMA schema_version``): it moves on every
        schema change, made through any connection."""
        return schema.cookie(self._main.current())

    @translate_errors
    def schema_version(self) -> int:
        """The app's schema version (``PRAGMA user_version``)."""
        return schema.user_version(self._main.conn)

    def crr_columns(self) -> dict[str, frozenset[str]]:
        """Each CRR table and its column names (cached until the schema changes)."""
        return dict(self._main.crr_schema()[0])

    def crr_keys(self) -> dict[str, KeyShape]:
        """Each CRR table's primary key: its columns in key order and which
        values each holds (cached until the schema changes)."""
        return dict(self._main.crr_schema()[1])

    @translate_errors
    def schema_fingerprint(self) -> bytes:
        """16 bytes that differ when the CRR tables or their columns differ."""
        return schema.schema_fingerprint_of(self._main.conn, self.crr_columns())

    @translate_errors
    def db_version(self) -> int:
        """The database's current cr-sqlite db_version (local clock)."""
        return int(self._main.conn.execute("SELECT crsql_db_version()").fetchone()[0])

    @translate_errors
    def change_marker(self) -> tuple[int, int]:
        """``(data_version, db_version)`` in one statement: it moves on every
        commit, through this connection or another."""
        return self._main.change_marker()

    # -- the file: checkpoints, copies, snapshots ---------------------------

    def integrity_problems(self, limit: int = 10) -> list[str]:
        """What ``PRAGMA quick_check`` finds wrong with the file (at most ``limit``
        lines); empty when the database is sound."""
        return self._main.integrity_problems(limit)

    @translate_errors
    def is_fresh(self) -> bool:
        """Whether this database holds nothing to sync: an empty cursor, no
        held rows, and no clock rows (nothing written, not even deleted)."""
        return self._main.is_fresh()

    @translate_errors
    def checkpoint(self, *, truncate: bool = True) -> tuple[bool, int, int]:
        """Copy the ``-wal`` file into the database now, without waiting for
        anyone (``truncate``: and cut it to zero bytes); returns ``(done,
        wal_pages, checkpointed_pages)``, ``done`` False when a reader or
        writer (a page spanning frames) was in the way: call again later."""
        if self._merger.page is not None or self.read_only:
            return False, 0, 0
        return self._main.checkpoint(truncate)

    @translate_errors
    def copy_into(self, out: str | Path) -> None:
        """Write a consistent copy of the database to ``out`` (created empty
        with mode 0600 first; it must not exist) with ``VACUUM INTO``, through
        the reader's connection: one read transaction, writers go on."""
        self._reader.copy_into(out)

    @translate_errors
    def install_snapshot(self, snapshot: str | Path) -> None:
        """Replace the database file with ``snapshot`` (checked and made this
        site's by :func:`peer.store.snapshot.prepare_received`), in place.

        Closes every connection of the store, the reader's included: call it
        where no other thread uses the store meanwhile (a Peer runs it on its
        store thread while its read thread waits for it). Copies
        ``crpeer_sites`` into the snapshot, closes every connection (the last
        close removes the ``-wal`` file), moves the snapshot over the file
        (:func:`peer.store.main.replace_file`) and opens the main connection
        again: no connection ever points at the replaced file. Raises
        StoreError, leaving the database as it was, when it is not fresh
        (:meth:`is_fresh`), a page or a group read is open, or another
        connection (another process, the app's own) keeps the file open.
        """
        if self.read_only or self._location.uri:
            raise StoreError("only a writable store opened on a path installs a snapshot")
        if self._merger.page is not None or self._reader.open_groups:
            raise StoreError("the store is busy (a page or a group read is open)")
        if not self._main.is_fresh():
            raise StoreError("the database is no longer fresh")
        self._main.copy_sites_into(snapshot)
        site_before = self.site_id
        self._close_connections(gone=False)
        try:
            replace_file(self.path, snapshot)
        finally:
            self._open()
        if self.site_id != site_before:
            raise StoreError("the installed snapshot has another site id")
