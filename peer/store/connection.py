"""Where a store's database lives, and the one way its connections are opened.

:class:`Location` names the database every connection of a :class:`~peer.store.Store`
opens (the file, or a ``file:`` URI; an in-memory database is a private
temporary file, see :func:`locate`) and opens each one the same way: busy
timeout, ``synchronous``, ``journal_size_limit``, cr-sqlite loaded. Close each
with :func:`close_connection`.

The helpers here touch files only (private files, fsync, a read-only
integrity check); none of them keeps a connection.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypedDict, TypeVar

import pysqlite3.dbapi2 as sqlite3

from peer import crsqlite
from peer.errors import StoreError

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "Location",
    "close_connection",
    "create_private_file",
    "file_integrity_problems",
    "locate",
    "quick_check",
    "quote_identifier",
    "quote_literal",
    "remove_database_files",
    "sync_file",
    "translate_errors",
]

JOURNAL_SIZE_LIMIT = 64 << 20
"""Bytes the ``-wal`` file is cut back to after a checkpoint resets it
(``PRAGMA journal_size_limit`` on every connection of a store)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Location:
    """The database a store's connections open, and how.

    ``target`` is what :func:`sqlite3.connect` gets (a path, or a URI when
    ``uri``). ``in_memory``: a private temporary file standing for
    ``":memory:"`` (durability is pointless there: ``synchronous = OFF``).
    """

    target: str
    uri: bool = False
    read_only: bool = False
    in_memory: bool = False
    busy_timeout_ms: int = 5000
    journal_size_limit: int = JOURNAL_SIZE_LIMIT

    def connect(self, *, extension: bool = True) -> Any:
        """A new connection (autocommit; usable from the thread it is handed
        to), with cr-sqlite loaded unless ``extension`` is False (then the
        caller loads it once it has looked at the file).

        Raises StoreError if the database cannot be opened or is not one,
        ExtensionError if cr-sqlite cannot be loaded.
        """
        try:
            conn = sqlite3.connect(
                self.target, uri=self.uri, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.target}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if not self.read_only:
                conn.execute(f"PRAGMA synchronous = {'OFF' if self.in_memory else 'NORMAL'}")
                conn.execute(f"PRAGMA journal_size_limit = {int(self.journal_size_limit)}")
            if extension:
                crsqlite.load(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.target} is not a usable database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn


def locate(
    path: str,
    *,
    read_only: bool = False,
    busy_timeout_ms: int = 5000,
    journal_size_limit: int = JOURNAL_SIZE_LIMIT,
) -> tuple[Location, str | None]:
    """The :class:`Location` of a store opened on ``path``, and the private
    directory to remove at close (None but for an in-memory database).

    ``":memory:"`` (or a ``file:`` URI naming an in-memory database) becomes
    a new private file, mode 0600, in a new private directory (mode 0700)
    under :func:`tempfile.gettempdir`, which is returned. A
    writable file store's file is created with mode 0600 if it is missing
    (:func:`create_private_file`). ``read_only`` opens the file with
    ``mode=ro``. Raises StoreError if the file cannot be created.
    """
    options = _Options(busy_timeout_ms=busy_timeout_ms, journal_size_limit=journal_size_limit)
    if path == ":memory:" or _memory_uri(path):
        directory = tempfile.mkdtemp(prefix="crpeer-memory-")
        target = os.path.join(directory, "memory.db")
        try:
            create_private_file(target)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return Location(target, in_memory=True, read_only=read_only, **options), directory
    if path.startswith("file:"):
        if read_only:
            path += ("&" if "?" in path else "?") + "mode=ro"
        return Location(path, uri=True, read_only=read_only, **options), None
    if read_only:
        return Location(_read_only_uri(path), uri=True, read_only=True, **options), None
    create_private_file(path)
    return Location(path, **options), None


class _Options(TypedDict):
    busy_timeout_ms: int
    journal_size_limit: int


def _memory_uri(path: str) -> bool:
    if not path.startswith("file:"):
        return False
    parts = urllib.parse.urlsplit(path)
    modes = urllib.parse.parse_qs(parts.query).get("mode", [])
    return parts.path == ":memory:" or "memory" in modes


def close_connection(conn: Any) -> None:
    """Finalize cr-sqlite on ``conn`` and close it (no cursor of it may be open)."""
    try:
        conn.execute("SELECT crsql_finalize()")
    finally:
        conn.close()


def translate_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn raw sqlite errors escaping a public method into StoreError."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{method.__name__}: {exc}") from exc

    return wrapper


def file_integrity_problems(path: str | Path, limit: int = 10) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong with the database file at ``path``
    (at most ``limit`` lines; empty when it is sound).

    Opens it read-only without cr-sqlite: check a file this way before
    opening a :class:`~peer.store.Store` on it, since cr-sqlite may crash the
    process on a damaged file. Raises StoreError if the file cannot be opened.
    """
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        return quick_check(conn, limit)
    finally:
        conn.close()


def quick_check(conn: Any, limit: int) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong with the database on ``conn``
    (at most ``limit`` lines; empty when it is sound, the error itself when
    the check cannot run)."""
    try:
        found = [str(line) for (line,) in conn.execute(f"PRAGMA quick_check({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if found == ["ok"] else found


def _read_only_uri(path: str | os.PathLike[str]) -> str:
    """The ``mode=ro`` URI of the database file at ``path``."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"


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


def remove_database_files(path: str | os.PathLike[str]) -> None:
    """Remove the database file ``path`` and the ``-wal``, ``-shm`` and
    ``-journal`` files SQLite makes beside it, those that exist (no
    connection may have it open)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{os.fspath(path)}{suffix}").unlink(missing_ok=True)


def sync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory, so a rename that follows (or preceded) lasts."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
