"""What the harness does to one database, the same in every mode.

Each function takes a :class:`~peer.store.Store` and runs on the thread
that owns it (a Peer's store thread: ``peer.run_in_store(fn, store, ...)``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite
from peer.store import Change, Cursor, SqlValue, Store
from peer.testing.migrations import SchemaChange
from peer.testing.plan import MARK_DDL, MARK_TABLE
from peer.testing.scenario import Schema

__all__ = [
    "capture_write",
    "decode_changes",
    "encode_changes",
    "migrate_on_own_connection",
    "migrate_store",
    "migrations_to",
    "open_prepared",
    "prepare_database",
    "table_digests",
    "vector",
]


def open_prepared(path: str | Path, schema: Schema) -> Store:
    """Open ``path`` (``":memory:"`` too) with the schema and the harness's
    mark table created and made CRRs. Safe on a database that has them."""
    store = Store(path)
    try:
        tables = store.crr_columns()
        if not set(schema.crr_tables) | {MARK_TABLE} <= set(tables):
            store.executescript(f"BEGIN;\n{schema.ddl.strip().rstrip(';')};\n{MARK_DDL};\nCOMMIT;")
            store.make_crr(*[t for t in (*schema.crr_tables, MARK_TABLE) if t not in tables])
    except BaseException:
        store.close()
        raise
    return store


def migrations_to(schema: Schema, current: int, version: int) -> list[SchemaChange]:
    """The schema's changes above ``current`` up to ``version``, in order."""
    return [c for c in schema.migrations if current < c.version <= version]


def migrate_store(store: Store, schema: Schema, version: int) -> None:
    """Migrate ``store`` to ``version`` through :meth:`Store.migrate` (on the
    thread that owns it), one schema change at a time."""
    for change in migrations_to(schema, store.schema_version(), version):
        store.migrate(change.version, change.sql, alter=change.alter)


def migrate_on_own_connection(path: str | Path, changes: Sequence[SchemaChange]) -> None:
    """Run the ``changes`` above the database's version on the file at
    ``path`` the way an app without crpeer's API does: on a connection of its
    own, each change between ``crsql_begin_alter`` and ``crsql_commit_alter``,
    with ``PRAGMA user_version``, in one transaction per change."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
    try:
        crsqlite.load(conn)
        (current,) = conn.execute("PRAGMA user_version").fetchone()
        for change in changes:
            if change.version <= int(current):
                continue
            begin = "".join(f"SELECT crsql_begin_alter('{t}');" for t in change.alter)
            commit = "".join(f"SELECT crsql_commit_alter('{t}');" for t in change.alter)
            conn.executescript(
                f"BEGIN IMMEDIATE;{begin}{change.sql.strip().rstrip(';')};{commit}"
                f"PRAGMA user_version = {int(change.version)};COMMIT;"
            )
        conn.execute("SELECT crsql_finalize()")
    finally:
        conn.close()


def prepare_database(path: str | Path, schema: Schema) -> None:
    """Create (or check) the database file at ``path`` for a harness peer."""
    open_prepared(path, schema).close()


def capture_write(store: Store, sql: str, params: Mapping[str, SqlValue]) -> list[Change]:
    """Run one write (one transaction) and return the changes it committed.

    The changes are this site's rows above the db_version before the write:
    exactly the write's own, since every write and merge of ``store`` runs on
    this one thread. An empty list means the write changed nothing (an
    update or delete of a missing row).
    """
    before = store.db_version()
    store.execute(sql, dict(params))
    others = set(store.cursor())
    out: list[Change] = []
    cursor: Cursor = {store.site_id: before}
    while page := store.changes_since(cursor, 10_000, exclude=others):
        out.extend(page)
        cursor[store.site_id] = max(change[5] for change in page)
    return out


def vector(store: Store) -> tuple[bytes, Cursor]:
    """``(site_id, cursor)``: who this is and what it holds from others."""
    return store.site_id, store.cursor()


def table_digests(store: Store) -> dict[str, str]:
    """sha256 of each CRR table's rows, sorted by every column in order."""
    out: dict[str, str] = {}
    for table, columns in sorted(store.crr_columns().items()):
        order = ", ".join(str(i + 1) for i in range(len(columns)))
        quoted = '"' + table.replace('"', '""') + '"'
        rows = store.execute(f"SELECT * FROM {quoted} ORDER BY {order}")
        digest = hashlib.sha256()
        for row in rows:
            digest.update(repr(row).encode() + b"\n")
        out[table] = digest.hexdigest()
    return out


def encode_changes(changes: Sequence[Change]) -> str:
    """Changes as text for a JSON line (msgpack, then base64)."""
    return base64.b64encode(msgpack.packb([list(c) for c in changes])).decode()


def decode_changes(text: str) -> list[Change]:
    """The inverse of :func:`encode_changes`."""
    rows: list[list[Any]] = msgpack.unpackb(base64.b64decode(text))
    return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows]
