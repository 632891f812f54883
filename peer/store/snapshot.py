"""Snapshots of a database, and restoring one as a new device.

:func:`take_snapshot` copies a live database with ``VACUUM INTO`` (one
consistent read transaction; writers go on) from a connection that has
cr-sqlite loaded, and closes it with ``crsql_finalize()``. The snapshot is
the same site as its source: it must not sync as it is. Snapshots and
restored databases are created with mode 0600, like every database crpeer
creates.

:func:`restore_snapshot` makes a new site of it. cr-sqlite keeps its site id
in ``crsql_site_id``: ordinal 0 is the local site, and every clock row names
the site that wrote it by ordinal (0 = local). A restored copy gets a fresh
random site id at ordinal 0, while the source's id moves to a new ordinal and
its rows are relabeled to it: the source's changes stay the source's, as if
the copy had received them from it. The copy then records them in the crpeer
bookkeeping (``crpeer_versions``: the source's versions are its own local
versions; ``crpeer_cursor``: it holds the source's changes up to the
snapshot's db_version), so sync with the source, and with anyone who has its
changes, resumes with the delta since the snapshot instead of everything.

Two devices never share a site id this way, even when the same snapshot is
restored twice.

Over the wire (protocol 4, see PROTOCOL.md) a fresh device receives such a
copy from a peer: :func:`snapshot_cursor` says what the copy holds,
:func:`prepare_received` checks a received copy against the receiver
(:func:`snapshot_reference`) and relabels it with the receiver's own site
id, and :meth:`peer.store.Store.install_snapshot` puts it in place.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3

from peer.changes import MAX_COUNTER
from peer.errors import ConfigError, SnapshotError, StoreError
from peer.store import SITE_ID_LENGTH, Cursor, Store, create_private_file, persisted_cursor
from peer.store.connection import quote_identifier, remove_database_files
from peer.store.schema import schema_fingerprint_of, user_version

__all__ = [
    "SnapshotReference",
    "prepare_received",
    "restore_snapshot",
    "snapshot_cursor",
    "snapshot_reference",
    "take_snapshot",
]

_REQUIRED_TABLES = ("crsql_site_id", "crpeer_cursor", "crpeer_versions")


def take_snapshot(database: Path, out: Path) -> None:
    """Write a consistent copy of ``database`` (which must exist) to ``out``.

    Reads ``database`` only. Raises ConfigError if ``out`` exists, StoreError
    if ``database`` is not a crpeer database or the copy fails (then nothing
    is left at ``out``).
    """
    if out.exists():
        raise ConfigError(f"{out} exists; choose a new file for the snapshot")
    with Store(database, read_only=True) as store:  # a snapshot never writes to its source
        try:
            create_private_file(out)  # VACUUM INTO fills an empty file, keeping its mode
            store.execute("VACUUM INTO ?", (os.fspath(out),))
        except StoreError:
            out.unlink(missing_ok=True)
            raise


def restore_snapshot(snapshot: Path, database: Path) -> bytes:
    """Create ``database`` from ``snapshot`` as a new site; return its site id.

    The snapshot is left unchanged. Raises ConfigError if ``database`` (or its
    WAL) exists or the snapshot is not a crpeer database, StoreError if it is
    corrupt. Nothing is left at ``database`` on failure.
    """
    if not snapshot.is_file():
        raise ConfigError(f"no snapshot at {snapshot}")
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-journal")):
        if path.exists():
            raise ConfigError(f"{path} exists; restore to a new path, or move it away first")
    temporary = database.with_name(f".{database.name}.{secrets.token_hex(4)}.restore")
    try:
        create_private_file(temporary)  # copyfile keeps the mode of a file it overwrites
        shutil.copyfile(snapshot, temporary)
        new_site = secrets.token_bytes(SITE_ID_LENGTH)
        _resite(temporary, new_site)
        os.replace(temporary, database)
    finally:
        remove_database_files(temporary)
    try:
        with Store(database) as store:
            if store.site_id != new_site:
                raise StoreError(f"{database}: cr-sqlite did not take the new site id")
    except BaseException:
        remove_database_files(database)
        raise
    return new_site


def _resite(path: Path, new_site: bytes, *, checked: bool = False) -> None:
    """Give the database at ``path`` a new local site id, keeping the old one's changes.

    ``checked``: the caller already ran an integrity check on it. Uses a
    plain connection (no extension): only cr-sqlite's and crpeer's own
    tables are touched, never an app table (whose triggers need cr-sqlite).
    """
    module = _relabeling_module()
    try:
        connection = module.connect(os.fspath(path), isolation_level=None)
    except module.Error as exc:
        raise StoreError(f"cannot open the snapshot copy: {exc}") from exc
    try:
        _resite_in(connection, path, new_site, checked)
    except module.DatabaseError as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise StoreError(f"the snapshot is not a usable database: {exc}") from exc
    finally:
        with contextlib.suppress(module.Error):
            connection.close()


def _relabeling_module() -> Any:
    """The SQLite module to relabel a copy with: the interpreter's own when it has one.

    Relabeling rebuilds crpeer's (site_id, db_version) index of every clock
    table, and SQLite sorts an index build in temporary files. pysqlite3's
    SQLite keeps every temporary file in memory (compiled with
    ``SQLITE_TEMP_STORE=3``): at 1,000,000 rows that sort took about 140 MB
    of RAM; the standard library's SQLite writes it to disk (about 17 MB in
    all). The copy has no cr-sqlite loaded either way, and the file format
    is the same.
    """
    try:
        return importlib.import_module("sqlite3")
    except ImportError:  # an interpreter built without it
        return sqlite3


def _resite_in(connection: Any, path: Path, new_site: bytes, checked: bool) -> None:
    if not checked:
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise StoreError(f"the snapshot is corrupt: {check}")
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    missing = [table for table in _REQUIRED_TABLES if table not in tables]
    if missing:
        raise ConfigError(f"the snapshot is not a crpeer database (no {', '.join(missing)})")
    clocks = sorted(name for name in tables if name.endswith("__crsql_clock"))
    connection.execute("BEGIN IMMEDIATE")
    # Relabeling rewrites every clock row's site_id: dropping the index
    # crpeer keeps on (site_id, db_version) and making it again afterwards
    # (with its own SQL) is several times faster than updating it row by row.
    indexes = [
        (str(name), str(sql))
        for name, table, sql in connection.execute(
            "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'index'"
        )
        if sql and table in clocks and str(name).endswith("__crpeer_site_version")
    ]
    for name, _ in indexes:
        connection.execute(f"DROP INDEX {quote_identifier(name)}")
    row = connection.execute("SELECT site_id FROM crsql_site_id WHERE ordinal = 0").fetchone()
    if row is None or len(row[0]) != SITE_ID_LENGTH:
        raise ConfigError("the snapshot has no local site id")
    old_site = bytes(row[0])
    connection.execute("UPDATE crsql_site_id SET site_id = ? WHERE ordinal = 0", (new_site,))
    (old_ordinal,) = connection.execute(
        "INSERT INTO crsql_site_id (site_id) VALUES (?) RETURNING ordinal", (old_site,)
    ).fetchone()
    versions: set[int] = set()
    top = _highest_version(connection, clocks)
    for clock in clocks:
        quoted = quote_identifier(clock)
        versions.update(
            int(v)
            for (v,) in connection.execute(
                f"SELECT DISTINCT db_version FROM {quoted} WHERE site_id = 0"
            )
        )
        connection.execute(f"UPDATE {quoted} SET site_id = ? WHERE site_id = 0", (old_ordinal,))
    for _, sql in indexes:
        connection.execute(sql)
    connection.executemany(
        "INSERT INTO crpeer_versions (origin, local_version, origin_version, replay) "
        "VALUES (?, ?, ?, 0) ON CONFLICT (origin, local_version) DO NOTHING",
        [(old_site, version, version) for version in sorted(versions)],
    )
    if top:
        # The source's own versions are its db_versions: everything it had
        # written up to the snapshot's db_version is in the copy.
        connection.execute(
            "INSERT INTO crpeer_cursor (origin, version) VALUES (?, ?) "
            "ON CONFLICT (origin) DO UPDATE SET version = max(version, excluded.version)",
            (old_site, top),
        )
    connection.execute("COMMIT")


# -- snapshots over the wire (a fresh device bootstraps from a copy) ---------------

_SCHEMA_EXTRAS = frozenset({"sqlite_sequence", "sqlite_stat1", "sqlite_stat4"})
"""SQLite's own tables, which a copy may hold and the receiver may lack (data only)."""


@dataclass(frozen=True, slots=True)
class SnapshotReference:
    """What a received snapshot must match: the receiving database's facts."""

    site_id: bytes
    schema_version: int
    schema_fingerprint: bytes
    objects: dict[tuple[str, str], tuple[str, str | None, tuple[tuple[Any, ...], ...]]]
    """Every schema object by (type, name): its table, SQL and (tables) columns."""


def snapshot_reference(store: Store) -> SnapshotReference:
    """The facts of ``store`` that a snapshot for it must match (call on its thread)."""
    return SnapshotReference(
        store.site_id,
        store.schema_version(),
        store.schema_fingerprint(),
        _schema_objects(store.execute),
    )


def snapshot_cursor(snapshot: Path) -> Cursor:
    """The version vector a copy made by :meth:`Store.copy_into` holds: its
    ``crpeer_cursor``, plus its own site's changes up to its highest
    db_version (what :func:`prepare_received` records for it)."""
    connection = _open_plain(snapshot)
    try:
        cursor = persisted_cursor(connection)
        (site,) = connection.execute(
            "SELECT site_id FROM crsql_site_id WHERE ordinal = 0"
        ).fetchone()
        top = _highest_version(connection, _clock_tables(connection))
        if top:
            cursor[bytes(site)] = max(cursor.get(bytes(site), 0), top)
        return cursor
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the snapshot: {exc}") from exc
    finally:
        connection.close()


def prepare_received(snapshot: Path, reference: SnapshotReference) -> Cursor:
    """Check a snapshot received from a peer and make it this site's copy.

    Checks, without cr-sqlite loaded (it may crash on a damaged file):
    ``PRAGMA integrity_check``; the same schema version and fingerprint as
    the receiver; the same schema objects, one for one, with the same SQL
    (a trigger, view, index or table the receiver lacks is refused: it would
    run or shape code in the receiver's database; crpeer's bookkeeping tables
    may differ in SQL text, not in columns); cr-sqlite's and crpeer's
    bookkeeping well-formed. Then relabels it as :func:`restore_snapshot`
    does, with the receiver's own site id at ordinal 0 (so the site id its
    HELLO showed stays true), empties tables that are not replicated (the
    sender's local data stays the sender's), and returns the cursor it now
    holds. Raises SnapshotError (the file is then unusable; delete it).
    """
    try:
        connection = _open_plain(snapshot)
    except StoreError as exc:
        raise SnapshotError(str(exc)) from exc
    try:
        _check_received(connection, reference)
    except sqlite3.Error as exc:
        raise SnapshotError(f"the snapshot is not a usable database: {exc}") from exc
    finally:
        connection.close()
    try:
        _resite(snapshot, reference.site_id, checked=True)
    except (StoreError, ConfigError) as exc:
        raise SnapshotError(str(exc)) from exc
    connection = _open_plain(snapshot)
    try:
        local_tables = _local_tables(connection)
        connection.execute("BEGIN IMMEDIATE")
        for table in local_tables:
            connection.execute(f"DELETE FROM {quote_identifier(table)}")
        connection.execute("DELETE FROM crpeer_sites")
        connection.execute("COMMIT")
        return persisted_cursor(connection)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot prepare the snapshot: {exc}") from exc
    finally:
        connection.close()


def _check_received(connection: sqlite3.Connection, reference: SnapshotReference) -> None:
    problems = [str(line) for (line,) in connection.execute("PRAGMA integrity_check(10)")]
    if problems != ["ok"]:
        raise SnapshotError(f"the snapshot is corrupt: {'; '.join(problems)}")
    objects = _schema_objects(lambda sql: connection.execute(sql).fetchall())
    extra = sorted(f"{kind} {name}" for kind, name in objects.keys() - reference.objects.keys())
    missing = sorted(f"{kind} {name}" for kind, name in reference.objects.keys() - objects.keys())
    if extra or missing:
        raise SnapshotError(
            f"the snapshot's schema differs: extra {extra or 'none'}, missing {missing or 'none'}"
        )
    for key, (table, sql, columns) in objects.items():
        ref_table, ref_sql, ref_columns = reference.objects[key]
        same_shape = key[0] == "table" and key[1].startswith("crpeer_") and columns == ref_columns
        if table != ref_table or (sql != ref_sql and not same_shape):
            raise SnapshotError(f"the snapshot's {key[0]} {key[1]} differs from ours")
    version = user_version(connection)
    clocks = _clock_tables(connection)
    crrs = [clock.removesuffix("__crsql_clock") for clock in clocks]
    fingerprint = schema_fingerprint_of(connection, crrs)
    if (version, fingerprint) != (reference.schema_version, reference.schema_fingerprint):
        raise SnapshotError("the snapshot's schema version or fingerprint differs from ours")
    # Counters stay within what the extension adds to without overflow, as
    # they do for every change row a peer sends (peer.changes.MAX_COUNTER).
    top = MAX_COUNTER
    checks = [
        "SELECT count(*) FROM crsql_site_id WHERE typeof(site_id) != 'blob' "
        "OR length(site_id) != 16 OR typeof(ordinal) != 'integer' OR ordinal < 0",
        "SELECT count(*) != 1 FROM crsql_site_id WHERE ordinal = 0",
        "SELECT count(*) FROM crpeer_cursor WHERE typeof(origin) != 'blob' "
        "OR length(origin) != 16 OR typeof(version) != 'integer' "
        f"OR version NOT BETWEEN 0 AND {top}",
        "SELECT count(*) FROM crpeer_versions WHERE typeof(origin) != 'blob' "
        "OR length(origin) != 16 OR typeof(local_version) != 'integer' "
        f"OR typeof(origin_version) != 'integer' OR origin_version NOT BETWEEN 0 AND {top}",
        "SELECT count(*) FROM crpeer_held WHERE typeof(origin) != 'blob' OR length(origin) != 16 "
        + "".join(
            f"OR typeof({column}) != 'integer' OR {column} NOT BETWEEN 0 AND {top} "
            for column in ("version", "seq", "col_version", "cl")
        ),
        *(
            f"SELECT count(*) FROM {quote_identifier(clock)} WHERE typeof(db_version) != 'integer' "
            "OR typeof(col_version) != 'integer' OR typeof(seq) != 'integer' "
            f"OR db_version NOT BETWEEN 0 AND {top} OR col_version NOT BETWEEN 0 AND {top} "
            f"OR seq NOT BETWEEN 0 AND {top} "
            "OR site_id NOT IN (SELECT ordinal FROM crsql_site_id)"
            for clock in clocks
        ),
    ]
    for check in checks:
        (bad,) = connection.execute(check).fetchone()
        if bad:
            raise SnapshotError(f"the snapshot's bookkeeping is malformed ({check.split()[3]})")
    taken = connection.execute(
        "SELECT 1 FROM crsql_site_id WHERE site_id = ?", (reference.site_id,)
    ).fetchone()
    if taken:
        raise SnapshotError("the snapshot already knows our site id")


def _schema_objects(
    run: Callable[[str], list[tuple[Any, ...]]],
) -> dict[tuple[str, str], tuple[str, str | None, tuple[tuple[Any, ...], ...]]]:
    objects: dict[tuple[str, str], tuple[str, str | None, tuple[tuple[Any, ...], ...]]] = {}
    for kind, name, table, sql in run("SELECT type, name, tbl_name, sql FROM sqlite_schema"):
        if name.startswith("sqlite_autoindex_") or name in _SCHEMA_EXTRAS:
            continue
        columns: tuple[tuple[Any, ...], ...] = ()
        if kind == "table":
            columns = tuple(
                tuple(row) for row in run(f"PRAGMA table_xinfo({quote_identifier(name)})")
            )
        objects[(str(kind), str(name))] = (str(table), sql, columns)
    return objects


def _open_plain(path: Path) -> sqlite3.Connection:
    """A connection without cr-sqlite (only crsql_* and crpeer_* tables are touched)."""
    try:
        return sqlite3.connect(os.fspath(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the snapshot: {exc}") from exc


def _clock_tables(connection: sqlite3.Connection) -> list[str]:
    return sorted(
        name
        for (name,) in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        if name.endswith("__crsql_clock")
    )


def _local_tables(connection: sqlite3.Connection) -> list[str]:
    """The app's tables that are not replicated (no clock table)."""
    names = {
        str(name)
        for (name,) in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    }
    return sorted(
        name
        for name in names
        if not name.startswith(("sqlite_", "crsql_", "crpeer_"))
        and not name.endswith(("__crsql_clock", "__crsql_pks"))
        and f"{name}__crsql_clock" not in names
    )


def _highest_version(connection: sqlite3.Connection, clocks: list[str]) -> int:
    top = 0
    for clock in clocks:
        (highest,) = connection.execute(
            f"SELECT max(db_version) FROM {quote_identifier(clock)}"
        ).fetchone()
        top = max(top, int(highest or 0))
    return top
