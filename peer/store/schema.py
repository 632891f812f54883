"""The app's schema as a store sees it: CRR tables, migrations, and keeping
each connection's view of the schema current.

The functions here run on the connection they are given, on the thread
that owns it (see :mod:`peer.store`).

Staying current
---------------
SQLite and cr-sqlite each keep a per-connection copy of the schema. When
another connection alters a table (a migration through
:meth:`~peer.store.Store.migrate` runs on the store's main connection; an app
may run one on its own), a connection opened before can go stale in two ways:

- SQLite compiles a statement against its cached schema and notices the
  change only when the statement runs; a statement naming a new column fails
  to compile until then.
- cr-sqlite caches each CRR's columns ("table infos") and re-reads them only
  when ``PRAGMA schema_version`` has moved *and* it has not already read them
  in the current write transaction. A connection that only reads never
  commits a write, so its cache is never re-read ("SQL logic error" from
  ``crsql_changes``); one whose first use after the change happens before
  SQLite reloaded its schema caches the old columns under the new version for
  good, and then records local writes of the new column without their change
  rows.

Every crpeer connection therefore compares the schema :func:`cookie` with
the one it last saw before it touches ``crsql_changes``: a private
connection (the reader's, the merger's) is reopened; the main connection,
which the app also uses, is brought up to date in place with
:func:`refresh`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import pysqlite3.dbapi2 as sqlite3

from peer.errors import SchemaError
from peer.packed_pk import KeyColumn, KeyShape
from peer.store.connection import quote_identifier, quote_literal

__all__ = [
    "CrrSchema",
    "SchemaCache",
    "cookie",
    "index_clocks",
    "make_crr",
    "migration_script",
    "refresh",
    "schema_fingerprint_of",
    "user_version",
]

CrrSchema = tuple[dict[str, frozenset[str]], dict[str, KeyShape]]
"""Each CRR table's column names, and each one's primary key."""


def cookie(conn: Any) -> int:
    """The database's schema cookie (``PRAGMA schema_version``), read from the
    file header: it moves on every schema change, by any connection."""
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def user_version(conn: Any) -> int:
    """The app's schema version (``PRAGMA user_version``)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refresh(conn: Any) -> None:
    """Make ``conn`` (not inside a transaction) see the current schema.

    Reading ``sqlite_master`` makes SQLite reload its cached schema; an empty
    transaction rolled back makes cr-sqlite forget that it already read its
    table infos, so it reads them again, from the reloaded schema, at its next
    use of ``crsql_changes`` or of a CRR trigger.
    """
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    if not conn.in_transaction:
        conn.execute("BEGIN")
        conn.execute("ROLLBACK")


class SchemaCache:
    """One connection's CRR tables and keys, read again when the schema
    cookie moves. Used on that connection's thread only."""

    def __init__(self) -> None:
        self._cached: tuple[int, CrrSchema] | None = None

    def read(self, conn: Any) -> CrrSchema:
        """The CRR schema as ``conn`` sees it (the same object while the
        cookie stays)."""
        now = cookie(conn)
        if self._cached is None or self._cached[0] != now:
            self._cached = (now, _crr_schema(conn))
        return self._cached[1]


def _crr_schema(conn: Any) -> CrrSchema:
    listed = {
        name: (bool(without_rowid), bool(strict))
        for _, name, _, _, without_rowid, strict in conn.execute("PRAGMA main.table_list")
    }
    columns: dict[str, frozenset[str]] = {}
    keys: dict[str, KeyShape] = {}
    for name in listed:
        table = name.removesuffix("__crsql_clock")
        if table == name or table not in listed:
            continue
        info = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
        columns[table] = frozenset(row[1] for row in info)
        keys[table] = _key_shape(info, *listed[table])
    return columns, keys


def _key_shape(info: Sequence[tuple[Any, ...]], without_rowid: bool, strict: bool) -> KeyShape:
    """A table's primary key from its ``PRAGMA table_info`` rows."""
    key = sorted((row for row in info if row[5] > 0), key=lambda row: row[5])
    rowid = not without_rowid and len(key) == 1 and str(key[0][2]).upper() == "INTEGER"
    return KeyShape(
        tuple(row[1] for row in key),
        tuple(KeyColumn.of(str(row[2]), strict=strict, rowid=rowid) for row in key),
    )


def index_clocks(conn: Any, tables: Iterable[str]) -> None:
    """Index each CRR clock table by (site_id, db_version).

    cr-sqlite indexes clock rows by db_version only; reading one origin's
    changes (``site_id = ? AND db_version > ?``) would scan every row
    merged since. With this index the read is a range lookup.
    """
    for table in tables:
        clock = quote_identifier(f"{table}__crsql_clock")
        index = quote_identifier(f"{table}__crpeer_site_version")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {clock} (site_id, db_version)")


def make_crr(conn: Any, tables: Iterable[str]) -> None:
    """Turn existing ``tables`` into CRRs (see :meth:`peer.store.Store.make_crr`);
    raises SchemaError naming what to fix."""
    for table in tables:
        problem = _crr_problem(conn, table)
        if problem:
            raise SchemaError(f"cannot make {table!r} a CRR: {problem}")
        try:
            conn.execute("SELECT crsql_as_crr(?)", (table,))
        except sqlite3.Error as exc:
            raise SchemaError(f"cannot make {table!r} a CRR: {exc}") from exc


def _crr_problem(conn: Any, table: str) -> str | None:
    """Why cr-sqlite would refuse ``table``, said with its fix; None if it looks fine."""
    kind = conn.execute(
        "SELECT type FROM sqlite_master WHERE name = ? AND type IN ('table', 'view')",
        (table,),
    ).fetchone()
    if kind is None:
        return "there is no such table (create it first)"
    if kind[0] != "table":
        return "it is a view; only tables replicate"
    info = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
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


def migration_script(version: int, sql: str, alter: Sequence[str], new_crrs: Sequence[str]) -> str:
    """The one-transaction script of :meth:`peer.store.Store.migrate`: ``sql``
    between ``crsql_begin_alter`` / ``crsql_commit_alter`` for each CRR in
    ``alter``, ``new_crrs`` made CRRs, ``PRAGMA user_version`` set. Raises
    SchemaError for a negative version."""
    if version < 0:
        raise SchemaError(f"schema version must be >= 0, got {version}")
    quoted = [quote_literal(t) for t in alter]
    script = "BEGIN;\n"
    script += "".join(f"SELECT crsql_begin_alter({t});\n" for t in quoted)
    script += sql.strip().rstrip(";") + ";\n" if sql.strip() else ""
    script += "".join(f"SELECT crsql_commit_alter({t});\n" for t in quoted)
    script += "".join(f"SELECT crsql_as_crr({quote_literal(t)});\n" for t in new_crrs)
    return script + f"PRAGMA user_version = {int(version)};\nCOMMIT;"


def schema_fingerprint_of(conn: Any, tables: Iterable[str]) -> bytes:
    """The schema fingerprint (see :meth:`peer.store.Store.schema_fingerprint`)
    of the CRR ``tables`` of the database on ``conn`` (which needs no cr-sqlite)."""
    digest = hashlib.sha256()
    for table in sorted(tables):
        digest.update(table.encode() + b"\0")
        for row in conn.execute(f"PRAGMA table_info({quote_identifier(table)})"):
            _, name, decl_type, notnull, _, pk = row
            digest.update(f"{name}|{decl_type}|{notnull}|{pk}\0".encode())
    return digest.digest()[:16]
