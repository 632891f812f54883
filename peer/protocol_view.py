"""The read-only side of a :class:`~peer.protocol.SyncSession`: its state
and everything the driver reads from it, as properties.

:class:`SessionView` holds the fields;
:class:`~peer.protocol_receive.SessionReceiver` adds the receiving
transitions and :class:`~peer.protocol.SyncSession` the sending ones, the
only code that changes them. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from peer.changes import ROW_OVERHEAD, Cursor
from peer.errors import LocalProtocolError
from peer.messages import (
    FRAME_OVERHEAD,
    PARTS_SINCE,
    SNAPSHOT_SINCE,
    V2_MAX_FRAME_BYTES,
    Hello,
    LimitsMessage,
)
from peer.protocol_config import Limits, LocalInfo
from peer.protocol_state import SyncState
from peer.protocol_transfer import IncomingValue, Outbox, SnapshotIn, SnapshotOut

__all__ = ["SessionView"]


class SessionView:
    """The state of one session, read-only from outside (see :class:`~peer.protocol.SyncSession`).

    ``version`` is the protocol version assumed until the remote's HELLO.
    """

    def __init__(self, local: LocalInfo, limits: Limits, nonce: int, version: int) -> None:
        self.local = local
        self.limits = limits
        self.nonce = nonce
        self._state = SyncState.HANDSHAKE
        self.remote: Hello | None = None
        """The remote's HELLO, once received."""
        self.remote_limits: LimitsMessage | None = None
        """The remote's LIMITS (protocol 3), once received."""
        self.version = version
        """The protocol version in use: the highest both sides speak (after HELLO)."""
        self._remote_cursor: Cursor = {}
        self._announced: Cursor = {}
        self._credit = 0
        self._remote_credit = limits.window
        """Frames the remote may still send before we acknowledge one (frame_applied)."""
        self._eose_sent = self._eose_received = False
        self._page_rows: int | None = None
        """Rows of the page being received (None: no page open)."""
        self._sending_page = False
        """A page is being sent: a CHANGES frame without ``final`` went out."""
        self._received_frames = 0
        self._outbox = Outbox()
        self._hello_sent = False
        self._value = IncomingValue(limits.max_value_bytes)
        self._snapshot_in, self._snapshot_out = SnapshotIn(), SnapshotOut()
        self._remote_fresh = False
        """The remote's first CURSOR was empty (it holds nothing yet)."""
        self._changes_sent = self._changes_received = False

    @property
    def state(self) -> SyncState:
        return self._state

    @property
    def closed(self) -> bool:
        """Either side ended the session (no frame is received or sent after)."""
        return self._state is SyncState.CLOSED

    @property
    def remote_cursor(self) -> Mapping[bytes, int]:
        """What the remote is known to hold (a read-only view): its cursor,
        plus what went either way since, plus what it announced with HAVE."""
        return MappingProxyType(self._remote_cursor)

    @property
    def announced(self) -> Mapping[bytes, int]:
        """What the remote knows we hold (a read-only view): our cursor, plus
        what went either way since, plus what we announced with HAVE."""
        return MappingProxyType(self._announced)

    @property
    def credit(self) -> int:
        """CHANGES frames we may still send before the remote grants more."""
        return self._credit

    @property
    def eose_sent(self) -> bool:
        return self._eose_sent

    @property
    def eose_received(self) -> bool:
        return self._eose_received

    @property
    def page_open(self) -> bool:
        """A page is being received: a CHANGES frame without ``final`` came,
        the final one has not (it stays open if the session closes first)."""
        return self._page_rows is not None

    @property
    def page_rows(self) -> int:
        """Change rows received in the open page (0 when none is open)."""
        return self._page_rows or 0

    @property
    def snapshot_offered(self) -> int:
        """The snapshot bytes this side said it takes (0: none)."""
        return self._snapshot_in.offered

    @property
    def pending_value_bytes(self) -> int:
        """Bytes of a value received in parts and not yet used (at most
        ``limits.max_value_bytes``; dropped when the session closes)."""
        return self._value.pending_bytes

    @property
    def snapshot_wanted(self) -> int:
        """The largest snapshot the remote takes now, in bytes, or 0.

        Nonzero only in SYNCING with protocol 4, when the remote asked for
        one, showed the same schema (version and fingerprint) as ours and an
        empty cursor, and nothing has been sent to it yet.
        """
        remote, limits = self.remote, self.remote_limits
        if (
            self._state is not SyncState.SYNCING
            or self.version < SNAPSHOT_SINCE
            or remote is None
            or limits is None
            or self._changes_sent
            or self._snapshot_out.started
            or remote.schema_fingerprint != self.local.schema_fingerprint
            or remote.schema_version != self.local.schema_version
            or not self._remote_fresh
        ):
            return 0
        return limits.snapshot_bytes

    @property
    def max_send_rows(self) -> int:
        """Most rows one CHANGES frame to this remote may carry."""
        if self.remote is None:
            raise LocalProtocolError("no remote hello yet")
        return min(self.remote.max_batch_rows, self.limits.max_batch_rows)

    @property
    def frame_limit(self) -> int:
        """The largest frame this side sends: the smaller of both sides' limits
        (a remote without LIMITS is taken to accept 8 MiB)."""
        remote = self.remote_limits.max_frame_bytes if self.remote_limits else V2_MAX_FRAME_BYTES
        return min(self.limits.max_frame_bytes, remote)

    @property
    def max_send_bytes(self) -> int:
        """Bytes of rows (by :func:`peer.changes.change_size`) one CHANGES
        frame to this remote may carry; a single larger row goes alone."""
        return self.frame_limit - FRAME_OVERHEAD

    @property
    def max_send_value(self) -> int:
        """The largest value this remote takes, in bytes: its ``max_value_bytes``
        (protocol 3, where a value larger than a frame travels in PART
        frames), or about what fits in one frame (older protocols)."""
        if self.version < PARTS_SINCE:
            return self.max_send_bytes - ROW_OVERHEAD
        if self.remote_limits is None:
            raise LocalProtocolError("no remote limits yet")
        return self.remote_limits.max_value_bytes
