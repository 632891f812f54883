"""Local writes wake the sessions: at once through the Peer, or when polled.

Writes through :meth:`Peer.execute <peer.peer.Peer.execute>` tell
:meth:`LocalWrites.written` at once. Writes by any other connection (the
app's own, another process) are noticed by :meth:`LocalWrites.watch`, which
polls ``PRAGMA data_version`` and ``crsql_db_version()`` on the store thread
every ``poll_interval`` seconds. Both run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from peer.errors import StoreError
from peer.store_worker import StoreWorker

__all__ = ["LocalWrites"]

_log = logging.getLogger("crpeer.peer")


class LocalWrites:
    """Wakes the sessions (``wake()``) once for each local write."""

    def __init__(self, worker: StoreWorker, wake: Callable[[], None], poll_interval: float) -> None:
        self._worker = worker
        self._wake = wake
        self._poll_interval = poll_interval
        self.woken_through = 0
        """The sessions were woken for every local write at or below this db_version."""
        self.schema_changes_noticed = 0
        """How many times :meth:`watch` has seen a schema cookie other than the
        announced one (each time it calls ``refresh_schema``). Read on the event loop."""

    def written(self, db_version: int) -> None:
        """A local write reached ``db_version``: wake the sessions for it and all before."""
        self.woken_through = max(self.woken_through, db_version)
        self._wake()

    async def watch(
        self,
        announced_cookie: Callable[[], int | None],
        refresh_schema: Callable[[], Awaitable[None]],
    ) -> None:
        """Poll for local writes made outside the Peer, until cancelled.

        Any commit moves ``(data_version, db_version)``: the app's own writes
        through the store or another connection, and this peer's merges of
        remote changes. Only the first kind raises the local high-water mark;
        merges already woke the sessions that relay them
        (:meth:`SessionRegistry.relay <peer.session_registry.SessionRegistry.relay>`),
        and waking the session a page came from would only make it read again.
        A schema cookie other than ``announced_cookie()`` (a migration, through
        the store or the app's own connection) calls ``refresh_schema``. A
        poll that fails (StoreError: a locked or failing database) is logged
        as a warning, once until a poll succeeds again, and retried at the
        next interval.
        """
        store = self._worker.store
        marker: tuple[int, int] | None = None
        cookie: int | None = None

        def poll() -> int | None:
            nonlocal marker, cookie
            now = store.change_marker()
            if now == marker:
                return None
            now_cookie, high_water = store.schema_cookie(), store.local_high_water()
            marker, cookie = now, now_cookie  # only once all is read: a failed poll repeats
            return high_water

        first = await self._worker.run(poll)
        self.written(first or 0)  # for a write that raced the first poll
        failing = False
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                high_water = await self._worker.run(poll)
                if cookie != announced_cookie():
                    self.schema_changes_noticed += 1
                    await refresh_schema()
            except StoreError as exc:
                if not failing:
                    _log.warning("cannot poll the store for local writes (retrying): %s", exc)
                failing = True
                continue
            if failing:
                _log.info("polling the store for local writes again")
                failing = False
            if high_water is not None and high_water > self.woken_through:
                self.written(high_water)
