"""Snapshots for the Peer's sessions: ask for one, make one, install one.

:class:`SnapshotExchange` is the snapshot half of the Peer's
:class:`~peer.session.SessionHost` (PROTOCOL.md, Snapshots). It runs on the
event loop; the copies are made on the worker's read thread, and a received
file is swapped in on the store thread between merges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from peer import events as ev
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot
from peer.errors import SnapshotError, StoreError
from peer.protocol import SnapshotEndReceived
from peer.store import ApplyResult
from peer.store.snapshot import prepare_received, snapshot_reference
from peer.store_worker import StoreWorker

if TYPE_CHECKING:
    from peer.session import SessionDriver

__all__ = ["SnapshotExchange"]

_log = logging.getLogger("crpeer.peer")


class SnapshotExchange:
    """Snapshots through one Peer's store worker.

    ``refresh_schema`` is awaited after an install (the file brought its own
    schema); ``applied`` then hears the installed cursor as one merge from
    the session it came from, so the other sessions relay it.
    """

    def __init__(
        self,
        worker: StoreWorker,
        emit: Callable[[ev.Event], None],
        refresh_schema: Callable[[], Awaitable[None]],
        applied: Callable[[SessionDriver, ApplyResult], None],
        *,
        accept_snapshot: bool,
    ) -> None:
        self._worker = worker
        self._emit = emit
        self._refresh_schema = refresh_schema
        self._applied = applied
        self._accept_snapshot = accept_snapshot

    async def takes_snapshot(self) -> bool:
        """Whether to ask for a snapshot: snapshots are accepted and the store
        is fresh (nothing replicated yet)."""
        store = self._worker.store
        if not self._accept_snapshot:
            return False
        return await self._worker.run(store.is_fresh)

    async def make_snapshot(self) -> OutgoingSnapshot | None:
        """A copy of the store to send, made on the read thread; None (logged)
        if it cannot be made. A copy whose caller is cancelled meanwhile is
        removed once made."""
        store = self._worker.store
        making = asyncio.ensure_future(self._worker.read(lambda: OutgoingSnapshot.make(store)))
        try:
            return await asyncio.shield(making)
        except StoreError as exc:
            _log.warning("cannot make a snapshot to send: %s", exc)
            return None
        except asyncio.CancelledError:
            # The copy goes on in its thread: remove it once it is made.
            making.add_done_callback(_discard_made_snapshot)
            raise

    def incoming_snapshot(self) -> IncomingSnapshot:
        """A new file beside the store to receive a snapshot into (raises SnapshotError)."""
        return IncomingSnapshot(self._worker.store.path)

    async def install_snapshot(
        self, driver: SessionDriver, incoming: IncomingSnapshot, end: SnapshotEndReceived
    ) -> bool:
        """Check the received file, then swap it in under the Store between
        merges (see :meth:`StoreWorker.install_snapshot`: nothing runs on
        the old file after). False if it was refused (a
        SnapshotRefused event says why; the store is unchanged); else a
        Bootstrapped event follows."""
        assert driver.remote is not None
        store = self._worker.store
        started = time.monotonic()
        try:
            if incoming.sha256 != end.sha256:
                raise SnapshotError("the snapshot's SHA-256 does not match")
            reference = await self._worker.run(snapshot_reference, store)
            cursor = await asyncio.to_thread(prepare_received, incoming.path, reference)
            if cursor != end.cursor:
                raise SnapshotError("the snapshot does not hold the cursor it announced")
            await self._worker.install_snapshot(incoming.path)
        except StoreError as exc:
            _log.warning("refused a snapshot from %s: %s", driver.address, exc)
            self._emit(ev.SnapshotRefused(driver.remote, exc))
            return False
        _log.info("bootstrapped from a snapshot of %s (%d bytes)", driver.address, end.size)
        await self._refresh_schema()
        self._emit(ev.Bootstrapped(driver.remote, end.size, cursor, time.monotonic() - started))
        self._applied(driver, ApplyResult(1, 0, 0, frozenset(), cursor))
        return True


def _discard_made_snapshot(making: asyncio.Future[OutgoingSnapshot]) -> None:
    """Remove a snapshot copy whose session ended while it was being made."""
    if not making.cancelled() and making.exception() is None:
        making.result().discard()
