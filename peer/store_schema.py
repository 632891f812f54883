"""Keeping a connection's view of the schema current, and held rows' schema needs.

SQLite and cr-sqlite each keep a per-connection copy of the schema. When
another connection alters a table (a migration through :meth:`Store.migrate`
runs on the store's main connection; an app may run one on its own), a
connection opened before can go stale in two ways:

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

Every crpeer connection therefore compares the schema cookie with the one it
last saw before it touches ``crsql_changes``: a private connection (the
store's reader and sync connections) is reopened; the main connection, which
the app also uses, is brought up to date in place with :func:`refresh`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HELD_SCHEMA_COLUMN",
    "add_held_schema_column",
    "cookie",
    "held_schema",
    "refresh",
    "user_version",
]

HELD_SCHEMA_COLUMN = "schema_version"
"""The column of ``crpeer_held`` that says which schema version a held row needs."""


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


def add_held_schema_column(conn: Any) -> None:
    """Give a ``crpeer_held`` table from before schema needs were kept its
    ``schema_version`` column; rows held then need at least the next version."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(crpeer_held)")}
    if HELD_SCHEMA_COLUMN in columns:
        return
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.execute(
        f"ALTER TABLE crpeer_held ADD COLUMN {HELD_SCHEMA_COLUMN} INTEGER NOT NULL DEFAULT 0"
    )
    conn.execute(f"UPDATE crpeer_held SET {HELD_SCHEMA_COLUMN} = ?", (int(version) + 1,))


def held_schema(conn: Any) -> int:
    """The newest schema version any held row needs (0 when none is held).

    Held rows are served on in their place; a receiver with the same schema
    as this database must hold them too, so frames that may carry them say so.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(crpeer_held)")}
    if HELD_SCHEMA_COLUMN not in columns:
        # A database from before schema needs were kept, opened read-only:
        # its held rows need at least the next version.
        (held,) = conn.execute("SELECT count(*) FROM crpeer_held").fetchone()
        (current,) = conn.execute("PRAGMA user_version").fetchone()
        return int(current) + 1 if held else 0
    (version,) = conn.execute(
        f"SELECT coalesce(max({HELD_SCHEMA_COLUMN}), 0) FROM crpeer_held"
    ).fetchone()
    return int(version)
