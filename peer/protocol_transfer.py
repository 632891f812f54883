"""The pieces of :class:`~peer.protocol.SyncSession` that move data larger
than a frame: values in PART frames, and snapshots in SNAPSHOT_PART frames.

Each is a small pure collaborator the session owns (one per direction and
kind); it checks its own sequence and raises RemoteProtocolError (what the
remote sent does not continue what is under way) or LocalProtocolError (the
driver's misuse). Credit and frame numbering stay with the session.
"""

from __future__ import annotations

from collections.abc import Sequence

from peer.changes import Change, Cursor, change_size
from peer.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, ValueTooLargeError
from peer.messages import Changes, Message, Part, SnapshotEnd, SnapshotPart, encode
from peer.protocol_events import SnapshotEndReceived, SnapshotPartReceived

__all__ = ["IncomingValue", "Outbox", "SnapshotIn", "SnapshotOut", "value_in_parts"]


class Outbox:
    """Frames queued to send, numbered in the order they are queued."""

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._number = 0

    def queue(self, message: Message) -> None:
        self._frames.append(encode(message, self._number))
        self._number += 1

    def queue_changes(
        self,
        changes: Changes,
        *,
        budget: int,
        value_limit: int,
        frame_limit: int,
        parts_allowed: bool,
    ) -> None:
        """Queue one CHANGES frame, and before it the PART frames of a value
        too large for a frame (see :func:`value_in_parts`). Raises
        ValueTooLargeError or LocalProtocolError, and then queues nothing."""
        rows = changes.changes
        parted, encoded = value_in_parts(rows, budget, value_limit, parts_allowed=parts_allowed)
        parts: list[Part] = []
        if parted is not None:
            data, text = memoryview(encoded), isinstance(rows[parted][3], str)
            parts = [
                Part(len(data), text, data[i : i + budget]) for i in range(0, len(data), budget)
            ]
        message = Changes(rows, changes.final, changes.schema, parted)
        frame = encode(message, self._number + len(parts))
        if len(frame) > frame_limit:
            raise LocalProtocolError(f"a frame of {len(frame)} bytes exceeds {frame_limit}")
        for part in parts:
            self.queue(part)
        self._frames.append(frame)
        self._number += 1

    def drain(self) -> list[bytes]:
        """Every frame queued so far, in order; the outbox is empty after."""
        out, self._frames = self._frames, []
        return out


def value_in_parts(
    changes: Sequence[Change], budget: int, limit: int, *, parts_allowed: bool
) -> tuple[int | None, bytes]:
    """The index of the row of ``changes`` whose value must travel in PART
    frames (or None) and that value's bytes (UTF-8 for text: encoded once).

    ``budget`` is a frame's bytes of rows, ``limit`` the largest value the
    remote takes. Raises ValueTooLargeError for a value over ``limit`` (or
    over a frame, when ``parts_allowed`` is false); LocalProtocolError for
    such a row that is not alone in ``changes``.
    """
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
        if not parts_allowed:
            raise ValueTooLargeError(change[6], change[5], size, limit)
        if parted is not None or len(changes) > 1:
            raise LocalProtocolError("a row larger than a frame must travel alone")
        parted, encoded = index, data
    return parted, encoded


class IncomingValue:
    """A value arriving in PART frames, until the CHANGES frame that uses it.

    Holds at most ``max_value_bytes``; :meth:`drop` forgets it (the session
    closed).
    """

    def __init__(self, max_value_bytes: int) -> None:
        self._max = max_value_bytes
        self._value: bytearray | None = None
        self._total = 0
        self._text = False

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not yet used."""
        return len(self._value) if self._value is not None else 0

    @property
    def under_way(self) -> bool:
        return self._value is not None

    def add(self, part: Part) -> None:
        """Add a piece to the value under way (or start one)."""
        if self._value is None:
            if part.total > self._max:
                raise RemoteProtocolError(
                    ErrorCode.VALUE_TOO_LARGE, f"a value of {part.total} bytes, limit {self._max}"
                )
            self._value, self._total, self._text = bytearray(), part.total, part.text
        elif len(self._value) == self._total or (part.total, part.text) != (
            self._total,
            self._text,
        ):
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a PART that does not continue the value under way"
            )
        if len(self._value) + len(part.chunk) > self._total:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "PART frames exceed their total")
        self._value += part.chunk

    def place(self, message: Changes) -> list[Change]:
        """The rows of ``message`` with the whole value in place; the value is used up."""
        value, self._value = self._value, None
        if message.parted is None or value is None or len(value) != self._total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a value in parts does not match its CHANGES frame"
            )
        data = bytes(value)
        del value
        assembled: bytes | str = data
        if self._text:
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

    def drop(self) -> None:
        self._value = None


class SnapshotIn:
    """The snapshot this side receives: at most one, and only if it offered to take one."""

    def __init__(self) -> None:
        self.offered = 0
        """The snapshot bytes this side said it takes (0: none)."""
        self._received: int | None = None
        """Bytes received so far (None: none under way; -1: answered)."""
        self._total = 0
        self.done = False
        """Every part arrived and SNAPSHOT_END checked; not answered yet."""

    @property
    def under_way(self) -> bool:
        """Parts have arrived and the snapshot is not answered yet."""
        return self._received is not None and self._received >= 0

    def on_part(self, part: SnapshotPart, *, changes_received: bool) -> SnapshotPartReceived:
        if not self.offered or changes_received or self.done:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a snapshot nobody asked for")
        if self._received is None:
            if part.total > self.offered:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"a snapshot of {part.total} bytes, limit {self.offered}",
                )
            self._received, self._total = 0, part.total
        elif self._received < 0 or part.total != self._total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "a SNAPSHOT_PART that does not continue the snapshot"
            )
        if self._received + len(part.chunk) > self._total:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "snapshot parts exceed their total"
            )
        self._received += len(part.chunk)
        return SnapshotPartReceived(part.total, part.chunk)

    def on_end(self, end: SnapshotEnd) -> SnapshotEndReceived:
        if self._received is None or self._received < 0 or self.done:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "SNAPSHOT_END without parts")
        if end.size != self._total or self._received != end.size:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME,
                f"snapshot of {self._received} bytes ended as {end.size}",
            )
        self.done = True
        return SnapshotEndReceived(end.size, end.sha256, dict(end.cursor))

    def answer(self) -> None:
        """The driver answers the snapshot: no second one in this session."""
        if not self.done:
            raise LocalProtocolError("no snapshot to answer")
        self.done = False
        self._received = -1


class SnapshotOut:
    """The snapshot this side sends: at most one per session."""

    def __init__(self) -> None:
        self._sent: int | None = None
        """Bytes sent so far (None: none sent)."""
        self._total = 0
        self.awaiting_answer = False

    @property
    def started(self) -> bool:
        return self._sent is not None

    def part(self, total: int, chunk: bytes | memoryview, wanted: int) -> SnapshotPart:
        """The next SNAPSHOT_PART of a snapshot of ``total`` bytes (credit is the session's)."""
        if self._sent is None:
            if not 0 < total <= wanted:
                raise LocalProtocolError("the remote takes no snapshot of this size")
            self._sent, self._total = 0, total
        elif self.awaiting_answer or total != self._total:
            raise LocalProtocolError("a snapshot part that does not continue the snapshot")
        if not chunk or self._sent + len(chunk) > total:
            raise LocalProtocolError("snapshot parts must be non-empty and within the total")
        self._sent += len(chunk)
        return SnapshotPart(total, chunk)

    def end(self, sha256: bytes, cursor: Cursor) -> SnapshotEnd:
        """SNAPSHOT_END once every part is sent; then the answer is awaited."""
        if self._sent is None or self.awaiting_answer or self._sent != self._total:
            raise LocalProtocolError("snapshot end before all its parts")
        self.awaiting_answer = True
        return SnapshotEnd(self._sent, sha256, dict(cursor))
