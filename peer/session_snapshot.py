"""What a session knows, as plain data: :class:`SessionStats` (its
counters) and :class:`SessionSnapshot` (:meth:`SessionDriver.snapshot
<peer.session.SessionDriver.snapshot>`), which status, metrics and tests read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from peer import events
from peer.errors import CrpeerError

__all__ = ["SessionSnapshot", "SessionState", "SessionStats"]

SessionState = Literal["catching_up", "live"]
"""``live`` once EOSE went both ways; ``catching_up`` before."""


@dataclass(slots=True)
class SessionStats:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rows_sent: int = 0
    rows_received: int = 0
    table_rows_received: int = 0
    """Rows of the app's tables the received changes touch (distinct table and
    primary key per frame: a row whose changes span two frames counts twice)."""


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What one session knows at one moment (:meth:`SessionDriver.snapshot`):
    plain data, copied, safe to keep."""

    remote: events.RemotePeer | None
    """The remote, once its HELLO passed admission (None before, or when refused)."""
    site_id: bytes | None
    """The site id the remote's HELLO showed (None before it arrived)."""
    peer_id: str | None
    address: str
    outbound: bool
    remote_cursor: Mapping[bytes, int]
    """What the remote is known to hold (see :attr:`SyncSession.remote_cursor`)."""
    eose_sent: bool
    eose_received: bool
    """The remote's EOSE arrived and every page before it is applied."""
    eose_at: float | None
    """Wall-clock time of the remote's EOSE."""
    stats: SessionStats
    error: CrpeerError | None
    duplicate: bool
    closed: bool
    """The sync session ended (either side sent ERROR or CLOSE)."""

    @property
    def state(self) -> SessionState:
        """``live`` once EOSE went both ways; ``catching_up`` before."""
        return "live" if self.eose_sent and self.eose_received else "catching_up"
