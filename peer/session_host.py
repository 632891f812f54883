"""The interfaces around a :class:`~peer.session.SessionDriver`: what it
needs from its peer (:class:`SessionHost`: store access, admission,
snapshots, events; the :class:`PageTransaction` it opens through it;
:class:`Refusal`), and what its receiving and sending halves use of it
(:class:`SessionParts`). Protocols only: this module imports no driver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from peer import events
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot
from peer.errors import CrpeerError, ErrorCode
from peer.protocol import SnapshotEndReceived, SyncSession
from peer.session_snapshot import SessionStats
from peer.store import ApplyResult, Change, Cursor, LargeGroup

__all__ = ["PageTransaction", "Refusal", "SessionHost", "SessionParts"]

_Driver = TypeVar("_Driver", contravariant=True)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session is refused after the remote's HELLO.

    ``reason`` goes on the wire with ``code`` (no internal details);
    ``detail`` is the local error message (logs, events).
    """

    code: ErrorCode
    reason: str
    detail: str


class PageTransaction(Protocol):
    """A page's open transaction (see :meth:`SessionHost.page`)."""

    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Apply one frame of the page inside its transaction (see :meth:`SessionHost.apply`)."""
        ...


class SessionHost(Protocol[_Driver]):
    """What a session needs from its Peer. ``_Driver`` is the driver type the
    peer's callbacks take (:class:`~peer.session.SessionDriver`)."""

    async def next_page(
        self, cursor: Cursor, limit: int, exclude: Collection[bytes], max_bytes: int
    ) -> list[Change] | LargeGroup:
        """At most ``limit`` rows and ``max_bytes`` (by change_size), whole
        groups; the first group alone larger comes as a LargeGroup."""
        ...

    def read_group(
        self, group: LargeGroup, chunk: int, max_bytes: int
    ) -> AsyncIterator[list[Change]]: ...
    async def apply(self, changes: list[Change], hold_for: int) -> ApplyResult:
        """Apply one whole page (its own transaction). Rows for a table or
        column this side lacks are held as needing schema ``hold_for``, or
        rejected (InvalidChangeError) when it is 0."""
        ...

    def page(self) -> AbstractAsyncContextManager[PageTransaction]:
        """A transaction for a page that spans frames, for ``async with``:
        committed when the block ends normally, rolled back when it ends with
        an exception or a cancellation. Other applies wait until it ends."""
        ...

    @property
    def served_schema(self) -> int:
        """The newest schema version a row the store serves may need (its own
        as of its latest read, or a held row's)."""
        ...

    async def local_cursor(self) -> Cursor: ...
    async def backlog_estimate(self, cursor: Cursor, exclude: bytes) -> int: ...
    async def admit(self, driver: _Driver) -> Refusal | None:
        """Called after the remote hello: None to go on, or why to refuse it."""
        ...

    async def takes_snapshot(self) -> bool:
        """Whether to ask for a snapshot: this side is a fresh device and wants one."""
        ...

    async def make_snapshot(self) -> OutgoingSnapshot | None:
        """A copy of the store to send (None if it cannot be made; logged)."""
        ...

    def incoming_snapshot(self) -> IncomingSnapshot:
        """A new file to receive a snapshot into (raises SnapshotError)."""
        ...

    async def install_snapshot(
        self, driver: _Driver, incoming: IncomingSnapshot, end: SnapshotEndReceived
    ) -> bool:
        """Check and install a received snapshot; False if it was refused
        (an event says why; the store is unchanged)."""
        ...

    def emit(self, event: events.Event) -> None: ...
    def applied(self, source: _Driver, result: ApplyResult) -> None:
        """Remote changes landed: wake the other sessions to relay them."""
        ...


class SessionParts(Protocol):
    """What the driver's :class:`~peer.session_receive.Receiver` and
    :class:`~peer.session_send.Sender` use of it (all on its event loop)."""

    error: CrpeerError | None
    duplicate: bool
    eose_at: float | None

    @property
    def session(self) -> SyncSession: ...
    @property
    def host(self) -> SessionHost[Any]: ...
    @property
    def stats(self) -> SessionStats: ...
    @property
    def remote(self) -> events.RemotePeer | None: ...
    @property
    def eose_received(self) -> asyncio.Event: ...
    @property
    def log(self) -> logging.Logger: ...
    @property
    def address(self) -> str: ...
    async def flush(self) -> None:
        """Send every queued frame now (see :meth:`SessionDriver.flush
        <peer.session.SessionDriver.flush>`)."""
        ...

    def flush_soon(self) -> None:
        """Send what is queued from a task of its own; never waits."""
        ...
