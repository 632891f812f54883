"""The sync protocol as a pure state machine: no asyncio, sockets or SQL.

One :class:`SyncSession` per connection. The driver (``peer.peer``) feeds it
every received frame with :meth:`SyncSession.receive`, acts on the events it
returns, and sends the frames it produces. Everything that affects the state
lives in this module; :data:`ALLOWED` is the whole transition table, and any
(state, message) pair missing from it fails the session with
``UNEXPECTED_MESSAGE``.

Lifecycle of the driver::

    session = SyncSession(local, limits, nonce)
    session.hello()
    for frame in received:
        for event in session.receive(frame):     # may raise RemoteProtocolError
            ...                                   # see the event classes
        send(*session.data_to_send())            # everything queued, in order
    # after HelloReceived: session.send_cursor(store.cursor())
    # after CursorReceived, while session.credit > 0:
    #     session.send_changes(rows, final=...), then session.send_eose() once
    #     (rows within session.max_send_rows and session.max_send_bytes; a
    #     row larger than a frame goes alone, its value in PART frames)
    # after each ChangesReceived is applied: session.frame_applied()

Snapshots (protocol 4): a fresh receiver says so in ``send_cursor(cursor,
snapshot_bytes=...)``. After CursorReceived, a sender for which
``session.snapshot_wanted`` is true may send ``send_snapshot_part`` (one
credit each) and then ``send_snapshot_end``; it sends no changes until
SnapshotAnswered. The receiver writes each SnapshotPartReceived (then
``frame_applied()``), and after SnapshotEndReceived installs or refuses the
snapshot and calls ``send_snapshot_answer(its cursor)``.

Every ``send_*`` method queues a numbered frame; :meth:`SyncSession.data_to_send`
drains them. On RemoteProtocolError the driver calls
``session.send_error(exc.code)``, sends what is queued and closes the channel;
the message text stays local.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from peer.changes import ROW_OVERHEAD, Change, Cursor, change_size
from peer.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, ValueTooLargeError
from peer.messages import (
    FRAME_OVERHEAD,
    HAVE_SINCE,
    MIN_FRAME_BYTES,
    PARTS_SINCE,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
    SCHEMA_NEEDS_SINCE,
    SNAPSHOT_SINCE,
    V2_MAX_FRAME_BYTES,
    Backlog,
    Changes,
    Close,
    Credit,
    CursorMessage,
    Eose,
    Error,
    Have,
    Hello,
    LimitsMessage,
    Message,
    MessageType,
    Part,
    Ping,
    Pong,
    SnapshotEnd,
    SnapshotPart,
    decode,
    encode,
)

__all__ = [
    "ALLOWED",
    "BacklogReceived",
    "ChangesReceived",
    "CreditReceived",
    "CursorReceived",
    "EoseReceived",
    "Event",
    "HelloReceived",
    "Limits",
    "LocalInfo",
    "PongReceived",
    "RemoteClosed",
    "SessionState",
    "SnapshotAnswered",
    "SnapshotEndReceived",
    "SnapshotPartReceived",
    "SyncSession",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """What this side accepts. Every limit is an input, never a constant."""

    max_frame_bytes: int = 8 * 1024 * 1024
    """The largest frame this side accepts (and sends at most); pages are cut
    to fit it. At least 1 KiB."""
    max_batch_rows: int = 5_000
    """Change rows per CHANGES frame this side accepts (and sends at most)."""
    window: int = 4
    """CHANGES frames the other side may have in flight to us."""
    max_value_bytes: int = 256 * 1024 * 1024
    """The largest single value (text in UTF-8, or blob) this side accepts. A
    value larger than a frame arrives in parts and is held whole in memory
    until its row is applied, so this bounds that memory, per session.
    SQLite stores no value over its own length limit (1,000,000,000 bytes
    unless built otherwise), whatever this says."""
    snapshot_threshold: int = 50_000
    """(Sending) A fresh remote that takes snapshots gets one instead of its
    catch-up when the catch-up holds at least this many change rows."""
    max_snapshot_bytes: int = 1 << 40
    """(Receiving) The largest snapshot this side takes, in bytes."""

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_batch_rows, self.window, self.max_value_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.snapshot_threshold < 0 or self.max_snapshot_bytes < 1:
            raise ValueError("snapshot limits must be positive")
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be at least {MIN_FRAME_BYTES}")


@dataclass(frozen=True, slots=True)
class LocalInfo:
    site_id: bytes
    name: str
    schema_version: int
    schema_fingerprint: bytes


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    """Our hello is sent; waiting for theirs."""
    READY = "ready"
    """Hellos exchanged; waiting for their cursor."""
    SYNCING = "syncing"
    """Cursors exchanged; changes flow both ways (catch-up, then live)."""
    CLOSED = "closed"


_ALWAYS = {MessageType.PING, MessageType.PONG, MessageType.ERROR, MessageType.CLOSE}
ALLOWED: dict[SessionState, frozenset[MessageType]] = {
    SessionState.HANDSHAKE: frozenset({MessageType.HELLO, *_ALWAYS}),
    SessionState.READY: frozenset({MessageType.LIMITS, MessageType.CURSOR, *_ALWAYS}),
    SessionState.SYNCING: frozenset(
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
    SessionState.CLOSED: frozenset(),
}
"""Which received message types each state accepts; all others fail the session.

HAVE only once both sides speak protocol 2, LIMITS and PART only with 3 (see
:data:`SINCE` and :attr:`SyncSession.version`); with 3, LIMITS must come
(once) before CURSOR. SNAPSHOT_PART and SNAPSHOT_END only with 4, only to a
side that asked for a snapshot and before any CHANGES; a second CURSOR in
SYNCING only as the answer to a SNAPSHOT_END this side sent.
"""
SINCE: dict[MessageType, int] = {
    MessageType.HAVE: HAVE_SINCE,
    MessageType.LIMITS: PARTS_SINCE,
    MessageType.PART: PARTS_SINCE,
    MessageType.SNAPSHOT_PART: SNAPSHOT_SINCE,
    MessageType.SNAPSHOT_END: SNAPSHOT_SINCE,
}
"""The first protocol version that has each message type (others: every version)."""


# -- events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The remote introduced itself. The driver checks trust, then sends its cursor."""

    hello: Hello
    remote_schema_newer: bool


@dataclass(frozen=True, slots=True)
class CursorReceived:
    """The remote's version vector: the driver may start sending changes."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class ChangesReceived:
    """One CHANGES frame. The driver applies it, then calls :meth:`SyncSession.frame_applied`.

    A page is the frames up to and including one with ``final``: the driver
    applies them in one transaction, committed with the final frame (so a
    transaction larger than a frame never needs to be held in memory).
    """

    changes: list[Change]
    final: bool
    schema: int = 0
    """The schema version these rows may need: the remote's announced one, or
    the newer one its frame carries. Rows for a table or column this side
    lacks are held when it is above the local schema version."""


@dataclass(frozen=True, slots=True)
class EoseReceived:
    """The remote finished sending what it had stored; live changes follow."""


@dataclass(frozen=True, slots=True)
class BacklogReceived:
    """The remote's estimate of its catch-up, in change rows (for progress)."""

    rows: int


@dataclass(frozen=True, slots=True)
class SnapshotPartReceived:
    """A piece of the snapshot, in order: the driver writes it, then calls
    :meth:`SyncSession.frame_applied`."""

    total: int
    chunk: bytes | memoryview


@dataclass(frozen=True, slots=True)
class SnapshotEndReceived:
    """The whole snapshot arrived (its length is checked): the driver checks
    its hash and contents, installs or refuses it, then calls
    :meth:`SyncSession.send_snapshot_answer`."""

    size: int
    sha256: bytes
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class SnapshotAnswered:
    """The remote's cursor after the snapshot this side sent (installed or
    not): the sender goes on with changes above it."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class CreditReceived:
    """The remote allows more CHANGES frames (see SyncSession.credit)."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    nonce: int


@dataclass(frozen=True, slots=True)
class RemoteClosed:
    """The remote ended the session, cleanly (error is None) or with an error."""

    error: Error | None


Event = (
    BacklogReceived
    | HelloReceived
    | CursorReceived
    | ChangesReceived
    | EoseReceived
    | CreditReceived
    | PongReceived
    | RemoteClosed
    | SnapshotPartReceived
    | SnapshotEndReceived
    | SnapshotAnswered
)


class SyncSession:
    """Protocol state of one connection, both directions.

    ``nonce`` is this side's random connection nonce (an input, so tests and
    the harness stay deterministic).
    """

    def __init__(self, local: LocalInfo, limits: Limits, nonce: int) -> None:
        self.local = local
        self.limits = limits
        self.nonce = nonce
        self.state = SessionState.HANDSHAKE
        self.remote: Hello | None = None
        self.remote_cursor: Cursor = {}
        """What the remote is known to hold: its cursor, plus what went either way
        since, plus what it announced with HAVE."""
        self.version = PROTOCOL_VERSION
        """The protocol version in use: the highest both sides speak (after HELLO)."""
        self.announced: Cursor = {}
        """What the remote knows we hold: our cursor, plus what went either way
        since, plus what we announced with HAVE."""
        self.credit = 0
        """CHANGES frames we may still send before the remote grants more."""
        self.eose_sent = False
        self.eose_received = False
        self._remote_credit = limits.window
        self._sent_frames = 0
        self._received_frames = 0
        self._outbox: list[bytes] = []
        self._hello_sent = False
        self.remote_limits: LimitsMessage | None = None
        """The remote's LIMITS (protocol 3), once received."""
        self._value: bytearray | None = None
        """A value arriving in PART frames, until the CHANGES frame that uses it."""
        self._value_total = 0
        self._value_text = False
        self.snapshot_offered = 0
        """The snapshot bytes this side said it takes (0: none)."""
        self._snapshot_in: int | None = None
        """Bytes of the snapshot received so far (None: none under way)."""
        self._snapshot_total = 0
        self._snapshot_in_done = False
        self._snapshot_out: int | None = None
        """Bytes of the snapshot sent so far (None: none sent)."""
        self._snapshot_total_out = 0
        self._remote_cursor_at_start: Cursor = {}
        self._snapshot_awaiting_answer = False
        self._changes_sent = False
        self._changes_received = False

    # -- sending ------------------------------------------------------------------

    def _queue(self, message: Message) -> None:
        self._outbox.append(encode(message, self._sent_frames))
        self._sent_frames += 1

    def hello(self) -> None:
        """Queue the first frame. Raises LocalProtocolError if called twice."""
        if self._hello_sent:
            raise LocalProtocolError("hello already sent")
        self._hello_sent = True
        self._queue(
            Hello(
                protocol_min=PROTOCOL_MIN,
                protocol_max=PROTOCOL_VERSION,
                site_id=self.local.site_id,
                name=self.local.name,
                schema_version=self.local.schema_version,
                schema_fingerprint=self.local.schema_fingerprint,
                max_batch_rows=self.limits.max_batch_rows,
                window=self.limits.window,
                nonce=self.nonce,
            )
        )

    def send_cursor(self, cursor: Cursor, *, snapshot: bool = False) -> None:
        """Tell the remote what we hold. Allowed once the remote's hello arrived.

        ``snapshot``: this side is a fresh device (nothing in its replicated
        tables, an empty cursor) and takes a snapshot of up to
        ``limits.max_snapshot_bytes`` instead of a catch-up (protocol 4 only;
        ignored with an older remote, or with a non-empty ``cursor``).
        """
        if self.remote is None or self.state is SessionState.CLOSED:
            raise LocalProtocolError("send_cursor before the remote hello")
        self.announced = dict(cursor)
        if self.version >= PARTS_SINCE:
            if snapshot and self.version >= SNAPSHOT_SINCE and not any(cursor.values()):
                self.snapshot_offered = self.limits.max_snapshot_bytes
            self._queue(
                LimitsMessage(
                    self.limits.max_frame_bytes, self.limits.max_value_bytes, self.snapshot_offered
                )
            )
        self._queue(CursorMessage(dict(cursor)))

    @property
    def snapshot_wanted(self) -> int:
        """The largest snapshot the remote takes now, in bytes, or 0.

        Nonzero only in SYNCING with protocol 4, when the remote asked for
        one, showed the same schema (version and fingerprint) as ours and an
        empty cursor, and nothing has been sent to it yet.
        """
        remote, limits = self.remote, self.remote_limits
        if (
            self.state is not SessionState.SYNCING
            or self.version < SNAPSHOT_SINCE
            or remote is None
            or limits is None
            or self._changes_sent
            or self._snapshot_out is not None
            or remote.schema_fingerprint != self.local.schema_fingerprint
            or remote.schema_version != self.local.schema_version
            or any(self._remote_cursor_at_start.values())
        ):
            return 0
        return limits.snapshot_bytes

    def send_snapshot_part(self, total: int, chunk: bytes | memoryview) -> None:
        """One piece of a snapshot of ``total`` bytes (at most a frame's worth
        of bytes less FRAME_OVERHEAD). Uses one credit.

        Raises LocalProtocolError without credit, when the remote takes no
        snapshot of ``total`` bytes (see :attr:`snapshot_wanted`), or past
        ``total``.
        """
        if self._snapshot_out is None:
            if not 0 < total <= self.snapshot_wanted:
                raise LocalProtocolError("the remote takes no snapshot of this size")
            self._snapshot_out, self._snapshot_total_out = 0, total
        elif self._snapshot_awaiting_answer or total != self._snapshot_total_out:
            raise LocalProtocolError("a snapshot part that does not continue the snapshot")
        if self.credit < 1:
            raise LocalProtocolError("no credit: wait for CreditReceived")
        if not chunk or self._snapshot_out + len(chunk) > total:
            raise LocalProtocolError("snapshot parts must be non-empty and within the total")
        self.credit -= 1
        self._snapshot_out += len(chunk)
        self._queue(SnapshotPart(total, chunk))

    def send_snapshot_end(self, sha256: bytes, cursor: Cursor) -> None:
        """Close the snapshot whose parts are all sent; then wait for SnapshotAnswered."""
        if (
            self._snapshot_out is None
            or self._snapshot_awaiting_answer
            or self._snapshot_out != self._snapshot_total_out
        ):
            raise LocalProtocolError("snapshot end before all its parts")
        self._snapshot_awaiting_answer = True
        self._queue(SnapshotEnd(self._snapshot_out, sha256, dict(cursor)))

    def send_snapshot_answer(self, cursor: Cursor) -> None:
        """After SnapshotEndReceived: say what we hold now (the snapshot's
        cursor if it was installed, the cursor from before if it was refused)."""
        if not self._snapshot_in_done or self.state is not SessionState.SYNCING:
            raise LocalProtocolError("no snapshot to answer")
        self._snapshot_in_done = False
        self._snapshot_in = -1  # answered: no second snapshot in this session
        self.announced = dict(cursor)
        self._queue(CursorMessage(dict(cursor)))

    def send_have(self, cursor: Cursor) -> None:
        """Announce what we now hold beyond what the remote knows (changes we
        got from a third peer), so it does not send them again.

        Sends only the entries that raise what the remote knows and that are
        not the remote's own changes; nothing at all before SYNCING or with a
        remote that speaks protocol 1.
        """
        if self.state is not SessionState.SYNCING or self.version < HAVE_SINCE:
            return
        assert self.remote is not None
        news = {
            origin: version
            for origin, version in cursor.items()
            if version > self.announced.get(origin, 0) and origin != self.remote.site_id
        }
        if news:
            self.announced.update(news)
            self._queue(Have(news))

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

    def send_changes(self, changes: Sequence[Change], *, final: bool, schema: int = 0) -> None:
        """One CHANGES frame; ``final`` closes a page (whole groups only).

        ``schema`` is the newest schema version the rows may need (the store
        serves on rows it holds for a newer schema than its own); the frame
        carries it when it is above the announced one, so the receiver holds
        such rows instead of rejecting them.

        A row larger than :attr:`max_send_bytes` must be alone in its frame:
        its value goes ahead in PART frames (protocol 3). Uses one credit.
        Raises ValueTooLargeError (and sends nothing) if a value exceeds
        :attr:`max_send_value`; LocalProtocolError without credit, outside
        SYNCING, with more rows than :attr:`max_send_rows`, or rows that do
        not fit a frame.
        """
        if self.state is not SessionState.SYNCING:
            raise LocalProtocolError(f"cannot send changes in state {self.state.value}")
        if self.credit < 1:
            raise LocalProtocolError("no credit: wait for CreditReceived")
        if self._snapshot_awaiting_answer:
            raise LocalProtocolError("changes before the answer to the snapshot")
        if len(changes) > self.max_send_rows:
            raise LocalProtocolError(f"{len(changes)} rows exceed {self.max_send_rows} per frame")
        parted, encoded = self._value_in_parts(changes)
        parts: list[Part] = []
        if parted is not None:
            data, step = memoryview(encoded), self.max_send_bytes
            text = isinstance(changes[parted][3], str)
            parts = [
                Part(len(data), text, data[start : start + step])
                for start in range(0, len(data), step)
            ]
        needs = schema if schema > self.local.schema_version else None
        if self.version < SCHEMA_NEEDS_SINCE:
            needs = None
        frame = encode(Changes(list(changes), final, needs, parted), self._sent_frames + len(parts))
        if len(frame) > self.frame_limit:
            raise LocalProtocolError(f"a frame of {len(frame)} bytes exceeds {self.frame_limit}")
        for part in parts:
            self._queue(part)
        self.credit -= 1
        self._changes_sent = True
        _advance(self.remote_cursor, changes)
        _advance(self.announced, changes)
        self._outbox.append(frame)
        self._sent_frames += 1

    def _value_in_parts(self, changes: Sequence[Change]) -> tuple[int | None, bytes]:
        """The index of the row whose value must travel in PART frames (or
        None) and that value's bytes (UTF-8 for text: encoded once).

        Raises ValueTooLargeError for a value the remote does not take.
        """
        budget, limit = self.max_send_bytes, self.max_send_value
        worth_a_look = min(budget, limit) // 4  # a UTF-8 character is at most 4 bytes
        parted, encoded = None, b""
        for index, change in enumerate(changes):
            value = change[3]
            if not (type(value) is bytes or type(value) is str) or len(value) <= worth_a_look:
                continue
            data = value.encode() if isinstance(value, str) else value
            size = len(data)
            if size > limit:
                raise ValueTooLargeError(change[6], change[5], size, limit)
            row_size = change_size((*change[:3], None, *change[4:])) + size
            if row_size <= budget:
                continue
            if self.version < PARTS_SINCE:
                raise ValueTooLargeError(change[6], change[5], size, limit)
            if parted is not None or len(changes) > 1:
                raise LocalProtocolError("a row larger than a frame must travel alone")
            parted, encoded = index, data
        return parted, encoded

    def send_backlog(self, rows: int) -> None:
        """Tell the remote about how many rows the catch-up holds. In SYNCING."""
        if self.state is not SessionState.SYNCING:
            raise LocalProtocolError("backlog is sent after the cursor")
        self._queue(Backlog(max(0, rows)))

    def send_eose(self) -> None:
        """Mark the end of the catch-up. Once per session, in SYNCING."""
        if self.state is not SessionState.SYNCING or self.eose_sent:
            raise LocalProtocolError("eose is sent once, after the cursor")
        self.eose_sent = True
        self._queue(Eose())

    def frame_applied(self) -> None:
        """After applying a ChangesReceived: queues the credit that lets the remote go on."""
        self._remote_credit += 1
        self._queue(Credit(1))

    def send_ping(self, nonce: int) -> None:
        self._queue(Ping(nonce))

    def send_error(self, code: ErrorCode, reason: str = "") -> None:
        """Fail the session: queue the error; send it, then close the channel."""
        self._close()
        self._queue(Error(code, reason))

    def send_close(self) -> None:
        """End the session cleanly: queue the close; send it, then close the channel."""
        self._close()
        self._queue(Close())

    def _close(self) -> None:
        self.state = SessionState.CLOSED
        self._value = None  # a value half received is dropped with the session
        self._snapshot_awaiting_answer = False

    @property
    def pending_value_bytes(self) -> int:
        """Bytes of a value received in parts and not yet used (at most
        ``limits.max_value_bytes``; dropped when the session closes)."""
        return len(self._value) if self._value is not None else 0

    def data_to_send(self) -> list[bytes]:
        """Every frame queued so far, in order; the driver sends them in this order.

        Frames are numbered when queued, so a driver with several tasks must
        drain and send under one lock.
        """
        out, self._outbox = self._outbox, []
        return out

    # -- receiving ----------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Process one received frame and return what happened.

        Raises RemoteProtocolError (and moves to CLOSED) if the frame is
        malformed, too large, out of sequence, or not allowed in this state.
        """
        if self.state is SessionState.CLOSED:
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
            kind = _TYPE_OF[type(frame.message)]
            if kind not in ALLOWED[self.state] or self.version < SINCE.get(kind, 0):
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, f"{kind.name} not allowed in {self.state.value}"
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
                self._on_part(message)
                return []
            case CursorMessage():
                if self.state is SessionState.SYNCING:
                    if not self._snapshot_awaiting_answer:
                        raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "second CURSOR")
                    self._snapshot_awaiting_answer = False
                    self.remote_cursor = dict(message.cursor)
                    return [SnapshotAnswered(dict(message.cursor))]
                if self.version >= PARTS_SINCE and self.remote_limits is None:
                    raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "CURSOR before LIMITS")
                self.remote_cursor = dict(message.cursor)
                self._remote_cursor_at_start = dict(message.cursor)
                self.state = SessionState.SYNCING
                return [CursorReceived(dict(message.cursor))]
            case SnapshotPart():
                return [self._on_snapshot_part(message)]
            case SnapshotEnd():
                return [self._on_snapshot_end(message)]
            case Changes():
                return self._on_changes(message)
            case Eose():
                if self.eose_received:
                    raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "second EOSE")
                self.eose_received = True
                return [EoseReceived()]
            case Credit():
                self.credit += message.frames
                if self.credit > (self.remote.window if self.remote else 0):
                    raise RemoteProtocolError(ErrorCode.FLOW_CONTROL, "credit above the window")
                return [CreditReceived()]
            case Ping():
                self._queue(Pong(message.nonce))
                return []
            case Pong():
                return [PongReceived(message.nonce)]
            case Backlog():
                return [BacklogReceived(message.rows)]
            case Have():
                for origin, version in message.cursor.items():
                    if self.remote_cursor.get(origin, 0) < version:
                        self.remote_cursor[origin] = version
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
        self.credit = hello.window
        self.state = SessionState.READY
        return HelloReceived(hello, hello.schema_version > self.local.schema_version)

    def _on_snapshot_part(self, part: SnapshotPart) -> SnapshotPartReceived:
        if not self.snapshot_offered or self._changes_received or self._snapshot_in_done:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a snapshot nobody asked for")
        if self._snapshot_in is None:
            if part.total > self.snapshot_offered:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"a snapshot of {part.total} bytes, limit {self.snapshot_offered}",
                )
            self._snapshot_in, self._snapshot_total = 0, part.total
        elif self._snapshot_in < 0 or part.total != self._snapshot_total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a SNAPSHOT_PART that does not continue the snapshot"
            )
        if self._snapshot_in + len(part.chunk) > self._snapshot_total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "snapshot parts exceed their total"
            )
        if self._remote_credit < 1:
            raise RemoteProtocolError(ErrorCode.FLOW_CONTROL, "snapshot part sent without credit")
        self._remote_credit -= 1
        self._snapshot_in += len(part.chunk)
        return SnapshotPartReceived(part.total, part.chunk)

    def _on_snapshot_end(self, end: SnapshotEnd) -> SnapshotEndReceived:
        if self._snapshot_in is None or self._snapshot_in < 0 or self._snapshot_in_done:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "SNAPSHOT_END without parts")
        if end.size != self._snapshot_total or self._snapshot_in != end.size:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME,
                f"snapshot of {self._snapshot_in} bytes ended as {end.size}",
            )
        self._snapshot_in_done = True
        return SnapshotEndReceived(end.size, end.sha256, dict(end.cursor))

    def _on_changes(self, message: Changes) -> list[Event]:
        if self._remote_credit < 1:
            raise RemoteProtocolError(ErrorCode.FLOW_CONTROL, "changes sent without credit")
        if self._snapshot_in is not None and self._snapshot_in >= 0:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "CHANGES inside a snapshot")
        self._remote_credit -= 1
        self._changes_received = True
        changes = message.changes
        if message.parted is not None or self._value is not None:
            changes = self._with_value(message)
        _advance(self.remote_cursor, changes)
        _advance(self.announced, changes)
        assert self.remote is not None
        schema = max(self.remote.schema_version, message.schema or 0)
        return [ChangesReceived(changes, message.final, schema)]

    def _on_part(self, part: Part) -> None:
        """Add a piece to the value under way, within ``limits.max_value_bytes``."""
        if self._value is None:
            if part.total > self.limits.max_value_bytes:
                raise RemoteProtocolError(
                    ErrorCode.VALUE_TOO_LARGE,
                    f"a value of {part.total} bytes, limit {self.limits.max_value_bytes}",
                )
            self._value, self._value_total, self._value_text = bytearray(), part.total, part.text
        elif len(self._value) == self._value_total or (part.total, part.text) != (
            self._value_total,
            self._value_text,
        ):
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a PART that does not continue the value under way"
            )
        if len(self._value) + len(part.chunk) > self._value_total:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "PART frames exceed their total")
        self._value += part.chunk

    def _with_value(self, message: Changes) -> list[Change]:
        """The rows of ``message`` with the value assembled from PART frames in place."""
        value, self._value = self._value, None
        if message.parted is None or value is None or len(value) != self._value_total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a value in parts does not match its CHANGES frame"
            )
        data = bytes(value)
        del value
        assembled: bytes | str = data
        if self._value_text:
            try:
                assembled = data.decode()
            except UnicodeDecodeError as exc:
                raise RemoteProtocolError(
                    ErrorCode.MALFORMED_FRAME, "a text value in parts is not UTF-8"
                ) from exc
        changes = list(message.changes)
        row = changes[message.parted]
        changes[message.parted] = (*row[:3], assembled, *row[4:])
        return changes


_TYPE_OF: dict[type, MessageType] = {
    Hello: MessageType.HELLO,
    CursorMessage: MessageType.CURSOR,
    Changes: MessageType.CHANGES,
    Eose: MessageType.EOSE,
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


def _advance(cursor: Cursor, changes: Sequence[Change]) -> None:
    """Raise each origin's entry in ``cursor`` to the highest version in ``changes``."""
    for change in changes:
        site_id, version = change[6], change[5]
        if cursor.get(site_id, 0) < version:
            cursor[site_id] = version
