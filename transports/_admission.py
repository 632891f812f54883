"""Counting a listener's unauthenticated connections (see ``PreAuthLimits``).

A listener asks :meth:`Admission.admit` for each connection it accepts and
closes the connection at once when it gets None. The :class:`Ticket` it gets
otherwise is released when the connection's owner authenticates the remote
or the connection ends, whichever comes first.

Every listener also calls :func:`note_accepted` for each connection it
accepts, before anything else: see :class:`Reclaimer` for why.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import ipaddress
import logging
import weakref
from collections import Counter
from collections.abc import Callable

from transports.base import PreAuthLimits

__all__ = ["Admission", "Reclaimer", "Ticket", "note_accepted", "reclaimer", "remote_host"]


class Ticket:
    """One unauthenticated connection's place; :meth:`release` is idempotent."""

    __slots__ = ("_admission", "_host")

    def __init__(self, admission: Admission, host: str) -> None:
        self._admission: Admission | None = admission
        self._host = host

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self._host)
            self._admission = None


class Admission:
    """Unauthenticated connections of one listener, in total and per remote host.

    ``log`` gets one warning when refusals start and one line when they stop,
    not one per refused connection (a flood must not flood the log); lines
    name the listener by :attr:`listener` (its address, once it listens).
    """

    def __init__(self, limits: PreAuthLimits, log: logging.Logger, listener: str) -> None:
        self.limits = limits
        self.listener = listener
        self._log = log
        self._by_host: Counter[str] = Counter()
        self._total = 0
        self._refused = 0
        """Refused since the last time a connection was admitted."""

    @property
    def pending(self) -> int:
        """Unauthenticated connections now."""
        return self._total

    def admit(self, host: str) -> Ticket | None:
        """A ticket for a new connection from ``host``, or None if it must be closed now."""
        if self._total >= self.limits.total or self._by_host[host] >= self.limits.per_address:
            if self._refused == 0:
                self._log.warning(
                    "%s: refusing unauthenticated connections (%d open, %d from %s)",
                    self.listener,
                    self._total,
                    self._by_host[host],
                    host,
                )
            self._refused += 1
            return None
        if self._refused:
            self._log.info("%s: admitting again after %d refused", self.listener, self._refused)
            self._refused = 0
        self._by_host[host] += 1
        self._total += 1
        return Ticket(self, host)

    def _release(self, host: str) -> None:
        self._total -= 1
        self._by_host[host] -= 1
        if self._by_host[host] <= 0:
            del self._by_host[host]


def remote_host(peername: object) -> str:
    """The IP address part of a socket's peer name (IPv4-mapped IPv6 as IPv4)."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        host = peername[0]
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)
    return str(peername)


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: give the heap's free pages back to the
    system (a no-op where the C library has none)."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is None:
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def run() -> None:
        trim(0)

    return run


class Reclaimer:
    """Gives back the memory of a burst of short-lived connections soon after it.

    A connection asyncio closes leaves reference cycles behind (its TLS
    protocol, transports and their 256 KiB read buffer among them) that only
    Python's full collection frees, and a node's heap is large and stable, so
    that collection comes late: after a flood of junk connections the process
    kept hundreds of them and grew round after round. So once ``burst``
    connections were accepted, a full collection runs ``delay`` seconds later
    and again every ``delay`` seconds while connections keep coming (one
    more after the last), each followed by giving the C heap's free pages
    back to the system.
    """

    def __init__(self, *, burst: int = 16, delay: float = 1.0) -> None:
        self.burst = burst
        self.delay = delay
        self.collections = 0
        self._accepted = 0
        self._pending: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()

    def note_accepted(self) -> None:
        """One more connection was accepted (call from the event loop)."""
        self._accepted += 1
        if self._accepted >= self.burst and self._pending is None:
            self._schedule()

    def _schedule(self) -> None:
        self._accepted = 0
        self._pending = asyncio.get_running_loop().call_later(self.delay, self._collect)

    def _collect(self) -> None:
        self._pending = None
        gc.collect()
        self._trim()
        self.collections += 1
        if self._accepted:  # the burst went on: collect once more after it
            self._schedule()


_reclaimers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Reclaimer] = (
    weakref.WeakKeyDictionary()
)


def reclaimer() -> Reclaimer:
    """The running event loop's :class:`Reclaimer` (one per loop: collections are process-wide)."""
    loop = asyncio.get_running_loop()
    found = _reclaimers.get(loop)
    if found is None:
        found = _reclaimers[loop] = Reclaimer()
    return found


def note_accepted() -> None:
    """Tell the running loop's :class:`Reclaimer` that a listener accepted a connection."""
    reclaimer().note_accepted()
