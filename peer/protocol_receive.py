"""The receiving half of a :class:`~peer.protocol.SyncSession`: frames in, events out.

:class:`SessionReceiver` checks each received frame against the transition
table (:data:`~peer.protocol_state.ALLOWED`,
:data:`~peer.protocol_state.ALLOWED_IN_PAGE`), moves the state and returns
the events; :class:`~peer.protocol.SyncSession` adds the sending half. Both
change the fields of :class:`~peer.protocol_view.SessionView`, which the
driver only reads. Pure: no I/O. Not thread-safe: one driver task calls it
at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from peer.changes import Change, Cursor
from peer.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from peer.messages import (
    PARTS_SINCE,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
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
    Message,
    Part,
    Ping,
    Pong,
    SnapshotEnd,
    SnapshotPart,
    decode,
)
from peer.protocol_events import (
    BacklogReceived,
    ChangesReceived,
    CreditReceived,
    CursorReceived,
    EoseReceived,
    Event,
    HelloReceived,
    PongReceived,
    RemoteClosed,
    SnapshotAnswered,
)
from peer.protocol_state import ALLOWED, ALLOWED_IN_PAGE, MESSAGE_TYPE, SINCE, SyncState
from peer.protocol_view import SessionView

__all__ = ["SessionReceiver", "advance"]


class SessionReceiver(SessionView):
    """A session's state with its receiving transitions (see :class:`~peer.protocol.SyncSession`).

    Its one entry point is :meth:`receive`.
    """

    def receive(self, data: bytes) -> list[Event]:
        """Process one received frame and return what happened.

        Raises RemoteProtocolError (and moves to CLOSED) if the frame is
        malformed, too large, out of sequence, or not allowed in this state
        (see :data:`ALLOWED`, :data:`ALLOWED_IN_PAGE`); LocalProtocolError
        once the session is closed.
        """
        if self.closed:
            raise LocalProtocolError("receive on a closed session")
        try:
            frame = decode(
                data,
                max_frame_bytes=self.limits.max_frame_bytes,
                max_batch_rows=self.limits.max_batch_rows,
                max_value_bytes=self.limits.max_value_bytes,
            )
            if frame.number != self._received_frames:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"frame {frame.number} arrived, expected {self._received_frames}",
                )
            self._received_frames += 1
            kind = MESSAGE_TYPE[type(frame.message)]
            allowed = ALLOWED_IN_PAGE if self.page_open else ALLOWED[self._state]
            if kind not in allowed or self.version < SINCE.get(kind, 0):
                where = "a page" if self.page_open else self._state.value
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, f"{kind.name} not allowed in {where}"
                )
            return self._handle(frame.message)
        except RemoteProtocolError:
            self._close()
            raise

    def _handle(self, message: Message) -> list[Event]:
        match message:
            case Hello():
                return [self._on_hello(message)]
            case LimitsMessage():
                if self.remote_limits is not None:
                    raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "second LIMITS")
                self.remote_limits = message
                return []
            case Part():
                self._value.add(message)
                return []
            case CursorMessage():
                return [self._on_cursor(message)]
            case SnapshotPart():
                part = self._snapshot_in.on_part(message, changes_received=self._changes_received)
                self._take_credit("snapshot part")
                return [part]
            case SnapshotEnd():
                return [self._snapshot_in.on_end(message)]
            case Changes():
                return self._on_changes(message)
            case EoseMessage():
                if self._eose_received:
                    raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "second EOSE")
                self._eose_received = True
                return [EoseReceived()]
            case Credit():
                self._credit += message.frames
                if self._credit > (self.remote.window if self.remote else 0):
                    raise RemoteProtocolError(ErrorCode.FLOW_CONTROL, "credit above the window")
                return [CreditReceived()]
            case Ping():
                self._outbox.queue(Pong(message.nonce))
                return []
            case Pong():
                return [PongReceived(message.nonce)]
            case Backlog():
                return [BacklogReceived(message.rows)]
            case Have():
                _advance_to(self._remote_cursor, message.cursor)
                return []
            case Error():
                self._close()
                return [RemoteClosed(message)]
            case Close():
                self._close()
                return [RemoteClosed(None)]
        raise AssertionError(f"unhandled {message!r}")  # pragma: no cover

    def _on_hello(self, hello: Hello) -> HelloReceived:
        if hello.protocol_min > PROTOCOL_VERSION or hello.protocol_max < PROTOCOL_MIN:
            raise RemoteProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"remote speaks {hello.protocol_min}..{hello.protocol_max}, "
                f"we speak {PROTOCOL_MIN}..{PROTOCOL_VERSION}",
            )
        self.version = min(PROTOCOL_VERSION, hello.protocol_max)
        if hello.site_id == self.local.site_id:
            raise RemoteProtocolError(ErrorCode.SELF_CONNECTION, "connected to ourselves")
        self.remote = hello
        self._credit = hello.window
        self._state = SyncState.READY
        return HelloReceived(hello, hello.schema_version > self.local.schema_version)

    def _on_cursor(self, message: CursorMessage) -> CursorReceived | SnapshotAnswered:
        if self._state is SyncState.SYNCING:
            if not self._snapshot_out.awaiting_answer:
                raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "second CURSOR")
            self._snapshot_out.awaiting_answer = False
            self._remote_cursor = dict(message.cursor)
            return SnapshotAnswered(dict(message.cursor))
        if self.version >= PARTS_SINCE and self.remote_limits is None:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "CURSOR before LIMITS")
        self._remote_cursor = dict(message.cursor)
        self._remote_fresh = not any(message.cursor.values())
        self._state = SyncState.SYNCING
        return CursorReceived(dict(message.cursor))

    def _take_credit(self, what: str) -> None:
        if self._remote_credit < 1:
            raise RemoteProtocolError(ErrorCode.FLOW_CONTROL, f"{what} sent without credit")
        self._remote_credit -= 1

    def _on_changes(self, message: Changes) -> list[Event]:
        self._take_credit("changes")
        if self._snapshot_in.under_way:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "CHANGES inside a snapshot")
        self._changes_received = True
        changes = message.changes
        if message.parted is not None or self._value.under_way:
            changes = self._value.place(message)
        advance(self._remote_cursor, changes)
        advance(self._announced, changes)
        self._page_rows = None if message.final else self.page_rows + len(changes)
        assert self.remote is not None
        schema = max(self.remote.schema_version, message.schema or 0)
        hold_for = schema if schema > self.local.schema_version else 0
        return [ChangesReceived(changes, message.final, schema, hold_for)]

    def _close(self) -> None:
        """Move to CLOSED (a value half received and an awaited snapshot answer go with it)."""
        self._state = SyncState.CLOSED
        self._value.drop()  # a value half received is dropped with the session
        self._snapshot_out.awaiting_answer = False


def advance(cursor: Cursor, changes: Sequence[Change]) -> None:
    """Raise each origin's entry in ``cursor`` to the highest version in ``changes``."""
    for change in changes:
        site_id, version = change[6], change[5]
        if cursor.get(site_id, 0) < version:
            cursor[site_id] = version


def _advance_to(cursor: Cursor, other: Mapping[bytes, int]) -> None:
    """Raise each origin's entry in ``cursor`` to ``other``'s, never lowering one."""
    for origin, version in other.items():
        if cursor.get(origin, 0) < version:
            cursor[origin] = version
