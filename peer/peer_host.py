"""The Peer's side of its sessions: what a SessionDriver asks of its peer.

:class:`PeerSessionHost` implements :class:`~peer.session_host.SessionHost` over
the Peer's :class:`~peer.store_worker.StoreWorker` (merges, pages, reads of
changes to send) and :class:`~peer.session_registry.SessionRegistry`
(admission, relaying). :meth:`PeerSessionHost.run_channel` authenticates a
channel and runs one session on it. Snapshots go through
:class:`~peer.snapshot_exchange.SnapshotExchange`. Everything here runs on
the event loop; store work goes to the worker's threads.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager

from peer import events as ev
from peer.auth import Gate, authenticate
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot
from peer.errors import (
    ChannelClosed,
    ConnectError,
    CrpeerError,
    RemoteProtocolError,
    SecurityError,
)
from peer.protocol import Limits, LocalInfo, SnapshotEndReceived, SyncSession
from peer.session import SessionDriver
from peer.session_host import Refusal
from peer.session_registry import SessionRegistry
from peer.snapshot_exchange import SnapshotExchange
from peer.store import ApplyResult, Change, Cursor, LargeGroup
from peer.store_worker import Page, StoreWorker
from transports.base import Channel

__all__ = ["PeerSessionHost"]

_log = logging.getLogger("crpeer.peer")


class PeerSessionHost:
    """A :class:`~peer.session_host.SessionHost` for every session of one Peer.

    ``local`` is None until the Peer has read its schema (:meth:`run_channel`
    refuses channels until then); the Peer updates it on a schema change.
    """

    def __init__(
        self,
        worker: StoreWorker,
        registry: SessionRegistry,
        gate: Gate,
        limits: Limits,
        emit: Callable[[ev.Event], None],
        refresh_schema: Callable[[], Awaitable[None]],
        *,
        accept_snapshot: bool,
        ping_interval: float,
        idle_timeout: float,
        random_source: random.Random,
    ) -> None:
        self._worker = worker
        self._registry = registry
        self._gate = gate
        self._limits = limits
        self.emit = emit
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._random = random_source
        self.local: LocalInfo | None = None
        self._snapshots = SnapshotExchange(
            worker, emit, refresh_schema, self.applied, accept_snapshot=accept_snapshot
        )

    # -- running a channel ---------------------------------------------------------------

    async def accept(self, channel: Channel) -> None:
        """A transport's accept handler: run a session on an inbound channel."""
        if self._registry.stopping or self.local is None:
            await channel.close()
            return
        await self.run_channel(channel, outbound=False)

    async def run_channel(
        self,
        channel: Channel,
        *,
        outbound: bool,
        refused: Callable[[CrpeerError], None] | None = None,
    ) -> SessionDriver | None:
        """Authenticate, then run one sync session until it ends; None if it
        was refused (``refused`` hears why). Refusals are events
        (SessionFailed), logged at INFO. Raises ConnectError (the channel
        closed) when the peer is stopping or not started."""
        if self._registry.stopping or self.local is None:
            await channel.close()
            raise ConnectError("peer is stopping")
        try:
            peer_id = await authenticate(channel, self._gate)
        except (SecurityError, RemoteProtocolError) as exc:
            _log.info("refused %s: %s", channel.remote.address, exc)
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
                _log.info("%s closed during authentication", channel.remote.address)
            else:
                self.emit(ev.SessionFailed(None, channel.remote.address, exc))
            with contextlib.suppress(CrpeerError):
                await channel.close()
            return None
        if self._registry.stopping:
            await channel.close()
            return None
        channel.authenticated()
        session = SyncSession(self.local, self._limits, self._random.getrandbits(63))
        driver = SessionDriver(
            channel,
            session,
            self,
            outbound=outbound,
            ping_interval=self._ping_interval,
            idle_timeout=self._idle_timeout,
            peer_id=peer_id,
        )
        self._registry.track(driver)
        try:
            await driver.run()
        finally:
            self._registry.untrack(driver)
        return driver

    # -- SessionHost: sending ------------------------------------------------------------

    async def next_page(
        self, cursor: Cursor, limit: int, exclude: Collection[bytes], max_bytes: int
    ) -> list[Change] | LargeGroup:
        return await self._worker.next_page(cursor, limit, exclude, max_bytes)

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int
    ) -> AsyncIterator[list[Change]]:
        return self._worker.read_group(group, chunk, max_bytes)

    @property
    def served_schema(self) -> int:
        return self._worker.store.served_schema

    async def backlog_estimate(self, cursor: Cursor, exclude: bytes) -> int:
        store = self._worker.store
        return await self._worker.read(lambda: store.backlog_estimate(cursor, exclude={exclude}))

    async def local_cursor(self) -> Cursor:
        return await self._worker.run(self._worker.store.cursor)

    # -- SessionHost: receiving ----------------------------------------------------------

    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        return await self._worker.apply(changes, hold_for)

    def page(self) -> AbstractAsyncContextManager[Page]:
        """A page spanning frames (see :meth:`StoreWorker.page`)."""
        return self._worker.page()

    def applied(self, source: SessionDriver, result: ApplyResult) -> None:
        self._registry.relay(source, result)

    # -- SessionHost: admission, events, snapshots -------------------------------------

    async def admit(self, driver: SessionDriver) -> Refusal | None:
        return await self._registry.admit(driver)

    async def takes_snapshot(self) -> bool:
        return await self._snapshots.takes_snapshot()

    async def make_snapshot(self) -> OutgoingSnapshot | None:
        return await self._snapshots.make_snapshot()

    def incoming_snapshot(self) -> IncomingSnapshot:
        return self._snapshots.incoming_snapshot()

    async def install_snapshot(
        self, driver: SessionDriver, incoming: IncomingSnapshot, end: SnapshotEndReceived
    ) -> bool:
        return await self._snapshots.install_snapshot(driver, incoming, end)
