"""Events a Peer reports to the app.

Subscribe with :meth:`peer.peer.Peer.subscribe` (a callback, run on the
peer's event loop; it must not block) or iterate :meth:`Peer.events` (an async
iterator). The blocking facade delivers the same events to any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peer.errors import CrpeerError, ValueTooLargeError
from peer.store import Cursor

__all__ = [
    "Changed",
    "Connected",
    "Disconnected",
    "Eose",
    "Event",
    "EventCallback",
    "Outdated",
    "Progress",
    "RemotePeer",
    "SessionFailed",
    "Synced",
    "ValueTooLarge",
]


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """The other end of a session."""

    site_id: bytes
    name: str
    address: str
    transport: str
    inbound: bool
    peer_id: str | None = None
    """The authenticated peer id (TLS), or None on a plaintext channel."""


@dataclass(frozen=True, slots=True)
class Connected:
    """A session completed its handshake."""

    remote: RemotePeer


@dataclass(frozen=True, slots=True)
class Synced:
    """The remote sent its cursor; catch-up towards it begins."""

    remote: RemotePeer
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class Eose:
    """The remote sent everything it had stored; what follows is live."""

    remote: RemotePeer


@dataclass(frozen=True, slots=True)
class Progress:
    """Catch-up progress from one remote, after each page until its EOSE."""

    remote: RemotePeer
    rows_received: int
    rows_expected: int
    """The remote's estimate (an upper bound); at least ``rows_received``."""
    bytes_received: int
    elapsed: float
    """Seconds since the remote announced its backlog."""

    @property
    def rate(self) -> float:
        """Change rows per second so far."""
        return self.rows_received / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def remaining(self) -> float | None:
        """Estimated seconds left, or None before the rate is known."""
        rate = self.rate
        return (self.rows_expected - self.rows_received) / rate if rate > 0 else None


@dataclass(frozen=True, slots=True)
class Changed:
    """Remote changes landed in the database (refresh views of ``tables``)."""

    remote: RemotePeer
    tables: frozenset[str]
    rows: int


@dataclass(frozen=True, slots=True)
class Outdated:
    """The remote's schema is newer: changes for it are held until a migration."""

    remote: RemotePeer
    local_schema_version: int
    remote_schema_version: int
    held_rows: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A session ended; ``error`` says why when it was not a clean close."""

    remote: RemotePeer
    error: CrpeerError | None


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """A session failed (bad frame, store error, transport error).

    The peer and its other sessions keep running.
    """

    remote: RemotePeer | None
    address: str
    error: CrpeerError


@dataclass(frozen=True, slots=True)
class ValueTooLarge:
    """A transaction cannot be sent to ``remote``: it holds a value larger
    than the remote accepts (``error`` names the origin, the version, the
    size and the limit).

    Each origin's changes go in order, whole transactions, so that origin's
    changes stop there for the rest of the session; other origins go on. A
    new session tries again (for example once the remote raised its
    ``max_value_bytes``, or the value was overwritten with a smaller one).
    """

    remote: RemotePeer
    error: ValueTooLargeError


Event = (
    Connected
    | Synced
    | Progress
    | Eose
    | Changed
    | Outdated
    | Disconnected
    | SessionFailed
    | ValueTooLarge
)
EventCallback = Callable[[Event], None]
