"""The asyncio Peer: a Store, transports, and one session per connection.

::

    async with Peer("notes.db", [TcpTransport(port=9000)], connect=["tcp://10.0.0.2:9000"]) as p:
        p.subscribe(print)                 # Connected, Synced, Eose, Changed, ...
        await p.execute("INSERT INTO notes VALUES (1, 'hi')")

Threads: every write and apply runs on one worker thread ("crpeer-store") that
the Peer owns, and reads of changes to send run on another ("crpeer-read"), so
the event loop never waits on SQLite and serving one peer does not wait for
applying another's changes. A Store passed in is
used from that thread and left open at stop(); a path is opened and closed
by the Peer.

Local changes: writes through :meth:`Peer.execute` are pushed at once;
writes by any other connection (the app's own, another process) are noticed by
polling ``PRAGMA data_version`` and ``crsql_db_version()`` every
``poll_interval`` seconds; :meth:`notify_local_change` pushes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
)

from peer import events as ev
from peer.auth import Gate, authenticate
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot, remove_leftovers
from peer.errors import (
    ChannelClosed,
    ConfigError,
    ConnectError,
    CrpeerError,
    ErrorCode,
    RemoteProtocolError,
    SecurityError,
    SnapshotError,
    StoreError,
)
from peer.identity import Identity, format_peer_id
from peer.pairing_guard import PairingGuard
from peer.protocol import Limits, LocalInfo, SnapshotEndReceived, SyncSession
from peer.retry import Backoff
from peer.session import Refusal, SessionDriver
from peer.status import PeerStatus, SessionHistory, peer_status
from peer.store import ApplyResult, Change, Cursor, LargeGroup, Store
from peer.store.jobs import StoreJobs
from peer.store.snapshot import prepare_received, snapshot_reference
from peer.trust import TrustStore, default_trust_path
from transports.base import Channel, SupportsDiscovery, Transport

__all__ = ["Peer"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
EventCallback = ev.EventCallback
TimingObserver = Callable[[str, float], None]
"""``observer(kind, seconds)``: see :attr:`Peer.timing_observers`."""


class Peer:
    """A replication node. ``await start()`` … ``await stop()``, or ``async with``.

    ``database`` is a Store or a path. ``connect`` lists addresses to dial
    and keep dialing (``tcp://host:port``, ``ws://…``, ``memory://name``): each
    gets a session, redialed with exponential backoff and full jitter whenever
    it ends. Raises ConfigError for an address no transport handles. When
    two peers dial each other, the connection dialed by the one with the
    smaller site id is kept at both ends; the other one, after a session
    between them ends, waits up to ``redial_grace`` seconds for the remote to
    dial again before it dials itself.

    Security is on by default: pass ``identity`` (and build the transports
    with its TLS contexts) and a ``trust`` store (default: next to the
    database); only trusted peer ids sync, and a peer that proves it knows a
    join secret pairs: the trust store's join secret lets others join this
    node, ``join_secret`` lets this node join another. ``pairing_guard``
    limits wrong guesses of the trust store's secret (default: a new
    :class:`~peer.pairing_guard.PairingGuard`; the secret expires after 10,
    with a :class:`~peer.events.JoinSecretExpired` event). ``insecure=True``
    accepts plaintext channels from anyone, for tests and debugging, and logs
    a warning.

    ``accept_snapshot`` (default True): while its database is fresh (nothing
    in its replicated tables, an empty cursor), the peer asks a remote for a
    snapshot instead of a catch-up of changes (protocol 4; the remote sends
    one when the catch-up holds at least its ``limits.snapshot_threshold``
    change rows). The peer then replaces the database file under the Store
    it holds: the Store closes every connection, the file is replaced
    atomically, the Store reopens on it, and a
    :class:`~peer.events.Bootstrapped` event follows (PROTOCOL.md, Snapshots).
    """

    def __init__(
        self,
        database: Store | str | Path,
        transports: Sequence[Transport] = (),
        *,
        name: str | None = None,
        connect: Sequence[str] = (),
        limits: Limits | None = None,
        poll_interval: float = 0.05,
        ping_interval: float = 15.0,
        idle_timeout: float = 45.0,
        backoff: Backoff | None = None,
        redial_grace: float = 2.0,
        seed: int | None = None,
        identity: Identity | None = None,
        trust: TrustStore | None = None,
        join_secret: str | None = None,
        pairing_guard: PairingGuard | None = None,
        insecure: bool = False,
        accept_snapshot: bool = True,
    ) -> None:
        self.log = logging.getLogger("crpeer.peer")
        if insecure:
            self.log.warning("insecure mode: plaintext channels, no peer authentication")
            self.gate = Gate(None, None)
        else:
            if identity is None:
                raise ConfigError(
                    "crpeer encrypts by default: pass identity= "
                    "(peer.identity.Identity.load_or_create(path)) or insecure=True"
                )
            if trust is None:
                if isinstance(database, Store) and database.in_memory:
                    raise ConfigError("pass trust= (a TrustStore) for an in-memory database")
                path = database.path if isinstance(database, Store) else database
                trust = TrustStore.load(default_trust_path(path))
            guard = pairing_guard or PairingGuard()
            guard.on_expired(self._join_secret_expired)
            self.gate = Gate(identity, trust, join_secret, guard)
        self._database = database
        self.accept_snapshot = accept_snapshot
        self.transports = list(transports)
        self.name = name or ""
        self.limits = limits or Limits()
        self.backoff = backoff or Backoff()
        self._redial_grace = redial_grace
        self._poll_interval = poll_interval
        self._woken_through = 0
        """The sessions were woken for every local write at or below this db_version."""
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._random = random.Random(seed)
        self._connect = list(connect)
        for address in self._connect:
            self._transport_for(address)
        self._store: Store | None = database if isinstance(database, Store) else None
        self._executor: ThreadPoolExecutor | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._apply_lock = asyncio.Lock()
        """Held while changes are merged, so a page spanning frames is never
        interleaved with another session's apply."""
        self._no_open_page = asyncio.Event()
        """Clear while a page spanning frames holds its transaction open: app
        writes wait for it (their connection would wait on its write lock, on
        the very thread that must finish the page). A page in one frame is
        applied within one store call, which runs waiting writes between its
        slices (see :attr:`_store_jobs`)."""
        self._no_open_page.set()
        self._store_jobs = StoreJobs()
        """App writes (:meth:`execute`) waiting for the store thread; an
        apply runs them between slices of its batch."""
        self._drivers: set[SessionDriver] = set()
        self._by_site: dict[bytes, SessionDriver] = {}
        self._admitted = asyncio.Event()
        """Set (and replaced) whenever a session is admitted into ``_by_site``."""
        self._dialed_by: set[bytes] = set()
        """The site ids of remotes that dialed this peer (since it started)."""
        self._site_owners: dict[bytes, str] = {}
        """Each site id a remote showed, and the peer id that showed it first
        (mirrors the store's ``crpeer_sites``)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribers: list[EventCallback] = []
        self._queues: list[asyncio.Queue[ev.Event]] = []
        self._local: LocalInfo | None = None
        self._schema_cookie: int | None = None
        """The schema cookie the announced schema was read at."""
        self._started = False
        self._stopping = False
        self._unsubscribe_trust: Callable[[], None] | None = None
        self.dials: dict[str, ev.DialState] = {}
        """The last state of each ``connect`` address (see :class:`~peer.events.DialState`)."""
        self.history = SessionHistory()
        """Each remote's last EOSE time and last error, for :meth:`status`."""
        self._subscribers.append(self.history.record)
        self.timing_observers: list[TimingObserver] = []
        """Called on the worker thread as ``observer(kind, seconds)`` after each
        apply (``kind`` ``"apply"``: one :meth:`apply` or :meth:`apply_in_page`
        call) and each read of changes to send (``"read"``: one
        :meth:`next_page` or one chunk of :meth:`read_group`). Must be quick
        and thread-safe; none by default, and then nothing is timed."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ConfigError("the peer is not started")
        return self._store

    @property
    def site_id(self) -> bytes:
        return self.store.site_id

    @property
    def peer_id(self) -> str | None:
        """This node's peer id (None in insecure mode without an identity)."""
        return self.gate.identity.peer_id if self.gate.identity else None

    async def start(self) -> None:
        """Open the store, start the transports, dial ``connect``. Once."""
        if self._started:
            raise ConfigError("a Peer starts once")
        self._started = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crpeer-store")
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crpeer-read")
        if self._store is None:
            path = self._database
            assert not isinstance(path, Store)
            self._store = await self._in_store_thread(Store, path)
        if not self.name:
            self.name = self.store.site_id.hex()[:8]
        if self.store.can_stream_pages:
            for leftover in await asyncio.to_thread(remove_leftovers, self.store.path):
                self.log.info("removed %s (a snapshot cut off by a crash)", leftover)
        self._site_owners = await self._in_store_thread(self.store.site_owners)
        await self.refresh_schema()
        if self.gate.trust is not None:
            loop = asyncio.get_running_loop()

            def removed(peer_id: str) -> None:
                loop.call_soon_threadsafe(self.cut_peer, peer_id)

            self._unsubscribe_trust = self.gate.trust.on_removed(removed)
            self._spawn(self._watch_trust(self.gate.trust), "crpeer-watch-trust")
        for transport in self.transports:
            if isinstance(transport, SupportsDiscovery):
                transport.set_discovery_handler(self._make_discovery_handler(transport))
            await transport.start(self._accept)
        for address in self._connect:
            self._spawn(self._dial_forever(address), f"crpeer-dial {address}")
        self._spawn(self._watch_store(), "crpeer-watch")

    async def stop(self) -> None:
        """Close every session and transport, then the store (if the peer opened it)."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self._unsubscribe_trust is not None:
            self._unsubscribe_trust()
        for driver in list(self._drivers):
            await driver.close(ErrorCode.SHUTDOWN)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self.transports:
            with contextlib.suppress(CrpeerError):
                await transport.stop()
        if self._read_executor is not None:
            # Before the store closes: the reader's connection is the read thread's.
            self._read_executor.shutdown(wait=True)
        if self._executor is not None:
            if not isinstance(self._database, Store) and self._store is not None:
                await self._in_store_thread(self._store.close)
            self._executor.shutdown(wait=True)
        if self._store is not None and self._store.path != ":memory:":
            # A copy whose session ended while the read thread made it (see
            # make_snapshot) may be finished only now.
            for leftover in await asyncio.to_thread(remove_leftovers, self._store.path):
                self.log.info("removed %s (a snapshot no session sends)", leftover)

    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- app API ------------------------------------------------------------------

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the store thread and push any change at once.

        It waits for no more than a slice of a page being applied (see
        :data:`~peer.store.APPLY_SLICE_ROWS`), except a page spanning frames
        (one transaction larger than a frame), which it waits for whole.
        """
        store = self.store

        def run() -> tuple[list[tuple[Any, ...]], int]:
            return store.execute(sql, params), store.db_version()

        # The drain below is queued on the store thread before this task
        # yields again, so no page can open ahead of it.
        await self._page_closed()
        if self._executor is None:
            raise ConfigError("the peer is not started")
        # Queued as a job, so that an apply under way runs it between two
        # slices of its batch (see Store.apply); else the drain runs it.
        job = self._store_jobs.submit(run)
        self._executor.submit(self._store_jobs.run_waiting)
        rows, db_version = await asyncio.wrap_future(job)
        # The sessions are woken here for this write and all before it; the
        # watcher need not wake them again.
        self._woken_through = max(self._woken_through, db_version)
        self.notify_local_change()
        return rows

    async def run_in_store(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``fn`` on the store thread (the one thread that uses the Store).

        Like :meth:`execute`, it first waits while a page spanning frames is
        open, so ``fn`` may write.
        """
        await self._page_closed()
        return await self._in_store_thread(fn, *args, **kwargs)

    async def _page_closed(self) -> None:
        """Return once no page spanning frames is open. A call queued on the
        store thread right after (before this task yields again) runs before
        any page opens: a write on the app's connection would otherwise wait
        for the page's write lock on the very thread that must finish it."""
        while not self._no_open_page.is_set():
            await self._no_open_page.wait()

    async def migrate(
        self, version: int, sql: str, *, alter: Sequence[str] = (), new_crrs: Sequence[str] = ()
    ) -> int:
        """Migrate the schema (see :meth:`Store.migrate`) and announce it.

        Runs the migration on the store thread, then :meth:`refresh_schema`.
        Returns how many held rows it merged. Raises SchemaError (and changes
        nothing) if the migration fails.
        """
        await self._page_closed()
        merged = await self._in_store_thread(
            self.store.migrate, version, sql, alter=alter, new_crrs=new_crrs
        )
        await self.refresh_schema()
        return merged

    async def refresh_schema(self) -> None:
        """Re-read the schema version and fingerprint (after a migration).

        The peer calls it itself when it notices a schema change made through
        any connection (within ``poll_interval``); call it after a migration
        to announce it at once. If the schema changed, held rows that now fit
        are merged and every live session is closed cleanly, so that it
        reconnects announcing the new schema (peers hold rows for a schema
        newer than theirs only when the sender announces it).
        """
        store = self.store

        def read() -> tuple[int, bytes, int]:
            return store.schema_version(), store.schema_fingerprint(), store.schema_cookie()

        version, fingerprint, cookie = await self._in_store_thread(read)
        self._schema_cookie = cookie
        before = self._local
        self._local = LocalInfo(store.site_id, self.name, version, fingerprint)
        if before is not None and (before.schema_version, before.schema_fingerprint) == (
            version,
            fingerprint,
        ):
            return
        # Also at start: the database may have been migrated while stopped.
        # A merge: never inside another session's page (see begin_page).
        async with self._apply_lock:
            merged = await self._in_store_thread(store.apply_held)
        stale = [d for d in self._drivers if d.session.local != self._local]
        if before is None:
            return
        self.log.info(
            "schema is now version %d (%d held rows merged): reconnecting %d sessions",
            version,
            merged,
            len(stale),
        )
        for driver in stale:
            self._spawn(driver.close(), "crpeer-schema-changed")

    async def status(self) -> PeerStatus:
        """Cursors, lag and counters of this peer and each live session."""
        return await peer_status(self, self.history)

    def notify_local_change(self) -> None:
        """Something was written locally: push it to every session now."""
        for driver in self._drivers:
            driver.wake()

    def cut_peer(self, peer_id: str) -> None:
        """Close every live session with ``peer_id`` (it was removed from trust)."""
        for driver in list(self._drivers):
            if driver.peer_id == peer_id:
                self.log.warning(
                    "peer %s is no longer trusted: closing its session", format_peer_id(peer_id)
                )
                self._spawn(driver.close(ErrorCode.UNTRUSTED, "no longer trusted"), "crpeer-cut")

    def connect(self, address: str) -> None:
        """Dial ``address`` and keep redialing it until the peer stops."""
        self._transport_for(address)
        self._spawn(self._dial_forever(address), f"crpeer-dial {address}")

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` on the event loop for each event; returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Every event from now on, in order, until the iterator is closed."""
        queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    @property
    def sessions(self) -> list[SessionDriver]:
        """Live sessions past their handshake."""
        return list(self._by_site.values())

    # -- SessionHost --------------------------------------------------------------

    async def next_page(
        self, cursor: Cursor, limit: int, exclude: Collection[bytes], max_bytes: int
    ) -> list[Change] | LargeGroup:
        store = self.store
        return await self._in_read_thread(
            self._timed(
                "read",
                lambda: store.next_page(cursor, limit, exclude=exclude, max_bytes=max_bytes),
            )
        )

    async def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int
    ) -> AsyncIterator[list[Change]]:
        chunks = self.store.read_group(group, chunk, max_bytes)
        try:
            while batch := await self._in_read_thread(
                self._timed("read", lambda: next(chunks, []))
            ):
                yield batch
        finally:
            await self._in_read_thread(chunks.close)

    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        async with self._apply_lock:
            return await self._in_store_thread(self._timed("apply", self._merge), changes, hold_for)

    @property
    def can_stream_pages(self) -> bool:
        return self.store.can_stream_pages

    async def begin_page(self) -> None:
        await self._apply_lock.acquire()
        self._no_open_page.clear()
        try:
            await self._in_store_thread(self.store.begin_page)
        except BaseException:
            self._no_open_page.set()
            self._apply_lock.release()
            raise

    async def apply_in_page(self, changes: list[Change], hold_for: int) -> ApplyResult:
        return await self._in_store_thread(self._timed("apply", self._merge), changes, hold_for)

    @property
    def served_schema(self) -> int:
        return self.store.served_schema

    def _merge(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Apply a session's decoded rows (store thread): their types are
        checked, and copies of groups already held are skipped."""
        return self.store.apply(
            changes,
            hold_unknown=hold_for > 0,
            types_checked=True,
            skip_known=True,
            held_schema=hold_for,
            yield_to=self._store_jobs,
        )

    async def end_page(self, commit: bool) -> None:
        store = self.store
        try:
            await self._in_store_thread(lambda: store.end_page(commit=commit))
        finally:
            self._no_open_page.set()
            self._apply_lock.release()

    async def backlog_estimate(self, cursor: Cursor, exclude: bytes) -> int:
        store = self.store
        return await self._in_read_thread(lambda: store.backlog_estimate(cursor, exclude={exclude}))

    async def local_cursor(self) -> Cursor:
        return await self._in_store_thread(self.store.cursor)

    async def takes_snapshot(self) -> bool:
        store = self.store
        if not self.accept_snapshot or not store.can_stream_pages:
            return False
        return await self._in_store_thread(store.is_fresh)

    async def make_snapshot(self) -> OutgoingSnapshot | None:
        store = self.store
        if not store.can_stream_pages:
            return None  # an in-memory store has no file to copy beside
        making = asyncio.ensure_future(self._in_read_thread(lambda: OutgoingSnapshot.make(store)))
        try:
            return await asyncio.shield(making)
        except StoreError as exc:
            self.log.warning("cannot make a snapshot to send: %s", exc)
            return None
        except asyncio.CancelledError:
            # The copy goes on in its thread: remove it once it is made.
            making.add_done_callback(_discard_made_snapshot)
            raise

    def incoming_snapshot(self) -> IncomingSnapshot:
        return IncomingSnapshot(self.store.path)

    async def install_snapshot(
        self, driver: SessionDriver, incoming: IncomingSnapshot, end: SnapshotEndReceived
    ) -> bool:
        """Check the received file, then swap it in under the Store (see the
        class docstring): merges wait (the apply lock), the read thread waits
        for the swap and store calls queue behind it on the store thread, so
        nothing runs on the old file after."""
        assert driver.remote is not None
        store = self.store
        started = time.monotonic()
        try:
            if incoming.sha256 != end.sha256:
                raise SnapshotError("the snapshot's SHA-256 does not match")
            reference = await self._in_store_thread(snapshot_reference, store)
            cursor = await asyncio.to_thread(prepare_received, incoming.path, reference)
            if cursor != end.cursor:
                raise SnapshotError("the snapshot does not hold the cursor it announced")
            async with self._apply_lock:
                await self._in_read_thread(lambda: self._install_with_reads_held(incoming.path))
        except StoreError as exc:
            self.log.warning("refused a snapshot from %s: %s", driver.address, exc)
            self.emit(ev.SnapshotRefused(driver.remote, exc))
            return False
        self.log.info("bootstrapped from a snapshot of %s (%d bytes)", driver.address, end.size)
        await self.refresh_schema()
        self.emit(ev.Bootstrapped(driver.remote, end.size, cursor, time.monotonic() - started))
        self.applied(driver, ApplyResult(1, 0, 0, frozenset(), cursor))
        return True

    async def admit(self, driver: SessionDriver) -> Refusal | None:
        """Keep each site id to the peer id that showed it first, and one
        session per remote site (both ends keep the same one)."""
        assert driver.session.remote is not None
        site = driver.session.remote.site_id
        if driver.peer_id is not None:
            refusal = await self._claim_site(site, driver.peer_id)
            if refusal is not None:
                return refusal
        existing = self._by_site.get(site)
        if existing is not None and existing is not driver:
            if existing.tie_break_key() <= driver.tie_break_key():
                return Refusal(
                    ErrorCode.DUPLICATE_SESSION,
                    "another session with this site wins",
                    "refused by admission: another session with this site wins the tie-break",
                )
            self.log.debug("session %s replaces a duplicate it wins against", driver.address)
            self._spawn(existing.close(ErrorCode.DUPLICATE_SESSION), "crpeer-close-duplicate")
        self._by_site[site] = driver
        if not driver.outbound:
            self._dialed_by.add(site)
        self._admitted.set()
        self._admitted = asyncio.Event()
        return None

    async def _claim_site(self, site: bytes, peer_id: str) -> Refusal | None:
        """Bind ``site`` to ``peer_id`` on first sight; refuse a peer id that
        shows a site id another one showed first (and is still trusted)."""
        owner = self._site_owners.get(site)
        trust = self.gate.trust
        freed = owner is not None and trust is not None and not trust.is_trusted(owner)
        if owner is None or (freed and owner != peer_id):
            # Recorded here before the store call, so that a HELLO racing this
            # one with the same site id already sees it taken.
            self._site_owners[site] = peer_id
            store = self.store
            try:
                owner = await self._in_store_thread(
                    lambda: store.claim_site(site, peer_id, replacing=owner)
                )
            except BaseException:
                if self._site_owners.get(site) == peer_id:
                    del self._site_owners[site]
                raise
            self._site_owners[site] = owner
        if owner == peer_id:
            return None
        self.log.warning(
            "peer %s showed site id %s, which belongs to peer %s: session refused",
            peer_id,
            site.hex(),
            owner,
        )
        return Refusal(
            ErrorCode.SITE_ID_CLAIMED,
            "this site id belongs to another peer",
            f"peer {peer_id} showed site id {site.hex()}, which belongs to peer {owner}",
        )

    def _join_secret_expired(self, failures: int, address: str) -> None:
        self.emit(ev.JoinSecretExpired(failures, address))

    def emit(self, event: ev.Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self.log.exception("event callback %r failed", callback)
        for queue in self._queues:
            queue.put_nowait(event)

    def applied(self, source: SessionDriver, result: ApplyResult) -> None:
        if result.merged or result.held:
            for driver in self._drivers:
                if driver is not source:
                    driver.announce(result.cursor)
                    driver.wake()

    # -- internals ----------------------------------------------------------------

    def _timed(self, kind: str, fn: Callable[_P, _R]) -> Callable[_P, _R]:
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
                        self.log.exception("timing observer %r failed", observer)

        return timed

    async def _in_store_thread(
        self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        if self._executor is None:
            raise ConfigError("the peer is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _in_read_thread(self, fn: Callable[[], _R]) -> _R:
        """Reads of changes run beside applies: file stores read committed data
        through their own connection (see peer.store)."""
        if self._read_executor is None:
            raise ConfigError("the peer is not started")
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _transport_for(self, address: str) -> Transport:
        scheme = address.split("://", 1)[0] if "://" in address else ""
        for transport in self.transports:
            if scheme == transport.scheme or (
                scheme in {"wss", "https"} and transport.scheme + "s" == scheme
            ):
                return transport
        raise ConfigError(
            f"no transport for {address!r} (have: {[t.scheme for t in self.transports]})"
        )

    async def _accept(self, channel: Channel) -> None:
        if self._stopping or self._local is None:
            await channel.close()
            return
        await self._run_channel(channel, outbound=False)

    async def _run_channel(
        self,
        channel: Channel,
        *,
        outbound: bool,
        refused: Callable[[CrpeerError], None] | None = None,
    ) -> SessionDriver | None:
        """Authenticate, then run one sync session; None if it was refused
        (``refused`` hears why). Refusals are events (SessionFailed), logged at INFO."""
        if self._stopping or self._local is None:
            await channel.close()
            raise ConnectError("peer is stopping")
        try:
            peer_id = await authenticate(channel, self.gate)
        except (SecurityError, RemoteProtocolError) as exc:
            self.log.info("refused %s: %s", channel.remote.address, exc)
            if refused is not None:
                refused(exc)
            self.emit(ev.SessionFailed(None, channel.remote.address, exc))
            with contextlib.suppress(CrpeerError):
                await channel.close()
            return None
        except CrpeerError as exc:  # the channel broke during authentication
            if refused is not None:
                refused(exc)
            if isinstance(exc, ChannelClosed):
                self.log.info("%s closed during authentication", channel.remote.address)
            else:
                self.emit(ev.SessionFailed(None, channel.remote.address, exc))
            with contextlib.suppress(CrpeerError):
                await channel.close()
            return None
        if self._stopping:
            await channel.close()
            return None
        channel.authenticated()
        session = SyncSession(self._local, self.limits, self._random.getrandbits(63))
        driver = SessionDriver(
            channel,
            session,
            self,
            outbound=outbound,
            ping_interval=self._ping_interval,
            idle_timeout=self._idle_timeout,
            peer_id=peer_id,
        )
        self._drivers.add(driver)
        try:
            await driver.run()
        finally:
            self._drivers.discard(driver)
            if driver.remote is not None and self._by_site.get(driver.remote.site_id) is driver:
                del self._by_site[driver.remote.site_id]
        return driver

    async def _dial(
        self,
        transport: Transport,
        address: str,
        attempts: int | None,
        report: Callable[[ev.DialState], None] | None = None,
    ) -> Channel:
        """Dial with exponential backoff and full jitter; raises ConnectError after
        ``attempts`` failures (never gives up when None), ConfigError at once for
        an address that cannot work. ``report`` hears each attempt and pause."""

        def before(state: RetryCallState) -> None:
            if report is not None:
                report(ev.DialState(address, "connecting", state.attempt_number))

        def before_sleep(state: RetryCallState) -> None:
            if report is None or state.outcome is None or state.next_action is None:
                return
            error = state.outcome.exception()
            report(
                ev.DialState(
                    address,
                    "backing_off",
                    state.attempt_number,
                    error if isinstance(error, CrpeerError) else None,
                    time.time() + state.next_action.sleep,
                )
            )

        retrying = AsyncRetrying(
            wait=self.backoff.wait(),
            retry=retry_if_exception_type(ConnectError),
            stop=stop_after_attempt(attempts) if attempts else stop_never,
            before=before,
            before_sleep=before_sleep,
            reraise=True,
        )
        channel: Channel = await retrying(transport.dial, address)
        return channel

    async def _session_ended(
        self, driver: SessionDriver | None, pausing: Callable[[float], None] | None = None
    ) -> None:
        """Wait before redialing: while another session serves the same peer
        (see :meth:`_follow_duplicates`), or a jittered pause after a failure
        (``pausing`` hears its length first)."""
        remote = driver.session.remote if driver else None
        site = remote.site_id if remote is not None else None
        if site is None or self._live_session(site) is None:
            if (
                driver is not None
                and site is not None
                and self._wins(site)
                and (driver.duplicate or driver.eose_received.is_set())
            ):
                # The remote's dial is on its way (refused for it, its
                # handshake here still under way), or comes soon (a cut).
                await self._next_session(site, self._redial_grace)
            elif driver is None or not driver.eose_received.is_set():
                pause = self._random.uniform(0, self.backoff.maximum)
                if pausing is not None:
                    pausing(pause)
                await asyncio.sleep(pause)
        if site is not None:
            await self._follow_duplicates(site)

    def _wins(self, site: bytes) -> bool:
        """Whether the remote ``site`` dials us and its dial beats ours (its
        site id is the smaller, see :meth:`SessionDriver.tie_break_key`)."""
        return site < self.site_id and site in self._dialed_by

    def _live_session(self, site: bytes) -> SessionDriver | None:
        driver = self._by_site.get(site)
        return None if driver is None or driver.done.is_set() else driver

    async def _follow_duplicates(self, site: bytes) -> None:
        """Wait while another session serves the peer ``site``; return when it
        is our turn to dial it.

        When that session is the remote's dial and the remote's dial beats
        ours (:meth:`_wins`), the remote dials again once it ends: give it
        ``redial_grace`` seconds to come first, and follow its new session,
        so that our dial does not meet it in a round of refused duplicates.
        """
        other = self._live_session(site)
        while other is not None:
            await other.done.wait()
            if other.outbound or not self._wins(site):
                return
            other = await self._next_session(site, self._redial_grace)

    async def _next_session(self, site: bytes, within: float) -> SessionDriver | None:
        """The session admitted with ``site``, waiting up to ``within`` seconds
        for one; None if none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (driver := self._live_session(site)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopping:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admitted.wait(), remaining)
        return driver

    def _report_dial(self, state: ev.DialState) -> None:
        """Keep ``state`` in :attr:`dials`, log it (INFO: the event says it) and emit it."""
        self.dials[state.address] = state
        match state.state:
            case "backing_off":
                wait = max(0.0, (state.retry_at or 0.0) - time.time())
                self.log.info(
                    "cannot reach %s (attempt %d): %s; next attempt in %.1f s",
                    state.address,
                    state.attempt,
                    state.error,
                    wait,
                )
            case "failed":
                self.log.info("not dialing %s: %s", state.address, state.error)
            case _:
                self.log.debug("%s: %s (attempt %d)", state.address, state.state, state.attempt)
        self.emit(state)

    async def _dial_forever(self, address: str) -> None:
        """Dial, run the session, repeat, until the peer stops; report each state."""
        transport = self._transport_for(address)
        attempts = 0  # of the current run of attempts (restarts after each connection)
        while not self._stopping:
            try:
                channel = await self._dial(transport, address, None, self._report_dial)
            except ConfigError as exc:
                self._report_dial(ev.DialState(address, "failed", attempts + 1, exc))
                return
            attempts = self.dials[address].attempt if address in self.dials else 1
            self._report_dial(ev.DialState(address, "connected", attempts))
            refusals: list[CrpeerError] = []
            driver = await self._run_channel(channel, outbound=True, refused=refusals.append)
            if self._stopping:
                return
            error = refusals[-1] if refusals else (driver.error if driver else None)

            def pausing(pause: float, error: CrpeerError | None = error, n: int = attempts) -> None:
                self._report_dial(
                    ev.DialState(address, "backing_off", n, error, time.time() + pause)
                )

            await self._session_ended(driver, pausing)

    def _make_discovery_handler(self, transport: SupportsDiscovery) -> Callable[[str, str], None]:
        dialing: dict[str, asyncio.Task[None]] = {}
        # The last address each peer was found at: a peer that moved to
        # another network is redialed there, not at the address it left.
        addresses: dict[str, str] = {}

        def found(address: str, peer_id: str) -> None:
            addresses[peer_id] = address
            task = dialing.get(peer_id)
            if self._stopping or (task is not None and not task.done()):
                return
            task = asyncio.get_running_loop().create_task(
                self._dial_discovered(transport, addresses, peer_id), name=f"crpeer-lan {peer_id}"
            )
            dialing[peer_id] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return found

    async def _dial_discovered(
        self, discovery: SupportsDiscovery, addresses: dict[str, str], peer_id: str
    ) -> None:
        """Dial a peer found on the LAN, at its latest address in ``addresses``,
        for as long as it stays advertised."""
        while not self._stopping and discovery.is_discovered(peer_id):
            address = addresses[peer_id]
            transport = self._transport_for(address)
            try:
                channel = await self._dial(transport, address, attempts=6)
            except ConnectError as exc:
                if addresses[peer_id] != address:
                    continue  # it moved while the old address was being dialed
                self.log.info("giving up on %s (%s) for now: %s", address, peer_id, exc)
                return
            driver = await self._run_channel(channel, outbound=True)
            await self._session_ended(driver)

    def _install_with_reads_held(self, snapshot: Path) -> None:
        """On the read thread: hold it while the store thread swaps the file
        in (:meth:`Store.install_snapshot` closes the reader's connection too,
        so no read may run meanwhile)."""
        assert self._executor is not None
        self._executor.submit(self.store.install_snapshot, snapshot).result()

    async def _watch_trust(self, trust: TrustStore) -> None:
        """Pick up trust changes made by another process (the CLI) within a second."""
        while True:
            await asyncio.sleep(0.5)
            try:
                trust.reload_if_changed()
            except CrpeerError as exc:
                self.log.error("trust store unreadable, keeping the previous one: %s", exc)

    async def _watch_store(self) -> None:
        """Notice local writes made outside :meth:`execute` and wake the sessions.

        Any commit moves ``(data_version, db_version)``: the app's own writes
        through the store or another connection, and this peer's merges of
        remote changes. Only the first kind raises the local high-water mark;
        merges already woke the sessions that relay them (:meth:`applied`),
        and waking the session a page came from would only make it read again.
        """
        store = self.store
        marker: tuple[int, int] | None = None
        cookie: int | None = None

        def poll() -> int | None:
            nonlocal marker, cookie
            now = store.change_marker()
            if now == marker:
                return None
            marker = now
            cookie = store.schema_cookie()
            return store.local_high_water()

        first = await self._in_store_thread(poll)
        self._woken_through = max(self._woken_through, first or 0)
        self.notify_local_change()  # for a write that raced the first poll
        while True:
            await asyncio.sleep(self._poll_interval)
            high_water = await self._in_store_thread(poll)
            if cookie != self._schema_cookie:
                # A migration, through the store or the app's own connection.
                await self.refresh_schema()
            if high_water is not None and high_water > self._woken_through:
                self._woken_through = high_water
                self.notify_local_change()


def _discard_made_snapshot(making: asyncio.Future[OutgoingSnapshot]) -> None:
    """Remove a snapshot copy whose session ended while it was being made."""
    if not making.cancelled() and making.exception() is None:
        making.result().discard()
