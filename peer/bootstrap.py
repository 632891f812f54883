"""Snapshot files in transit (protocol 4): the sender's copy, the receiver's file.

A sender makes an :class:`OutgoingSnapshot` (a ``VACUUM INTO`` copy beside
its database, see :meth:`peer.store.Store.copy_into`) and reads it chunk by
chunk; a receiver writes the chunks into an :class:`IncomingSnapshot` beside
its own database. Neither holds more than one chunk in memory. Both files
are created with mode 0600 and removed by :meth:`discard` whatever happens;
a file left by a crash has a name starting with ``.`` and ending with
``.snapshot-out`` or ``.snapshot-in``, is never read again, and is removed
by :func:`remove_leftovers` when a Peer next starts on that database.

Blocking file calls: run them on a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from peer.errors import SnapshotError, StoreError
from peer.store import Cursor, Store
from peer.store.connection import remove_database_files
from peer.store.snapshot import snapshot_cursor

__all__ = ["IncomingSnapshot", "OutgoingSnapshot", "beside", "remove_leftovers"]


def beside(database: str, suffix: str) -> Path:
    """A new hidden file name in the directory of ``database``."""
    path = Path(database)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.{suffix}")


def remove_leftovers(database: str) -> list[Path]:
    """Remove snapshot files a crash left beside ``database``; return them.

    Only for the one peer that owns the database (a snapshot of a running
    peer is never left behind by it)."""
    path = Path(database)
    found = [
        leftover
        for suffix in ("snapshot-in", "snapshot-out")
        for leftover in path.parent.glob(f".{path.name}.*.{suffix}*")
    ]
    for leftover in found:
        leftover.unlink(missing_ok=True)
    return found


class OutgoingSnapshot:
    """A consistent copy of a store, to be streamed.

    ``OutgoingSnapshot.make(store)`` (blocking; the store's read connection)
    copies it and reads the copy's cursor. Then :meth:`read` each chunk,
    :attr:`sha256` after the last one, and :meth:`discard` in the end.
    Raises StoreError if the copy fails (nothing is left behind).
    """

    def __init__(self, path: Path, cursor: Cursor) -> None:
        self.path = path
        self.cursor = cursor
        try:
            self._file: BinaryIO = path.open("rb")
            self.size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise StoreError(f"cannot read the snapshot copy: {exc}") from exc
        self._hash = hashlib.sha256()

    @classmethod
    def make(cls, store: Store) -> OutgoingSnapshot:
        path = beside(store.path, "snapshot-out")
        try:
            store.copy_into(path)
            return cls(path, snapshot_cursor(path))
        except BaseException:
            remove_database_files(path)
            raise

    def read(self, size: int) -> bytes:
        """The next chunk of at most ``size`` bytes (empty at the end)."""
        try:
            chunk = self._file.read(size)
        except (OSError, ValueError) as exc:  # ValueError: discarded meanwhile
            raise StoreError(f"cannot read the snapshot copy: {exc}") from exc
        self._hash.update(chunk)
        return chunk

    @property
    def sha256(self) -> bytes:
        """The SHA-256 of everything read so far."""
        return self._hash.digest()

    def discard(self) -> None:
        """Close and remove the copy (quick: call it even when cancelled)."""
        self._file.close()
        remove_database_files(self.path)


class IncomingSnapshot:
    """A snapshot being received into a new file beside ``database``.

    :meth:`write` each part in order, :meth:`finish`, check :attr:`sha256`;
    then the file at :attr:`path` is checked and installed (or refused) by
    the Peer; :meth:`discard` always. Raises SnapshotError if the file cannot
    be written.
    """

    def __init__(self, database: str) -> None:
        self.path = beside(database, "snapshot-in")
        self.size = 0
        self._hash = hashlib.sha256()
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SnapshotError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        self._file: BinaryIO | None = os.fdopen(descriptor, "wb")

    def write(self, chunk: bytes | memoryview) -> None:
        if self._file is None:
            raise SnapshotError("the snapshot file is closed")
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise SnapshotError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        """Flush the file to disk and close it."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise SnapshotError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        finally:
            self._file.close()
            self._file = None

    @property
    def sha256(self) -> bytes:
        return self._hash.digest()

    def discard(self) -> None:
        """Close and remove the file (nothing to do once it was installed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        remove_database_files(self.path)
