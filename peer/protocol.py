"""The sync protocol as a pure state machine: no asyncio, sockets or SQL.

One :class:`SyncSession` per connection. The driver (``peer.session``) feeds
it every received frame with :meth:`SyncSession.receive`, acts on the events
it returns (:mod:`peer.protocol_events`), and sends the frames it produces.
Everything that affects the state lives in this module and beside it: the
states and the transition table in :mod:`peer.protocol_state` (:data:`ALLOWED`
and :data:`ALLOWED_IN_PAGE`; any (state, message) pair missing from them
fails the session with ``UNEXPECTED_MESSAGE``), the read-only state in
:mod:`peer.protocol_view`, the receiving transitions in
:mod:`peer.protocol_receive`, values and snapshots in parts in
:mod:`peer.protocol_transfer`. The driver reads the state through
properties; it changes only through the calls below.

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
    #     row larger than a frame goes alone, its value in PART frames; a
    #     transaction larger than a frame goes as a page of frames, the last
    #     one final, then session.group_sent(origin, version))
    # after each ChangesReceived is applied: session.frame_applied()

Snapshots (protocol 4): a fresh receiver says so in ``send_cursor(cursor,
snapshot=True)``. After CursorReceived, a sender for which
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

from collections.abc import Sequence

from peer.changes import Change, Cursor
from peer.errors import ErrorCode, LocalProtocolError
from peer.messages import (
    HAVE_SINCE,
    PARTS_SINCE,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
    SCHEMA_NEEDS_SINCE,
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
    Ping,
)
from peer.protocol_config import Limits, LocalInfo
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
    SnapshotEndReceived,
    SnapshotPartReceived,
)
from peer.protocol_receive import SessionReceiver, advance
from peer.protocol_state import ALLOWED, ALLOWED_IN_PAGE, SINCE, SyncState

__all__ = [
    "ALLOWED",
    "ALLOWED_IN_PAGE",
    "SINCE",
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
    "SnapshotAnswered",
    "SnapshotEndReceived",
    "SnapshotPartReceived",
    "SyncSession",
    "SyncState",
]


class SyncSession(SessionReceiver):
    """Protocol state of one connection, both directions.

    ``nonce`` is this side's random connection nonce (an input, so tests and
    the harness stay deterministic). Its state is read through the
    properties of :class:`~peer.protocol_view.SessionView`; only the methods
    below (sending) and those of :class:`~peer.protocol_receive.SessionReceiver`
    (:meth:`receive`) change it. Not thread-safe: one driver task calls it at a time.
    """

    def __init__(self, local: LocalInfo, limits: Limits, nonce: int) -> None:
        super().__init__(local, limits, nonce, PROTOCOL_VERSION)

    # -- sending ------------------------------------------------------------------

    def _require_syncing(self, what: str) -> None:
        if self._state is not SyncState.SYNCING:
            raise LocalProtocolError(f"cannot send {what} in state {self._state.value}")

    def _require_no_page_out(self, what: str) -> None:
        if self._sending_page:
            raise LocalProtocolError(f"cannot send {what} inside a page: finish it first")

    def hello(self) -> None:
        """Queue the first frame. Raises LocalProtocolError if called twice."""
        if self._hello_sent:
            raise LocalProtocolError("hello already sent")
        self._hello_sent = True
        self._outbox.queue(
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
        if self.remote is None or self.closed:
            raise LocalProtocolError("send_cursor before the remote hello")
        self._announced = dict(cursor)
        if self.version >= PARTS_SINCE:
            if snapshot and self.version >= SNAPSHOT_SINCE and not any(cursor.values()):
                self._snapshot_in.offered = self.limits.max_snapshot_bytes
            self._outbox.queue(
                LimitsMessage(
                    self.limits.max_frame_bytes, self.limits.max_value_bytes, self.snapshot_offered
                )
            )
        self._outbox.queue(CursorMessage(dict(cursor)))

    def send_snapshot_part(self, total: int, chunk: bytes | memoryview) -> None:
        """One piece of a snapshot of ``total`` bytes (at most a frame's worth
        of bytes less FRAME_OVERHEAD). Uses one credit.

        Raises LocalProtocolError without credit, when the remote takes no
        snapshot of ``total`` bytes (see :attr:`snapshot_wanted`), or past
        ``total``.
        """
        wanted = 0 if self._snapshot_out.started else self.snapshot_wanted
        if self._credit < 1:
            raise LocalProtocolError("no credit: wait for CreditReceived")
        self._require_no_page_out("a snapshot")
        message = self._snapshot_out.part(total, chunk, wanted)
        self._credit -= 1
        self._outbox.queue(message)

    def send_snapshot_end(self, sha256: bytes, cursor: Cursor) -> None:
        """Close the snapshot whose parts are all sent; then wait for SnapshotAnswered."""
        self._outbox.queue(self._snapshot_out.end(sha256, cursor))

    def send_snapshot_answer(self, cursor: Cursor) -> None:
        """After SnapshotEndReceived: say what we hold now (the snapshot's
        cursor if it was installed, the cursor from before if it was refused)."""
        self._require_syncing("a snapshot answer")
        self._snapshot_in.answer()
        self._announced = dict(cursor)
        self._outbox.queue(CursorMessage(dict(cursor)))

    def send_have(self, cursor: Cursor) -> None:
        """Announce what we now hold beyond what the remote knows (changes we
        got from a third peer), so it does not send them again.

        Sends only the entries that raise what the remote knows and that are
        not the remote's own changes; nothing at all before SYNCING or with a
        remote that speaks protocol 1.
        """
        if self._state is not SyncState.SYNCING or self.version < HAVE_SINCE:
            return
        assert self.remote is not None
        news = {
            origin: version
            for origin, version in cursor.items()
            if version > self._announced.get(origin, 0) and origin != self.remote.site_id
        }
        if news:
            self._announced.update(news)
            self._outbox.queue(Have(news))

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
        self._require_syncing("changes")
        if self._credit < 1:
            raise LocalProtocolError("no credit: wait for CreditReceived")
        if self._snapshot_out.awaiting_answer:
            raise LocalProtocolError("changes before the answer to the snapshot")
        if len(changes) > self.max_send_rows:
            raise LocalProtocolError(f"{len(changes)} rows exceed {self.max_send_rows} per frame")
        needs = schema if schema > self.local.schema_version else None
        self._outbox.queue_changes(
            Changes(list(changes), final, needs if self.version >= SCHEMA_NEEDS_SINCE else None),
            budget=self.max_send_bytes,
            value_limit=self.max_send_value,
            frame_limit=self.frame_limit,
            parts_allowed=self.version >= PARTS_SINCE,
        )
        self._credit -= 1
        self._changes_sent, self._sending_page = True, not final
        advance(self._remote_cursor, changes)
        advance(self._announced, changes)

    def group_sent(self, origin: bytes, version: int) -> None:
        """A transaction sent as a page of frames went out whole (its final
        frame is queued): the remote holds ``origin``'s changes up to
        ``version`` now, whatever rows the page carried (rows overwritten
        while it was read are gone from it). Raises :attr:`remote_cursor`,
        never lowers it. LocalProtocolError outside SYNCING or inside a page."""
        self._require_syncing("a group")
        self._require_no_page_out("a group's end")
        if self._remote_cursor.get(origin, 0) < version:
            self._remote_cursor[origin] = version

    def send_backlog(self, rows: int) -> None:
        """Tell the remote about how many rows the catch-up holds. In SYNCING, outside a page."""
        self._require_syncing("backlog")
        self._require_no_page_out("backlog")
        self._outbox.queue(Backlog(max(0, rows)))

    def send_eose(self) -> None:
        """Mark the end of the catch-up. Once per session, in SYNCING, outside a page."""
        if self._state is not SyncState.SYNCING or self._eose_sent:
            raise LocalProtocolError("eose is sent once, after the cursor")
        self._require_no_page_out("eose")
        self._eose_sent = True
        self._outbox.queue(EoseMessage())

    def frame_applied(self) -> None:
        """After applying a ChangesReceived or writing a SnapshotPartReceived:
        queues the credit that lets the remote go on (nothing once the session
        is closed). LocalProtocolError if no received frame awaits it."""
        if self._remote_credit >= self.limits.window:
            raise LocalProtocolError("frame_applied without a received frame to acknowledge")
        self._remote_credit += 1
        if not self.closed:
            self._outbox.queue(Credit(1))

    def send_ping(self, nonce: int) -> None:
        """Ask the remote for a PONG. LocalProtocolError before hello or once closed."""
        if not self._hello_sent or self.closed:
            raise LocalProtocolError(f"cannot ping in state {self._state.value}")
        self._outbox.queue(Ping(nonce))

    def send_error(self, code: ErrorCode, reason: str = "") -> None:
        """Fail the session: queue the error; send it, then close the channel."""
        self._close()
        self._outbox.queue(Error(code, reason))

    def send_close(self) -> None:
        """End the session cleanly: queue the close; send it, then close the channel."""
        self._close()
        self._outbox.queue(Close())

    def data_to_send(self) -> list[bytes]:
        """Every frame queued so far, in order; the driver sends them in this order.

        Frames are numbered when queued, so a driver with several tasks must
        drain and send under one lock.
        """
        return self._outbox.drain()
