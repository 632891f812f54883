"""Events a Peer reports to the app.

Subscribe with :meth:`peer.peer.Peer.subscribe` (a callback, run on the
peer's event loop; it must not block) or iterate :meth:`Peer.events` (an async
iterator). The blocking facade delivers the same events to any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from peer.errors import CrpeerError, ValueTooLargeError
from peer.store import Cursor

__all__ = [
    "Bootstrapped",
    "Changed",
    "Connected",
    "DialState",
    "DialStateName",
    "Disconnected",
    "Eose",
    "Event",
    "EventCallback",
    "JoinSecretExpired",
    "Outdated",
    "Progress",
    "RemotePeer",
    "SessionFailed",
    "SnapshotRefused",
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
    table_rows: int = 0
    """Rows of the app's tables the received changes touch, so far (about: a
    row whose changes span two frames counts twice). ``rows_received`` counts
    changes: one per column value (cr-sqlite's unit)."""

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
    """Changes merged (one per column value written; cr-sqlite's unit)."""
    table_rows: int = 0
    """Rows of ``tables`` those changes touch."""


@dataclass(frozen=True, slots=True)
class Outdated:
    """The remote's schema is newer: changes for it are held until a migration."""

    remote: RemotePeer
    local_schema_version: int
    remote_schema_version: int
    held_rows: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A session that was :class:`Connected` ended; ``error`` says why when it
    was not a clean close (a session closed as a duplicate of another with
    the same peer is a clean close)."""

    remote: RemotePeer
    error: CrpeerError | None
    discarded: int = 0
    """Changes of a transaction still being received that were rolled back:
    only whole transactions are applied, so the remote sends them again."""


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """A session failed (bad frame, store error, transport error).

    The peer and its other sessions keep running.
    """

    remote: RemotePeer | None
    address: str
    error: CrpeerError


DialStateName = Literal["connecting", "connected", "following", "backing_off", "failed"]
"""Where a dial target stands (see :class:`DialState`)."""


@dataclass(frozen=True, slots=True)
class DialState:
    """An address the peer dials (``connect``) changed state.

    ``connecting``: attempt ``attempt`` is under way; ``connected``: the
    channel is up and its session runs; ``following``: no dial, because
    another session serves the same peer (the remote's own dial, which wins
    the tie-break, see :class:`~peer.peer.Peer`) or the remote is expected
    to dial again after a cut; reported again for each session followed, and
    the address is dialed again once none comes within ``redial_grace``;
    ``backing_off``: the last attempt or
    session failed with ``error`` and the next attempt starts at ``retry_at``
    (seconds since the epoch); ``failed``: the address cannot work
    (``error`` says why) and is not dialed again.
    """

    address: str
    state: DialStateName
    attempt: int
    error: CrpeerError | None = None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class JoinSecretExpired:
    """Too many wrong pairing proofs: the join secret was cleared, and no
    device can join until a new one is set."""

    failures: int
    last_address: str
    """Where the last failed attempt came from."""


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


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    """This fresh device installed a snapshot from ``remote`` in place of a
    catch-up (PROTOCOL.md, Snapshots). The Store the app holds is the same
    object, reopened on the new file: data read before is stale, and a
    connection of the app's own to the database file must be reopened. Changes
    written since the snapshot follow as usual (Changed events), then Eose.
    """

    remote: RemotePeer
    bytes: int
    """The snapshot's size."""
    cursor: Cursor
    """The version vector it held."""
    seconds: float
    """How long checking and installing it took."""


@dataclass(frozen=True, slots=True)
class SnapshotRefused:
    """A snapshot from ``remote`` failed its checks or could not be installed
    (``error`` says why). Nothing of it was kept; the session goes on with a
    catch-up of changes."""

    remote: RemotePeer
    error: CrpeerError


Event = (
    DialState
    | Connected
    | Synced
    | Progress
    | Eose
    | Changed
    | Outdated
    | Disconnected
    | SessionFailed
    | JoinSecretExpired
    | ValueTooLarge
    | Bootstrapped
    | SnapshotRefused
)
EventCallback = Callable[[Event], None]
