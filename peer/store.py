"""The one module that speaks SQL: a cr-sqlite database and its sync bookkeeping.

A :class:`Store` wraps one pysqlite3 connection with the cr-sqlite extension
loaded. Apps write with ordinary SQL (through :meth:`Store.execute` or their
own connection that loaded the extension); crpeer reads and merges changes.

Versions and cursors
--------------------
A *change* is one row of ``crsql_changes`` in the order of its columns, except
that the sixth field is the **origin version**: the db_version the change had
on the site that wrote it (``site_id``). cr-sqlite gives merged rows a local
db_version (a Lamport-style ``max(local + 1, incoming)``), so the store keeps
``crpeer_versions``: for each origin and local version at which it merged a
group, the origin version of that group. That makes a **cursor** a version
vector ``{origin site_id: origin version}``: :meth:`changes_since` serves every
change of each origin above the cursor, in ascending order, and
:meth:`apply` merges a batch and advances the persisted cursor in one
transaction.

A group is all the changes of one ``(site_id, version)``; the store never
splits one across two pages of :meth:`changes_since` nor across two
transactions of :meth:`apply`.

Site owners
-----------
``crpeer_sites`` binds each site id a remote has shown in a session to the
authenticated peer id that showed it first (:meth:`Store.claim_site`).

Held changes
------------
A change for a table or column this database does not have yet (the sender's
schema is newer) is *held* when ``apply(..., hold_unknown=True)``: kept in
``crpeer_held`` with the schema version it needs, counted in the cursor,
served to others in order (:attr:`served_schema` says which schema such pages
may need), and merged by :meth:`apply_held` once a migration adds what it
needs.

Schema changes
--------------
Every connection the store holds notices a schema change made through any
connection before it next reads or merges changes (see
:mod:`peer.store_schema`).

Threads
-------
The connection is opened with ``check_same_thread=False`` and every public
method takes an internal lock, so a Store may be called from any thread, one
call at a time. :class:`peer.peer.Peer` makes every store call from a single
worker thread so its event loop never waits on SQLite.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite, store_schema
from peer.changes import (
    SENTINEL_CID,
    SITE_ID_LENGTH,
    Change,
    Cursor,
    Group,
    SqlValue,
    by_group,
    change_size,
    fits,
    plan_groups,
)
from peer.errors import InvalidChangeError, SchemaError, StoreError
from peer.packed_pk import KeyColumn, KeyShape, PackedKeyError, check_key
from peer.store_jobs import StoreJobs

_log = logging.getLogger("crpeer.store")

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


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS crpeer_versions (
    origin BLOB NOT NULL,
    local_version INTEGER NOT NULL,
    origin_version INTEGER NOT NULL,
    replay INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, local_version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS crpeer_versions_by_origin_version
    ON crpeer_versions (origin, origin_version);
CREATE INDEX IF NOT EXISTS crpeer_versions_by_local ON crpeer_versions (local_version);
CREATE TABLE IF NOT EXISTS crpeer_cursor (
    origin BLOB PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS crpeer_held (
    origin BLOB NOT NULL,
    local_version INTEGER NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    pk BLOB NOT NULL,
    cid TEXT NOT NULL,
    val ANY,
    col_version INTEGER NOT NULL,
    cl INTEGER NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, version, tbl, pk, cid)
);
CREATE INDEX IF NOT EXISTS crpeer_held_by_local ON crpeer_held (origin, local_version);
CREATE TABLE IF NOT EXISTS crpeer_sites (
    site_id BLOB PRIMARY KEY,
    peer_id TEXT NOT NULL
) WITHOUT ROWID;
"""

_CHANGE_COLUMNS = '"table", pk, cid, val, col_version, db_version, site_id, cl, seq'
_CHANGES_INTO = f"crsql_changes ({_CHANGE_COLUMNS})"
_VERSIONS_INTO = "crpeer_versions (origin, local_version, origin_version, replay)"
_VERSIONS_UPSERT = (
    " ON CONFLICT (origin, local_version) DO UPDATE SET "
    "origin_version = max(origin_version, excluded.origin_version)"
)
_CURSOR_INTO = "crpeer_cursor (origin, version)"
_CURSOR_UPSERT = " ON CONFLICT (origin) DO UPDATE SET version = max(version, excluded.version)"
_MERGE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS crpeer_incoming (
    "table", pk, cid, val, col_version, db_version, site_id, cl, seq,
    origin_version INTEGER, ends_group INTEGER
);
CREATE TEMP TABLE IF NOT EXISTS crpeer_merge_state (impacted INTEGER NOT NULL);
INSERT INTO crpeer_merge_state SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM crpeer_merge_state);
CREATE TEMP TRIGGER IF NOT EXISTS crpeer_merge AFTER INSERT ON crpeer_incoming BEGIN
    INSERT INTO {_CHANGES_INTO} VALUES (
        NEW."table", NEW.pk, NEW.cid, NEW.val, NEW.col_version, NEW.db_version,
        NEW.site_id, NEW.cl, NEW.seq
    );
    INSERT INTO {_VERSIONS_INTO}
        SELECT NEW.site_id, crsql_next_db_version(), NEW.origin_version, 0
        FROM crpeer_merge_state
        WHERE NEW.ends_group AND crsql_rows_impacted() > impacted{_VERSIONS_UPSERT};
    UPDATE crpeer_merge_state SET impacted = crsql_rows_impacted() WHERE NEW.ends_group;
END;
"""
"""The sync connection's staging table: a multi-row INSERT into it merges
every row into crsql_changes and, at the last row of each group that changed
something, records the local version the group landed at — the whole page
in one statement, so the store thread takes the GIL back once per page, not
once per group (see :func:`_insert`)."""
_STAGED_INTO = "temp.crpeer_incoming"
_STAGED_GROUP_ROWS = 16
"""Batches whose groups average more rows than this merge group by group:
the staging table costs a few microseconds per row, two statements per
group are nothing beside a large group (a bulk sync runs ~25% faster so)."""
_MAX_STATEMENT_PARAMETERS = 9_000
"""Parameters bound to one multi-row INSERT (SQLite allows 32,766)."""
_MERGE_ROWS_PER_STATEMENT = 32
"""Rows per multi-row INSERT straight into crsql_changes. Each row's merge
runs cr-sqlite's own statements inside the INSERT, and each of them, on
finishing, truncates the INSERT's in-memory statement journal back to where
it began, walking that journal from its start, so the cost per row grows
with the rows before it in the same statement. 1,000 rows per statement
merge ~8% slower than 32 (``scripts/probe.py merge-statement-size``); one
row per statement pays a statement and a GIL hand-over per row."""
_MERGE_OUTCOME = (
    "SELECT crsql_rows_impacted(), CASE WHEN ? OR crsql_rows_impacted() > ? "
    "THEN crsql_next_db_version() END"
)
"""After a group's rows: rows changed so far in this transaction, and the
local version the group merged at when it changed anything or must be
recorded anyway (``crsql_next_db_version`` reserves a new version when
nothing merged, so it is only asked for then)."""
_INSERT_HELD = (
    "INSERT OR IGNORE INTO crpeer_held "
    "(origin, local_version, version, seq, tbl, pk, cid, val, col_version, cl, schema_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_MAX_COMBINED_ORIGINS = 500
"""Past this many origins to serve, pages are read origin by origin (SQL variables)."""

APPLY_SLICE_ROWS = 1_000
"""Change rows :meth:`Store.apply` merges between two looks for waiting app
calls (``yield_to``): about 15 ms of merging, which bounds how long an app
write waits behind a batch (a group larger than this is still merged whole)."""

_COMBINED_READS = 4
"""Reads of the log in one page before falling back to per-origin reads."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`Store.apply` did with a batch."""

    merged: int
    """Rows handed to cr-sqlite (a row that loses its merge still counts)."""
    held: int
    """Rows kept for a newer schema (see :meth:`Store.apply_held`)."""
    skipped: int
    """Rows that originated here and came back; ignored."""
    tables: frozenset[str]
    """Tables the merged rows touched (for UI refresh)."""
    cursor: Cursor = field(default_factory=dict)
    """The highest origin version of each origin in the batch."""


@dataclass(frozen=True, slots=True)
class LargeGroup:
    """A group (one origin transaction) larger than a page: read it with
    :meth:`Store.read_group`, chunk by chunk."""

    origin: bytes
    local_version: int
    version: int
    largest_value: int = 0
    """Bytes of its largest value (text in UTF-8, or blob), so a sender can
    tell before it starts whether the receiver takes every value of it."""


def _translate_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn raw sqlite errors escaping a public method into StoreError."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{method.__name__}: {exc}") from exc

    return wrapper


JOURNAL_SIZE_LIMIT = 64 << 20
"""Bytes the ``-wal`` file is cut back to after a checkpoint resets it
(``PRAGMA journal_size_limit`` on every connection of a store)."""


class Store:
    """A cr-sqlite database opened for syncing.

    ``Store(path)`` opens (or creates, with mode 0600) the database at ``path``
    (``":memory:"`` for a private in-memory one), in WAL mode, with cr-sqlite
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
        self.path = str(path)
        self.read_only = read_only
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._journal_size_limit = int(journal_size_limit)
        self._lock = threading.RLock()
        self._columns_cache: tuple[int, dict[str, frozenset[str]], dict[str, KeyShape]] | None = (
            None
        )
        if not read_only and self.path != ":memory:" and not self.path.startswith("file:"):
            create_private_file(self.path)
        self._group_readers = 0
        """Connections of read_group iterators still open (file stores)."""
        separate = not read_only and self.path != ":memory:" and not self.path.startswith("file:")
        self._read_lock = threading.RLock() if separate else self._lock
        self._sync_lock = threading.RLock() if separate else self._lock
        self._connect()

    def _connect(self) -> None:
        """Open every connection on :attr:`path` (at start, and after
        :meth:`install_snapshot` replaced the file)."""
        read_only = self.read_only
        busy_timeout_ms = self._busy_timeout_ms
        try:
            if read_only:
                target = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro"
                self._conn = sqlite3.connect(
                    target, uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self._conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            names = {name for (name,) in self._conn.execute("SELECT name FROM sqlite_master")}
            if read_only and not {"crsql_site_id", "crpeer_cursor"} <= names:
                raise StoreError(
                    f"{self.path} has no crpeer tables yet: it is not a crpeer database "
                    f"(run `crpeer init {self.path}` to make it one)"
                )
            crsqlite.load(self._conn)
            if not read_only:
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                    self._conn.execute("PRAGMA synchronous = NORMAL")
                    self._conn.execute(f"PRAGMA journal_size_limit = {self._journal_size_limit}")
                self._conn.executescript(_BOOKKEEPING)
                store_schema.add_held_schema_column(self._conn)
                self._index_clocks()
            self._columns_cache = None
            (site_id,) = self._conn.execute("SELECT crsql_site_id()").fetchone()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path} is not a usable database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise
        self.site_id: bytes = bytes(site_id)
        self._closed = False
        self._page_open = False
        self._page_impacted = 0
        self._page_known: Cursor = {}
        self._held_schema = store_schema.held_schema(self._conn)
        self._read_schema = store_schema.user_version(self._conn)
        # File stores read changes through a second connection: it sees only
        # committed data (WAL), so reads never wait on an apply in progress.
        # Merges (apply) run on a sync connection of their own, so a page
        # spanning frames can stay open without holding up the app's calls.
        self._reader = self._sync = self._conn
        # The schema cookie each connection last saw (see peer.store_schema).
        self._main_cookie = self._reader_cookie = self._sync_cookie = store_schema.cookie(
            self._conn
        )
        if read_only:
            return
        if self.path != ":memory:" and not self.path.startswith("file:"):
            self._reader = self._open_connection()
            self._sync = self._open_connection()
        self._sync.executescript(_MERGE_STAGE)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Finalize cr-sqlite and close the connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._read_lock, self._sync_lock:
                self._close_connections()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- app-facing SQL ----------------------------------------------------

    @_translate_errors
    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return all its rows."""
        with self._lock:
            self._guard_main()
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, params).fetchall()
            return rows

    @_translate_errors
    def executescript(self, script: str) -> None:
        """Run several statements; wrap them in BEGIN/COMMIT to make them atomic."""
        with self._lock:
            self._guard_main()
            try:
                self._conn.executescript(script)
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @_translate_errors
    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]], int]:
        """Run one statement (autocommit): its column names, its rows, and the
        rows it changed (0 for a statement that writes none)."""
        with self._lock:
            self._guard_main()
            cursor = self._conn.execute(sql, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            columns = [column[0] for column in cursor.description or ()]
            changed = cursor.rowcount if cursor.rowcount > 0 and not columns else 0
            return columns, rows, changed

    def integrity_problems(self, limit: int = 10) -> list[str]:
        """What ``PRAGMA quick_check`` finds wrong with the file (at most ``limit``
        lines); empty when the database is sound."""
        with self._lock:
            try:
                found = [
                    str(line) for (line,) in self._conn.execute(f"PRAGMA quick_check({int(limit)})")
                ]
            except sqlite3.DatabaseError as exc:
                return [str(exc)]
        return [] if found == ["ok"] else found

    def _index_clocks(self) -> None:
        """Index each CRR clock table by (site_id, db_version).

        cr-sqlite indexes clock rows by db_version only; reading one origin's
        changes (``site_id = ? AND db_version > ?``) would scan every row
        merged since. With this index the read is a range lookup.
        """
        for table in self.crr_columns():
            clock = _quote_identifier(f"{table}__crsql_clock")
            index = _quote_identifier(f"{table}__crpeer_site_version")
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {clock} (site_id, db_version)"
            )

    def make_crr(self, *tables: str) -> None:
        """Turn existing tables into conflict-free replicated relations.

        Raises SchemaError if a table is missing or unsuitable (cr-sqlite
        requires a primary key and NOT NULL defaults on non-pk columns).
        """
        with self._lock:
            for table in tables:
                problem = self._crr_problem(table)
                if problem:
                    raise SchemaError(f"cannot make {table!r} a CRR: {problem}")
                try:
                    self._conn.execute("SELECT crsql_as_crr(?)", (table,))
                except sqlite3.Error as exc:
                    raise SchemaError(f"cannot make {table!r} a CRR: {exc}") from exc
            self._index_clocks()

    def _crr_problem(self, table: str) -> str | None:
        """Why cr-sqlite would refuse ``table``, said with its fix; None if it looks fine."""
        kind = self._conn.execute(
            "SELECT type FROM sqlite_master WHERE name = ? AND type IN ('table', 'view')",
            (table,),
        ).fetchone()
        if kind is None:
            return "there is no such table (create it first)"
        if kind[0] != "table":
            return "it is a view; only tables replicate"
        info = self._conn.execute(f"PRAGMA table_info({_quote_identifier(table)})").fetchall()
        keys = [row for row in info if row[5]]
        if not keys:
            return "it has no primary key; declare one, e.g. `id TEXT PRIMARY KEY NOT NULL`"
        nullable = [row[1] for row in keys if not row[3]]
        if nullable:
            names = ", ".join(nullable)
            return (
                f"its primary key ({names}) may be NULL; cr-sqlite needs NOT NULL on it, "
                f"e.g. `{nullable[0]} INTEGER PRIMARY KEY NOT NULL`"
            )
        missing = [row[1] for row in info if row[3] and not row[5] and row[4] is None]
        if missing:
            return (
                f"NOT NULL column(s) {', '.join(missing)} have no DEFAULT; "
                "give each a default value (cr-sqlite merges columns one by one)"
            )
        return None

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
        if version < 0:
            raise SchemaError(f"schema version must be >= 0, got {version}")
        quoted = [_quote_literal(t) for t in alter]
        script = "BEGIN;\n"
        script += "".join(f"SELECT crsql_begin_alter({t});\n" for t in quoted)
        script += sql.strip().rstrip(";") + ";\n" if sql.strip() else ""
        script += "".join(f"SELECT crsql_commit_alter({t});\n" for t in quoted)
        script += "".join(f"SELECT crsql_as_crr({_quote_literal(t)});\n" for t in new_crrs)
        script += f"PRAGMA user_version = {int(version)};\nCOMMIT;"
        with self._lock:
            self._guard_main()
            try:
                self._conn.executescript(script)
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise SchemaError(f"migration to version {version} failed: {exc}") from exc
            self._index_clocks()
        return self.apply_held()

    # -- state -------------------------------------------------------------

    @_translate_errors
    def db_version(self) -> int:
        """The database's current cr-sqlite db_version (local clock)."""
        with self._lock:
            return int(self._conn.execute("SELECT crsql_db_version()").fetchone()[0])

    @_translate_errors
    def change_marker(self) -> tuple[int, int]:
        """``(data_version, db_version)`` in one statement: it moves on every
        commit, through this connection or another."""
        with self._lock:
            self._guard_main()
            data, db = self._conn.execute(
                "SELECT data_version, crsql_db_version() FROM pragma_data_version"
            ).fetchone()
            return int(data), int(db)

    @_translate_errors
    def schema_cookie(self) -> int:
        """SQLite's schema cookie (``PRAGMA schema_version``): it moves on every
        schema change, made through any connection."""
        with self._lock:
            self._guard_main()
            return store_schema.cookie(self._conn)

    @_translate_errors
    def schema_version(self) -> int:
        """The app's schema version (``PRAGMA user_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def crr_columns(self) -> dict[str, frozenset[str]]:
        """Each CRR table and its column names (cached until the schema changes)."""
        return dict(self._crr_schema()[0])

    def crr_keys(self) -> dict[str, KeyShape]:
        """Each CRR table's primary key: its columns in key order and which
        values each holds (cached until the schema changes)."""
        return dict(self._crr_schema()[1])

    def _crr_schema(self) -> tuple[dict[str, frozenset[str]], dict[str, KeyShape]]:
        with self._lock:
            (schema_cookie,) = self._conn.execute("PRAGMA schema_version").fetchone()
            if self._columns_cache is None or self._columns_cache[0] != schema_cookie:
                listed = {
                    name: (bool(without_rowid), bool(strict))
                    for _, name, _, _, without_rowid, strict in self._conn.execute(
                        "PRAGMA main.table_list"
                    )
                }
                columns: dict[str, frozenset[str]] = {}
                keys: dict[str, KeyShape] = {}
                for name in listed:
                    table = name.removesuffix("__crsql_clock")
                    if table == name or table not in listed:
                        continue
                    info = self._conn.execute(
                        f"PRAGMA table_info({_quote_identifier(table)})"
                    ).fetchall()
                    columns[table] = frozenset(row[1] for row in info)
                    keys[table] = _key_shape(info, *listed[table])
                self._columns_cache = (schema_cookie, columns, keys)
            return self._columns_cache[1], self._columns_cache[2]

    @_translate_errors
    def schema_fingerprint(self) -> bytes:
        """16 bytes that differ when the CRR tables or their columns differ."""
        with self._lock:
            return schema_fingerprint_of(self._conn, self.crr_columns())

    @_translate_errors
    def cursor(self) -> Cursor:
        """The persisted version vector of what this database holds from others."""
        with self._lock:
            return persisted_cursor(self._conn)

    @_translate_errors
    def site_owners(self) -> dict[bytes, str]:
        """Every site id a remote has shown in a session, and the peer id that showed it."""
        with self._lock:
            rows = self._conn.execute("SELECT site_id, peer_id FROM crpeer_sites").fetchall()
        return {bytes(site_id): str(peer_id) for site_id, peer_id in rows}

    @_translate_errors
    def claim_site(self, site_id: bytes, peer_id: str, *, replacing: str | None = None) -> str:
        """Bind ``site_id`` to ``peer_id`` if it is free; return its owner afterwards.

        A site id bound to another peer id stays bound to it, unless that peer
        id is ``replacing`` (the caller frees the sites of peers it no longer
        trusts). The caller refuses a session whose peer id is not the owner
        returned.
        """
        with self._lock:
            self._conn.execute(
                "INSERT INTO crpeer_sites (site_id, peer_id) VALUES (?, ?) ON CONFLICT (site_id) "
                "DO UPDATE SET peer_id = excluded.peer_id WHERE peer_id IS ?",
                (site_id, peer_id, replacing),
            )
            (owner,) = self._conn.execute(
                "SELECT peer_id FROM crpeer_sites WHERE site_id = ?", (site_id,)
            ).fetchone()
        return str(owner)

    @_translate_errors
    def own_version(self) -> int:
        """The highest origin version of this site's own changes."""
        with self._lock:
            self._guard_main()
            row = self._conn.execute(
                "SELECT max(db_version) FROM crsql_changes WHERE site_id = ?", (self.site_id,)
            ).fetchone()
            return int(row[0] or 0)

    @_translate_errors
    def local_high_water(self) -> int:
        """The highest local db_version at which this site wrote a change itself.

        Moves on local writes (through any connection), never on merges of
        others' changes; an index lookup per CRR table.
        """
        tables = self.crr_columns()
        if not tables:
            return 0
        highs = " UNION ALL ".join(
            "SELECT max(db_version) AS high FROM "
            f"{_quote_identifier(table + '__crsql_clock')} WHERE site_id = 0"
            for table in tables
        )
        with self._lock:
            (high,) = self._conn.execute(f"SELECT coalesce(max(high), 0) FROM ({highs})").fetchone()
            return int(high)

    @property
    def held_schema(self) -> int:
        """The newest schema version a held row needs (0 if none is held).

        Pages this store serves may carry held rows; a session announces this
        version in its frames so a receiver with the same schema holds them
        too (PROTOCOL.md, CHANGES).
        """
        return self._held_schema

    @property
    def served_schema(self) -> int:
        """The newest schema version a row this store serves may need: its own
        schema version as of its latest read of changes (a page read after a
        migration may carry the new columns before anyone announced them), or
        that of a held row it serves on (see :attr:`held_schema`)."""
        return max(self._read_schema, self._held_schema)

    @_translate_errors
    def held_count(self) -> int:
        """How many held rows still wait for a schema migration."""
        with self._lock:
            return int(
                self._conn.execute("SELECT count(*) FROM crpeer_held WHERE applied = 0").fetchone()[
                    0
                ]
            )

    # -- reading changes ---------------------------------------------------

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """One read transaction, so several queries see one committed state."""
        if self._reader is self._conn:
            with self._lock:
                self._guard_main()
                self._read_schema = store_schema.user_version(self._conn)
            yield
            return
        self._reader.execute("BEGIN")
        now = store_schema.cookie(self._reader)  # starts the snapshot
        if now != self._reader_cookie:
            self._reader.execute("ROLLBACK")
            self._reader = self._reopen(self._reader)
            self._reader.execute("BEGIN")
            self._reader_cookie = store_schema.cookie(self._reader)
        # Versions only rise: the newest one read covers every page read so far.
        self._read_schema = max(self._read_schema, store_schema.user_version(self._reader))
        try:
            yield
        finally:
            # ROLLBACK, not COMMIT: ending a read-only transaction so runs
            # cr-sqlite's rollback hook, which lets it see a schema change.
            self._reader.execute("ROLLBACK")

    @_translate_errors
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
        :class:`LargeGroup` to read with :meth:`read_group`. An empty list means nothing is above
        the cursor. To page, advance the cursor to the highest version
        returned per origin (or of the large group) and call again.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._read_lock, self._read_snapshot():
            # An origin the remote's cursor already covers has nothing to send.
            origins = [self.site_id] + [
                origin
                for origin, version in persisted_cursor(self._reader).items()
                if cursor.get(origin, 0) < version
            ]
            origins = [origin for origin in origins if origin not in exclude]
            combined = self._combined_page(cursor, limit, origins, max_bytes)
            if combined is not None:
                return combined
            out: list[Change] = []
            budget = max_bytes
            for origin in origins:
                if len(out) >= limit or (budget is not None and budget <= 0):
                    continue
                after = cursor.get(origin, 0)
                if origin == self.site_id:
                    found = self._own_changes(after, limit - len(out), budget)
                else:
                    found = self._relayed_changes(origin, after, limit - len(out), budget)
                if isinstance(found, LargeGroup):
                    if not out:
                        return found
                    break  # it starts the next page
                out.extend(found)
                if budget is not None:
                    budget -= sum(map(change_size, found))
            return out

    def _combined_page(
        self,
        cursor: Mapping[bytes, int],
        limit: int,
        origins: Sequence[bytes],
        max_bytes: int | None,
    ) -> list[Change] | None:
        """The page of :meth:`next_page` read in one pass over the change log,
        for every origin at once; None where the per-origin reads must do it
        (held rows exist, one transaction exceeds ``limit``, or the rows to
        send lie far apart in the log).

        Each origin's versions rise with the local versions it merged at, so
        reading ``crsql_changes`` in local order from the lowest local version
        any origin still lacks, and keeping each row whose origin version is
        above the remote's cursor, serves every origin in its own order.
        """
        remote = [origin for origin in origins if origin != self.site_id]
        if len(remote) > _MAX_COMBINED_ORIGINS or (remote and self._any_held()):
            return None
        starts: list[int] = []
        if self.site_id in origins:
            (start,) = self._reader.execute(
                "SELECT min(db_version) FROM crsql_changes WHERE site_id = ? AND db_version > ?",
                (self.site_id, cursor.get(self.site_id, 0)),
            ).fetchone()
            if start is not None:
                starts.append(int(start))
        if remote:
            wanted = ", ".join("(?, ?)" for _ in remote)
            (start,) = self._reader.execute(
                f"WITH wanted (origin, after) AS (VALUES {wanted}) "
                "SELECT min(v.local_version) FROM wanted JOIN crpeer_versions AS v "
                "ON v.origin = wanted.origin AND v.origin_version > wanted.after "
                "AND v.replay = 0",
                [value for origin in remote for value in (origin, cursor.get(origin, 0))],
            ).fetchone()
            if start is not None:
                starts.append(int(start))
        if not starts:
            return []
        wanted_origins = set(origins)
        out: list[Change] = []
        start = min(starts)
        for _ in range(_COMBINED_READS):
            rows, full = _fetch_within(
                self._reader.execute(
                    f"SELECT {_CHANGE_COLUMNS} FROM crsql_changes WHERE db_version >= ? "
                    "ORDER BY db_version, seq LIMIT ?",
                    (start, limit + 1),
                ),
                limit + 1,
                max_bytes,
            )
            if full:
                last = rows[-1][5]
                rows = [row for row in rows if row[5] != last]
                if not rows:
                    return out or None  # one local version alone fills a page
            versions = self._origin_versions(rows[0][5], rows[-1][5]) if rows else {}
            for _, group in by_group(rows, lambda row: row[5]):
                kept = self._rows_to_send(group, cursor, wanted_origins, versions)
                if len(out) + len(kept) > limit:
                    return out or None
                out.extend(kept)
            if not full or out:
                return out
            start = last
        return None  # what is left lies far apart: the per-origin reads seek to it

    def _any_held(self) -> bool:
        return bool(self._reader.execute("SELECT EXISTS (SELECT 1 FROM crpeer_held)").fetchone()[0])

    def _origin_versions(self, low: int, high: int) -> dict[tuple[bytes, int], tuple[int, bool]]:
        """``(origin, local version) -> (origin version, replay)`` for local versions in range."""
        return {
            (bytes(origin), int(local)): (int(version), bool(replay))
            for origin, local, version, replay in self._reader.execute(
                "SELECT origin, local_version, origin_version, replay FROM crpeer_versions "
                "WHERE local_version BETWEEN ? AND ?",
                (low, high),
            )
        }

    def _rows_to_send(
        self,
        rows: Sequence[tuple[Any, ...]],
        cursor: Mapping[bytes, int],
        origins: Collection[bytes],
        versions: Mapping[tuple[bytes, int], tuple[int, bool]],
    ) -> list[Change]:
        """The rows of one local version the remote lacks, with their origin
        versions, each origin's rows together (in ``seq`` order)."""
        kept: list[Change] = []
        for row in rows:
            origin = bytes(row[6])
            if origin not in origins:
                continue
            if origin == self.site_id:
                version = row[5]
            else:
                version, replay = versions.get((origin, row[5]), (0, True))
                if replay:
                    continue
            if version > cursor.get(origin, 0):
                table, pk, cid, val, col_version, _, _, cl, seq = row
                kept.append((table, pk, cid, val, col_version, version, origin, cl, seq))
        kept.sort(key=lambda change: change[6])  # stable: seq order within each origin
        return kept

    def changes_since(
        self, cursor: Mapping[bytes, int], limit: int, *, exclude: Collection[bytes] = ()
    ) -> list[Change]:
        """Like :meth:`next_page`, but a large group comes back whole, in one list."""
        page = self.next_page(cursor, limit, exclude=exclude)
        if isinstance(page, LargeGroup):
            return [change for chunk in self.read_group(page, limit) for change in chunk]
        return page

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int | None = None
    ) -> Generator[list[Change], None, None]:
        """The rows of ``group`` in chunks of at most ``chunk`` rows and, if
        ``max_bytes`` is given, at most that many bytes by
        :func:`peer.changes.change_size` (a row larger than that comes alone).

        A file store reads them through a connection of their own, in one
        statement (one consistent snapshot), whatever the group's size; close
        the iterator (or exhaust it) to release it.
        """
        own = group.origin == self.site_id
        dedicated = self._reader is not self._conn
        conn = self._open_connection() if dedicated else self._reader
        lock = threading.RLock() if dedicated else self._read_lock
        rows: Any = None
        self._group_readers += dedicated
        try:
            with lock:
                rows = conn.execute(
                    f"SELECT {_CHANGE_COLUMNS} FROM crsql_changes "
                    "WHERE site_id = ? AND db_version = ?",
                    (group.origin, group.local_version),
                )
            for batch in _in_chunks(_fetch_each(rows, lock), chunk, max_bytes, change_size):
                if own:
                    yield batch
                else:
                    yield [(*r[:5], group.version, *r[6:]) for r in batch]
            with lock:
                held, _ = self._held_rows(
                    group.origin,
                    group.version - 1,
                    group.local_version,
                    group.local_version,
                    None,
                    conn,
                )
            yield from _in_chunks((change for _, change in held), chunk, max_bytes, change_size)
        finally:
            with lock:
                # The crsql_changes cursor must be gone before crsql_finalize()
                # frees what it reads from.
                if rows is not None:
                    rows.close()
                if dedicated:
                    self._group_readers -= 1
                    conn.execute("SELECT crsql_finalize()")
                    conn.close()

    @property
    def can_stream_pages(self) -> bool:
        """Whether :meth:`begin_page` works (file stores; not ``:memory:``)."""
        return self._sync is not self._conn

    def _open_connection(self) -> Any:
        """Another connection to this file store, with cr-sqlite loaded."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {self._journal_size_limit}")
        crsqlite.load(conn)
        return conn

    def _reopen(self, conn: Any) -> Any:
        """A fresh connection in place of ``conn`` (a private one, after a
        schema change: nothing it cached survives)."""
        try:
            conn.execute("SELECT crsql_finalize()")
        finally:
            conn.close()
        return self._open_connection()

    def _guard_main(self) -> None:
        """Bring the main connection up to date if the schema changed since it
        last looked (another connection migrated); caller holds ``_lock``."""
        now = store_schema.cookie(self._conn)
        if now != self._main_cookie:
            store_schema.refresh(self._conn)
            self._main_cookie = now

    def _begin_sync(self) -> None:
        """``BEGIN IMMEDIATE`` on the sync connection, reopened first if the
        schema changed since it last looked (caller holds ``_sync_lock``)."""
        if self._sync is self._conn:
            with self._lock:
                self._guard_main()
            self._sync.execute("BEGIN IMMEDIATE")
            return
        self._sync.execute("BEGIN IMMEDIATE")
        now = store_schema.cookie(self._sync)
        if now != self._sync_cookie:
            self._sync.execute("ROLLBACK")
            self._sync = self._reopen(self._sync)
            self._sync.executescript(_MERGE_STAGE)
            self._sync.execute("BEGIN IMMEDIATE")
            self._sync_cookie = store_schema.cookie(self._sync)

    @_translate_errors
    def checkpoint(self, *, truncate: bool = True) -> tuple[bool, int, int]:
        """Copy the ``-wal`` file into the database now, without waiting for
        anyone; with ``truncate``, also cut the ``-wal`` file to zero bytes.

        Returns ``(done, wal_pages, checkpointed_pages)``: ``done`` is False
        when a reader or writer (a page spanning frames, another process)
        was in the way; call again later. Nothing is lost either way.
        """
        mode = "TRUNCATE" if truncate else "PASSIVE"
        with self._lock:
            if self._page_open or self.read_only or self.path == ":memory:":
                return False, 0, 0
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy, log, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        return busy == 0, int(log), int(done)

    # -- snapshots (a fresh device bootstraps from a copy) ---------------------

    @_translate_errors
    def is_fresh(self) -> bool:
        """Whether this database holds nothing to sync: an empty cursor, no
        held rows, and no clock rows (nothing written, not even deleted)."""
        with self._lock:
            self._guard_main()
            return self._is_fresh()

    def _is_fresh(self) -> bool:
        """:meth:`is_fresh`; the caller holds ``_lock``."""
        clocks = " UNION ALL ".join(
            f"SELECT 1 FROM {_quote_identifier(table + '__crsql_clock')}"
            for table in self.crr_columns()
        )
        checks = ["SELECT 1 FROM crpeer_cursor", "SELECT 1 FROM crpeer_held"]
        if clocks:
            checks.append(clocks)
        found = self._conn.execute(f"SELECT EXISTS ({' UNION ALL '.join(checks)})").fetchone()
        return not found[0]

    @_translate_errors
    def copy_into(self, out: str | Path) -> None:
        """Write a consistent copy of the database to ``out`` (created empty
        with mode 0600 first; it must not exist) with ``VACUUM INTO``, through
        the read connection: one read transaction, writers go on."""
        create_private_file(out)
        with self._read_lock:
            self._reader.execute("VACUUM INTO ?", (os.fspath(out),))

    @_translate_errors
    def install_snapshot(self, snapshot: str | Path) -> None:
        """Replace the database file with ``snapshot`` (checked and made this
        site's by :func:`peer.store_snapshot.prepare_received`), in place.

        Under every lock of the store: checks that the database is still
        fresh (:meth:`is_fresh`), copies ``crpeer_sites`` into the snapshot,
        closes every connection (the last close checkpoints and removes the
        ``-wal`` file), moves the snapshot over the database file with
        ``os.replace`` (atomic), removes a stale ``-shm``, and opens every
        connection again on the new file. No connection of the store ever
        points at the replaced file. Raises StoreError, leaving the database
        as it was, when it is not fresh, a page or a group read is open, or
        another connection (another process, the app's own) keeps the old file
        open (its ``-wal`` file stays).
        """
        if self.read_only or not self.can_stream_pages:
            raise StoreError("only a writable file store installs a snapshot")
        with self._lock, self._read_lock, self._sync_lock:
            self._guard_main()
            if self._page_open or self._group_readers:
                raise StoreError("the store is busy (a page or a group read is open)")
            if not self._is_fresh():
                raise StoreError("the database is no longer fresh")
            sites = self._conn.execute("SELECT site_id, peer_id FROM crpeer_sites").fetchall()
            target = sqlite3.connect(os.fspath(snapshot), isolation_level=None)
            try:
                target.execute("BEGIN IMMEDIATE")
                target.execute("DELETE FROM crpeer_sites")
                target.executemany(
                    "INSERT INTO crpeer_sites (site_id, peer_id) VALUES (?, ?)", sites
                )
                target.execute("COMMIT")
            finally:
                target.close()
            _sync_file(snapshot)
            site_before = self.site_id
            self._close_connections()
            try:
                wal = Path(f"{self.path}-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise StoreError(
                        "another connection keeps the database open: cannot replace it"
                    )
                os.replace(snapshot, self.path)
                Path(f"{self.path}-shm").unlink(missing_ok=True)
                wal.unlink(missing_ok=True)
                _sync_file(Path(self.path).parent)
            finally:
                self._connect()
            if self.site_id != site_before:
                raise StoreError("the installed snapshot has another site id")

    def _close_connections(self) -> None:
        """Finalize cr-sqlite and close every connection (caller holds every lock)."""
        connections = {id(c): c for c in (self._reader, self._sync, self._conn)}
        for conn in connections.values():
            try:
                conn.execute("SELECT crsql_finalize()")
            finally:
                conn.close()

    def _own_changes(
        self, after: int, limit: int, max_bytes: int | None
    ) -> list[Change] | LargeGroup:
        sql = (
            f"SELECT {_CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version > ? "
            "ORDER BY db_version, seq LIMIT ?"
        )
        rows, full = _fetch_within(
            self._reader.execute(sql, (self.site_id, after, limit + 1)), limit + 1, max_bytes
        )
        if not full:
            return rows
        last = rows[-1][5]
        whole = [row for row in rows if row[5] != last]
        return whole or self._large_group(self.site_id, last, last)

    def _relayed_changes(
        self, origin: bytes, after: int, limit: int, max_bytes: int | None
    ) -> list[Change] | LargeGroup:
        (start,) = self._reader.execute(
            "SELECT min(local_version) FROM crpeer_versions "
            "WHERE origin = ? AND origin_version > ? AND replay = 0",
            (origin, after),
        ).fetchone()
        (held_start,) = self._reader.execute(
            "SELECT min(local_version) FROM crpeer_held WHERE origin = ? AND version > ?",
            (origin, after),
        ).fetchone()
        starts = [s for s in (start, held_start) if s is not None]
        if not starts:
            return []
        lo = min(starts)
        merged: list[tuple[int, tuple[Any, ...]]] = []
        held: list[tuple[int, Change]] = []
        merged_full = held_full = False
        if start is not None:
            merged, merged_full = self._merged_rows(origin, lo, None, limit + 1, max_bytes)
        if held_start is not None:
            held, held_full = self._held_rows(
                origin, after, lo, None, limit + 1, self._reader, max_bytes
            )
        # A full page may end inside a local version; keep whole ones only.
        cut = min(
            [rows[-1][0] for rows, full in ((merged, merged_full), (held, held_full)) if full],
            default=None,
        )
        if cut is not None:
            merged = [r for r in merged if r[0] < cut]
            held = [r for r in held if r[0] < cut]
            if not merged and not held:
                (version,) = self._reader.execute(
                    "SELECT coalesce(max(origin_version), 0) FROM crpeer_versions "
                    "WHERE origin = ? AND local_version = ?",
                    (origin, cut),
                ).fetchone()
                return self._large_group(origin, cut, int(version))
        hi = max([r[0] for r in merged[-1:] + held[-1:]], default=lo)
        mapping = {
            int(local): (int(version), bool(replay))
            for local, version, replay in self._reader.execute(
                "SELECT local_version, origin_version, replay FROM crpeer_versions "
                "WHERE origin = ? AND local_version BETWEEN ? AND ?",
                (origin, lo, hi),
            )
        }
        out: list[tuple[int, Change]] = []
        for local, row in merged:
            version, replay = mapping.get(local, (0, True))
            if replay or version <= after:
                continue
            out.append(
                (local, (row[0], row[1], row[2], row[3], row[4], version, row[6], row[7], row[8]))
            )
        if held:
            out = list(heapq.merge(out, [(r[0], r[1]) for r in held], key=lambda item: item[0]))
            out.sort(key=lambda item: (item[0], item[1][5], item[1][8]))
            if max_bytes is not None and merged:
                # Each read kept to the budget; the two together may not.
                whole = _whole_versions_within(out, max_bytes)
                if out and not whole:
                    return self._large_group(origin, out[0][0], out[0][1][5])
                out = whole
        return [change for _, change in out]

    def _large_group(self, origin: bytes, local_version: int, version: int) -> LargeGroup:
        """A :class:`LargeGroup`, its largest value measured in SQL (no value
        crosses into Python)."""
        sized = "CASE WHEN typeof(val) IN ('text', 'blob') THEN octet_length(val) ELSE 0 END"
        (largest,) = self._reader.execute(
            f"SELECT max((SELECT coalesce(max({sized}), 0) FROM crsql_changes "
            "WHERE site_id = ?1 AND db_version = ?2), "
            f"(SELECT coalesce(max({sized}), 0) FROM crpeer_held "
            "WHERE origin = ?1 AND local_version = ?2 AND version = ?3))",
            (origin, local_version, version),
        ).fetchone()
        return LargeGroup(origin, local_version, version, int(largest))

    def _merged_rows(
        self, origin: bytes, lo: int, hi: int | None, limit: int | None, max_bytes: int | None
    ) -> tuple[list[tuple[int, tuple[Any, ...]]], bool]:
        sql = f"SELECT {_CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version >= ?"
        params: list[Any] = [origin, lo]
        if hi is not None:
            sql += " AND db_version <= ?"
            params.append(hi)
        sql += " ORDER BY db_version, seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if limit is None:
            rows, full = self._reader.execute(sql, params).fetchall(), False
        else:
            rows, full = _fetch_within(self._reader.execute(sql, params), limit, max_bytes)
        return [(int(r[5]), r) for r in rows], full

    def _held_rows(
        self,
        origin: bytes,
        after: int,
        lo: int,
        hi: int | None,
        limit: int | None,
        conn: Any,
        max_bytes: int | None = None,
    ) -> tuple[list[tuple[int, Change]], bool]:
        sql = (
            "SELECT local_version, tbl, pk, cid, val, col_version, version, origin, cl, seq "
            "FROM crpeer_held WHERE origin = ? AND version > ? AND local_version >= ?"
        )
        params: list[Any] = [origin, after, lo]
        if hi is not None:
            sql += " AND local_version <= ?"
            params.append(hi)
        sql += " ORDER BY local_version, version, seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if limit is None:
            rows, full = conn.execute(sql, params).fetchall(), False
        else:
            rows, full = _fetch_within(
                conn.execute(sql, params), limit, max_bytes, lambda r: change_size(r[1:5])
            )
        held = [
            (int(r[0]), (r[1], bytes(r[2]), r[3], r[4], r[5], r[6], bytes(r[7]), r[8], r[9]))
            for r in rows
        ]
        return held, full

    @_translate_errors
    def backlog_estimate(
        self, cursor: Mapping[bytes, int], *, exclude: Collection[bytes] = ()
    ) -> int:
        """About how many change rows :meth:`changes_since` will serve above ``cursor``.

        An upper bound from the clock tables' db_version index (no scan of
        ``crsql_changes``); for progress reports, not for correctness.
        """
        tables = list(self.crr_columns())  # before the read lock: one lock order
        with self._read_lock, self._read_snapshot():
            starts: list[int] = []
            if self.site_id not in exclude:
                starts.append(cursor.get(self.site_id, 0))
            for (origin,) in self._reader.execute("SELECT origin FROM crpeer_cursor").fetchall():
                if bytes(origin) in exclude:
                    continue
                (start,) = self._reader.execute(
                    "SELECT min(local_version) FROM crpeer_versions "
                    "WHERE origin = ? AND origin_version > ? AND replay = 0",
                    (origin, cursor.get(bytes(origin), 0)),
                ).fetchone()
                if start is not None:
                    starts.append(int(start) - 1)
            if not starts:
                return 0
            after = min(starts)
            return sum(
                int(
                    self._reader.execute(
                        f"SELECT count(*) FROM {_quote_identifier(table + '__crsql_clock')} "
                        "WHERE db_version > ?",
                        (after,),
                    ).fetchone()[0]
                )
                for table in tables
            )

    # -- merging changes ---------------------------------------------------

    def begin_page(self) -> None:
        """Open one transaction for several :meth:`apply` calls (a page that
        spans frames); end it with :meth:`end_page`, from the same thread.

        It runs on the store's sync connection: readers keep seeing committed
        data, and other writers wait for SQLite's lock (busy timeout). Raises
        StoreError for an in-memory store (see :attr:`can_stream_pages`).
        """
        if not self.can_stream_pages:
            raise StoreError("an in-memory store applies a page in one call")
        self._sync_lock.acquire()
        try:
            if self._page_open:
                raise StoreError("a page is already open")
            self._begin_sync()
            self._page_known = persisted_cursor(self._sync)
        except BaseException:
            if self._sync.in_transaction:
                self._sync.execute("ROLLBACK")
            self._sync_lock.release()
            raise
        self._page_open = True
        self._page_impacted = 0

    def end_page(self, *, commit: bool) -> None:
        """Commit (or roll back) the page opened by :meth:`begin_page`."""
        if not self._page_open:
            raise StoreError("no page is open")
        try:
            self._sync.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error as exc:
            if self._sync.in_transaction:
                self._sync.execute("ROLLBACK")
            raise StoreError(f"committing a page failed: {exc}") from exc
        finally:
            self._page_open = False
            self._sync_lock.release()

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
        Every row is validated before the database is touched, including
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
        the slices so far commit with their cursor, the waiting calls run,
        and the rest merges in a new transaction (with none waiting, it stays
        one transaction). A group never spans two transactions. The whole
        batch is validated first, so a malformed row still lands nothing;
        but should the database itself refuse a row (a constraint or
        trigger of the app's) after a commit for a waiting call, or the
        process die there, the slices committed before stay, whole groups
        with their cursor, and the sender sends the rest again. Should a
        waiting call change the CRR tables, the rest is validated again
        against the new schema before it merges.

        Raises InvalidChangeError for a malformed row, StoreError if SQLite
        fails.
        """
        schema = self._crr_schema()
        groups = plan_groups(changes, *schema, self.site_id, hold_unknown, types_checked)
        with self._sync_lock:
            result_cursor: Cursor = {}
            unsaved: Cursor = {}  # of the groups merged since the transaction began
            tables: set[str] = set()
            merged = held = 0
            in_page = self._page_open
            try:
                if not in_page:
                    self._begin_sync()
                impacted = self._page_impacted if in_page else 0
                known: Cursor = {}
                if skip_known:
                    known = self._page_known if in_page else persisted_cursor(self._sync)
                fresh = [group for group in groups if group[1] > known.get(group[0], 0)]
                rest: list[Group] = []
                if yield_to is None or in_page:
                    yield_to, part = None, fresh
                else:
                    part, rest = _first_slice(fresh, APPLY_SLICE_ROWS)
                while True:
                    part_merged = part_held = 0
                    for origin, version, rows, held_rows in part:
                        tables.update(row[0] for row in rows)
                        result_cursor[origin] = max(version, result_cursor.get(origin, 0))
                        unsaved[origin] = max(version, unsaved.get(origin, 0))
                        part_merged += len(rows)
                        part_held += len(held_rows)
                    merged += part_merged
                    held += part_held
                    if part_held and held_schema < 1:
                        # Needs a newer schema than this one, whichever it is.
                        held_schema = store_schema.user_version(self._sync) + 1
                    if part_held or part_merged > _STAGED_GROUP_ROWS * len(part):
                        impacted = self._merge_group_by_group(part, impacted, held_schema)
                    else:
                        impacted = self._merge_staged(part, impacted)
                    if not rest or yield_to is None:
                        break
                    if yield_to.waiting:
                        self._commit_slice(unsaved, held_schema if held else 0)
                        unsaved, impacted = {}, 0
                        yield_to.run_waiting()
                        self._begin_sync()
                        current = self._crr_schema()
                        if current != schema:
                            schema = current
                            rest = _replan(rest, schema, self.site_id, hold_unknown)
                    part, rest = _first_slice(rest, APPLY_SLICE_ROWS)
                _insert(self._sync, _CURSOR_INTO, list(unsaved.items()), _CURSOR_UPSERT)
                if in_page:
                    self._page_impacted = impacted
                else:
                    self._sync.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._sync.in_transaction and not in_page:
                    self._sync.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise InvalidChangeError(f"batch rejected by the database: {exc}") from exc
                raise StoreError(f"applying a batch failed: {exc}") from exc
            except UnicodeEncodeError as exc:
                # A str with lone surrogates: it has no UTF-8 form to bind.
                if self._sync.in_transaction and not in_page:
                    self._sync.execute("ROLLBACK")
                raise InvalidChangeError(f"a text value is not valid Unicode: {exc}") from exc
            except BaseException:
                if self._sync.in_transaction and not in_page:
                    self._sync.execute("ROLLBACK")
                raise
            if held:
                self._held_schema = max(self._held_schema, held_schema)
            skipped = len(changes) - merged - held
            return ApplyResult(merged, held, skipped, frozenset(tables), result_cursor)

    def _commit_slice(self, cursor: Cursor, held_schema: int) -> None:
        """Commit the slices merged so far with their ``cursor`` (outside a
        page), so that a waiting app call can write."""
        _insert(self._sync, _CURSOR_INTO, list(cursor.items()), _CURSOR_UPSERT)
        self._sync.execute("COMMIT")
        self._held_schema = max(self._held_schema, held_schema)

    def _merge_staged(self, groups: Sequence[Group], impacted: int) -> int:
        """Merge groups without held rows in one statement (see ``_MERGE_STAGE``);
        return ``crsql_rows_impacted()`` after them."""
        staged = [
            (*row, version, index == len(rows) - 1)
            for _, version, rows, _ in groups
            for index, row in enumerate(rows)
        ]
        self._sync.execute("UPDATE temp.crpeer_merge_state SET impacted = ?", (impacted,))
        _insert(self._sync, _STAGED_INTO, staged)
        self._sync.execute("DELETE FROM temp.crpeer_incoming")
        (impacted,) = self._sync.execute("SELECT impacted FROM temp.crpeer_merge_state").fetchone()
        return int(impacted)

    def _merge_group_by_group(
        self, groups: Sequence[Group], impacted: int, held_schema: int = 0
    ) -> int:
        """Merge groups some of which hold rows back: each group's rows, then
        the local version it landed at (reserved for a group only held)."""
        versions: list[tuple[bytes, int, int, int]] = []
        for origin, version, rows, held_rows in groups:
            if rows:
                _insert(
                    self._sync, _CHANGES_INTO, rows, rows_per_statement=_MERGE_ROWS_PER_STATEMENT
                )
            impacted, local = self._sync.execute(
                _MERGE_OUTCOME, (bool(held_rows), impacted)
            ).fetchone()
            if local is not None:
                versions.append((origin, local, version, 0))
            if held_rows:
                self._sync.executemany(
                    _INSERT_HELD,
                    [
                        (
                            origin,
                            local,
                            version,
                            r[8],
                            r[0],
                            r[1],
                            r[2],
                            r[3],
                            r[4],
                            r[7],
                            held_schema,
                        )
                        for r in held_rows
                    ],
                )
        _insert(self._sync, _VERSIONS_INTO, versions, _VERSIONS_UPSERT)
        return int(impacted)

    @_translate_errors
    def apply_held(self) -> int:
        """Merge held rows whose table and column now exist; return how many.

        Held rows stay recorded (and are still served to others at their
        original place in the order); the merge itself is not re-served. A
        held row whose primary key does not fit its table now that it exists
        is never merged (it stays held).
        """
        columns, keys = self._crr_schema()
        with self._sync_lock:
            pending = self._sync.execute(
                "SELECT rowid, tbl, pk, cid, val, col_version, version, origin, cl, seq "
                "FROM crpeer_held WHERE applied = 0 ORDER BY origin, version, seq"
            ).fetchall()
            known = [
                r for r in pending if fits(r[1], r[3], columns) and r[3] not in keys[r[1]].names
            ]
            ready, unfit = [], set()
            for r in known:
                if _key_fits(bytes(r[2]), keys[r[1]]):
                    ready.append(r)
                else:
                    unfit.add(f"{r[1]} from {bytes(r[7]).hex()}")
            if unfit:
                _log.warning(
                    "held rows stay held, their primary key does not fit the table: %s",
                    ", ".join(sorted(unfit)),
                )
            if not ready:
                return 0
            try:
                self._begin_sync()
                for (origin, version), group in by_group(ready, lambda r: (bytes(r[7]), r[6])):
                    _insert(
                        self._sync,
                        _CHANGES_INTO,
                        [tuple(r[1:]) for r in group],
                        rows_per_statement=_MERGE_ROWS_PER_STATEMENT,
                    )
                    (local,) = self._sync.execute("SELECT crsql_next_db_version()").fetchone()
                    replayed = [(origin, local, version, 1)]
                    _insert(self._sync, _VERSIONS_INTO, replayed, _VERSIONS_UPSERT)
                    self._sync.executemany(
                        "UPDATE crpeer_held SET applied = 1 WHERE rowid = ?",
                        [(r[0],) for r in group],
                    )
                self._sync.execute("COMMIT")
            except BaseException:
                if self._sync.in_transaction:
                    self._sync.execute("ROLLBACK")
                raise
            return len(ready)


def _insert(
    conn: Any,
    into: str,
    rows: Sequence[Sequence[Any]],
    upsert: str = "",
    *,
    rows_per_statement: int = _MAX_STATEMENT_PARAMETERS,
) -> None:
    """``INSERT INTO {into} VALUES`` every row, with as few statements as fit
    (at most ``rows_per_statement`` rows each).

    Each statement is one step, so the thread gives up the GIL once per
    statement instead of once per row as ``executemany`` does. That matters:
    a thread taking the GIL back while the event loop is busy waits out the
    interpreter's switch interval (5 ms), and a store thread that did so per
    row ran hundreds of times slower beside a busy loop.

    Blobs are bound as ``bytearray``: pysqlite3 binds that type directly, but
    for ``bytes`` it first looks for an adapter and fails, which costs 1-3 µs
    per parameter with the GIL held, against 0.08 µs for a bytearray
    (``scripts/probe.py bind-cost``); every change row carries two blobs
    (primary key and site id).
    """
    if not rows:
        return
    width = len(rows[0])
    step = max(1, min(rows_per_statement, _MAX_STATEMENT_PARAMETERS // width))
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        conn.execute(
            f"INSERT INTO {into} VALUES {', '.join([one] * len(chunk))}{upsert}",
            [bytearray(value) if type(value) is bytes else value for row in chunk for value in row],
        )


def file_integrity_problems(path: str | Path, limit: int = 10) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong with the database file at ``path``
    (at most ``limit`` lines; empty when it is sound).

    Opens it read-only without cr-sqlite: check a file this way before
    opening a :class:`Store` on it, since cr-sqlite may crash the process
    on a damaged file. Raises StoreError if the file cannot be opened.
    """
    target = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(target, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        found = [str(line) for (line,) in conn.execute(f"PRAGMA quick_check({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    finally:
        conn.close()
    return [] if found == ["ok"] else found


def schema_fingerprint_of(conn: Any, tables: Iterable[str]) -> bytes:
    """The schema fingerprint (see :meth:`Store.schema_fingerprint`) of the
    CRR ``tables`` of the database on ``conn`` (which needs no cr-sqlite)."""
    digest = hashlib.sha256()
    for table in sorted(tables):
        digest.update(table.encode() + b"\0")
        for row in conn.execute(f"PRAGMA table_info({_quote_identifier(table)})"):
            _, name, decl_type, notnull, _, pk = row
            digest.update(f"{name}|{decl_type}|{notnull}|{pk}\0".encode())
    return digest.digest()[:16]


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if nothing is there yet.

    SQLite creates a database 0644 (less the umask) and gives its ``-wal``,
    ``-shm`` and ``-journal`` files the mode of the database file; an empty
    file is an empty database to it. So a database created here, and every
    file SQLite makes beside it, is readable by its owner only. An existing
    file keeps its mode. Raises StoreError if the file cannot be created.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot open database {os.fspath(path)}: {exc.strerror or exc}") from exc
    os.close(descriptor)


def _sync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory, so a rename that follows (or preceded) lasts."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fetch_within(
    rows: Any, max_rows: int, max_bytes: int | None, size: Callable[[Any], int] = change_size
) -> tuple[list[Any], bool]:
    """Read the query ``rows`` (whose ``LIMIT`` is ``max_rows``) to its end, or
    until the rows' ``size`` passes ``max_bytes`` (the row that passes it is
    included, so the caller can drop that row's whole transaction); True when
    a limit stopped it."""
    if max_bytes is None:
        fetched = rows.fetchmany(max_rows)
        full = len(fetched) >= max_rows
    else:
        fetched, total, full = [], 0, False
        for row in rows:
            fetched.append(row)
            total += size(row)
            if total > max_bytes:
                full = True
                break
        full = full or len(fetched) >= max_rows
    if full:
        rows.close()
    return fetched, full


def _fetch_each(rows: Any, lock: Any) -> Iterator[Any]:
    """The rows of the query ``rows`` one by one, each fetched under ``lock``."""
    while True:
        with lock:
            row = rows.fetchone()
        if row is None:
            return
        yield row


_T = TypeVar("_T")


def _in_chunks(
    rows: Iterable[_T], chunk: int, max_bytes: int | None, size: Callable[[_T], int]
) -> Iterator[list[_T]]:
    """``rows`` in lists of at most ``chunk`` rows and ``max_bytes`` by
    ``size``; a row larger than ``max_bytes`` comes alone."""
    out: list[_T] = []
    total = 0
    for row in rows:
        row_size = size(row) if max_bytes is not None else 0
        if out and (len(out) >= chunk or (max_bytes is not None and total + row_size > max_bytes)):
            yield out
            out, total = [], 0
        out.append(row)
        total += row_size
    if out:
        yield out


def _whole_versions_within(
    rows: list[tuple[int, Change]], max_bytes: int
) -> list[tuple[int, Change]]:
    """The longest prefix of ``(local version, change)`` rows that ends at a
    local version boundary and stays within ``max_bytes``."""
    total, cut = 0, 0
    for index, (local, change) in enumerate(rows):
        if index and local != rows[index - 1][0]:
            cut = index
        total += change_size(change)
        if total > max_bytes:
            return rows[:cut]
    return rows


def _first_slice(groups: list[Group], max_rows: int) -> tuple[list[Group], list[Group]]:
    """The first groups of ``groups`` with at most ``max_rows`` rows in all
    (at least one group, whatever its size), and the rest."""
    total = 0
    for index, (_, _, rows, held_rows) in enumerate(groups):
        total += len(rows) + len(held_rows)
        if total > max_rows and index:
            return groups[:index], groups[index:]
    return groups, []


def _replan(
    groups: list[Group],
    schema: tuple[dict[str, frozenset[str]], dict[str, KeyShape]],
    own_site: bytes,
    hold_unknown: bool,
) -> list[Group]:
    """``groups`` validated again against ``schema`` (the CRR tables changed
    while a batch was merging); raises InvalidChangeError as plan_groups does."""
    rows: list[Change] = []
    for _, _, mergeable, held_rows in groups:
        rows += sorted(mergeable + held_rows, key=lambda row: row[8]) if held_rows else mergeable
    return plan_groups(rows, *schema, own_site, hold_unknown, types_checked=True)


def persisted_cursor(conn: Any) -> Cursor:
    """The cursor as stored, read on ``conn`` (inside its transaction, if any),
    as one JSON value: one step, not one per origin (see :func:`_insert`)."""
    (text,) = conn.execute(
        "SELECT json_group_array(json_array(hex(origin), version)) FROM crpeer_cursor"
    ).fetchone()
    return {bytes.fromhex(origin): version for origin, version in json.loads(text)}


def _key_fits(packed: bytes, shape: KeyShape) -> bool:
    try:
        check_key(packed, shape)
    except PackedKeyError:
        return False
    return True


def _key_shape(info: Sequence[tuple[Any, ...]], without_rowid: bool, strict: bool) -> KeyShape:
    """A table's primary key from its ``PRAGMA table_info`` rows."""
    key = sorted((row for row in info if row[5] > 0), key=lambda row: row[5])
    rowid = not without_rowid and len(key) == 1 and str(key[0][2]).upper() == "INTEGER"
    return KeyShape(
        tuple(row[1] for row in key),
        tuple(KeyColumn.of(str(row[2]), strict=strict, rowid=rowid) for row in key),
    )


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
