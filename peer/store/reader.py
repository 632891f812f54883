"""Reading changes to send: pages, large groups, the backlog, copies.

A :class:`ChangeReader` owns one connection of its own and is used from one
thread (a Peer's "crpeer-read" thread; a Store used directly: the caller's;
while a Peer runs on the store, a read from another thread raises
StoreError: see :mod:`peer.store.owner`).
Each read runs in one read transaction, so it sees committed data only
(WAL): a merge in progress on the merger's connection, or an app write on
the main connection, never shows half done, and never waits for a read.

A group larger than a page is read by a :class:`GroupReader`, which opens a
connection of its own for that group and reads it in one statement (one
consistent snapshot), chunk by chunk, on the reader's thread.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peer.store.pages as pages
import peer.store.schema as schema
from peer.changes import Change, change_size
from peer.errors import StoreError
from peer.store.bookkeeping import CHANGE_COLUMNS, persisted_cursor
from peer.store.connection import (
    Location,
    close_connection,
    create_private_file,
    quote_identifier,
)
from peer.store.owner import OwnerThread
from peer.store.pages import LargeGroup

__all__ = ["COMBINED_READS", "ChangeReader", "GroupReader"]

COMBINED_READS = 4
"""Reads of the log in one page before falling back to per-origin reads."""


class ChangeReader:
    """Pages of changes above a remote's cursor, read on one connection.

    ``combined_reads`` bounds the one-pass reads of a page
    (:func:`peer.store.pages.combined_page`); 0 reads every page origin by
    origin. The connection opens at the first read, on the thread that
    reads; :meth:`close` releases it (a later read opens a new one, unless
    :meth:`close` was told the store is gone).
    """

    def __init__(
        self,
        location: Location,
        site_id: bytes,
        *,
        read_schema: int = 0,
        combined_reads: int = COMBINED_READS,
    ) -> None:
        self._location = location
        self._site_id = site_id
        self._combined_reads = combined_reads
        self._conn: Any = None
        self._cookie = 0
        self._schema = schema.SchemaCache()
        self._gone = False
        self.read_schema = read_schema
        """The newest app schema version (``user_version``) seen, at open or
        by a read: versions only rise, so it covers every page read so far."""
        self.open_groups = 0
        """Group readers of :meth:`read_group` still open."""
        self.owner = OwnerThread("reader")
        """The thread that alone may read while a Peer runs (checked as each
        read begins; :meth:`close` is not)."""

    def spare(self) -> ChangeReader:
        """A new reader of the same database, bound to no thread, for the
        reads of a thread other than :attr:`owner`'s; close it after use."""
        return ChangeReader(
            self._location,
            self._site_id,
            read_schema=self.read_schema,
            combined_reads=self._combined_reads,
        )

    def close(self, *, gone: bool = False) -> None:
        """Close the connection (on the reader's thread, or once it stopped);
        with ``gone``, refuse any later read."""
        self._gone = self._gone or gone
        if self._conn is not None:
            conn, self._conn = self._conn, None
            close_connection(conn)

    def _connection(self) -> Any:
        self.owner.check()
        if self._conn is None:
            if self._gone:
                raise StoreError("the store is closed")
            self._conn = self._location.connect()
            self._cookie = schema.cookie(self._conn)
        return self._conn

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        """One read transaction, so several queries see one committed state;
        reopens the connection first if the schema changed since it last looked."""
        conn = self._connection()
        conn.execute("BEGIN")
        now = schema.cookie(conn)  # starts the snapshot
        if now != self._cookie:
            conn.execute("ROLLBACK")
            self.close()
            conn = self._connection()
            conn.execute("BEGIN")
            self._cookie = schema.cookie(conn)
        self.read_schema = max(self.read_schema, schema.user_version(conn))
        try:
            yield conn
        finally:
            # ROLLBACK, not COMMIT: ending a read-only transaction so runs
            # cr-sqlite's rollback hook, which lets it see a schema change.
            conn.execute("ROLLBACK")

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
        :class:`LargeGroup` to read with :meth:`read_group`. An empty list means
        nothing is above the cursor. To page, advance the cursor to the highest
        version returned per origin (or of the large group) and call again.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        site_id = self._site_id
        with self._snapshot() as conn:
            # An origin the remote's cursor already covers has nothing to send.
            origins = [site_id] + [
                origin
                for origin, version in persisted_cursor(conn).items()
                if cursor.get(origin, 0) < version
            ]
            origins = [origin for origin in origins if origin not in exclude]
            combined = pages.combined_page(
                conn, site_id, cursor, limit, origins, max_bytes, self._combined_reads
            )
            if combined is not None:
                return combined
            out: list[Change] = []
            budget = max_bytes
            for origin in origins:
                if len(out) >= limit or (budget is not None and budget <= 0):
                    continue
                after = cursor.get(origin, 0)
                if origin == site_id:
                    found = pages.own_changes(conn, site_id, after, limit - len(out), budget)
                else:
                    found = pages.relayed_changes(conn, origin, after, limit - len(out), budget)
                if isinstance(found, LargeGroup):
                    if not out:
                        return found
                    break  # it starts the next page
                out.extend(found)
                if budget is not None:
                    budget -= sum(map(change_size, found))
            return out

    def changes_since(
        self, cursor: Mapping[bytes, int], limit: int, *, exclude: Collection[bytes] = ()
    ) -> list[Change]:
        """See :meth:`peer.store.Store.changes_since`."""
        page = self.next_page(cursor, limit, exclude=exclude)
        if isinstance(page, LargeGroup):
            return [change for chunk in self.read_group(page, limit) for change in chunk]
        return page

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int | None = None
    ) -> Generator[list[Change], None, None]:
        """See :meth:`peer.store.Store.read_group`: a :class:`GroupReader`,
        counted in :attr:`open_groups` until the iterator is closed or exhausted."""
        self.owner.check()
        if self._gone:
            raise StoreError("the store is closed")
        reader = GroupReader(self._location, self._site_id, group)
        self.open_groups += 1
        try:
            yield from reader.chunks(chunk, max_bytes)
        finally:
            self.open_groups -= 1

    def backlog_estimate(
        self, cursor: Mapping[bytes, int], *, exclude: Collection[bytes] = ()
    ) -> int:
        """See :meth:`peer.store.Store.backlog_estimate`."""
        with self._snapshot() as conn:
            tables = list(self._schema.read(conn)[0])
            starts: list[int] = []
            if self._site_id not in exclude:
                starts.append(cursor.get(self._site_id, 0))
            for (origin,) in conn.execute("SELECT origin FROM crpeer_cursor").fetchall():
                if bytes(origin) in exclude:
                    continue
                (start,) = conn.execute(
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
                    conn.execute(
                        f"SELECT count(*) FROM {quote_identifier(table + '__crsql_clock')} "
                        "WHERE db_version > ?",
                        (after,),
                    ).fetchone()[0]
                )
                for table in tables
            )

    def copy_into(self, out: str | Path) -> None:
        """See :meth:`peer.store.Store.copy_into`."""
        self.owner.check()
        create_private_file(out)
        self._connection().execute("VACUUM INTO ?", (os.fspath(out),))


class GroupReader:
    """The rows of one :class:`LargeGroup`, read through a connection of its
    own in one statement, whatever the group's size. Used from one thread;
    :meth:`chunks` opens the connection and closes it when its iterator ends."""

    def __init__(self, location: Location, site_id: bytes, group: LargeGroup) -> None:
        self._location = location
        self._site_id = site_id
        self._group = group

    def chunks(self, chunk: int, max_bytes: int | None) -> Generator[list[Change], None, None]:
        """The group's rows in lists of at most ``chunk`` rows and, if
        ``max_bytes`` is given, at most that many bytes by
        :func:`peer.changes.change_size` (a row larger than that comes
        alone): the merged rows, then the held ones."""
        group = self._group
        own = group.origin == self._site_id
        conn = self._location.connect()
        rows: Any = None
        try:
            rows = conn.execute(
                f"SELECT {CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version = ?",
                (group.origin, group.local_version),
            )
            for batch in pages.in_chunks(rows, chunk, max_bytes, change_size):
                if own:
                    yield batch
                else:
                    yield [(*r[:5], group.version, *r[6:]) for r in batch]
            held, _ = pages.held_rows(
                conn,
                group.origin,
                group.version - 1,
                group.local_version,
                group.local_version,
                None,
            )
            changes = (change for _, change in held)
            yield from pages.in_chunks(changes, chunk, max_bytes, change_size)
        finally:
            # The crsql_changes cursor must be gone before crsql_finalize()
            # frees what it reads from.
            if rows is not None:
                rows.close()
            close_connection(conn)
