"""The receiving half of a :class:`~peer.session.SessionDriver`: applies what
the remote sends, in the order it sent it.

:class:`Receiver` runs as the driver's handler task on the peer's event loop.
The driver's read loop decodes frames and queues the events the pure
protocol returns; the receiver takes them one at a time: a page (one frame,
or frames up to a final one, applied in one transaction through
``host.page()``), snapshot parts and end, the remote's backlog, EOSE, and its
close. It never sends: it queues credit and asks the driver to flush.
"""

from __future__ import annotations

import asyncio
import time

from peer import events
from peer.bootstrap import IncomingSnapshot
from peer.errors import ErrorCode, RemoteProtocolError
from peer.protocol import (
    BacklogReceived,
    ChangesReceived,
    EoseReceived,
    RemoteClosed,
    SnapshotEndReceived,
    SnapshotPartReceived,
)
from peer.session_host import SessionParts
from peer.store import ApplyResult

__all__ = ["Receiver"]


class _PageCut(Exception):
    """The session ended inside a page: its transaction is rolled back.

    ``event`` is what came instead of the page's next frame (the remote's
    close), or None when the session stops."""

    def __init__(self, event: object) -> None:
        super().__init__("page cut")
        self.event = event


class Receiver:
    """Applies one session's received events; see :meth:`run`."""

    def __init__(self, driver: SessionParts) -> None:
        self._driver = driver
        self.handling = False
        """An event is being handled (not waiting for the next one): a
        stopping read loop lets it finish instead of cancelling it."""
        self.stop = False
        """Set by the read loop when it ends: take no further event."""
        self._incoming: IncomingSnapshot | None = None
        """A snapshot being received (protocol 4)."""
        self.rolled_back = 0
        """Changes applied in a page that was then rolled back (the session
        ended inside it): what the remote must send again."""
        self._backlog: tuple[int, float, int, int, int] | None = None
        """The remote's announced backlog: (rows, when, and the changes, bytes
        and app-table rows received before)."""

    def discard_snapshot(self) -> None:
        """Drop a snapshot cut off midway (the store never saw it)."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()

    async def run(self, queue: asyncio.Queue[object]) -> None:
        """Handle queued events until None, the remote's close, or :attr:`stop`.

        Raises what applying fails with (StoreError, InvalidChangeError, ...);
        the driver ends the session with it.
        """
        pending: object = None
        while pending is not None or not self.stop:
            event = pending if pending is not None else await queue.get()
            pending = None
            if event is None:
                return
            self.handling = True
            if isinstance(event, ChangesReceived):
                try:
                    await self._receive_page(event, queue)
                except _PageCut as cut:
                    if cut.event is None:
                        return
                    pending = cut.event  # the close that cut the page
            elif not await self._on_event(event):
                return
            self.handling = False

    async def _next_in_page(self, queue: asyncio.Queue[object]) -> ChangesReceived:
        """The page's next frame; raises _PageCut if something else comes."""
        if self.stop:
            raise _PageCut(None)
        self.handling = False  # a stopping read loop may cancel this wait
        event = await queue.get()
        self.handling = True
        if not isinstance(event, ChangesReceived):
            raise _PageCut(event)
        return event

    async def _receive_page(self, event: ChangesReceived, queue: asyncio.Queue[object]) -> None:
        """Apply one page in one transaction, then report it."""
        host = self._driver.host
        table_rows = self._count(event)
        if event.final:
            result = await host.apply(event.changes, event.hold_for)
        else:
            merged: ApplyResult | None = None
            applied_rows = 0
            try:
                async with host.page() as page:
                    while True:
                        applied = await page.apply(event.changes, event.hold_for)
                        applied_rows += len(event.changes)
                        merged = _merge_results(merged, applied)
                        if event.final:
                            break
                        self._frame_done(event)
                        event = await self._next_in_page(queue)
                        table_rows += self._count(event)
            except BaseException:
                self.rolled_back = applied_rows
                raise
            assert merged is not None
            result = merged
        self._frame_done(event)  # the final frame, once its page is committed
        self._page_done(result, table_rows, event.schema)

    def _count(self, event: ChangesReceived) -> int:
        """App-table rows ``event`` touches (distinct table and primary key)."""
        table_rows = len({(change[0], change[1]) for change in event.changes})
        self._driver.stats.table_rows_received += table_rows
        return table_rows

    def _frame_done(self, event: ChangesReceived) -> None:
        driver = self._driver
        driver.stats.rows_received += len(event.changes)
        driver.session.frame_applied()
        driver.flush_soon()
        self._report_progress()

    def _page_done(self, result: ApplyResult, table_rows: int, schema: int) -> None:
        driver = self._driver
        remote, local = driver.remote, driver.session.local.schema_version
        assert remote is not None
        if result.merged:
            driver.host.emit(events.Changed(remote, result.tables, result.merged, table_rows))
        if result.held:
            # ``schema``: the remote's announced one, or the newer one its frame carried
            driver.host.emit(events.Outdated(remote, local, schema, result.held))
        driver.host.applied(driver, result)

    async def _on_event(self, event: object) -> bool:
        """Handle one event other than changes; False once the remote closed."""
        driver = self._driver
        match event:
            case SnapshotPartReceived():
                if self._incoming is None:
                    self._incoming = driver.host.incoming_snapshot()
                await asyncio.to_thread(self._incoming.write, event.chunk)
                driver.session.frame_applied()
                driver.flush_soon()
            case SnapshotEndReceived():
                await self._on_snapshot_end(event)
            case BacklogReceived():
                stats = driver.stats
                self._backlog = (
                    event.rows,
                    time.monotonic(),
                    stats.rows_received,
                    stats.bytes_received,
                    stats.table_rows_received,
                )
            case EoseReceived():
                assert driver.remote is not None
                driver.eose_received.set()
                driver.eose_at = time.time()
                driver.host.emit(events.Eose(driver.remote))
            case RemoteClosed(error=error):
                if error is not None and error.code == ErrorCode.DUPLICATE_SESSION:
                    driver.duplicate = True
                    driver.log.debug("session %s: the remote keeps another one", driver.address)
                elif error is not None and error.code != ErrorCode.SHUTDOWN:
                    driver.error = RemoteProtocolError(
                        error.code, f"remote closed: {error.reason or 'no reason given'}"
                    )
                return False
        return True

    async def _on_snapshot_end(self, end: SnapshotEndReceived) -> None:
        """Install the snapshot (or refuse it), then tell the remote what we hold now."""
        driver = self._driver
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        try:
            await asyncio.to_thread(incoming.finish)
            await driver.host.install_snapshot(driver, incoming, end)
        finally:
            incoming.discard()
        driver.session.send_snapshot_answer(await driver.host.local_cursor())
        driver.flush_soon()

    def _report_progress(self) -> None:
        driver = self._driver
        if self._backlog is None or driver.eose_received.is_set() or driver.remote is None:
            return
        expected, since, rows_before, bytes_before, table_rows_before = self._backlog
        stats = driver.stats
        received = stats.rows_received - rows_before
        driver.host.emit(
            events.Progress(
                driver.remote,
                received,
                max(expected, received),
                stats.bytes_received - bytes_before,
                time.monotonic() - since,
                stats.table_rows_received - table_rows_before,
            )
        )


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
