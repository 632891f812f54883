"""Drives one SyncSession over one Channel: the asyncio half of a session.

A :class:`SessionDriver` owns its channel from :meth:`run` until it returns.
It reads frames, feeds the pure protocol, applies pages through the peer's
store thread, and streams changes (catch-up, EOSE, then live) whenever the
peer wakes it. The Peer supplies the hooks in :class:`SessionHost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from peer import events
from peer.bootstrap import IncomingSnapshot, OutgoingSnapshot
from peer.changes import change_size
from peer.errors import (
    ChannelClosed,
    CrpeerError,
    ErrorCode,
    InvalidChangeError,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
    TransportError,
    ValueTooLargeError,
)
from peer.messages import FRAME_OVERHEAD
from peer.protocol import (
    BacklogReceived,
    ChangesReceived,
    CreditReceived,
    CursorReceived,
    EoseReceived,
    HelloReceived,
    RemoteClosed,
    SessionState,
    SnapshotAnswered,
    SnapshotEndReceived,
    SnapshotPartReceived,
    SyncSession,
)
from peer.store import ApplyResult, Change, Cursor, LargeGroup
from peer.store_worker import Page
from transports.base import Channel

__all__ = ["Refusal", "SessionDriver", "SessionHost", "SessionStats"]

SNAPSHOT_CHUNK = 1 << 20
"""Bytes of a snapshot per SNAPSHOT_PART frame (at most; less with a smaller
frame limit): a window of them in flight keeps a disk-speed stream going
while the receiver holds a few MiB, not a window of 8 MiB frames."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session is refused after the remote's HELLO.

    ``reason`` goes on the wire with ``code`` (no internal details);
    ``detail`` is the local error message (logs, events).
    """

    code: ErrorCode
    reason: str
    detail: str


class SessionHost(Protocol):
    """What a session needs from its Peer."""

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

    def page(self) -> AbstractAsyncContextManager[Page]:
        """A page that spans frames: ``async with host.page() as page:``, then
        ``await page.apply(changes, hold_for)`` for each frame (as :meth:`apply`).
        It commits when the block exits normally, rolls back when it exits
        by an exception (CancelledError included); other merges and app
        writes wait meanwhile (see :meth:`peer.store_worker.StoreWorker.page`)."""
        ...

    async def begin_page(self) -> None:
        """Open a transaction for a page that spans frames (blocks other applies)."""
        ...

    async def apply_in_page(self, changes: list[Change], hold_for: int) -> ApplyResult: ...

    @property
    def served_schema(self) -> int:
        """The newest schema version a row the store serves may need (its own
        as of its latest read, or a held row's)."""
        ...

    @property
    def can_stream_pages(self) -> bool:
        """Whether a page may stay open across frames (else it is buffered)."""
        ...

    async def end_page(self, commit: bool) -> None: ...
    async def local_cursor(self) -> Cursor: ...
    async def backlog_estimate(self, cursor: Cursor, exclude: bytes) -> int: ...
    async def admit(self, driver: SessionDriver) -> Refusal | None:
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
        self, driver: SessionDriver, incoming: IncomingSnapshot, end: SnapshotEndReceived
    ) -> bool:
        """Check and install a received snapshot; False if it was refused
        (an event says why; the store is unchanged)."""
        ...

    def emit(self, event: events.Event) -> None: ...
    def applied(self, source: SessionDriver, result: ApplyResult) -> None:
        """Remote changes landed: wake the other sessions to relay them."""
        ...


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


class SessionDriver:
    """One live session. Call :meth:`run` once; :meth:`wake` when the store changed."""

    def __init__(
        self,
        channel: Channel,
        session: SyncSession,
        host: SessionHost,
        *,
        outbound: bool,
        ping_interval: float,
        idle_timeout: float,
        peer_id: str | None = None,
    ) -> None:
        self.channel = channel
        self.session = session
        self.host = host
        self.outbound = outbound
        self.peer_id = peer_id
        self.stats = SessionStats()
        self.remote: events.RemotePeer | None = None
        self.error: CrpeerError | None = None
        self.duplicate = False
        """The session ended because another session with the same remote
        wins the tie-break (see :meth:`tie_break_key`), closed by either
        side. Not an error: the other session serves that peer."""
        self._connected = False
        self.eose_received = asyncio.Event()
        self.eose_at: float | None = None
        """Wall-clock time of the remote's EOSE, for status reports."""
        self.done = asyncio.Event()
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._wake = asyncio.Event()
        self._credit = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._receiving = False
        self._handling = False
        self._stop_handling = False
        self._page_open = False
        self._page_rows = 0
        """Changes applied in the open page (uncommitted)."""
        self._page_result: ApplyResult | None = None
        self._buffered: list[Change] = []
        self._blocked: set[bytes] = set()
        """Origins whose next transaction the remote does not take (a value too
        large): the sender leaves them out for the rest of the session."""
        self._backlog: tuple[int, float, int, int, int] | None = None
        """The remote's announced backlog: (rows, when, and the changes, bytes
        and app-table rows received before)."""
        self._page_table_rows = 0
        """App-table rows received in the open page."""
        self._incoming: IncomingSnapshot | None = None
        """A snapshot being received (protocol 4)."""
        self._snapshot_answered = asyncio.Event()
        self._log = logging.getLogger("crpeer.session")

    @property
    def address(self) -> str:
        return self.channel.remote.address

    def wake(self) -> None:
        """Something new may be in the store: the sender looks again."""
        self._wake.set()

    def announce(self, cursor: Cursor) -> None:
        """Tell the remote we now hold ``cursor`` (committed changes that came
        from another session), so it does not send them to us again."""
        self.session.send_have(cursor)
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Send what is queued from a task of its own, for the reader and the
        applier: they must never wait on a send. When both peers' sends wait
        on the other's reads (full socket buffers, or an HTTP/SSE window,
        behind large frames), a reader that waited would hold up its own
        remote's sends for good."""
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.get_running_loop().create_task(
                self._flush_quietly(), name="crpeer-flush"
            )

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except ChannelClosed:
            pass  # the reader sees it too, and ends the session
        except CrpeerError as exc:
            self._log.warning("session %s: send failed: %s", self.address, exc)
            if self.error is None:
                self.error = exc
            with contextlib.suppress(TimeoutError, CrpeerError):
                await asyncio.wait_for(self.channel.close(), timeout=2.0)

    def tie_break_key(self) -> tuple[bytes, int]:
        """Of two sessions with one peer, both sides keep the smaller key.

        The key is the dialing side's site id and connection nonce, which both
        ends know alike: when two peers dial each other, the connection
        dialed by the one with the smaller site id survives.
        """
        remote = self.session.remote
        assert remote is not None
        if self.outbound:
            return self.session.local.site_id, self.session.nonce
        return remote.site_id, remote.nonce

    async def close(self, code: ErrorCode | None = None, reason: str = "") -> None:
        """End the session (with an error code and a short public ``reason``, or
        cleanly), then the channel."""
        if code is ErrorCode.DUPLICATE_SESSION:
            self.duplicate = True
        with contextlib.suppress(CrpeerError, TimeoutError):
            if self.session.state.value != "closed" or code is not None:
                if code is not None:
                    self.session.send_error(code, reason)
                else:
                    self.session.send_close()
            await asyncio.wait_for(self._flush(), timeout=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.channel.close(), timeout=2.0)

    async def run(self) -> None:
        """Run the session until either side ends it; never raises a CrpeerError.

        Failures are kept in :attr:`error` and reported as events.
        """
        try:
            self.session.hello()
            await self._flush()
            await self._read_loop()
        except RemoteProtocolError as exc:
            self.error = exc
            self._log.info("session %s failed: %s", self.address, exc)  # an event says it
            await self.close(exc.code)
        except InvalidChangeError as exc:
            self.error = exc
            self._log.info("session %s sent invalid changes: %s", self.address, exc)
            await self.close(ErrorCode.INVALID_CHANGE)
        except StoreError as exc:
            self.error = exc
            self._log.error("session %s: store failed: %s", self.address, exc)
            await self.close(ErrorCode.INTERNAL)
        except TimeoutError:
            self.error = RemoteProtocolError(ErrorCode.TIMEOUT, "remote silent too long")
            await self.close(ErrorCode.TIMEOUT)
        except TransportError as exc:
            if not isinstance(exc, ChannelClosed):
                self.error = exc
        except LocalProtocolError:
            # The session closed (an error or close was exchanged) while a frame
            # was in flight; nothing is left to do but end.
            self._log.debug("session %s: frame after close ignored", self.address)
        finally:
            # An unfinished transaction is rolled back (whole transactions
            # only): say how many of its changes the remote must send again.
            discarded = len(self._buffered) + (self._page_rows if self._page_open else 0)
            if self._page_open:
                self._page_open = False
                with contextlib.suppress(CrpeerError):
                    await self.host.end_page(commit=False)
            for task in (self._sender, self._announcing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CrpeerError):
                        await task
            if self._incoming is not None:
                # A snapshot cut off midway: the store never saw it.
                incoming, self._incoming = self._incoming, None
                incoming.discard()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.close(), timeout=2.0)
            if self.error is not None:
                self.host.emit(events.SessionFailed(self.remote, self.address, self.error))
            if self.remote is not None and self._connected:
                self.host.emit(events.Disconnected(self.remote, self.error, discarded))
            self.done.set()

    async def _flush(self) -> None:
        """Send every queued frame in order (frames are numbered when queued),
        including those queued while it sends."""
        async with self._send_lock:
            while frames := self.session.data_to_send():
                for frame in frames:
                    await self.channel.send(frame)
                    self.stats.frames_sent += 1
                    self.stats.bytes_sent += len(frame)

    async def _read_loop(self) -> None:
        """Read and decode frames; hand what they carry to :meth:`_handle_loop`.

        Decoding the next frame overlaps the store's apply of this one. The
        handler takes events in order (changes, backlog, EOSE, close), so the
        app sees them in the order the remote sent them; credit is taken here,
        at once, so the sender is never held up by an apply. If the handler
        fails, its error ends the session from here (and the remote is told).
        """
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        handler = asyncio.create_task(self._handle_loop(queue), name="crpeer-apply")
        reader = asyncio.current_task()
        assert reader is not None

        def handler_done(task: asyncio.Task[None]) -> None:
            if self._receiving and not task.cancelled() and task.exception() is not None:
                reader.cancel()  # stop waiting for a frame; the error is raised below

        handler.add_done_callback(handler_done)
        try:
            while self.session.state is not SessionState.CLOSED:
                if handler.done():
                    handler.result()  # raises its error
                self._receiving = True
                try:
                    frame = await asyncio.wait_for(self.channel.recv(), timeout=self._idle_timeout)
                except asyncio.CancelledError:
                    if handler.done() and not handler.cancelled() and handler.exception():
                        reader.uncancel()
                        handler.result()
                    raise
                finally:
                    self._receiving = False
                self.stats.frames_received += 1
                self.stats.bytes_received += len(frame)
                for event in self.session.receive(frame):
                    match event:
                        case HelloReceived():
                            await self._on_hello(event)
                            if self.session.state.value == "closed":  # refused at admission
                                return
                        case CursorReceived():
                            assert self.remote is not None
                            self.host.emit(events.Synced(self.remote, event.cursor))
                            self._sender = asyncio.create_task(
                                self._send_loop(), name="crpeer-sender"
                            )
                            self._sender.add_done_callback(self._sender_done)
                        case CreditReceived():
                            self._credit.set()
                        case SnapshotAnswered():
                            self._snapshot_answered.set()
                        case _:
                            await _put(queue, handler, event)
                self._flush_soon()
            await _put(queue, handler, None)
            await handler
        finally:
            if not handler.done():
                # Let an apply under way finish (a page half-opened by a
                # cancelled call would stay open); cancel only a waiting handler.
                self._stop_handling = True
                if not self._handling:
                    handler.cancel()
                with contextlib.suppress(asyncio.CancelledError, CrpeerError):
                    await handler

    async def _handle_loop(self, queue: asyncio.Queue[object]) -> None:
        """Apply changes and report events, in the order frames brought them."""
        while not self._stop_handling and (event := await queue.get()) is not None:
            self._handling = True
            match event:
                case ChangesReceived():
                    await self._on_changes(event.changes, event.final, event.schema)
                case SnapshotPartReceived():
                    if self._incoming is None:
                        self._incoming = self.host.incoming_snapshot()
                    await asyncio.to_thread(self._incoming.write, event.chunk)
                    self.session.frame_applied()
                    self._flush_soon()
                case SnapshotEndReceived():
                    await self._on_snapshot_end(event)
                case BacklogReceived():
                    self._backlog = (
                        event.rows,
                        time.monotonic(),
                        self.stats.rows_received,
                        self.stats.bytes_received,
                        self.stats.table_rows_received,
                    )
                case EoseReceived():
                    assert self.remote is not None
                    self.eose_received.set()
                    self.eose_at = time.time()
                    self.host.emit(events.Eose(self.remote))
                case RemoteClosed():
                    if event.error is not None and event.error.code == ErrorCode.DUPLICATE_SESSION:
                        self.duplicate = True
                        self._log.debug("session %s: the remote keeps another one", self.address)
                    elif event.error is not None and event.error.code != ErrorCode.SHUTDOWN:
                        self.error = RemoteProtocolError(
                            event.error.code,
                            f"remote closed: {event.error.reason or 'no reason given'}",
                        )
                    return
            self._handling = False

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, LocalProtocolError) and self.session.state is SessionState.CLOSED:
            # The session closed (a stop, the remote's close or error) while
            # a page was on its way: nothing failed, the sender just ends, and
            # whoever ended the session closes the channel, after sending its
            # ERROR or CLOSE, which closing here could cut off.
            self._log.debug("session %s: sender stopped after close", self.address)
            return
        if not isinstance(exc, ChannelClosed):
            self._log.warning("session %s: sender stopped: %r", self.address, exc)
            if isinstance(exc, CrpeerError) and self.error is None:
                self.error = exc
        # Unblock the reader so the session ends.
        asyncio.get_running_loop().create_task(self.channel.close())

    async def _on_hello(self, event: HelloReceived) -> None:
        hello = event.hello
        remote = self.channel.remote
        self.remote = events.RemotePeer(
            site_id=hello.site_id,
            name=hello.name,
            address=remote.address,
            transport=remote.transport,
            inbound=remote.inbound,
            peer_id=self.peer_id,
        )
        refusal = await self.host.admit(self)
        if refusal is not None:
            if refusal.code is ErrorCode.SITE_ID_CLAIMED:
                self.remote = None  # the site id is not its own: report it by address only
            if refusal.code is ErrorCode.DUPLICATE_SESSION:
                self._log.debug("session %s: %s", self.address, refusal.detail)
            else:
                self.error = RemoteProtocolError(refusal.code, refusal.detail)
            await self.close(refusal.code, refusal.reason)
            return
        self._connected = True
        self.host.emit(events.Connected(self.remote))
        snapshot = await self.host.takes_snapshot()
        self.session.send_cursor(await self.host.local_cursor(), snapshot=snapshot)
        await self._flush()

    async def _on_snapshot_end(self, end: SnapshotEndReceived) -> None:
        """Install the snapshot (or refuse it), then tell the remote what we hold now."""
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        try:
            await asyncio.to_thread(incoming.finish)
            await self.host.install_snapshot(self, incoming, end)
        finally:
            incoming.discard()
        self.session.send_snapshot_answer(await self.host.local_cursor())
        self._flush_soon()

    async def _on_changes(self, changes: list[Change], final: bool, schema: int) -> None:
        assert self.remote is not None
        assert self.session.remote is not None
        # Rows a newer schema needs (the remote's, or one its frame says it
        # serves on) are held; from an equal or older schema they are invalid.
        newer = schema if schema > self.session.local.schema_version else 0
        table_rows = len({(change[0], change[1]) for change in changes})
        self.stats.table_rows_received += table_rows
        self._page_table_rows += table_rows
        if not self.host.can_stream_pages:
            # An in-memory store cannot keep a page open: gather it, apply it whole.
            if not final:
                self._buffered.extend(changes)
                self.stats.rows_received += len(changes)
                self.session.frame_applied()
                self._flush_soon()
                self._report_progress()
                return
            if self._buffered:
                self.stats.rows_received -= len(self._buffered)
                changes, self._buffered = self._buffered + changes, []
        if final and not self._page_open:
            result = await self.host.apply(changes, newer)
        else:
            if not self._page_open:
                await self.host.begin_page()
                self._page_open = True
                self._page_rows = 0
            result = await self.host.apply_in_page(changes, newer)
            self._page_rows += len(changes)
            if final:
                self._page_open = False
                await self.host.end_page(commit=True)
        self.stats.rows_received += len(changes)
        self.session.frame_applied()
        self._flush_soon()
        self._report_progress()
        self._page_result = _merge_results(self._page_result, result)
        if not final:
            return
        result, self._page_result = self._page_result, None
        assert result is not None
        table_rows, self._page_table_rows = self._page_table_rows, 0
        if result.merged:
            self.host.emit(events.Changed(self.remote, result.tables, result.merged, table_rows))
        if result.held:
            self.host.emit(
                events.Outdated(
                    self.remote,
                    self.session.local.schema_version,
                    max(schema, self.session.remote.schema_version),
                    result.held,
                )
            )
        self.host.applied(self, result)

    def _report_progress(self) -> None:
        if self._backlog is None or self.eose_received.is_set() or self.remote is None:
            return
        expected, since, rows_before, bytes_before, table_rows_before = self._backlog
        received = self.stats.rows_received - rows_before
        self.host.emit(
            events.Progress(
                self.remote,
                received,
                max(expected, received),
                self.stats.bytes_received - bytes_before,
                time.monotonic() - since,
                self.stats.table_rows_received - table_rows_before,
            )
        )

    async def _wait_credit(self, frames: int = 1) -> None:
        while self.session.credit < frames:
            self._credit.clear()
            await self._credit.wait()

    def _all_credit(self) -> int:
        """The remote's whole window: every frame sent so far is applied."""
        assert self.session.remote is not None
        return self.session.remote.window

    async def _send_loop(self) -> None:
        """Catch-up, EOSE, then live: whatever the remote lacks, as credit allows."""
        assert self.session.remote is not None
        remote_site = self.session.remote.site_id
        rows_per_frame = self.session.max_send_rows
        bytes_per_frame = self.session.max_send_bytes
        backlog = await self.host.backlog_estimate(dict(self.session.remote_cursor), remote_site)
        self.session.send_backlog(backlog)
        await self._flush()
        wanted = self.session.snapshot_wanted
        if wanted and backlog >= self.session.limits.snapshot_threshold:
            await self._send_snapshot(wanted)
        last_page_short = False
        while True:
            # After a short page, wait until the remote has applied every
            # frame sent (Nagle's rule): under a stream of small writes, what
            # arrives meanwhile goes out as one page instead of many. "Short"
            # is under half a frame: a page cut short only because its next
            # transaction did not fit (a catch-up of large transactions)
            # still pipelines.
            await self._wait_credit(self._all_credit() if last_page_short else 1)
            self._wake.clear()
            page = await self.host.next_page(
                dict(self.session.remote_cursor),
                rows_per_frame,
                {remote_site, *self._blocked},
                bytes_per_frame,
            )
            if isinstance(page, LargeGroup):
                if page.largest_value > self.session.max_send_value:
                    self._block(
                        ValueTooLargeError(
                            page.origin,
                            page.version,
                            page.largest_value,
                            self.session.max_send_value,
                        )
                    )
                    continue
                await self._send_large_group(page, rows_per_frame, bytes_per_frame)
                last_page_short = False
                continue
            if page and not (page := self._still_lacking(page)):
                continue  # the remote announced all of it during the read: read on
            last_page_short = _is_short(page, rows_per_frame, bytes_per_frame)
            if not page:
                if not self.session.eose_sent:
                    self.session.send_eose()
                    await self._flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._ping_interval)
                if not self._wake.is_set():
                    self.session.send_ping(self.stats.frames_sent)
                    await self._flush()
                continue
            await self._send_page(page)

    async def _send_snapshot(self, wanted: int) -> None:
        """Send a copy of the store in SNAPSHOT_PART frames (one credit each),
        then SNAPSHOT_END, and wait for the remote's new cursor. Sends nothing
        when the copy cannot be made or is larger than ``wanted`` bytes."""
        outgoing = await self.host.make_snapshot()
        if outgoing is None:
            return
        try:
            if outgoing.size > wanted:
                self._log.info(
                    "session %s: a snapshot of %d bytes is over the remote's limit of %d",
                    self.address,
                    outgoing.size,
                    wanted,
                )
                return
            step = min(self.session.frame_limit - FRAME_OVERHEAD, SNAPSHOT_CHUNK)
            while chunk := await asyncio.to_thread(outgoing.read, step):
                await self._wait_credit()
                self.session.send_snapshot_part(outgoing.size, chunk)
                await self._flush()
            self.session.send_snapshot_end(outgoing.sha256, outgoing.cursor)
            await self._flush()
        finally:
            outgoing.discard()  # at once, even when cancelled: a close and an unlink
        try:
            # Pings keep a session alive, so a remote that never answers would
            # hold this sender for good: bound the wait like a silent remote.
            await asyncio.wait_for(self._snapshot_answered.wait(), timeout=self._idle_timeout)
        except TimeoutError:
            raise RemoteProtocolError(
                ErrorCode.TIMEOUT, f"no answer to the snapshot within {self._idle_timeout:g} s"
            ) from None

    async def _send_page(self, page: list[Change]) -> None:
        """Send ``page`` as one frame. A transaction in it that the remote does
        not take (a value too large) blocks its origin: the rest goes without
        that origin's transactions from there on."""
        while page:
            try:
                await self._send_frame(page, final=True)
                return
            except ValueTooLargeError as exc:
                self._block(exc)  # nothing of the page was sent
                page = [c for c in page if c[6] != exc.origin or c[5] < exc.version]

    def _block(self, error: ValueTooLargeError) -> None:
        """Stop sending ``error.origin``'s changes in this session, and say why."""
        assert self.remote is not None
        self._blocked.add(error.origin)
        self._log.warning("session %s: cannot send: %s", self.address, error)
        self.host.emit(events.ValueTooLarge(self.remote, error))

    def _still_lacking(self, page: list[Change]) -> list[Change]:
        """The rows of ``page`` the remote still lacks: while a read waits for
        the read thread, the remote may announce (HAVE) that it got some of
        them from another peer. Groups stay whole (one origin version each)."""
        known = self.session.remote_cursor
        return [change for change in page if change[5] > known.get(change[6], 0)]

    async def _send_frame(self, changes: list[Change], *, final: bool) -> None:
        await self._wait_credit()
        self.session.send_changes(changes, final=final, schema=self.host.served_schema)
        await self._flush()
        self.stats.rows_sent += len(changes)

    async def _send_large_group(
        self, group: LargeGroup, rows_per_frame: int, bytes_per_frame: int
    ) -> None:
        """One transaction larger than a frame: a page of several frames, the
        last one final (empty if the rows ran out exactly), so the receiver
        commits it whole. A row larger than a frame goes alone, its value in
        parts."""
        async for chunk in self.host.read_group(group, rows_per_frame, bytes_per_frame):
            await self._send_frame(chunk, final=False)
        await self._send_frame([], final=True)
        # The group may have shrunk while read (rows overwritten since):
        # the remote holds this version now, whatever it carried.
        cursor = self.session.remote_cursor
        cursor[group.origin] = max(cursor.get(group.origin, 0), group.version)


def _is_short(page: list[Change], rows_per_frame: int, bytes_per_frame: int) -> bool:
    """Under half a frame, by rows and by bytes (see Nagle's rule in the send loop)."""
    return 2 * len(page) < rows_per_frame and 2 * sum(map(change_size, page)) < bytes_per_frame


async def _put(queue: asyncio.Queue[object], handler: asyncio.Task[None], item: object) -> None:
    """Queue ``item`` for the handler; if the handler has stopped, raise its error."""
    if handler.done():
        await handler
        return
    if not queue.full():
        queue.put_nowait(item)
        return
    put = asyncio.ensure_future(queue.put(item))
    queued = False
    try:
        await asyncio.wait({put, handler}, return_when=asyncio.FIRST_COMPLETED)
        queued = put.done()
    finally:
        # Also when this task is cancelled (the peer stops): a put left
        # pending would outlive the session and its event loop.
        if not put.done():
            put.cancel()
    if not queued:
        await handler  # raises its error, or returns: the remote closed


def _merge_results(before: ApplyResult | None, after: ApplyResult) -> ApplyResult:
    """Add up the results of the frames of one page."""
    if before is None:
        return after
    cursor = dict(before.cursor)
    for origin, version in after.cursor.items():
        cursor[origin] = max(version, cursor.get(origin, 0))
    return ApplyResult(
        before.merged + after.merged,
        before.held + after.held,
        before.skipped + after.skipped,
        before.tables | after.tables,
        cursor,
    )
