"""Counting a listener's unauthenticated connections (see ``PreAuthLimits``).

A listener asks :meth:`Admission.admit` for each connection it accepts and
closes the connection at once when it gets None. The :class:`Ticket` it gets
otherwise is released when the connection's owner authenticates the remote
or the connection ends, whichever comes first.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter

from transports.base import PreAuthLimits

__all__ = ["Admission", "Ticket", "remote_host"]


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
    not one per refused connection (a flood must not flood the log).
    """

    def __init__(self, limits: PreAuthLimits, log: logging.Logger, listener: str) -> None:
        self.limits = limits
        self._log = log
        self._listener = listener
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
                    self._listener,
                    self._total,
                    self._by_host[host],
                    host,
                )
            self._refused += 1
            return None
        if self._refused:
            self._log.info("%s: admitting again after %d refused", self._listener, self._refused)
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
