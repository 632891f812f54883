"""crpeer's own tables beside the app's: their DDL and the queries on them.

Versions and cursors
--------------------
A *change* is one row of ``crsql_changes`` in the order of its columns, except
that the sixth field is the **origin version**: the db_version the change had
on the site that wrote it (``site_id``). cr-sqlite gives merged rows a local
db_version (a Lamport-style ``max(local + 1, incoming)``), so the store keeps
``crpeer_versions``: for each origin and local version at which it merged a
group, the origin version of that group. That makes a **cursor** a version
vector ``{origin site_id: origin version}``:
:meth:`peer.store.Store.changes_since` serves every change of each origin
above the cursor, in ascending order, and :meth:`peer.store.Store.apply`
merges a batch and advances the persisted cursor in one transaction.

A group is all the changes of one ``(site_id, version)``; the store never
splits one across two pages of :meth:`peer.store.Store.changes_since` nor
across two transactions of :meth:`peer.store.Store.apply`.

Site owners
-----------
``crpeer_sites`` binds each site id a remote has shown in a session to the
authenticated peer id that showed it first
(:meth:`peer.store.Store.claim_site`).

Held changes
------------
A change for a table or column this database does not have yet (the sender's
schema is newer) is *held* when ``apply(..., hold_unknown=True)``: kept in
``crpeer_held`` with the schema version it needs, counted in the cursor,
served to others in order (:attr:`peer.store.Store.served_schema` says which
schema such pages may need), and merged by :meth:`peer.store.Store.apply_held`
once a migration adds what it needs.

Tables
------
- ``crpeer_versions``: for each origin and local version at which the store
  merged a group, the origin version of that group (``replay`` = 1 for a
  held group merged after a migration: never served again).
- ``crpeer_cursor``: the version vector of what the database holds from
  others.
- ``crpeer_held``: rows for a table or column the database lacks yet, with
  the schema version each needs.
- ``crpeer_sites``: which authenticated peer id first showed each site id.

Snapshots (:mod:`peer.store.snapshot`) read and rewrite the same tables on a
plain connection. Every function here runs on the connection it is given,
on the thread that owns it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from peer.changes import Cursor
from peer.store.connection import quote_identifier
from peer.store.schema import user_version

__all__ = [
    "CHANGES_INTO",
    "CHANGE_COLUMNS",
    "CURSOR_INTO",
    "CURSOR_UPSERT",
    "HELD_SCHEMA_COLUMN",
    "INSERT_HELD",
    "VERSIONS_INTO",
    "VERSIONS_UPSERT",
    "claim_site",
    "create_tables",
    "held_count",
    "held_schema",
    "insert",
    "is_fresh",
    "persisted_cursor",
    "site_owners",
]

_DDL = """
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

HELD_SCHEMA_COLUMN = "schema_version"
"""The column of ``crpeer_held`` that says which schema version a held row needs."""

CHANGE_COLUMNS = '"table", pk, cid, val, col_version, db_version, site_id, cl, seq'
CHANGES_INTO = f"crsql_changes ({CHANGE_COLUMNS})"
VERSIONS_INTO = "crpeer_versions (origin, local_version, origin_version, replay)"
VERSIONS_UPSERT = (
    " ON CONFLICT (origin, local_version) DO UPDATE SET "
    "origin_version = max(origin_version, excluded.origin_version)"
)
CURSOR_INTO = "crpeer_cursor (origin, version)"
CURSOR_UPSERT = " ON CONFLICT (origin) DO UPDATE SET version = max(version, excluded.version)"
INSERT_HELD = (
    "INSERT OR IGNORE INTO crpeer_held "
    "(origin, local_version, version, seq, tbl, pk, cid, val, col_version, cl, schema_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MAX_STATEMENT_PARAMETERS = 9_000
"""Parameters bound to one multi-row INSERT (SQLite allows 32,766)."""


def create_tables(conn: Any) -> None:
    """Create the crpeer tables that are missing, and give a ``crpeer_held``
    from before schema needs were kept its ``schema_version`` column (rows
    held then need at least the next version)."""
    conn.executescript(_DDL)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(crpeer_held)")}
    if HELD_SCHEMA_COLUMN in columns:
        return
    version = user_version(conn)
    conn.execute(
        f"ALTER TABLE crpeer_held ADD COLUMN {HELD_SCHEMA_COLUMN} INTEGER NOT NULL DEFAULT 0"
    )
    conn.execute(f"UPDATE crpeer_held SET {HELD_SCHEMA_COLUMN} = ?", (version + 1,))


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
        return user_version(conn) + 1 if held else 0
    (version,) = conn.execute(
        f"SELECT coalesce(max({HELD_SCHEMA_COLUMN}), 0) FROM crpeer_held"
    ).fetchone()
    return int(version)


def held_count(conn: Any) -> int:
    """How many held rows still wait for a schema migration."""
    return int(conn.execute("SELECT count(*) FROM crpeer_held WHERE applied = 0").fetchone()[0])


def persisted_cursor(conn: Any) -> Cursor:
    """The cursor as stored, read on ``conn`` (inside its transaction, if any),
    as one JSON value: one step, not one per origin (see :func:`insert`)."""
    (text,) = conn.execute(
        "SELECT json_group_array(json_array(hex(origin), version)) FROM crpeer_cursor"
    ).fetchone()
    return {bytes.fromhex(origin): version for origin, version in json.loads(text)}


def site_owners(conn: Any) -> dict[bytes, str]:
    """Every site id a remote has shown in a session, and the peer id that showed it."""
    rows = conn.execute("SELECT site_id, peer_id FROM crpeer_sites").fetchall()
    return {bytes(site_id): str(peer_id) for site_id, peer_id in rows}


def claim_site(conn: Any, site_id: bytes, peer_id: str, replacing: str | None) -> str:
    """Bind ``site_id`` to ``peer_id`` unless another peer id (not ``replacing``)
    holds it; return its owner afterwards."""
    conn.execute(
        "INSERT INTO crpeer_sites (site_id, peer_id) VALUES (?, ?) ON CONFLICT (site_id) "
        "DO UPDATE SET peer_id = excluded.peer_id WHERE peer_id IS ?",
        (site_id, peer_id, replacing),
    )
    (owner,) = conn.execute(
        "SELECT peer_id FROM crpeer_sites WHERE site_id = ?", (site_id,)
    ).fetchone()
    return str(owner)


def is_fresh(conn: Any, tables: Sequence[str]) -> bool:
    """Whether the database holds nothing to sync: an empty cursor, no held
    rows, and no clock rows in the CRR ``tables`` (nothing written, not even
    deleted)."""
    clocks = " UNION ALL ".join(
        f"SELECT 1 FROM {quote_identifier(table + '__crsql_clock')}" for table in tables
    )
    checks = ["SELECT 1 FROM crpeer_cursor", "SELECT 1 FROM crpeer_held"]
    if clocks:
        checks.append(clocks)
    found = conn.execute(f"SELECT EXISTS ({' UNION ALL '.join(checks)})").fetchone()
    return not found[0]


def insert(
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
