"""What the harness does to one database, the same in every mode.

Each function takes a :class:`~peer.store.Store` and runs on the thread
that owns it (a Peer's store thread: ``peer.run_in_store(fn, store, ...)``).
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite
from peer.errors import ConfigError
from peer.store import Change, Cursor, SqlValue, Store
from peer.store.bookkeeping import CHANGE_COLUMNS
from peer.testing.migrations import SchemaChange
from peer.testing.plan import MARK_DDL, MARK_TABLE
from peer.testing.scenario import Schema

__all__ = [
    "capture_write",
    "decode_changes",
    "encode_changes",
    "expand_write",
    "migrate_on_own_connection",
    "migrate_store",
    "migrations_to",
    "open_prepared",
    "prepare_database",
    "sized_value",
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


_WIDE = str.maketrans({"a": "é", "b": "€", "c": "\U0001d11e"})
"""Hex digits to 2-, 3- and 4-byte UTF-8 characters: a value cut into parts
at any byte may split a character."""


def sized_value(seed: str, size: int, *, blob: bool) -> str | bytes:
    """A value of about ``size`` bytes drawn from ``seed`` (the same seed,
    the same value): random bytes, or random text of ASCII and 2-, 3- and
    4-byte UTF-8 characters (about ``size`` bytes once encoded)."""
    rng = random.Random(seed)
    if blob:
        return rng.randbytes(size)
    chars = max(1, size * 16 // 22)  # 13 one-byte hex digits in 16, then 2 + 3 + 4 bytes
    return rng.randbytes((chars + 1) // 2).hex()[:chars].translate(_WIDE)


def expand_write(params: Mapping[str, SqlValue]) -> list[dict[str, SqlValue]]:
    """The statements' parameters of one planned write, one dict per row.

    A plain write is one row with ``params`` as they are. ``rows`` (n > 1)
    makes n rows with keys ``key``, ``key + 1``, ... and texts
    ``text/0``, ``text/1``, ...; ``size`` replaces each row's text with
    :func:`sized_value` of that seed (a blob when ``number + row`` is odd).
    ``rows`` and ``size`` are left out of the dicts.
    """
    base = {k: v for k, v in params.items() if k not in ("rows", "size")}
    count, size = params.get("rows", 1), params.get("size", 0)
    if not isinstance(count, int) or count < 1 or not isinstance(size, int):
        raise ConfigError(f"a write's rows and size must be ints, not {count!r}, {size!r}")
    if count == 1 and size <= 0:
        return [base]
    key, text, number = base.get("key"), base.get("text"), base.get("number", 0)
    if not isinstance(key, int) or not isinstance(text, str) or not isinstance(number, int):
        raise ConfigError("a sized or many-row write needs an int key and number and a str text")
    out: list[dict[str, SqlValue]] = []
    for row in range(count):
        seed = f"{text}/{row}" if count > 1 else text
        value = sized_value(seed, size, blob=(number + row) % 2 == 1) if size > 0 else seed
        out.append({**base, "key": key + row, "text": value})
    return out


def capture_write(store: Store, sql: str, params: Mapping[str, SqlValue]) -> list[Change]:
    """Run one write (one transaction, one statement per row of
    :func:`expand_write`) and return the changes it committed.

    The changes are this site's rows above the db_version before the write:
    exactly the write's own, since every write and merge of ``store`` runs on
    this one thread. An empty list means the write changed nothing (an
    update or delete of a missing row).
    """
    before = store.db_version()
    rows = expand_write(params)
    if len(rows) == 1:
        store.execute(sql, rows[0])
    else:
        store.execute("BEGIN IMMEDIATE")
        try:
            for values in rows:
                store.execute(sql, values)
        except BaseException:
            store.execute("ROLLBACK")
            raise
        store.execute("COMMIT")
    # Read on this thread's own connection (the store's reader is the read thread's).
    written: list[Change] = store.execute(
        f"SELECT {CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version > ? "
        "ORDER BY db_version, seq",
        (store.site_id, before),
    )
    return written


def vector(store: Store) -> tuple[bytes, Cursor]:
    """``(site_id, cursor)``: who this is and what it holds from others."""
    return store.site_id, store.cursor()


def table_digests(store: Store) -> dict[str, str]:
    """sha256 of each CRR table's rows, sorted by every column in order.

    Each row counts whole, through ``repr``: every value in full, its type
    included (text ``'ab'`` and blob ``b'ab'`` differ, and so do 1 and 1.0),
    so equal digests mean equal tables, byte for byte."""
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
