"""Merging changes from others: apply, held rows, and pages spanning frames.

A :class:`Merger` owns the store's sync connection and is used from one
thread, the one that also runs the app's writes on the main connection (a
Peer's "crpeer-store" thread; a Store used directly: the caller's; while a
Peer runs on the store, a call from another thread raises StoreError: see
:mod:`peer.store.owner`). Its transactions take SQLite's write lock;
readers on other connections keep seeing committed data meanwhile (WAL).
Held rows are kept and later merged through :mod:`peer.store.held`, on the
merger's connection and thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pysqlite3.dbapi2 as sqlite3

import peer.store.schema as schema
from peer.changes import Change, Cursor, Group, plan_groups
from peer.errors import InvalidChangeError, StoreError
from peer.store.bookkeeping import (
    CHANGES_INTO,
    CURSOR_INTO,
    CURSOR_UPSERT,
    VERSIONS_INTO,
    VERSIONS_UPSERT,
    insert,
    persisted_cursor,
)
from peer.store.connection import Location, close_connection
from peer.store.held import hold, merge_ready, ready_to_merge
from peer.store.jobs import StoreJobs
from peer.store.owner import OwnerThread

__all__ = ["APPLY_SLICE_ROWS", "MERGE_ROWS_PER_STATEMENT", "ApplyResult", "Merger", "Page"]

_MERGE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS crpeer_incoming (
    "table", pk, cid, val, col_version, db_version, site_id, cl, seq,
    origin_version INTEGER, ends_group INTEGER
);
CREATE TEMP TABLE IF NOT EXISTS crpeer_merge_state (impacted INTEGER NOT NULL);
INSERT INTO crpeer_merge_state SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM crpeer_merge_state);
CREATE TEMP TRIGGER IF NOT EXISTS crpeer_merge AFTER INSERT ON crpeer_incoming BEGIN
    INSERT INTO {CHANGES_INTO} VALUES (
        NEW."table", NEW.pk, NEW.cid, NEW.val, NEW.col_version, NEW.db_version,
        NEW.site_id, NEW.cl, NEW.seq
    );
    INSERT INTO {VERSIONS_INTO}
        SELECT NEW.site_id, crsql_next_db_version(), NEW.origin_version, 0
        FROM crpeer_merge_state
        WHERE NEW.ends_group AND crsql_rows_impacted() > impacted{VERSIONS_UPSERT};
    UPDATE crpeer_merge_state SET impacted = crsql_rows_impacted() WHERE NEW.ends_group;
END;
"""
"""The sync connection's staging table: a multi-row INSERT into it merges
every row into crsql_changes and, at the last row of each group that changed
something, records the local version the group landed at — the whole page
in one statement, so the store thread takes the GIL back once per page, not
once per group (see :func:`peer.store.bookkeeping.insert`)."""
_STAGED_INTO = "temp.crpeer_incoming"
_STAGED_GROUP_ROWS = 16
"""Batches whose groups average more rows than this merge group by group:
the staging table costs a few microseconds per row, two statements per
group are nothing beside a large group (a bulk sync runs ~25% faster so)."""
MERGE_ROWS_PER_STATEMENT = 32
"""Rows per multi-row INSERT straight into crsql_changes. Each row's merge
runs cr-sqlite's own statements inside the INSERT, and each of them, on
finishing, truncates the INSERT's in-memory statement journal back to where
it began, walking that journal from its start, so the cost per row grows
with the rows before it in the same statement. 1,000 rows per statement
merge ~8% slower than 32 (``scripts/probe.py merge-statement-size``); one
row per statement pays a statement and a GIL hand-over per row."""
_MERGE_OUTCOME = (
    "SELECT crsql_rows_impacted(), CASE WHEN ? OR crsql_rows_impacted() > ? "
    "THEN crsql_next_db_version() END"
)
"""After a group's rows: rows changed so far in this transaction, and the
local version the group merged at when it changed anything or must be
recorded anyway (``crsql_next_db_version`` reserves a new version when
nothing merged, so it is only asked for then)."""

APPLY_SLICE_ROWS = 1_000
"""Change rows :meth:`Merger.apply` merges between two looks for waiting app
calls (``yield_to``): about 15 ms of merging, which bounds how long an app
write waits behind a batch (a group larger than this is still merged whole)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`peer.store.Store.apply` did with a batch."""

    merged: int
    """Rows handed to cr-sqlite (a row that loses its merge still counts)."""
    held: int
    """Rows kept for a newer schema (see :meth:`peer.store.Store.apply_held`)."""
    skipped: int
    """Rows that originated here and came back; ignored."""
    tables: frozenset[str]
    """Tables the merged rows touched (for UI refresh)."""
    cursor: Cursor = field(default_factory=dict)
    """The highest origin version of each origin in the batch."""


class Page:
    """One write transaction for several :meth:`Merger.apply` calls (a page
    that spans frames), from :meth:`Merger.begin_page`.

    As a context manager it commits when the block ends normally and rolls
    back when it raises; or end it with :meth:`commit` or :meth:`rollback`.
    """

    def __init__(self, merger: Merger, known: Cursor) -> None:
        self._merger = merger
        self.known = known
        """The persisted cursor as the page began (``skip_known`` compares with it)."""
        self.impacted = 0
        """``crsql_rows_impacted()`` after the page's merges so far."""

    def commit(self) -> None:
        """Commit the page; raises StoreError (rolled back) if SQLite refuses."""
        self._merger._end_page(self, commit=True)

    def rollback(self) -> None:
        self._merger._end_page(self, commit=False)

    def __enter__(self) -> Page:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._merger.page is self:
            self._merger._end_page(self, commit=kind is None)


class Merger:
    """Applies batches of changes on the store's sync connection.

    The connection opens at first use, on the thread that merges (with
    cr-sqlite loaded and the staging table of ``_MERGE_STAGE``), and is
    reopened when another connection changed the schema (see
    :mod:`peer.store.schema`). ``held_schema`` is the newest schema a held
    row needs, as the store found it at open.
    """

    def __init__(self, location: Location, site_id: bytes, held_schema: int) -> None:
        self._location = location
        self._site_id = site_id
        self._conn: Any = None
        self._cookie = 0
        self._schema = schema.SchemaCache()
        self._gone = False
        self.page: Page | None = None
        """The open page (:meth:`begin_page`), or None."""
        self.held_schema = held_schema
        """The newest schema version a held row needs (0 if none is held);
        rises as batches hold rows."""
        self.owner = OwnerThread("merger")
        """The thread that alone may merge while a Peer runs (checked by
        :meth:`begin_page`, :meth:`apply`, :meth:`apply_held` and a page's end)."""

    def close(self, *, gone: bool = False) -> None:
        """Close the connection (a page must not be open); with ``gone``,
        refuse any later merge."""
        self._gone = self._gone or gone
        self.page = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            close_connection(conn)

    def _connection(self) -> Any:
        if self._conn is None:
            if self._gone:
                raise StoreError("the store is closed")
            conn = self._location.connect()
            try:
                conn.executescript(_MERGE_STAGE)
            except BaseException:
                close_connection(conn)
                raise
            self._conn, self._cookie = conn, schema.cookie(conn)
        return self._conn

    def _begin(self) -> Any:
        """``BEGIN IMMEDIATE`` on the sync connection, reopened first if the
        schema changed since it last looked; returns the connection."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        if schema.cookie(conn) != self._cookie:
            conn.execute("ROLLBACK")
            self.close()
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            self._cookie = schema.cookie(conn)
        return conn

    def begin_page(self) -> Page:
        """Open one transaction for several :meth:`apply` calls; end it with
        the :class:`Page` returned (or use it as a context manager). Raises
        StoreError if a page is open already or SQLite refuses."""
        self.owner.check()
        if self.page is not None:
            raise StoreError("a page is already open")
        conn = self._begin()
        try:
            known = persisted_cursor(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.page = Page(self, known)
        return self.page

    def _end_page(self, page: Page, *, commit: bool) -> None:
        self.owner.check()
        if self.page is not page:
            raise StoreError("no page is open")
        self.page = None
        conn = self._conn
        try:
            conn.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"committing a page failed: {exc}") from exc

    def apply(
        self,
        changes: Sequence[Change],
        *,
        hold_unknown: bool = False,
        types_checked: bool = False,
        skip_known: bool = False,
        held_schema: int = 0,
        yield_to: StoreJobs | None = None,
    ) -> ApplyResult:
        """Merge ``changes`` and advance the persisted cursor, in one transaction.

        Inside :meth:`begin_page` the rows join that page's transaction (and
        an error leaves it to the caller to end the page without committing).
        Every row is validated before a row reaches the database, including
        its packed primary key against the table's key (see
        :func:`peer.changes.plan_groups`): cr-sqlite aborts the process on
        some malformed rows, so none reaches it unchecked. Rows for a
        table or column this database lacks raise InvalidChangeError, unless
        ``hold_unknown`` (the sender's schema is newer), in which case they
        are held, recorded as needing schema version ``held_schema`` (the
        sender's, or the one its frame says its rows need; by default the
        next one after this database's), which is what :attr:`held_schema`
        reports and frames serving them on announce.
        ``types_checked`` is for rows :func:`peer.messages.decode`
        produced, whose field types and ranges it already checked. Rows that
        originated here are skipped, and with ``skip_known`` so are groups
        whose version the persisted cursor already covers (as it stood when
        the transaction began): for callers that deliver each origin's groups
        whole and in ascending order, as sessions do, where such a group is a
        copy that came by another path. On any error nothing of the batch is
        applied and the cursor does not move; applying the same batch again
        is harmless.

        ``yield_to`` lets app calls cut in (outside a page only): the batch
        merges in slices of whole groups of about :data:`APPLY_SLICE_ROWS`
        rows, and when a call waits in ``yield_to`` at the end of a slice,
        the slices so far commit with their cursor, the waiting calls run
        (on this thread, where they may use the main connection), and the
        rest merges in a new transaction (with none waiting, it stays one
        transaction). A group never spans two transactions. The whole batch
        is validated first, so a malformed row still lands nothing; but
        should the database itself refuse a row (a constraint or trigger of
        the app's) after a commit for a waiting call, or the process die
        there, the slices committed before stay, whole groups with their
        cursor, and the sender sends the rest again. Should a waiting call
        change the CRR tables, the rest is validated again against the new
        schema before it merges.

        Raises InvalidChangeError for a malformed row, StoreError if SQLite
        fails.
        """
        self.owner.check()
        page = self.page
        try:
            conn = self._conn if page is not None else self._begin()
            schema_now = self._schema.read(conn)
            groups = plan_groups(changes, *schema_now, self._site_id, hold_unknown, types_checked)
            result_cursor: Cursor = {}
            unsaved: Cursor = {}  # of the groups merged since the transaction began
            tables: set[str] = set()
            merged = held = 0
            impacted = page.impacted if page is not None else 0
            known: Cursor = {}
            if skip_known:
                known = page.known if page is not None else persisted_cursor(conn)
            fresh = [group for group in groups if group[1] > known.get(group[0], 0)]
            rest: list[Group] = []
            if yield_to is None or page is not None:
                yield_to, part = None, fresh
            else:
                part, rest = _first_slice(fresh, APPLY_SLICE_ROWS)
            while True:
                part_merged = part_held = 0
                for origin, version, rows, held_rows in part:
                    tables.update(row[0] for row in rows)
                    result_cursor[origin] = max(version, result_cursor.get(origin, 0))
                    unsaved[origin] = max(version, unsaved.get(origin, 0))
                    part_merged += len(rows)
                    part_held += len(held_rows)
                merged += part_merged
                held += part_held
                if part_held and held_schema < 1:
                    # Needs a newer schema than this one, whichever it is.
                    held_schema = schema.user_version(conn) + 1
                if part_held or part_merged > _STAGED_GROUP_ROWS * len(part):
                    impacted = self._merge_group_by_group(part, impacted, held_schema)
                else:
                    impacted = self._merge_staged(part, impacted)
                if not rest or yield_to is None:
                    break
                if yield_to.waiting:
                    self._commit_slice(unsaved, held_schema if held else 0)
                    unsaved, impacted = {}, 0
                    yield_to.run_waiting()
                    conn = self._begin()
                    current = self._schema.read(conn)
                    if current != schema_now:
                        schema_now = current
                        rest = _replan(rest, schema_now, self._site_id, hold_unknown)
                part, rest = _first_slice(rest, APPLY_SLICE_ROWS)
            insert(conn, CURSOR_INTO, list(unsaved.items()), CURSOR_UPSERT)
            if page is not None:
                page.impacted = impacted
            else:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abandon(page)
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise InvalidChangeError(f"batch rejected by the database: {exc}") from exc
            raise StoreError(f"applying a batch failed: {exc}") from exc
        except UnicodeEncodeError as exc:
            # A str with lone surrogates: it has no UTF-8 form to bind.
            self._abandon(page)
            raise InvalidChangeError(f"a text value is not valid Unicode: {exc}") from exc
        except BaseException:
            self._abandon(page)
            raise
        if held:
            self.held_schema = max(self.held_schema, held_schema)
        skipped = len(changes) - merged - held
        return ApplyResult(merged, held, skipped, frozenset(tables), result_cursor)

    def _abandon(self, page: Page | None) -> None:
        """Roll back a failed batch's own transaction (a page's is the caller's)."""
        conn = self._conn
        if page is None and conn is not None and conn.in_transaction:
            conn.execute("ROLLBACK")

    def _commit_slice(self, cursor: Cursor, held_schema: int) -> None:
        """Commit the slices merged so far with their ``cursor`` (outside a
        page), so that a waiting app call can write."""
        insert(self._conn, CURSOR_INTO, list(cursor.items()), CURSOR_UPSERT)
        self._conn.execute("COMMIT")
        self.held_schema = max(self.held_schema, held_schema)

    def _merge_staged(self, groups: Sequence[Group], impacted: int) -> int:
        """Merge groups without held rows in one statement (see ``_MERGE_STAGE``);
        return ``crsql_rows_impacted()`` after them."""
        conn = self._conn
        staged = [
            (*row, version, index == len(rows) - 1)
            for _, version, rows, _ in groups
            for index, row in enumerate(rows)
        ]
        conn.execute("UPDATE temp.crpeer_merge_state SET impacted = ?", (impacted,))
        insert(conn, _STAGED_INTO, staged)
        conn.execute("DELETE FROM temp.crpeer_incoming")
        (impacted,) = conn.execute("SELECT impacted FROM temp.crpeer_merge_state").fetchone()
        return int(impacted)

    def _merge_group_by_group(
        self, groups: Sequence[Group], impacted: int, held_schema: int
    ) -> int:
        """Merge groups some of which hold rows back: each group's rows, then
        the local version it landed at (reserved for a group only held)."""
        conn = self._conn
        versions: list[tuple[bytes, int, int, int]] = []
        for origin, version, rows, held_rows in groups:
            if rows:
                insert(conn, CHANGES_INTO, rows, rows_per_statement=MERGE_ROWS_PER_STATEMENT)
            impacted, local = conn.execute(_MERGE_OUTCOME, (bool(held_rows), impacted)).fetchone()
            if local is not None:
                versions.append((origin, local, version, 0))
            if held_rows:
                hold(conn, origin, local, version, held_rows, held_schema)
        insert(conn, VERSIONS_INTO, versions, VERSIONS_UPSERT)
        return int(impacted)

    def apply_held(self) -> int:
        """Merge held rows whose table and column now exist, in one
        transaction; return how many.

        Held rows stay recorded (and are still served to others at their
        original place in the order); the merge itself is not re-served. A
        held row whose primary key does not fit its table now that it exists
        is never merged (it stays held; a warning names it; see
        :func:`peer.store.held.ready_to_merge`). Raises StoreError inside a page.
        """
        self.owner.check()
        if self.page is not None:
            raise StoreError("a page is open")
        conn = self._connection()
        if schema.cookie(conn) != self._cookie:
            self.close()
            conn = self._connection()
        ready = ready_to_merge(conn, self._schema.read(conn))
        if not ready:
            return 0
        conn = self._begin()
        try:
            merge_ready(conn, ready, MERGE_ROWS_PER_STATEMENT)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(ready)


def _first_slice(groups: list[Group], max_rows: int) -> tuple[list[Group], list[Group]]:
    """The first groups of ``groups`` with at most ``max_rows`` rows in all
    (at least one group, whatever its size), and the rest."""
    total = 0
    for index, (_, _, rows, held_rows) in enumerate(groups):
        total += len(rows) + len(held_rows)
        if total > max_rows and index:
            return groups[:index], groups[index:]
    return groups, []


def _replan(
    groups: list[Group], crr_schema: schema.CrrSchema, own_site: bytes, hold_unknown: bool
) -> list[Group]:
    """``groups`` validated again against ``crr_schema`` (the CRR tables changed
    while a batch was merging); raises InvalidChangeError as plan_groups does."""
    rows: list[Change] = []
    for _, _, mergeable, held_rows in groups:
        rows += sorted(mergeable + held_rows, key=lambda row: row[8]) if held_rows else mergeable
    return plan_groups(rows, *crr_schema, own_site, hold_unknown, types_checked=True)
