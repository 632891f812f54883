"""The schema a Peer announces, kept up to date with its database.

:class:`SchemaAnnouncement` reads the schema version, fingerprint and cookie on
the store thread, sets the :class:`~peer.protocol.LocalInfo` that new
sessions announce (:attr:`PeerSessionHost.local
<peer.peer_host.PeerSessionHost.local>`), and on a change merges the held
rows that now fit and closes the live sessions so that they reconnect with
the new schema. Runs on the peer's event loop.
"""

from __future__ import annotations

import logging

from peer.peer_host import PeerSessionHost
from peer.protocol import LocalInfo
from peer.session_registry import SessionRegistry
from peer.store_worker import StoreWorker

__all__ = ["SchemaAnnouncement"]

_log = logging.getLogger("crpeer.peer")


class SchemaAnnouncement:
    """Keeps ``host.local`` equal to the store's schema (see :meth:`refresh`)."""

    def __init__(
        self, worker: StoreWorker, host: PeerSessionHost, registry: SessionRegistry
    ) -> None:
        self._worker = worker
        self._host = host
        self._registry = registry
        self.cookie: int | None = None
        """The schema cookie the announced schema was read at (None before the first read)."""

    async def refresh(self, name: str) -> None:
        """Re-read the schema and announce it under ``name`` (see
        :meth:`Peer.refresh_schema <peer.peer.Peer.refresh_schema>`).

        Raises StoreError if the store fails.
        """
        store = self._worker.store

        def read() -> tuple[int, bytes, int]:
            return store.schema_version(), store.schema_fingerprint(), store.schema_cookie()

        version, fingerprint, cookie = await self._worker.run(read)
        self.cookie = cookie
        before = self._host.local
        local = LocalInfo(store.site_id, name, version, fingerprint)
        self._host.local = local
        if before is not None and (before.schema_version, before.schema_fingerprint) == (
            version,
            fingerprint,
        ):
            return
        # Also at start: the database may have been migrated while stopped.
        # A merge: never inside another session's page.
        merged = await self._worker.exclusive(store.apply_held)
        if before is None:
            return
        stale = self._registry.close_stale(local)
        _log.info(
            "schema is now version %d (%d held rows merged): reconnecting %d sessions",
            version,
            merged,
            stale,
        )
