"""The one package that speaks SQL: a cr-sqlite database and its sync bookkeeping.

A :class:`Store` opens a database with the cr-sqlite extension loaded. Apps
write with ordinary SQL (through :meth:`Store.execute` or their own
connection that loaded the extension); crpeer reads and merges changes.

Versions and cursors
--------------------
A *change* is one row of ``crsql_changes`` in the order of its columns, except
that the sixth field is the **origin version**: the db_version the change had
on the site that wrote it (``site_id``). cr-sqlite gives merged rows a local
db_version (a Lamport-style ``max(local + 1, incoming)``), so the store keeps
``crpeer_versions``: for each origin and local version at which it merged a
group, the origin version of that group. That makes a **cursor** a version
vector ``{origin site_id: origin version}``: :meth:`Store.changes_since` serves
every change of each origin above the cursor, in ascending order, and
:meth:`Store.apply` merges a batch and advances the persisted cursor in one
transaction.

A group is all the changes of one ``(site_id, version)``; the store never
splits one across two pages of :meth:`Store.changes_since` nor across two
transactions of :meth:`Store.apply`.

Site owners
-----------
``crpeer_sites`` binds each site id a remote has shown in a session to the
authenticated peer id that showed it first (:meth:`Store.claim_site`).

Held changes
------------
A change for a table or column this database does not have yet (the sender's
schema is newer) is *held* when ``apply(..., hold_unknown=True)``: kept in
``crpeer_held`` with the schema version it needs, counted in the cursor,
served to others in order (:attr:`Store.served_schema` says which schema such
pages may need), and merged by :meth:`Store.apply_held` once a migration adds
what it needs.

Schema changes
--------------
Every connection of the store notices a schema change made through any
connection before it next reads or merges changes (see
:mod:`peer.store.schema`).

Connections and threads
-----------------------
A store is three objects, each owning one connection, each used from one
thread; no lock guards any of them:

- the **main connection** (the app's SQL, migrations, the bookkeeping's
  state) and the **merger** (:class:`~peer.store.merger.Merger`: merges, held
  rows, pages spanning frames): a Peer runs both on its "crpeer-store"
  thread;
- the **reader** (:class:`~peer.store.reader.ChangeReader`: pages, large
  groups, the backlog, snapshot copies): a Peer runs it on its "crpeer-read"
  thread. It reads committed data only (WAL), so reads and merges never wait
  for each other.

A Store used directly (the CLI, tests, an app before it hands the store to
a Peer) is used from one thread at a time. The attributes :attr:`Store.site_id`,
:attr:`Store.path`, :attr:`Store.served_schema`, :attr:`Store.held_schema` and
:attr:`Store.can_stream_pages` are plain values, safe to read from any thread.

``":memory:"`` opens a private temporary file (see
:func:`peer.store.connection.locate`), removed at :meth:`Store.close`: an
in-memory store works exactly as a file store does.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Collection, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite
from peer.changes import SENTINEL_CID, SITE_ID_LENGTH, Change, Cursor, SqlValue
from peer.errors import SchemaError, StoreError
from peer.packed_pk import KeyShape
from peer.store import bookkeeping, schema
from peer.store.bookkeeping import persisted_cursor
from peer.store.connection import (
    JOURNAL_SIZE_LIMIT,
    close_connection,
    create_private_file,
    file_integrity_problems,
    locate,
    quote_identifier,
    sync_file,
    translate_errors,
)
from peer.store.jobs import StoreJobs
from peer.store.merger import APPLY_SLICE_ROWS, ApplyResult, Merger
from peer.store.pages import LargeGroup
from peer.store.reader import ChangeReader

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


class Store:
    """A cr-sqlite database opened for syncing.

    ``Store(path)`` opens (or creates, with mode 0600) the database at ``path``
    (``":memory:"`` for a private temporary one), in WAL mode, with cr-sqlite
    loaded and the bookkeeping tables created. Call :meth:`close` (or use
    ``with``) when done.

    ``read_only=True`` opens an existing crpeer database without writing
    anything to it (no table is created): for reading its state only.
    ``journal_size_limit`` bounds the ``-wal`` file once it is checkpointed
    (see :meth:`checkpoint`).

    Raises ExtensionError if cr-sqlite cannot be loaded, StoreError if the
    file is not a usable database (read-only: or not a crpeer database).
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
        removed at :meth:`close`."""
        self.path = self._location.target if self.in_memory else str(path)
        """The database file (for ``":memory:"``, the temporary file standing for it)."""
        self._remove_files = weakref.finalize(
            self, shutil.rmtree, temporary or "", ignore_errors=True
        )
        if temporary is None:
            self._remove_files.detach()
        self._closed = False
        try:
            self._open()
        except BaseException:
            self._remove_files()
            raise

    def _open(self) -> None:
        """Open the main connection on :attr:`path` and make the merger and the
        reader (at start, and after :meth:`install_snapshot` replaced the file)."""
        conn = self._location.connect(extension=False)
        try:
            names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            if self.read_only and not {"crsql_site_id", "crpeer_cursor"} <= names:
                raise StoreError(
                    f"{self.path} has no crpeer tables yet: it is not a crpeer database "
                    f"(run `crpeer init {self.path}` to make it one)"
                )
            crsqlite.load(conn)
            self._schema = schema.SchemaCache()
            if not self.read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                bookkeeping.create_tables(conn)
                schema.index_clocks(conn, self._schema.read(conn)[0])
            (site_id,) = conn.execute("SELECT crsql_site_id()").fetchone()
            held_schema = bookkeeping.held_schema(conn)
            read_schema = schema.user_version(conn)
            self._cookie = schema.cookie(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path} is not a usable database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.site_id: bytes = bytes(site_id)
        self._merger = Merger(self._location, self.site_id, held_schema)
        self._reader = ChangeReader(self._location, self.site_id, read_schema=read_schema)

    # -- lifecycle ---------------------------------------------------------

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
            close_connection(self._conn)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- app-facing SQL (main connection) ---------------------------------

    @translate_errors
    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return all its rows."""
        rows: list[tuple[Any, ...]] = self._main().execute(sql, params).fetchall()
        return rows

    @translate_errors
    def executescript(self, script: str) -> None:
        """Run several statements; wrap them in BEGIN/COMMIT to make them atomic."""
        conn = self._main()
        try:
            conn.executescript(script)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @translate_errors
    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]], int]:
        """Run one statement (autocommit): its column names, its rows, and the
        rows it changed (0 for a statement that writes none)."""
        cursor = self._main().execute(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        columns = [column[0] for column in cursor.description or ()]
        changed = cursor.rowcount if cursor.rowcount > 0 and not columns else 0
        return columns, rows, changed

    def _main(self) -> Any:
        """The main connection, brought up to date first if the schema changed
        since it last looked (another connection migrated)."""
        now = schema.cookie(self._conn)
        if now != self._cookie:
            schema.refresh(self._conn)
            self._cookie = now
        return self._conn

    def integrity_problems(self, limit: int = 10) -> list[str]:
        """What ``PRAGMA quick_check`` finds wrong with the file (at most ``limit``
        lines); empty when the database is sound."""
        try:
            found = [
                str(line) for (line,) in self._conn.execute(f"PRAGMA quick_check({int(limit)})")
            ]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [] if found == ["ok"] else found

    # -- schema ------------------------------------------------------------

    def make_crr(self, *tables: str) -> None:
        """Turn existing tables into conflict-free replicated relations.

        Raises SchemaError if a table is missing or unsuitable (cr-sqlite
        requires a primary key and NOT NULL defaults on non-pk columns).
        """
        schema.make_crr(self._conn, tables)
        schema.index_clocks(self._conn, self.crr_columns())

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
        script = schema.migration_script(version, sql, alter, new_crrs)
        conn = self._main()
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SchemaError(f"migration to version {version} failed: {exc}") from exc
        schema.index_clocks(conn, self.crr_columns())
        return self.apply_held()

    @translate_errors
    def schema_cookie(self) -> int:
        """SQLite's schema cookie (``PRAGMA schema_version``): it moves on every
        schema change, made through any connection."""
        return schema.cookie(self._main())

    @translate_errors
    def schema_version(self) -> int:
        """The app's schema version (``PRAGMA user_version``)."""
        return schema.user_version(self._conn)

    def crr_columns(self) -> dict[str, frozenset[str]]:
        """Each CRR table and its column names (cached until the schema changes)."""
        return dict(self._schema.read(self._conn)[0])

    def crr_keys(self) -> dict[str, KeyShape]:
        """Each CRR table's primary key: its columns in key order and which
        values each holds (cached until the schema changes)."""
        return dict(self._schema.read(self._conn)[1])

    @translate_errors
    def schema_fingerprint(self) -> bytes:
        """16 bytes that differ when the CRR tables or their columns differ."""
        return schema.schema_fingerprint_of(self._conn, self.crr_columns())

    # -- state (main connection) -------------------------------------------

    @translate_errors
    def db_version(self) -> int:
        """The database's current cr-sqlite db_version (local clock)."""
        return int(self._conn.execute("SELECT crsql_db_version()").fetchone()[0])

    @translate_errors
    def change_marker(self) -> tuple[int, int]:
        """``(data_version, db_version)`` in one statement: it moves on every
        commit, through this connection or another."""
        data, db = (
            self._main()
            .execute("SELECT data_version, crsql_db_version() FROM pragma_data_version")
            .fetchone()
        )
        return int(data), int(db)

    @translate_errors
    def cursor(self) -> Cursor:
        """The persisted version vector of what this database holds from others."""
        return persisted_cursor(self._conn)

    @translate_errors
    def site_owners(self) -> dict[bytes, str]:
        """Every site id a remote has shown in a session, and the peer id that showed it."""
        return bookkeeping.site_owners(self._conn)

    @translate_errors
    def claim_site(self, site_id: bytes, peer_id: str, *, replacing: str | None = None) -> str:
        """Bind ``site_id`` to ``peer_id`` if it is free; return its owner afterwards.

        A site id bound to another peer id stays bound to it, unless that peer
        id is ``replacing`` (the caller frees the sites of peers it no longer
        trusts). The caller refuses a session whose peer id is not the owner
        returned.
        """
        return bookkeeping.claim_site(self._conn, site_id, peer_id, replacing)

    @translate_errors
    def own_version(self) -> int:
        """The highest origin version of this site's own changes."""
        row = (
            self._main()
            .execute("SELECT max(db_version) FROM crsql_changes WHERE site_id = ?", (self.site_id,))
            .fetchone()
        )
        return int(row[0] or 0)

    @translate_errors
    def local_high_water(self) -> int:
        """The highest local db_version at which this site wrote a change itself.

        Moves on local writes (through any connection), never on merges of
        others' changes; an index lookup per CRR table.
        """
        highs = " UNION ALL ".join(
            "SELECT max(db_version) AS high FROM "
            f"{quote_identifier(table + '__crsql_clock')} WHERE site_id = 0"
            for table in self.crr_columns()
        )
        if not highs:
            return 0
        (high,) = self._conn.execute(f"SELECT coalesce(max(high), 0) FROM ({highs})").fetchone()
        return int(high)

    @property
    def held_schema(self) -> int:
        """The newest schema version a held row needs (0 if none is held).

        Pages this store serves may carry held rows; a session announces this
        version in its frames so a receiver with the same schema holds them
        too (PROTOCOL.md, CHANGES).
        """
        return self._merger.held_schema

    @property
    def served_schema(self) -> int:
        """The newest schema version a row this store serves may need: its own
        schema version as of its latest read of changes (a page read after a
        migration may carry the new columns before anyone announced them), or
        that of a held row it serves on (see :attr:`held_schema`)."""
        return max(self._reader.read_schema, self._merger.held_schema)

    @translate_errors
    def held_count(self) -> int:
        """How many held rows still wait for a schema migration."""
        return bookkeeping.held_count(self._conn)

    @translate_errors
    def is_fresh(self) -> bool:
        """Whether this database holds nothing to sync: an empty cursor, no
        held rows, and no clock rows (nothing written, not even deleted)."""
        return bookkeeping.is_fresh(self._main(), list(self.crr_columns()))

    @translate_errors
    def checkpoint(self, *, truncate: bool = True) -> tuple[bool, int, int]:
        """Copy the ``-wal`` file into the database now, without waiting for
        anyone; with ``truncate``, also cut the ``-wal`` file to zero bytes.

        Returns ``(done, wal_pages, checkpointed_pages)``: ``done`` is False
        when a reader or writer (a page spanning frames, another process)
        was in the way; call again later. Nothing is lost either way.
        """
        if self._merger.page is not None or self.read_only:
            return False, 0, 0
        mode = "TRUNCATE" if truncate else "PASSIVE"
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy, log, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {self._location.busy_timeout_ms:d}")
        return busy == 0, int(log), int(done)

    # -- reading changes (the reader's thread) -----------------------------

    @translate_errors
    def next_page(
        self,
        cursor: Mapping[bytes, int],
        limit: int,
        *,
        exclude: Collection[bytes] = (),
        max_bytes: int | None = None,
    ) -> list[Change] | LargeGroup:
        """The next page of changes above ``cursor``: at most ``limit`` rows
        and, if ``max_bytes`` is given, at most that many bytes as counted by
        :func:`peer.changes.change_size` (reads stop there, so a page of large
        values never sits whole in memory).

        For each origin (except those in ``exclude``) the changes come in
        ascending ``(version, seq)``, whole groups only. If the first group to
        send is larger than ``limit`` or ``max_bytes``, returns it as a
        :class:`LargeGroup` to read with :meth:`read_group`. An empty list means
        nothing is above the cursor. To page, advance the cursor to the highest
        version returned per origin (or of the large group) and call again.
        """
        return self._reader.next_page(cursor, limit, exclude=exclude, max_bytes=max_bytes)

    @translate_errors
    def changes_since(
        self, cursor: Mapping[bytes, int], limit: int, *, exclude: Collection[bytes] = ()
    ) -> list[Change]:
        """Like :meth:`next_page`, but a large group comes back whole, in one list."""
        return self._reader.changes_since(cursor, limit, exclude=exclude)

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int | None = None
    ) -> Generator[list[Change], None, None]:
        """The rows of ``group`` in chunks of at most ``chunk`` rows and, if
        ``max_bytes`` is given, at most that many bytes by
        :func:`peer.changes.change_size` (a row larger than that comes alone).

        They are read through a connection of their own, in one statement (one
        consistent snapshot), whatever the group's size, on the reader's
        thread; close the iterator (or exhaust it) to release it.
        """
        return self._reader.read_group(group, chunk, max_bytes)

    @translate_errors
    def backlog_estimate(
        self, cursor: Mapping[bytes, int], *, exclude: Collection[bytes] = ()
    ) -> int:
        """About how many change rows :meth:`changes_since` will serve above ``cursor``.

        An upper bound from the clock tables' db_version index (no scan of
        ``crsql_changes``); for progress reports, not for correctness.
        """
        return self._reader.backlog_estimate(cursor, exclude=exclude)

    @translate_errors
    def copy_into(self, out: str | Path) -> None:
        """Write a consistent copy of the database to ``out`` (created empty
        with mode 0600 first; it must not exist) with ``VACUUM INTO``, through
        the reader's connection: one read transaction, writers go on."""
        self._reader.copy_into(out)

    # -- merging changes (the main connection's thread) --------------------

    @property
    def can_stream_pages(self) -> bool:
        """Whether :meth:`begin_page` works: always (an in-memory store is a
        temporary file too)."""
        return True

    @translate_errors
    def begin_page(self) -> None:
        """Open one transaction for several :meth:`apply` calls (a page that
        spans frames); end it with :meth:`end_page`, from the same thread.

        It runs on the merger's connection: readers keep seeing committed
        data, and other writers wait for SQLite's lock (busy timeout). Raises
        StoreError if a page is open already.
        """
        self._merger.begin_page()

    def end_page(self, *, commit: bool) -> None:
        """Commit (or roll back) the page opened by :meth:`begin_page`; raises
        StoreError if none is open or the commit fails (then rolled back)."""
        page = self._merger.page
        if page is None:
            raise StoreError("no page is open")
        if commit:
            page.commit()
        else:
            page.rollback()

    def apply(
        self,
        changes: Sequence[Change],
        *,
        hold_unknown: bool = False,
        types_checked: bool = False,
        skip_known: bool = False,
        held_schema: int = 0,
        yield_to: StoreJobs | None = None,
    ) -> ApplyResult:
        """Merge ``changes`` and advance the persisted cursor, in one transaction.

        Inside :meth:`begin_page` the rows join that page's transaction (and
        an error leaves it to the caller to end the page without committing).
        Every row is validated before a row reaches the database, including
        its packed primary key against the table's key (see
        :func:`peer.changes.plan_groups`): cr-sqlite aborts the process on
        some malformed rows, so none reaches it unchecked. Rows for a
        table or column this database lacks raise InvalidChangeError, unless
        ``hold_unknown`` (the sender's schema is newer), in which case they
        are held, recorded as needing schema version ``held_schema`` (the
        sender's, or the one its frame says its rows need; by default the
        next one after this database's), which is what :attr:`held_schema`
        reports and frames serving them on announce.
        ``types_checked`` is for rows :func:`peer.messages.decode`
        produced, whose field types and ranges it already checked. Rows that
        originated here are skipped, and with ``skip_known`` so are groups
        whose version the persisted cursor already covers (as it stood when
        the transaction began): for callers that deliver each origin's groups
        whole and in ascending order, as sessions do, where such a group is a
        copy that came by another path. On any error nothing of the batch is
        applied and the cursor does not move; applying the same batch again
        is harmless.

        ``yield_to`` lets app calls cut in (outside a page only): the batch
        merges in slices of whole groups of about :data:`APPLY_SLICE_ROWS`
        rows, and when a call waits in ``yield_to`` at the end of a slice,
        the slices so far commit with their cursor, the waiting calls run
        (on this thread), and the rest merges in a new transaction (with none
        waiting, it stays one transaction). A group never spans two
        transactions. The whole batch is validated first, so a malformed row
        still lands nothing; but should the database itself refuse a row (a
        constraint or trigger of the app's) after a commit for a waiting
        call, or the process die there, the slices committed before stay,
        whole groups with their cursor, and the sender sends the rest again.
        Should a waiting call change the CRR tables, the rest is validated
        again against the new schema before it merges.

        Raises InvalidChangeError for a malformed row, StoreError if SQLite
        fails.
        """
        return self._merger.apply(
            changes,
            hold_unknown=hold_unknown,
            types_checked=types_checked,
            skip_known=skip_known,
            held_schema=held_schema,
            yield_to=yield_to,
        )

    @translate_errors
    def apply_held(self) -> int:
        """Merge held rows whose table and column now exist; return how many.

        Held rows stay recorded (and are still served to others at their
        original place in the order); the merge itself is not re-served. A
        held row whose primary key does not fit its table now that it exists
        is never merged (it stays held; a warning names it).
        """
        return self._merger.apply_held()

    # -- snapshots (a fresh device bootstraps from a copy) -----------------

    @translate_errors
    def install_snapshot(self, snapshot: str | Path) -> None:
        """Replace the database file with ``snapshot`` (checked and made this
        site's by :func:`peer.store.snapshot.prepare_received`), in place.

        Closes every connection of the store, the reader's included: call it
        where no other thread uses the store meanwhile (a Peer runs it on its
        store thread while its read thread waits for it). Checks that the
        database is still fresh (:meth:`is_fresh`), copies ``crpeer_sites``
        into the snapshot, closes every connection (the last close
        checkpoints and removes the ``-wal`` file), moves the snapshot over
        the database file with ``os.replace`` (atomic), removes a stale
        ``-shm``, and opens the main connection again on the new file (the
        merger and the reader open theirs at their next use). No connection
        of the store ever points at the replaced file. Raises StoreError,
        leaving the database as it was, when it is not fresh, a page or a
        group read is open, or another connection (another process, the
        app's own) keeps the old file open (its ``-wal`` file stays).
        """
        if self.read_only or self._location.uri:
            raise StoreError("only a writable store opened on a path installs a snapshot")
        if self._merger.page is not None or self._reader.open_groups:
            raise StoreError("the store is busy (a page or a group read is open)")
        if not bookkeeping.is_fresh(self._main(), list(self.crr_columns())):
            raise StoreError("the database is no longer fresh")
        sites = self._conn.execute("SELECT site_id, peer_id FROM crpeer_sites").fetchall()
        target = sqlite3.connect(os.fspath(snapshot), isolation_level=None)
        try:
            target.execute("BEGIN IMMEDIATE")
            target.execute("DELETE FROM crpeer_sites")
            target.executemany("INSERT INTO crpeer_sites (site_id, peer_id) VALUES (?, ?)", sites)
            target.execute("COMMIT")
        finally:
            target.close()
        sync_file(snapshot)
        site_before = self.site_id
        self._close_connections(gone=False)
        try:
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StoreError("another connection keeps the database open: cannot replace it")
            os.replace(snapshot, self.path)
            Path(f"{self.path}-shm").unlink(missing_ok=True)
            wal.unlink(missing_ok=True)
            sync_file(Path(self.path).parent)
        finally:
            self._open()
        if self.site_id != site_before:
            raise StoreError("the installed snapshot has another site id")
