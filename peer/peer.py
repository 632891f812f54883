"""The asyncio Peer: a Store, transports, and one session per connection.

::

    async with Peer("notes.db", [TcpTransport(port=9000)], connect=["tcp://10.0.0.2:9000"]) as p:
        p.subscribe(print)                 # Connected, Synced, Eose, Changed, ...
        await p.execute("INSERT INTO notes VALUES (1, 'hi')")

Threads: every write and apply runs on one worker thread ("crpeer-store") that
the Peer owns, and reads of changes to send run on another ("crpeer-read"), so
the event loop never waits on SQLite and serving one peer does not wait for
applying another's changes (:mod:`peer.store_worker`). A Store passed in is
used from that thread and left open at stop(); a path is opened and closed
by the Peer.

Local changes: writes through :meth:`Peer.execute` are pushed at once;
writes by any other connection (the app's own, another process) are noticed by
polling ``PRAGMA data_version`` and ``crsql_db_version()`` every
``poll_interval`` seconds; :meth:`notify_local_change` pushes at once.

The Peer composes a :class:`~peer.store_worker.StoreWorker` (the store
threads, page transactions), a :class:`~peer.session_registry.SessionRegistry`
(admission, duplicate tie-breaks), a :class:`~peer.dialer.Dialer`, a
:class:`~peer.peer_host.PeerSessionHost` (what each session asks of its
peer), a :class:`~peer.schema_announcement.SchemaAnnouncement` (the schema
it announces) and a :class:`~peer.peer_background.PeerBackground` (its
tasks, transports and trust watch); only the app API is public.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from peer import events as ev
from peer.auth import Gate
from peer.dialer import Dialer, transport_for
from peer.errors import ConfigError
from peer.event_hub import EventHub
from peer.identity import Identity
from peer.local_writes import LocalWrites
from peer.pairing_guard import PairingGuard
from peer.peer_background import PeerBackground
from peer.peer_host import PeerSessionHost
from peer.protocol import Limits
from peer.retry import Backoff
from peer.schema_announcement import SchemaAnnouncement
from peer.session import SessionDriver
from peer.session_registry import SessionRegistry
from peer.status import PeerStatus, SessionHistory, build_peer_status, read_local_state
from peer.store import Store
from peer.store_worker import StoreWorker, TimingObserver
from peer.trust import TrustStore, default_trust_path
from transports.base import Transport

__all__ = ["Peer"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
EventCallback = ev.EventCallback


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
        self.gate = _make_gate(
            database, identity, trust, join_secret, pairing_guard, insecure, self._secret_expired
        )
        self.transports = list(transports)
        self.name = name or ""
        self.limits = limits or Limits()
        self._connect = list(connect)
        for address in self._connect:
            transport_for(self.transports, address)
        self._background = PeerBackground(self.transports)
        self._spawn = self._background.spawn
        self._events = EventHub()
        self._started = False
        self.history = SessionHistory()
        """Each remote's last EOSE time and last error, for :meth:`status`."""
        self._events.subscribe(self.history.record)
        self._worker = StoreWorker(database, [])
        self._registry = SessionRegistry(self._worker, self.gate.trust, self._spawn)
        self._local_writes = LocalWrites(self._worker, self.notify_local_change, poll_interval)
        randomness = random.Random(seed)
        self._host = PeerSessionHost(
            self._worker,
            self._registry,
            self.gate,
            self.limits,
            self._events.emit,
            self.refresh_schema,
            accept_snapshot=accept_snapshot,
            ping_interval=ping_interval,
            idle_timeout=idle_timeout,
            random_source=randomness,
        )
        self._schema = SchemaAnnouncement(self._worker, self._host, self._registry)
        self._dialer = Dialer(
            self.transports,
            self._registry,
            self._host.run_channel,
            self._events.emit,
            self._spawn,
            backoff=backoff or Backoff(),
            redial_grace=redial_grace,
            random_source=randomness,
        )

    # -- lifecycle ----------------------------------------------------------------

    @property
    def timing_observers(self) -> list[TimingObserver]:
        """``observer(kind, seconds)`` after each apply (``"apply"``) and each read
        of changes to send (``"read"``): see :attr:`StoreWorker.timing_observers
        <peer.store_worker.StoreWorker.timing_observers>`. Append to it or replace it."""
        return self._worker.timing_observers

    @timing_observers.setter
    def timing_observers(self, observers: list[TimingObserver]) -> None:
        self._worker.timing_observers = observers

    @property
    def store(self) -> Store:
        """The Store (raises ConfigError before :meth:`start` for a path)."""
        return self._worker.store

    @property
    def site_id(self) -> bytes:
        return self.store.site_id

    @property
    def peer_id(self) -> str | None:
        """This node's peer id (None in insecure mode without an identity)."""
        return self.gate.identity.peer_id if self.gate.identity else None

    @property
    def backoff(self) -> Backoff:
        """The redial policy; may be replaced at any time (the next wait uses it)."""
        return self._dialer.backoff

    @backoff.setter
    def backoff(self, backoff: Backoff) -> None:
        self._dialer.backoff = backoff

    @property
    def dials(self) -> dict[str, ev.DialState]:
        """The last state of each ``connect`` address (see :class:`~peer.events.DialState`)."""
        return self._dialer.dials

    async def start(self) -> None:
        """Open the store, start the transports, dial ``connect``. Once.

        If any step fails, what was started is stopped (a Store passed in is
        the app's again) before the error propagates."""
        if self._started:
            raise ConfigError("a Peer starts once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        store = await self._worker.open()
        if not self.name:
            self.name = store.site_id.hex()[:8]
        await self._background.remove_leftovers(store.path, "a snapshot cut off by a crash")
        await self._registry.load()
        await self.refresh_schema()
        await self._background.start(
            self.gate.trust, self.cut_peer, self._host.accept, self._dialer.discovery_handler
        )
        for address in self._connect:
            self._dialer.connect(address)
        watching = self._local_writes.watch(lambda: self._schema.cookie, self.refresh_schema)
        self._spawn(watching, "crpeer-watch")

    async def stop(self) -> None:
        """Close every session and transport, then the store (if the peer opened it)."""
        if not self._started or self._registry.stopping:
            return
        self._registry.stopping = True
        self._background.stop_following_trust()
        await self._registry.close_all()
        await self._background.stop()
        await self._worker.close()
        with contextlib.suppress(ConfigError):
            # A copy whose session ended while the read thread made it
            # (see SnapshotExchange.make_snapshot) may be finished only now.
            await self._background.remove_leftovers(self.store.path, "a snapshot no session sends")

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

        rows, db_version = await self._worker.app_write(run)
        # The sessions are woken here for this write and all before it; the
        # watcher need not wake them again.
        self._local_writes.written(db_version)
        return rows

    async def run_in_store(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``fn`` on the store thread (the one thread that uses the Store).

        Like :meth:`execute`, it first waits while a page spanning frames is
        open, so ``fn`` may write.
        """
        return await self._worker.app_call(fn, *args, **kwargs)

    async def migrate(
        self, version: int, sql: str, *, alter: Sequence[str] = (), new_crrs: Sequence[str] = ()
    ) -> int:
        """Migrate the schema (see :meth:`Store.migrate`) and announce it.

        Runs the migration on the store thread, then :meth:`refresh_schema`.
        Returns how many held rows it merged. Raises SchemaError (and changes
        nothing) if the migration fails.
        """
        merged = await self._worker.app_call(
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
        await self._schema.refresh(self.name)

    async def status(self) -> PeerStatus:
        """Cursors, lag and counters of this peer and each live session.

        The one place that gathers them: the store's on the store thread, the
        sessions' snapshots and the dials on the event loop (call it from the
        peer's loop). Raises ConfigError if the peer is not started,
        StoreError if the store fails.
        """
        local = await self.run_in_store(read_local_state, self.store)
        return build_peer_status(
            local,
            peer_id=self.peer_id,
            name=self.name,
            sessions=[driver.snapshot() for driver in self.sessions],
            dials=self.dials,
            history=self.history,
        )

    def notify_local_change(self) -> None:
        """Something was written locally: push it to every session now."""
        self._registry.wake_all()

    def cut_peer(self, peer_id: str) -> None:
        """Close every live session with ``peer_id`` (it was removed from trust)."""
        self._registry.cut_peer(peer_id)

    def connect(self, address: str) -> None:
        """Dial ``address`` and keep redialing it until the peer stops."""
        self._dialer.connect(address)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` on the event loop for each event; returns an unsubscribe."""
        return self._events.subscribe(callback)

    def events(self) -> AsyncIterator[ev.Event]:
        """Every event from now on, in order, until the iterator is closed."""
        return self._events.stream()

    @property
    def sessions(self) -> list[SessionDriver]:
        """Live sessions past their handshake."""
        return self._registry.sessions

    # -- internals ----------------------------------------------------------------

    def _secret_expired(self, failures: int, address: str) -> None:
        self._events.emit(ev.JoinSecretExpired(failures, address))


def _make_gate(
    database: Store | str | Path,
    identity: Identity | None,
    trust: TrustStore | None,
    join_secret: str | None,
    pairing_guard: PairingGuard | None,
    insecure: bool,
    secret_expired: Callable[[int, str], None],
) -> Gate:
    """The Gate a Peer authenticates channels with (see the Peer's security
    paragraph); ConfigError without an identity unless ``insecure``, or
    without a trust store for an in-memory database."""
    if insecure:
        logging.getLogger("crpeer.peer").warning(
            "insecure mode: plaintext channels, no peer authentication"
        )
        return Gate(None, None)
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
    guard.on_expired(secret_expired)
    return Gate(identity, trust, join_secret, guard)
