"""A Peer's running parts besides its sessions: its tasks, transports and trust watch.

:class:`PeerBackground` owns the tasks a :class:`~peer.peer.Peer` spawns
(dials, duplicate closes, the local-write and trust watches) and starts and
stops its transports; it follows the trust store (a peer removed from it
loses its sessions) and removes the files a snapshot left behind. Everything
runs on the peer's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from peer.bootstrap import remove_leftovers
from peer.errors import CrpeerError
from peer.trust import TrustStore
from transports.base import Channel, SupportsDiscovery, Transport

__all__ = ["PeerBackground"]

_log = logging.getLogger("crpeer.peer")


class PeerBackground:
    """The tasks and transports of one Peer: :meth:`start`, then :meth:`stop` once."""

    def __init__(self, transports: Sequence[Transport]) -> None:
        self._transports = transports
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe_trust: Callable[[], None] | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the peer's, cancelled by :meth:`stop`. A
        task that ends with an error is logged (ERROR, with its name)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_report_failure)
        return task

    async def start(
        self,
        trust: TrustStore | None,
        cut_peer: Callable[[str], None],
        accept: Callable[[Channel], Awaitable[None]],
        discovery_handler: Callable[[SupportsDiscovery], Callable[[str, str], None]],
    ) -> None:
        """Follow ``trust`` (``cut_peer(peer_id)`` for a peer removed from it,
        from any thread or process), then start every transport, each handing
        its channels to ``accept`` and, if it discovers peers, its finds to
        ``discovery_handler(transport)``. Raises what a transport's start raises."""
        if trust is not None:
            loop = asyncio.get_running_loop()

            def removed(peer_id: str) -> None:
                loop.call_soon_threadsafe(cut_peer, peer_id)

            self.spawn(_watch_trust(trust), "crpeer-watch-trust")
            self._unsubscribe_trust = trust.on_removed(removed)
        for transport in self._transports:
            if isinstance(transport, SupportsDiscovery):
                transport.set_discovery_handler(discovery_handler(transport))
            await transport.start(accept)

    def stop_following_trust(self) -> None:
        """Cut no more sessions on trust changes (the peer is stopping)."""
        if self._unsubscribe_trust is not None:
            self._unsubscribe_trust()
            self._unsubscribe_trust = None

    async def stop(self) -> None:
        """Cancel every task and wait for them, then stop the transports
        (their errors are ignored: the peer is going away)."""
        self.stop_following_trust()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._transports:
            with contextlib.suppress(CrpeerError):
                await transport.stop()

    async def remove_leftovers(self, database: str, what: str) -> None:
        """Remove the files of snapshots left beside ``database`` (none for
        ``:memory:``), logging each as ``what``."""
        if database == ":memory:":
            return
        for leftover in await asyncio.to_thread(remove_leftovers, database):
            _log.info("removed %s (%s)", leftover, what)


async def _watch_trust(trust: TrustStore) -> None:
    """Pick up trust changes made by another process (the CLI) within a
    second; each reload is logged (INFO) once the peer uses the new store."""
    while True:
        await asyncio.sleep(0.5)
        try:
            if trust.reload_if_changed():
                _log.info("trust store reloaded: changed by another process")
        except CrpeerError as exc:
            _log.error("trust store unreadable, keeping the previous one: %s", exc)


def _report_failure(task: asyncio.Task[Any]) -> None:
    """Log a peer task that ended with an error: what it did stops with it."""
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.error("%s stopped: %s", task.get_name(), error, exc_info=error)
