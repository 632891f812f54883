"""The states of a :class:`~peer.protocol.SyncSession` and its transition
table: which received message each state accepts. Pure data; the session
checks every received frame against it."""

from __future__ import annotations

import enum

from peer.messages import (
    HAVE_SINCE,
    PARTS_SINCE,
    SNAPSHOT_SINCE,
    Backlog,
    Changes,
    Close,
    Credit,
    CursorMessage,
    EoseMessage,
    Error,
    Have,
    Hello,
    LimitsMessage,
    MessageType,
    Part,
    Ping,
    Pong,
    SnapshotEnd,
    SnapshotPart,
)

__all__ = ["ALLOWED", "ALLOWED_IN_PAGE", "MESSAGE_TYPE", "SINCE", "SyncState"]


class SyncState(enum.Enum):
    """Where a :class:`SyncSession` stands (both directions)."""

    HANDSHAKE = "handshake"
    """Our hello is sent; waiting for theirs."""
    READY = "ready"
    """Hellos exchanged; waiting for their cursor."""
    SYNCING = "syncing"
    """Cursors exchanged; changes flow both ways (catch-up, then live)."""
    CLOSED = "closed"


_ALWAYS = {MessageType.PING, MessageType.PONG, MessageType.ERROR, MessageType.CLOSE}
ALLOWED: dict[SyncState, frozenset[MessageType]] = {
    SyncState.HANDSHAKE: frozenset({MessageType.HELLO, *_ALWAYS}),
    SyncState.READY: frozenset({MessageType.LIMITS, MessageType.CURSOR, *_ALWAYS}),
    SyncState.SYNCING: frozenset(
        {
            MessageType.CHANGES,
            MessageType.PART,
            MessageType.EOSE,
            MessageType.CREDIT,
            MessageType.BACKLOG,
            MessageType.HAVE,
            MessageType.SNAPSHOT_PART,
            MessageType.SNAPSHOT_END,
            MessageType.CURSOR,
            *_ALWAYS,
        }
    ),
    SyncState.CLOSED: frozenset(),
}
"""Which received message types each state accepts; all others fail the session.

HAVE only once both sides speak protocol 2, LIMITS and PART only with 3 (see
:data:`SINCE` and :attr:`SyncSession.version`); with 3, LIMITS must come
(once) before CURSOR. SNAPSHOT_PART and SNAPSHOT_END only with 4, only to a
side that asked for a snapshot and before any CHANGES; a second CURSOR in
SYNCING only as the answer to a SNAPSHOT_END this side sent. Inside a page
(see :data:`ALLOWED_IN_PAGE`) SYNCING accepts less.
"""
ALLOWED_IN_PAGE: frozenset[MessageType] = frozenset(
    {
        MessageType.CHANGES,
        MessageType.PART,
        MessageType.CREDIT,
        MessageType.HAVE,
        MessageType.CURSOR,
        *_ALWAYS,
    }
)
"""What SYNCING accepts while a page is open (:attr:`SyncSession.page_open`:
from a CHANGES frame without ``final`` until the one with it): the rest of
the page, and what the remote's other direction sends meanwhile (credit,
HAVE, the answer to our snapshot, pings, its close). EOSE, BACKLOG and
snapshot frames fail the session."""
SINCE: dict[MessageType, int] = {
    MessageType.HAVE: HAVE_SINCE,
    MessageType.LIMITS: PARTS_SINCE,
    MessageType.PART: PARTS_SINCE,
    MessageType.SNAPSHOT_PART: SNAPSHOT_SINCE,
    MessageType.SNAPSHOT_END: SNAPSHOT_SINCE,
}
"""The first protocol version that has each message type (others: every version)."""


MESSAGE_TYPE: dict[type, MessageType] = {
    Hello: MessageType.HELLO,
    CursorMessage: MessageType.CURSOR,
    Changes: MessageType.CHANGES,
    EoseMessage: MessageType.EOSE,
    Credit: MessageType.CREDIT,
    Ping: MessageType.PING,
    Pong: MessageType.PONG,
    Error: MessageType.ERROR,
    Close: MessageType.CLOSE,
    Backlog: MessageType.BACKLOG,
    Have: MessageType.HAVE,
    LimitsMessage: MessageType.LIMITS,
    Part: MessageType.PART,
    SnapshotPart: MessageType.SNAPSHOT_PART,
    SnapshotEnd: MessageType.SNAPSHOT_END,
}
"""The wire type of each message class."""
