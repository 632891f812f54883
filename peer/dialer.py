"""Dialing: the addresses a Peer keeps dialing, and peers found on the LAN.

A :class:`Dialer` dials with the one retry policy (:class:`~peer.retry.Backoff`:
exponential backoff with full jitter, through tenacity), runs a session on
each channel it gets (``run_channel``), and after a session ends waits as
the :class:`~peer.session_registry.SessionRegistry` says before dialing
again. It reports each address's state (:attr:`Dialer.dials`, DialState
events). Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
)

from peer import events as ev
from peer.errors import ConfigError, ConnectError, CrpeerError
from peer.retry import Backoff
from peer.session import SessionDriver
from peer.session_registry import SessionRegistry
from transports.base import Channel, SupportsDiscovery, Transport

__all__ = ["Dialer", "transport_for"]

_log = logging.getLogger("crpeer.peer")
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class RunChannel(Protocol):
    def __call__(
        self,
        channel: Channel,
        *,
        outbound: bool,
        refused: Callable[[CrpeerError], None] | None = None,
    ) -> Awaitable[SessionDriver | None]: ...


def transport_for(transports: Sequence[Transport], address: str) -> Transport:
    """The transport that dials ``address``; ConfigError if none does."""
    scheme = address.split("://", 1)[0] if "://" in address else ""
    for transport in transports:
        if scheme == transport.scheme or (
            scheme in {"wss", "https"} and transport.scheme + "s" == scheme
        ):
            return transport
    raise ConfigError(f"no transport for {address!r} (have: {[t.scheme for t in transports]})")


class Dialer:
    """Dials for one Peer. ``backoff`` may be replaced at any time (the next
    wait uses it); ``redial_grace`` is how long to wait for a remote whose
    dial wins to dial again (see :meth:`SessionRegistry.follow_duplicates`)."""

    def __init__(
        self,
        transports: Sequence[Transport],
        registry: SessionRegistry,
        run_channel: RunChannel,
        emit: Callable[[ev.Event], None],
        spawn: Spawn,
        *,
        backoff: Backoff,
        redial_grace: float,
        random_source: random.Random,
    ) -> None:
        self._transports = transports
        self._registry = registry
        self._run_channel = run_channel
        self._emit = emit
        self._spawn = spawn
        self.backoff = backoff
        self._redial_grace = redial_grace
        self._random = random_source
        self.dials: dict[str, ev.DialState] = {}
        """The last state of each dialed address (see :class:`~peer.events.DialState`)."""

    def connect(self, address: str) -> None:
        """Dial ``address`` and keep redialing it until the peer stops (a
        task); ConfigError at once if no transport handles it."""
        transport_for(self._transports, address)
        self._spawn(self._dial_forever(address), f"crpeer-dial {address}")

    async def dial(
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

    def _report(self, state: ev.DialState) -> None:
        """Keep ``state`` in :attr:`dials`, log it (INFO: the event says it) and emit it."""
        self.dials[state.address] = state
        match state.state:
            case "backing_off":
                wait = max(0.0, (state.retry_at or 0.0) - time.time())
                _log.info(
                    "cannot reach %s (attempt %d): %s; next attempt in %.1f s",
                    state.address,
                    state.attempt,
                    state.error,
                    wait,
                )
            case "failed":
                _log.info("not dialing %s: %s", state.address, state.error)
            case _:
                _log.debug("%s: %s (attempt %d)", state.address, state.state, state.attempt)
        self._emit(state)

    async def _dial_forever(self, address: str) -> None:
        """Dial, run the session, repeat, until the peer stops; report each state."""
        transport = transport_for(self._transports, address)
        attempts = 0  # of the current run of attempts (restarts after each connection)
        while not self._registry.stopping:
            try:
                channel = await self.dial(transport, address, None, self._report)
            except ConfigError as exc:
                self._report(ev.DialState(address, "failed", attempts + 1, exc))
                return
            attempts = self.dials[address].attempt if address in self.dials else 1
            self._report(ev.DialState(address, "connected", attempts))
            refusals: list[CrpeerError] = []
            driver = await self._run_channel(channel, outbound=True, refused=refusals.append)
            if self._registry.stopping:
                return
            error = refusals[-1] if refusals else (driver.error if driver else None)

            def pausing(pause: float, error: CrpeerError | None = error, n: int = attempts) -> None:
                self._report(ev.DialState(address, "backing_off", n, error, time.time() + pause))

            def following(n: int = attempts) -> None:
                self._report(ev.DialState(address, "following", n))

            await self._session_ended(driver, pausing, following)

    async def _session_ended(
        self,
        driver: SessionDriver | None,
        pausing: Callable[[float], None] | None = None,
        following: Callable[[], None] | None = None,
    ) -> None:
        """Wait before redialing: while another session serves the same peer
        (see :meth:`SessionRegistry.follow_duplicates`) or the remote's dial
        is expected, or a jittered pause after a failure. ``following()``
        hears each wait of the first kind as it starts, ``pausing`` the
        length of a pause."""
        registry = self._registry
        remote = driver.session.remote if driver else None
        site = remote.site_id if remote is not None else None
        if site is None or registry.live_session(site) is None:
            if (
                driver is not None
                and site is not None
                and registry.wins(site)
                and (driver.duplicate or driver.eose_received.is_set())
            ):
                # The remote's dial is on its way (refused for it, its
                # handshake here still under way), or comes soon (a cut).
                if following is not None:
                    following()
                await registry.next_session(site, self._redial_grace)
            elif driver is None or not driver.eose_received.is_set():
                pause = self._random.uniform(0, self.backoff.maximum)
                if pausing is not None:
                    pausing(pause)
                await asyncio.sleep(pause)
        if site is not None:
            await registry.follow_duplicates(site, self._redial_grace, following)

    # -- LAN discovery -----------------------------------------------------------------

    def discovery_handler(self, transport: SupportsDiscovery) -> Callable[[str, str], None]:
        """The ``found(address, peer_id)`` handler for ``transport``: dial each
        peer found, one dialing task per peer id at a time."""
        dialing: dict[str, asyncio.Task[None]] = {}
        # The last address each peer was found at: a peer that moved to
        # another network is redialed there, not at the address it left.
        addresses: dict[str, str] = {}

        def found(address: str, peer_id: str) -> None:
            addresses[peer_id] = address
            task = dialing.get(peer_id)
            if self._registry.stopping or (task is not None and not task.done()):
                return
            dialing[peer_id] = self._spawn(
                self._dial_discovered(transport, addresses, peer_id), f"crpeer-lan {peer_id}"
            )

        return found

    async def _dial_discovered(
        self, discovery: SupportsDiscovery, addresses: dict[str, str], peer_id: str
    ) -> None:
        """Dial a peer found on the LAN, at its latest address in ``addresses``,
        for as long as it stays advertised."""
        while not self._registry.stopping and discovery.is_discovered(peer_id):
            address = addresses[peer_id]
            transport = transport_for(self._transports, address)
            try:
                channel = await self.dial(transport, address, attempts=6)
            except ConnectError as exc:
                if addresses[peer_id] != address:
                    continue  # it moved while the old address was being dialed
                _log.info("giving up on %s (%s) for now: %s", address, peer_id, exc)
                return
            driver = await self._run_channel(channel, outbound=True)
            await self._session_ended(driver)
