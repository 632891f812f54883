"""What :meth:`SyncSession.receive <peer.protocol.SyncSession.receive>`
returns: one small frozen dataclass per thing that happened. The driver acts
on each (the docstrings say how) and calls nothing else on the session for it
unless the docstring says so."""

from __future__ import annotations

from dataclasses import dataclass

from peer.changes import Change, Cursor
from peer.messages import Error, Hello

__all__ = [
    "BacklogReceived",
    "ChangesReceived",
    "CreditReceived",
    "CursorReceived",
    "EoseReceived",
    "Event",
    "HelloReceived",
    "PongReceived",
    "RemoteClosed",
    "SnapshotAnswered",
    "SnapshotEndReceived",
    "SnapshotPartReceived",
]


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The remote introduced itself. The driver checks trust, then sends its cursor."""

    hello: Hello
    remote_schema_newer: bool
    """The remote's schema version is above ours (its rows may need held)."""


@dataclass(frozen=True, slots=True)
class CursorReceived:
    """The remote's version vector: the driver may start sending changes."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class ChangesReceived:
    """One CHANGES frame. The driver applies it, then calls :meth:`SyncSession.frame_applied`.

    A page is the frames up to and including one with ``final``: the driver
    applies them in one transaction, committed with the final frame (so a
    transaction larger than a frame never needs to be held in memory). While
    a page is open (:attr:`SyncSession.page_open`) the session refuses EOSE,
    BACKLOG, HELLO, LIMITS and snapshot frames; only more CHANGES, or the
    remote's close, follow as events.
    """

    changes: list[Change]
    final: bool
    schema: int = 0
    """The schema version these rows may need: the remote's announced one, or
    the newer one its frame carries."""
    hold_for: int = 0
    """``schema`` when it is above this side's schema version, else 0: rows
    for a table or column this side lacks are held as needing this schema
    version, or are invalid when it is 0."""


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
    """The answer to a ping this side sent (nothing to do)."""

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
