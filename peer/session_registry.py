"""The live sessions of one Peer, and which of them may stay.

A :class:`SessionRegistry` knows every running :class:`~peer.session.SessionDriver`
(from its authentication on) and the admitted ones by remote site id. It
admits a session after the remote's HELLO (:meth:`SessionRegistry.admit`):
each site id stays bound to the peer id that showed it first, and each remote
site keeps one session, the same one at both ends (the duplicate tie-break,
:meth:`~peer.session.SessionDriver.tie_break_key`). Dialers ask it when to
dial a remote again (:meth:`SessionRegistry.follow_duplicates`). Everything
here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from peer.errors import ErrorCode
from peer.identity import format_peer_id
from peer.protocol import LocalInfo
from peer.session import Refusal, SessionDriver
from peer.store import ApplyResult
from peer.store_worker import StoreWorker
from peer.trust import TrustStore

__all__ = ["SessionRegistry"]

_log = logging.getLogger("crpeer.peer")
Spawn = Callable[[Coroutine[Any, Any, Any], str], object]


class SessionRegistry:
    """The Peer's sessions: :meth:`load` at start, then :meth:`track` each
    session, :meth:`admit` it after HELLO, :meth:`untrack` it when it ends."""

    def __init__(self, worker: StoreWorker, trust: TrustStore | None, spawn: Spawn) -> None:
        self._worker = worker
        self._trust = trust
        self._spawn = spawn
        self._drivers: set[SessionDriver] = set()
        """Every running session, admitted or not."""
        self._by_site: dict[bytes, SessionDriver] = {}
        self._admitted = asyncio.Event()
        """Set (and replaced) whenever a session is admitted into ``_by_site``."""
        self._dialed_by: set[bytes] = set()
        """The site ids of remotes that dialed this peer (since it started)."""
        self._site_owners: dict[bytes, str] = {}
        """Each site id a remote showed, and the peer id that showed it first
        (mirrors the store's ``crpeer_sites``)."""
        self.stopping = False
        """Set when the peer stops: :meth:`next_session` waits no more."""

    async def load(self) -> None:
        """Read the site owners the store recorded (at start)."""
        self._site_owners = await self._worker.run(self._worker.store.site_owners)

    @property
    def sessions(self) -> list[SessionDriver]:
        """Live sessions past their handshake (admitted)."""
        return list(self._by_site.values())

    def track(self, driver: SessionDriver) -> None:
        self._drivers.add(driver)

    def untrack(self, driver: SessionDriver) -> None:
        """Forget ``driver`` (its run returned)."""
        self._drivers.discard(driver)
        if driver.remote is not None and self._by_site.get(driver.remote.site_id) is driver:
            del self._by_site[driver.remote.site_id]

    # -- admission -------------------------------------------------------------------

    async def admit(self, driver: SessionDriver) -> Refusal | None:
        """Keep each site id to the peer id that showed it first, and one
        session per remote site (both ends keep the same one): None to go on,
        or why to refuse ``driver``. A session it replaces is closed."""
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
            _log.debug("session %s replaces a duplicate it wins against", driver.address)
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
        trust = self._trust
        freed = owner is not None and trust is not None and not trust.is_trusted(owner)
        if owner is None or (freed and owner != peer_id):
            # Recorded here before the store call, so that a HELLO racing this
            # one with the same site id already sees it taken.
            self._site_owners[site] = peer_id
            store = self._worker.store
            if self._worker.page_open:
                _log.info("admission of peer %s waits for a page another session has open", peer_id)
            try:
                # A write: it waits for a page another session has open (on
                # the store thread it would wait for the page's write lock).
                owner = await self._worker.app_call(
                    lambda: store.claim_site(site, peer_id, replacing=owner)
                )
            except BaseException:
                if self._site_owners.get(site) == peer_id:
                    del self._site_owners[site]
                raise
            self._site_owners[site] = owner
        if owner == peer_id:
            return None
        _log.warning(
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

    # -- duplicates ---------------------------------------------------------------------

    def wins(self, site: bytes) -> bool:
        """Whether the remote ``site`` dials us and its dial beats ours (its
        site id is the smaller, see :meth:`SessionDriver.tie_break_key`)."""
        return site < self._worker.store.site_id and site in self._dialed_by

    def live_session(self, site: bytes) -> SessionDriver | None:
        driver = self._by_site.get(site)
        return None if driver is None or driver.done.is_set() else driver

    async def follow_duplicates(
        self, site: bytes, grace: float, following: Callable[[], None] | None = None
    ) -> None:
        """Wait while another session serves the peer ``site``; return when it
        is our turn to dial it. ``following()`` is called as it starts
        waiting on each such session.

        When that session is the remote's dial and the remote's dial beats
        ours (:meth:`wins`), the remote dials again once it ends: give it
        ``grace`` seconds to come first, and follow its new session, so that
        our dial does not meet it in a round of refused duplicates.
        """
        other = self.live_session(site)
        while other is not None:
            if following is not None:
                following()
            await other.done.wait()
            if other.outbound or not self.wins(site):
                return
            other = await self.next_session(site, grace)

    async def next_session(self, site: bytes, within: float) -> SessionDriver | None:
        """The session admitted with ``site``, waiting up to ``within`` seconds
        for one; None if none came (or the peer stops)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (driver := self.live_session(site)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.stopping:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admitted.wait(), remaining)
        return driver

    # -- all sessions ----------------------------------------------------------------------

    def wake_all(self) -> None:
        """Something was written locally: every session reads and sends it."""
        for driver in self._drivers:
            driver.wake()

    def relay(self, source: SessionDriver, result: ApplyResult) -> None:
        """Remote changes from ``source`` landed: the other sessions announce
        the new cursor and relay them."""
        if result.merged or result.held:
            for driver in self._drivers:
                if driver is not source:
                    driver.announce(result.cursor)
                    driver.wake()

    def close_stale(self, local: LocalInfo) -> int:
        """Close (cleanly) every session that announced another schema than
        ``local``; return how many, so that they reconnect announcing it."""
        stale = [d for d in self._drivers if d.session.local != local]
        for driver in stale:
            self._spawn(driver.close(), "crpeer-schema-changed")
        return len(stale)

    def cut_peer(self, peer_id: str) -> None:
        """Close every live session with ``peer_id`` (it was removed from trust)."""
        for driver in list(self._drivers):
            if driver.peer_id == peer_id:
                _log.warning(
                    "peer %s is no longer trusted: closing its session", format_peer_id(peer_id)
                )
                self._spawn(driver.close(ErrorCode.UNTRUSTED, "no longer trusted"), "crpeer-cut")

    async def close_all(self) -> None:
        """Close every session (the peer stops)."""
        self.stopping = True
        for driver in list(self._drivers):
            await driver.close(ErrorCode.SHUTDOWN)
