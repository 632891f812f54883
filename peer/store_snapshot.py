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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import pysqlite3.dbapi2 as sqlite3

from peer.errors import ConfigError, StoreError
from peer.store import SITE_ID_LENGTH, Store, _create_private_file

__all__ = ["restore_snapshot", "take_snapshot"]

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
            _create_private_file(out)  # VACUUM INTO fills an empty file, keeping its mode
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
        _create_private_file(temporary)  # copyfile keeps the mode of a file it overwrites
        shutil.copyfile(snapshot, temporary)
        new_site = secrets.token_bytes(SITE_ID_LENGTH)
        _resite(temporary, new_site)
        os.replace(temporary, database)
    finally:
        for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
            leftover.unlink(missing_ok=True)
    try:
        with Store(database) as store:
            if store.site_id != new_site:
                raise StoreError(f"{database}: cr-sqlite did not take the new site id")
    except BaseException:
        for leftover in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            leftover.unlink(missing_ok=True)
        raise
    return new_site


def _resite(path: Path, new_site: bytes) -> None:
    """Give the database at ``path`` a new local site id, keeping the old one's changes.

    Uses a plain connection (no extension): only cr-sqlite's and crpeer's own
    tables are touched, never an app table (whose triggers need cr-sqlite).
    """
    try:
        connection = sqlite3.connect(os.fspath(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the snapshot copy: {exc}") from exc
    try:
        _resite_in(connection, path, new_site)
    except sqlite3.DatabaseError as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise StoreError(f"the snapshot is not a usable database: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.close()


def _resite_in(connection: sqlite3.Connection, path: Path, new_site: bytes) -> None:
    (check,) = connection.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise StoreError(f"the snapshot is corrupt: {check}")
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    missing = [table for table in _REQUIRED_TABLES if table not in tables]
    if missing:
        raise ConfigError(f"the snapshot is not a crpeer database (no {', '.join(missing)})")
    clocks = sorted(name for name in tables if name.endswith("__crsql_clock"))
    connection.execute("BEGIN IMMEDIATE")
    row = connection.execute("SELECT site_id FROM crsql_site_id WHERE ordinal = 0").fetchone()
    if row is None or len(row[0]) != SITE_ID_LENGTH:
        raise ConfigError("the snapshot has no local site id")
    old_site = bytes(row[0])
    connection.execute("UPDATE crsql_site_id SET site_id = ? WHERE ordinal = 0", (new_site,))
    (old_ordinal,) = connection.execute(
        "INSERT INTO crsql_site_id (site_id) VALUES (?) RETURNING ordinal", (old_site,)
    ).fetchone()
    versions: set[int] = set()
    top = 0
    for clock in clocks:
        quoted = '"' + clock.replace('"', '""') + '"'
        versions.update(
            int(v)
            for (v,) in connection.execute(
                f"SELECT DISTINCT db_version FROM {quoted} WHERE site_id = 0"
            )
        )
        (highest,) = connection.execute(f"SELECT max(db_version) FROM {quoted}").fetchone()
        top = max(top, int(highest or 0))
        connection.execute(f"UPDATE {quoted} SET site_id = ? WHERE site_id = 0", (old_ordinal,))
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
