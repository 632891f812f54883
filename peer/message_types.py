"""The messages of the sync protocol: one frozen dataclass per message type.

This module is the protocol's vocabulary, with no encoding: which messages
exist (:class:`MessageType`), what each carries, and the protocol versions
that brought them. :mod:`peer.messages` encodes and decodes them as msgpack
frames and re-exports every name here, so ``from peer.messages import Hello``
is the usual import; PROTOCOL.md gives each message's fields on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

import msgpack

from peer.changes import Change, Cursor
from peer.errors import ErrorCode

__all__ = [
    "FRAME_OVERHEAD",
    "HAVE_SINCE",
    "MIN_FRAME_BYTES",
    "PARTS_SINCE",
    "PROTOCOL_MIN",
    "PROTOCOL_VERSION",
    "SCHEMA_NEEDS_SINCE",
    "SNAPSHOT_SINCE",
    "V2_MAX_FRAME_BYTES",
    "VALUE_IN_PARTS",
    "Backlog",
    "Changes",
    "Close",
    "Credit",
    "CursorMessage",
    "EoseMessage",
    "Error",
    "Frame",
    "Have",
    "Hello",
    "LimitsMessage",
    "Message",
    "MessageType",
    "Part",
    "Ping",
    "Pong",
    "SnapshotEnd",
    "SnapshotPart",
]

PROTOCOL_VERSION = 4
"""The newest protocol version this code speaks (2 adds HAVE; 3 adds LIMITS, PART
and the schema a CHANGES frame's rows need; 4 adds snapshots: the LIMITS field
``snapshot_bytes``, SNAPSHOT_PART and SNAPSHOT_END)."""
PROTOCOL_MIN = 1
"""The oldest one it still speaks."""
HAVE_SINCE = 2
"""The first protocol version with HAVE."""
SCHEMA_NEEDS_SINCE = 3
"""The first protocol version whose CHANGES may say which schema their rows need."""
PARTS_SINCE = 3
"""The first protocol version with LIMITS and PART (values larger than a frame)."""
SNAPSHOT_SINCE = 4
"""The first protocol version with snapshots (a fresh device bootstraps from a copy)."""
V2_MAX_FRAME_BYTES = 8 * 1024 * 1024
"""The frame limit assumed for a remote that does not announce its own (protocol < 3)."""
FRAME_OVERHEAD = 64
"""Bytes of a CHANGES or PART frame besides its rows or its chunk (an upper bound)."""
VALUE_IN_PARTS = msgpack.ExtType(1, b"")
"""The ``val`` of a row whose value arrived in the PART frames before its frame."""
MIN_FRAME_BYTES = 1024
"""The smallest frame limit a side may announce (a PART must carry something)."""


class MessageType(enum.IntEnum):
    HELLO = 1
    CURSOR = 2
    CHANGES = 3
    EOSE = 4
    CREDIT = 5
    PING = 6
    PONG = 7
    ERROR = 8
    CLOSE = 9
    BACKLOG = 10
    HAVE = 11
    LIMITS = 12
    PART = 13
    SNAPSHOT_PART = 14
    SNAPSHOT_END = 15


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each side sends: who it is and what it accepts."""

    protocol_min: int
    protocol_max: int
    site_id: bytes
    name: str
    schema_version: int
    schema_fingerprint: bytes
    max_batch_rows: int
    """The most change rows the sender of this Hello accepts in one frame."""
    window: int
    """How many CHANGES frames the sender of this Hello lets the other have in flight."""
    nonce: int
    """Random per connection; breaks ties between duplicate sessions."""


@dataclass(frozen=True, slots=True)
class CursorMessage:
    """The sender's version vector: send me what is above it."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class Changes:
    """Change rows; ``final`` ends a page, which the receiver applies atomically."""

    changes: list[Change]
    final: bool
    schema: int | None = None
    """The schema version the rows may need, when newer than the sender's own
    (it serves on rows it holds for a newer schema); None otherwise."""
    parted: int | None = None
    """The index of the row whose value travelled in the PART frames just
    before this frame (its ``val`` here is ignored when encoding, and a
    placeholder when decoded), or None."""


@dataclass(frozen=True, slots=True)
class LimitsMessage:
    """What the sender accepts beyond HELLO (protocol 3), sent just before its CURSOR."""

    max_frame_bytes: int
    max_value_bytes: int
    snapshot_bytes: int = 0
    """(protocol 4) The largest snapshot the sender takes in place of a
    catch-up, in bytes; 0 when it takes none (it is not a fresh device, or
    does not want snapshots). Sent only with protocol 4."""


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of one value too large for a frame (protocol 3).

    The chunks of one value come in order, each frame saying the value's whole
    length in bytes (``total``) and whether it is text (UTF-8) or a blob; the
    CHANGES frame that follows the last one carries the row.
    """

    total: int
    text: bool
    chunk: bytes | memoryview


@dataclass(frozen=True, slots=True)
class SnapshotPart:
    """A piece of a database snapshot (protocol 4), in order; ``total`` is the
    whole file's length in bytes, the same in every part. Uses one credit,
    like a CHANGES frame."""

    total: int
    chunk: bytes | memoryview


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """The snapshot is complete (protocol 4): its length, its SHA-256, and the
    cursor it holds (the version vector the receiver will hold once it is
    installed). The receiver answers with a CURSOR: its cursor after the
    install, or its cursor before it if it refused the snapshot."""

    size: int
    sha256: bytes
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class Have:
    """The sender now holds every change of each listed origin up to its version
    (it got them from a third peer): the receiver need not send them."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class EoseMessage:
    """End of stored events: the catch-up is complete; live changes follow."""


@dataclass(frozen=True, slots=True)
class Credit:
    """Permission to send ``frames`` more CHANGES frames."""

    frames: int


@dataclass(frozen=True, slots=True)
class Backlog:
    """About how many change rows the sender's catch-up holds (for progress)."""

    rows: int


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Error:
    """The sender failed the session; it closes after this."""

    code: ErrorCode
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """The sender ends the session cleanly."""


Message: TypeAlias = (
    Hello
    | CursorMessage
    | Changes
    | EoseMessage
    | Credit
    | Ping
    | Pong
    | Error
    | Close
    | Backlog
    | Have
    | LimitsMessage
    | Part
    | SnapshotPart
    | SnapshotEnd
)


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: its number in the sender's sequence and its message."""

    number: int
    message: Message = field()
