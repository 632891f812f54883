"""The interface between the plan runner and a way of running peers.

:class:`ClusterDriver` is what :mod:`peer.testing.runner` needs from a mode:
the in-process driver (:mod:`peer.testing.inproc`) and the multi-process one
(:mod:`peer.testing.process`) both implement it, so the plan, the oracle,
the lag samples and the verdict are computed by one piece of code.

Peers are numbered ``0 .. N-1`` and named ``p0 .. p{N-1}``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

from peer.errors import CrpeerError
from peer.store import Change, Cursor, SqlValue
from peer.testing.plan import Plan
from transports.memory import LinkFaults

__all__ = ["ClusterDriver", "HarnessError", "SessionCounts"]


class HarnessError(CrpeerError):
    """The harness itself failed (a node did not start or answer, a step
    could not run); the run has no verdict."""


class SessionCounts:
    """Sessions opened (handshake done), ended, and ended by a failure; and
    snapshots installed (a fresh peer bootstrapped) or refused."""

    def __init__(self) -> None:
        self.opened = self.ended = self.failed = 0
        self.bootstrapped = self.snapshots_refused = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "opened": self.opened,
            "ended": self.ended,
            "failed": self.failed,
            "bootstrapped": self.bootstrapped,
            "snapshots_refused": self.snapshots_refused,
        }


class ClusterDriver(abc.ABC):
    """Runs N peers. Call :meth:`start` once, then any other method, then
    :meth:`close` exactly once (also after a failure: it must leave no
    task, thread or process behind). Methods about one peer raise
    HarnessError when it is down, unless they say otherwise."""

    mode: str

    @abc.abstractmethod
    async def start(self, plan: Plan) -> None:
        """Create every database, start every peer and dial per ``plan.edges``."""

    @abc.abstractmethod
    async def write(self, peer: int, sql: str, params: Mapping[str, SqlValue]) -> list[Change]:
        """Run one write on ``peer``; return the changes it committed
        (see :func:`peer.testing.database.capture_write`)."""

    @abc.abstractmethod
    async def migrate(self, peer: int, version: int, own_connection: bool) -> None:
        """Migrate ``peer`` to schema ``version`` (see
        :class:`~peer.testing.migrations.Migrate`); a peer that is down is
        migrated on its database file. Never raises for a down peer."""

    @abc.abstractmethod
    async def kill(self, peer: int) -> None:
        """Make ``peer`` die without a goodbye to anyone."""

    @abc.abstractmethod
    async def restart(self, peer: int) -> None:
        """Start a killed ``peer`` again from its database file."""

    @abc.abstractmethod
    async def set_blocked(self, pairs: set[frozenset[int]]) -> None:
        """Partitions: the peers of each pair cannot talk; all others can."""

    @abc.abstractmethod
    async def set_link_faults(self, faults: Mapping[tuple[int, int], LinkFaults]) -> None:
        """Faults on the links between pairs (both directions); others are clean."""

    @abc.abstractmethod
    async def set_clock_rate(self, peer: int, rate: float) -> None:
        """``peer``'s timers run at ``rate`` times real speed: its reconnect
        backoff delays become ``nominal / rate`` real seconds."""

    @abc.abstractmethod
    async def vector(self, peer: int) -> tuple[bytes, Cursor] | None:
        """``(site_id, cursor)`` of ``peer``, or None while it is down."""

    @abc.abstractmethod
    async def digests(self, peer: int) -> dict[str, str] | None:
        """Per-table digests of ``peer``, or None while it is down."""

    @abc.abstractmethod
    def traffic(self) -> dict[str, int]:
        """Counters of what moved; always has ``bytes_sent``. Complete once
        :meth:`close` returned."""

    @property
    @abc.abstractmethod
    def sessions(self) -> SessionCounts:
        """Session counts over every incarnation of every peer; complete
        once :meth:`close` returned."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every peer and release everything. Idempotent."""
