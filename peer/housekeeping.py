"""Keeping a long-running node's files small: the ``-wal`` file.

SQLite's ``-wal`` file grows while a reader holds an old snapshot during a
large write, and it never shrinks by itself: a checkpoint only marks it for
reuse. The store bounds it with ``PRAGMA journal_size_limit`` (cut back to the
limit when a writer starts it over, see
:data:`~peer.store.JOURNAL_SIZE_LIMIT`), and :class:`WalHousekeeper` runs a
truncating checkpoint once the node is idle, so that a node that synced a
large backlog and went quiet does not keep a large ``-wal`` for months.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from peer.errors import CrpeerError
from peer.peer import Peer

__all__ = ["IDLE_AFTER", "MIN_INTERVAL", "WalHousekeeper", "wal_size"]

IDLE_AFTER = 5.0
"""Seconds without a commit after which a node counts as idle."""
MIN_INTERVAL = 60.0
"""Fewest seconds between two truncating checkpoints."""

_log = logging.getLogger("crpeer.housekeeping")


def wal_size(database: str | os.PathLike[str]) -> int:
    """Bytes in ``database``'s ``-wal`` file (0 when there is none)."""
    try:
        return Path(f"{os.fspath(database)}-wal").stat().st_size
    except FileNotFoundError:
        return 0


class WalHousekeeper:
    """Truncates the ``-wal`` of ``peer``'s store when the node is idle.

    Call :meth:`tick` every ``poll`` seconds (:meth:`run` does, until
    cancelled). The node is idle when no commit (local, remote or by another
    process) happened for ``idle_after`` seconds; then, at most once per
    ``min_interval`` seconds and only if the ``-wal`` is not empty, it runs
    ``PRAGMA wal_checkpoint(TRUNCATE)`` on the store thread. A checkpoint
    that a reader or an open page gets in the way of is tried again on a
    later tick. ``clock`` is an input, for tests.
    """

    def __init__(
        self,
        peer: Peer,
        *,
        idle_after: float = IDLE_AFTER,
        min_interval: float = MIN_INTERVAL,
        poll: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peer = peer
        self.idle_after = idle_after
        self.min_interval = min_interval
        self.poll = poll
        self._clock = clock
        self._marker: tuple[int, int] | None = None
        self._last_commit = clock()
        self._last_checkpoint: float | None = None
        self.checkpoints = 0
        """Truncating checkpoints that completed."""

    async def tick(self) -> bool:
        """Look once; return whether a truncating checkpoint completed.

        Raises StoreError if the store fails.
        """
        store = self.peer.store
        marker = await self.peer.run_in_store(store.change_marker)
        now = self._clock()
        if marker != self._marker:
            self._marker, self._last_commit = marker, now
            return False
        if now - self._last_commit < self.idle_after:
            return False
        if self._last_checkpoint is not None and now - self._last_checkpoint < self.min_interval:
            return False
        before = wal_size(store.path)
        if before == 0:
            return False
        done, _, _ = await self.peer.run_in_store(store.checkpoint, truncate=True)
        if not done:
            _log.debug("checkpoint of %s postponed: a reader is in the way", store.path)
            return False
        self._last_checkpoint = now
        self.checkpoints += 1
        _log.info("idle: truncated %s-wal (%d bytes)", store.path, before)
        return True

    async def run(self) -> None:
        """Tick every ``poll`` seconds until cancelled; store errors are logged."""
        while True:
            try:
                await self.tick()
            except CrpeerError as exc:
                _log.warning("housekeeping of the -wal failed: %s", exc)
            await asyncio.sleep(self.poll)
