"""The sync side of :class:`peer.store.Store`'s facade: what sessions call.

:class:`SyncFacade` holds the methods a Peer's sessions, its store worker
and its session registry use: reading pages of changes to send (the
reader), merging what arrives and held rows (the merger), and the sync
state kept on the main connection (the cursor, site owners, versions, held
rows). Each delegates to the object that does the work, whose docstring
holds the whole contract. :class:`~peer.store.Store` inherits it and makes
those objects; it is not used on its own.

Threads: as the package docstring says, the reading methods run on the
reader's thread (a Peer's "crpeer-read"; :meth:`SyncFacade.changes_since`
also on the store thread), the others on the thread of the main connection
and the merger (a Peer's "crpeer-store"). While a Peer runs on the store, a
call from another thread raises StoreError. The properties
:attr:`SyncFacade.held_schema` and :attr:`SyncFacade.served_schema` read
plain values, safe from any thread.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Mapping, Sequence

import peer.store.bookkeeping as bookkeeping
from peer.changes import Change, Cursor
from peer.errors import StoreError
from peer.store.connection import translate_errors
from peer.store.jobs import StoreJobs
from peer.store.main import MainConnection
from peer.store.merger import ApplyResult, Merger
from peer.store.pages import LargeGroup
from peer.store.reader import ChangeReader

__all__ = ["SyncFacade"]


class SyncFacade:
    """The sync side of :class:`~peer.store.Store`: pages to send, merges,
    held rows and the sync state, delegated to the store's
    :class:`~peer.store.main.MainConnection`, :class:`~peer.store.merger.Merger`
    and :class:`~peer.store.reader.ChangeReader` (the module docstring says
    which thread runs which)."""

    site_id: bytes
    _main: MainConnection
    _merger: Merger
    _reader: ChangeReader

    # -- the sync state: the main connection --------------------------------

    @translate_errors
    def cursor(self) -> Cursor:
        """The persisted version vector of what this database holds from others."""
        return self._main.cursor()

    @translate_errors
    def site_owners(self) -> dict[bytes, str]:
        """Every site id a remote has shown in a session, and the peer id that showed it."""
        return bookkeeping.site_owners(self._main.conn)

    @translate_errors
    def claim_site(self, site_id: bytes, peer_id: str, *, replacing: str | None = None) -> str:
        """Bind ``site_id`` to ``peer_id`` unless another peer id (not
        ``replacing``) holds it; return its owner afterwards (the caller
        refuses a session whose peer id is not that owner)."""
        return bookkeeping.claim_site(self._main.conn, site_id, peer_id, replacing)

    @translate_errors
    def own_version(self) -> int:
        """The highest origin version of this site's own changes."""
        return self._main.own_version()

    @translate_errors
    def local_high_water(self) -> int:
        """The highest local db_version at which this site wrote a change
        itself: it moves on local writes (through any connection), never on
        merges of others' changes."""
        return self._main.local_high_water()

    @translate_errors
    def held_count(self) -> int:
        """How many held rows still wait for a schema migration."""
        return bookkeeping.held_count(self._main.conn)

    @property
    def held_schema(self) -> int:
        """The newest schema version a held row needs (0 if none is held): a
        session announces it in frames that may carry held rows (PROTOCOL.md)."""
        return self._merger.held_schema

    @property
    def served_schema(self) -> int:
        """The newest schema version a row this store serves may need: its own
        schema version as of its latest read of changes (a page read after a
        migration may carry the new columns before anyone announced them), or
        that of a held row it serves on (see :attr:`held_schema`)."""
        return max(self._reader.read_schema, self._merger.held_schema)

    # -- reading changes: the reader ---------------------------------------

    @translate_errors
    def next_page(
        self,
        cursor: Mapping[bytes, int],
        limit: int,
        *,
        exclude: Collection[bytes] = (),
        max_bytes: int | None = None,
    ) -> list[Change] | LargeGroup:
        """The next page of changes above ``cursor`` (at most ``limit`` rows,
        ``max_bytes`` bytes), or the :class:`LargeGroup` to read with
        :meth:`read_group`; see :meth:`peer.store.reader.ChangeReader.next_page`."""
        return self._reader.next_page(cursor, limit, exclude=exclude, max_bytes=max_bytes)

    @translate_errors
    def changes_since(
        self, cursor: Mapping[bytes, int], limit: int, *, exclude: Collection[bytes] = ()
    ) -> list[Change]:
        """Like :meth:`next_page`, but a large group comes back whole, in one list.

        On the store thread of a running Peer (``peer.run_in_store``) it
        reads through a reader of its own, opened for the call: the Peer's
        reader belongs to its read thread."""
        if self._reader.owner.owns_caller() or not self._main.owner.owns_caller():
            return self._reader.changes_since(cursor, limit, exclude=exclude)
        reader = self._reader.spare()
        try:
            return reader.changes_since(cursor, limit, exclude=exclude)
        finally:
            reader.close(gone=True)

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int | None = None
    ) -> Generator[list[Change], None, None]:
        """The rows of ``group`` in chunks (see
        :meth:`peer.store.reader.GroupReader.chunks`), read on a connection of
        their own; close the iterator (or exhaust it) to release it."""
        return self._reader.read_group(group, chunk, max_bytes)

    @translate_errors
    def backlog_estimate(
        self, cursor: Mapping[bytes, int], *, exclude: Collection[bytes] = ()
    ) -> int:
        """About how many change rows :meth:`changes_since` will serve above ``cursor``.

        An upper bound from the clock tables' db_version index (no scan of
        ``crsql_changes``); for progress reports, not for correctness.
        """
        return self._reader.backlog_estimate(cursor, exclude=exclude)

    # -- merging changes: the merger ---------------------------------------

    @translate_errors
    def begin_page(self) -> None:
        """Open one transaction for several :meth:`apply` calls (a page that
        spans frames; see :meth:`peer.store.merger.Merger.begin_page`); end it
        with :meth:`end_page`, from the same thread."""
        self._merger.begin_page()

    def end_page(self, *, commit: bool) -> None:
        """Commit (or roll back) the page opened by :meth:`begin_page`; raises
        StoreError if none is open or the commit fails (then rolled back)."""
        page = self._merger.page
        if page is None:
            raise StoreError("no page is open")
        if commit:
            page.commit()
        else:
            page.rollback()

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
        """Merge ``changes`` and advance the persisted cursor, in one
        transaction; see :meth:`peer.store.merger.Merger.apply` (holding rows
        for a newer schema, skipping known groups, letting waiting app calls
        cut in). Raises InvalidChangeError for a malformed row, StoreError if
        SQLite fails; on any error nothing of the batch is applied."""
        return self._merger.apply(
            changes,
            hold_unknown=hold_unknown,
            types_checked=types_checked,
            skip_known=skip_known,
            held_schema=held_schema,
            yield_to=yield_to,
        )

    @translate_errors
    def apply_held(self) -> int:
        """Merge held rows whose table and column now exist; return how many
        (see :meth:`peer.store.merger.Merger.apply_held`)."""
        return self._merger.apply_held()
