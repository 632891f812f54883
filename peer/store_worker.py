"""The Peer's two store threads, and the order in which work reaches them.

A :class:`StoreWorker` opens the Store (or takes one given) and runs every
call on it from one of two threads, so the event loop never waits on SQLite:

- ``crpeer-store``: app writes, merges of remote changes, page transactions,
  and the peer's own bookkeeping;
- ``crpeer-read``: reads of changes to send (:meth:`StoreWorker.read`), which
  file stores serve from committed data through a connection of their own,
  so serving one peer does not wait for applying another's changes.

From :meth:`StoreWorker.open` to :meth:`StoreWorker.close` the store belongs
to these threads (:meth:`peer.store.Store.bind_threads`): its main
connection and merger to ``crpeer-store``, its reader to ``crpeer-read``; a
call on it from any other thread (the event loop's, the app's) raises
StoreError. The app reaches the store through :meth:`StoreWorker.app_call`
and :meth:`StoreWorker.app_write` (``peer.run_in_store``, ``peer.execute``).

Ordering, in this one place (all of it on the event loop's thread):

1. One merge at a time: :meth:`~StoreWorker.apply` (a page in one frame),
   :meth:`~StoreWorker.page` (a page spanning frames, one transaction from
   its first frame to its last) and :meth:`~StoreWorker.exclusive` (held
   rows, a snapshot install) take turns, in the order they asked.
2. While a page is open, app calls (:meth:`~StoreWorker.app_write`,
   :meth:`~StoreWorker.app_call`; any write outside a merge, the peer's own
   bookkeeping included) wait for it to end: on the store thread
   they would wait for the page's write lock on the very thread that must
   finish the page. An app call checks that no page is open and queues its
   work on the store thread in one step, with no await between; a page marks
   itself open before it queues its BEGIN, and closed only after it queued
   its COMMIT or ROLLBACK. The store thread runs its queue in order, so an
   app call runs wholly before a page's BEGIN or wholly after its end.
3. During an apply (not a page), app writes run between its slices (see
   :class:`~peer.store.jobs.StoreJobs`): they wait for a slice, not the batch.

The turn to merge (point 1) is an asyncio.Lock taken by ``async with`` for
the whole of one apply or one page, in one coroutine frame: never acquired
by one call and released by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from peer.errors import ConfigError, StoreError
from peer.store import ApplyResult, Change, Cursor, LargeGroup, Store
from peer.store.jobs import StoreJobs

__all__ = ["Page", "StoreWorker", "TimingObserver"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
TimingObserver = Callable[[str, float], None]
"""``observer(kind, seconds)``: see :attr:`StoreWorker.timing_observers`."""

_log = logging.getLogger("crpeer.peer")


class Page:
    """A page spanning frames, open on the store thread (see :meth:`StoreWorker.page`)."""

    def __init__(self, worker: StoreWorker) -> None:
        self._worker = worker
        self.open = True
        """True until the ``async with`` block that made it exits."""

    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Merge one frame's rows into the page's transaction (see
        :meth:`StoreWorker.apply` for ``hold_for`` and what it raises).
        Raises StoreError once the page has ended."""
        if not self.open:
            raise StoreError("the page has ended")
        return await self._worker.run(
            self._worker.timed("apply", self._worker.merge), changes, hold_for
        )


class StoreWorker:
    """The store threads of one Peer: :meth:`open`, use, :meth:`close` (see
    the module docstring for the order of the work)."""

    def __init__(
        self, database: Store | str | Path, timing_observers: list[TimingObserver]
    ) -> None:
        self._database = database
        self._store: Store | None = database if isinstance(database, Store) else None
        self._executor: ThreadPoolExecutor | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self.jobs = StoreJobs()
        """App writes waiting for the store thread; an apply runs them between
        slices of its batch."""
        self._merges = asyncio.Lock()
        """One merge at a time: an apply, or a page from its BEGIN to its end."""
        self._no_open_page = asyncio.Event()
        """Clear while a page is open (see the module docstring, point 2)."""
        self._no_open_page.set()
        self._waiting_for_page = 0
        self._bound = False
        """Whether :meth:`open` bound the store to this worker's threads."""
        self.timing_observers = timing_observers
        """Called on the thread of the call as ``observer(kind, seconds)`` after
        each apply (``kind`` ``"apply"``: one :meth:`apply` or :meth:`Page.apply`)
        and each read of changes to send (``"read"``: one :meth:`next_page`
        or one chunk of :meth:`read_group`). Must be quick and thread-safe;
        none by default, and then nothing is timed."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The Store; raises ConfigError before :meth:`open`."""
        if self._store is None:
            raise ConfigError("the peer is not started")
        return self._store

    async def open(self) -> Store:
        """Start both threads, open the store (on the store thread) if a
        path was given, and bind the store to the threads until
        :meth:`close`: the main connection and the merger to the store
        thread, the reader to the read thread (see the module docstring).
        Call once. Raises StoreError if the Store given belongs to another
        running Peer."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crpeer-store")
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crpeer-read")
        if self._store is None:
            path = self._database
            assert not isinstance(path, Store)
            self._store = await self.run(Store, path)
        # Each executor has one thread, made at its first call, for its whole life.
        store_thread = await self.run(threading.current_thread)
        read_thread = await self.read(threading.current_thread)
        self._store.bind_threads(store_thread, read_thread)
        self._bound = True
        return self._store

    async def close(self) -> None:
        """Close the store if this worker opened it, then end both threads
        once the work queued on them has run (the loop goes on meanwhile),
        and unbind the store from them: a Store given is the app's again."""
        executor, read_executor = self._executor, self._read_executor
        if read_executor is not None:
            # Before the store closes: the reader's connection is the read thread's.
            await asyncio.to_thread(read_executor.shutdown, wait=True)
        if executor is not None:
            if not isinstance(self._database, Store) and self._store is not None:
                await self.run(self._store.close)
            await asyncio.to_thread(executor.shutdown, wait=True)
        if self._bound and self._store is not None:
            self._bound = False
            self._store.unbind_threads()

    # -- the two threads -------------------------------------------------------------

    async def run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn(*args, **kwargs)`` on the store thread, with no regard to pages
        (for reads and the peer's bookkeeping). Raises ConfigError before :meth:`open`."""
        return await asyncio.wrap_future(self._submit(lambda: fn(*args, **kwargs)))

    async def read(self, fn: Callable[[], _R]) -> _R:
        """``fn()`` on the read thread (reads of changes to send)."""
        if self._read_executor is None:
            raise ConfigError("the peer is not started")
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn)

    def _submit(self, fn: Callable[[], _R]) -> Future[_R]:
        """Queue ``fn`` on the store thread now (no await: see the module docstring)."""
        if self._executor is None:
            raise ConfigError("the peer is not started")
        return self._executor.submit(fn)

    # -- app calls ------------------------------------------------------------------

    @property
    def waiting_for_page(self) -> int:
        """How many app calls wait now for an open page to end (see the module
        docstring, point 2). Read on the event loop."""
        return self._waiting_for_page

    @property
    def page_open(self) -> bool:
        """Whether a page is open now: an app call made now waits for its end.
        Read on the event loop."""
        return not self._no_open_page.is_set()

    async def _page_closed(self) -> None:
        if self._no_open_page.is_set():
            return
        self._waiting_for_page += 1
        try:
            while not self._no_open_page.is_set():
                await self._no_open_page.wait()
        finally:
            self._waiting_for_page -= 1

    async def app_call(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn`` on the store thread once no page is open (it may write)."""
        await self._page_closed()
        return await asyncio.wrap_future(self._submit(lambda: fn(*args, **kwargs)))

    async def app_write(self, fn: Callable[[], _R]) -> _R:
        """``fn`` on the store thread once no page is open; an apply under way
        runs it between two of its slices (see :class:`~peer.store.jobs.StoreJobs`)."""
        await self._page_closed()
        job = self.jobs.submit(fn)
        self._submit(self.jobs.run_waiting)
        return await asyncio.wrap_future(job)

    # -- merges -----------------------------------------------------------------------

    def merge(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Apply a session's decoded rows (store thread): their types are
        checked, and copies of groups already held are skipped."""
        return self.store.apply(
            changes,
            hold_unknown=hold_for > 0,
            types_checked=True,
            skip_known=True,
            held_schema=hold_for,
            yield_to=self.jobs,
        )

    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Apply one whole page in its own transaction, after any other merge.

        Rows for a table or column this side lacks are held as needing
        schema ``hold_for``, or rejected (InvalidChangeError) when it is 0;
        StoreError if SQLite fails. Nothing of the page lands on an error.
        """
        async with self.merge_turn():
            return await self.run(self.timed("apply", self.merge), changes, hold_for)

    async def exclusive(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn`` on the store thread, between merges (never inside a page):
        merging held rows, installing a snapshot."""
        async with self.merge_turn():
            return await self.run(fn, *args, **kwargs)

    async def install_snapshot(self, snapshot: Path) -> None:
        """Swap a checked snapshot in under the store, between merges. The
        read thread waits while the store thread installs it
        (:meth:`Store.install_snapshot` reopens every connection, the
        reader's too, so no read may run meanwhile); app calls queue behind
        it on the store thread. Raises StoreError if the install fails."""
        store = self.store
        async with self.merge_turn():
            await self.read(lambda: self._submit(lambda: store.install_snapshot(snapshot)).result())

    @contextlib.asynccontextmanager
    async def merge_turn(self) -> AsyncIterator[None]:
        """Wait for the turn to merge (after every merge that asked before),
        and hold it for the block: no other merge or page runs meanwhile.
        The store thread stays free (app calls go on)."""
        async with self._merges:
            yield

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[Page]:
        """A page spanning frames: one transaction from its first frame to its last.

        Waits for any other merge, opens the transaction on the store thread,
        and yields a :class:`Page` to :meth:`Page.apply` each frame into. The
        page commits when the block exits normally and rolls back when it
        exits by an exception (CancelledError included); the COMMIT or
        ROLLBACK is queued before the exception goes on, so it runs even
        if the caller is cancelled again. A failed COMMIT raises StoreError
        (the page is rolled back). While the page is open, other merges and
        app calls wait.
        """
        store = self.store
        opened = False

        def begin() -> None:
            nonlocal opened
            store.begin_page()
            opened = True

        def end(commit: bool) -> None:
            if opened:  # read on the store thread, after begin() ran
                store.end_page(commit=commit)

        async with self.merge_turn():
            self._no_open_page.clear()
            page = Page(self)
            try:
                await asyncio.shield(asyncio.wrap_future(self._submit(begin)))
                yield page
            except BaseException:
                page.open = False
                ending = self._submit(lambda: end(False))
                self._no_open_page.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wrap_future(ending))
                raise
            page.open = False
            ending = self._submit(lambda: end(True))
            self._no_open_page.set()
            await asyncio.shield(asyncio.wrap_future(ending))

    # -- reads of changes to send ----------------------------------------------------------

    async def next_page(
        self, cursor: Cursor, limit: int, exclude: Collection[bytes], max_bytes: int
    ) -> list[Change] | LargeGroup:
        """:meth:`Store.next_page` on the read thread."""
        store = self.store
        return await self.read(
            self.timed(
                "read",
                lambda: store.next_page(cursor, limit, exclude=exclude, max_bytes=max_bytes),
            )
        )

    async def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int
    ) -> AsyncIterator[list[Change]]:
        """:meth:`Store.read_group`, each chunk read on the read thread."""
        chunks = self.store.read_group(group, chunk, max_bytes)
        try:
            while batch := await self.read(self.timed("read", lambda: next(chunks, []))):
                yield batch
        finally:
            await self.read(chunks.close)

    # -- timing -----------------------------------------------------------------------

    def timed(self, kind: str, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """``fn``, reporting its run time to :attr:`timing_observers` (``fn``
        itself when nobody observes)."""
        if not self.timing_observers:
            return fn

        def timed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                for observer in list(self.timing_observers):
                    try:
                        observer(kind, elapsed)
                    except Exception:
                        _log.exception("timing observer %r failed", observer)

        return timed
