"""Noticing that this host's addresses changed (a laptop moved to another network).

:class:`AddressWatch` polls a source of addresses every ``interval`` seconds
and awaits ``on_change(addresses)`` whenever their *set* differs from the last
one seen. It knows nothing of mDNS or sockets: :class:`~transports.mdns.MdnsDiscovery`
gives it :func:`~transports.mdns.local_interfaces` (through its
``advertised_addresses`` rules) and re-advertises on each change.

Lifecycle: ``start(baseline)`` on the event loop, then ``await stop()``
(idempotent). :meth:`AddressWatch.check` is the change detection alone, for
callers and tests that drive the polling themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from peer.errors import ConfigError, CrpeerError

__all__ = ["DEFAULT_WATCH_INTERVAL", "AddressWatch"]

DEFAULT_WATCH_INTERVAL = 3.0
"""Seconds between two looks at the host's addresses."""

_log = logging.getLogger(__name__)


class AddressWatch:
    """Poll ``source()`` and report each change of its set of addresses.

    ``source`` returns the current addresses (order is kept in what is
    reported, but only the set decides whether something changed); it may
    raise OSError or a CrpeerError, which is logged and skipped (the last
    set stays).
    ``on_change`` is awaited with the new list on the event loop, one change
    at a time; an exception it raises is logged and the watch goes on.
    Raises ConfigError for an ``interval`` that is not a positive number.
    """

    def __init__(
        self,
        source: Callable[[], Sequence[str]],
        on_change: Callable[[list[str]], Awaitable[None]],
        interval: float = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        if not interval > 0:
            raise ConfigError(f"address watch interval must be positive, not {interval!r}")
        self.interval = interval
        self._source = source
        self._on_change = on_change
        self._last: frozenset[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> list[str] | None:
        """Read the source once: its addresses if their set changed, else None.

        The first call (unless ``start`` set a baseline) only records the set
        and returns None. A source that raises OSError or a CrpeerError
        counts as no change.
        """
        try:
            addresses = list(self._source())
        except (OSError, CrpeerError) as exc:
            _log.debug("cannot read the local addresses: %r", exc)
            return None
        current = frozenset(addresses)
        previous, self._last = self._last, current
        if previous is None or previous == current:
            return None
        return addresses

    def start(self, baseline: Sequence[str] | None = None) -> None:
        """Begin polling on the running loop; ``baseline`` is the set already
        acted upon (default: the source's set now). Raises ConfigError when
        already started."""
        if self._task is not None:
            raise ConfigError("AddressWatch.start() may be called only once")
        if baseline is not None:
            self._last = frozenset(baseline)
        else:
            self.check()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="crpeer-netwatch")

    async def stop(self) -> None:
        """Stop polling (waits for a change being handled to be cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            changed = self.check()
            if changed is None:
                continue
            _log.info("local addresses changed: %s", ", ".join(changed) or "none")
            try:
                await self._on_change(changed)
            except Exception:
                _log.exception("handling the address change failed")
