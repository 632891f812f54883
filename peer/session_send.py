"""The sending half of a :class:`~peer.session.SessionDriver`: catch-up,
EOSE, then live changes, as the remote's credit allows.

:class:`Sender` runs as the driver's sender task on the peer's event loop,
from the remote's CURSOR until the session ends. It reads pages through the
host's read thread, hands them to the pure protocol, and flushes through the
driver. A fresh remote that asks for one may get a snapshot first.
"""

from __future__ import annotations

import asyncio
import contextlib

from peer import events
from peer.changes import change_size
from peer.errors import ErrorCode, RemoteProtocolError, ValueTooLargeError
from peer.messages import FRAME_OVERHEAD
from peer.session_host import SessionParts
from peer.store import Change, LargeGroup

__all__ = ["SNAPSHOT_CHUNK", "Sender"]

SNAPSHOT_CHUNK = 1 << 20
"""Bytes of a snapshot per SNAPSHOT_PART frame (at most; less with a smaller
frame limit): a window of them in flight keeps a disk-speed stream going
while the receiver holds a few MiB, not a window of 8 MiB frames."""


class Sender:
    """Sends one session's changes; see :meth:`run`. :meth:`wake`,
    :meth:`credit_received` and :meth:`snapshot_answered` are called by the
    driver's read loop on the same event loop."""

    def __init__(self, driver: SessionParts, ping_interval: float, idle_timeout: float) -> None:
        self._driver = driver
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._wake = asyncio.Event()
        self._credit = asyncio.Event()
        self._answered = asyncio.Event()
        self._blocked: set[bytes] = set()
        """Origins whose next transaction the remote does not take (a value too
        large): the sender leaves them out for the rest of the session."""

    def wake(self) -> None:
        """Something new may be in the store: look again."""
        self._wake.set()

    def credit_received(self) -> None:
        self._credit.set()

    def snapshot_answered(self) -> None:
        self._answered.set()

    async def _wait_credit(self, frames: int = 1) -> None:
        while self._driver.session.credit < frames:
            self._credit.clear()
            await self._credit.wait()

    async def run(self) -> None:
        """Catch-up, EOSE, then live: whatever the remote lacks, as credit allows.

        Runs until cancelled; raises LocalProtocolError once the session is
        closed, and what the store or channel raises.
        """
        driver = self._driver
        session, host = driver.session, driver.host
        assert session.remote is not None
        remote_site, window = session.remote.site_id, session.remote.window
        rows_per_frame = session.max_send_rows
        bytes_per_frame = session.max_send_bytes
        backlog = await host.backlog_estimate(dict(session.remote_cursor), remote_site)
        session.send_backlog(backlog)
        await driver.flush()
        wanted = session.snapshot_wanted
        if wanted and backlog >= session.limits.snapshot_threshold:
            await self._send_snapshot(wanted)
        last_page_short = False
        while True:
            # After a short page, wait until the remote has applied every
            # frame sent (Nagle's rule): under a stream of small writes, what
            # arrives meanwhile goes out as one page instead of many. "Short"
            # is under half a frame: a page cut short only because its next
            # transaction did not fit (a catch-up of large transactions)
            # still pipelines.
            await self._wait_credit(window if last_page_short else 1)
            self._wake.clear()
            page = await host.next_page(
                dict(session.remote_cursor),
                rows_per_frame,
                {remote_site, *self._blocked},
                bytes_per_frame,
            )
            if isinstance(page, LargeGroup):
                if page.largest_value > session.max_send_value:
                    limit = session.max_send_value
                    self._block(
                        ValueTooLargeError(page.origin, page.version, page.largest_value, limit)
                    )
                    continue
                await self._send_large_group(page, rows_per_frame, bytes_per_frame)
                last_page_short = False
                continue
            if page and not (page := self._still_lacking(page)):
                continue  # the remote announced all of it during the read: read on
            last_page_short = _is_short(page, rows_per_frame, bytes_per_frame)
            if not page:
                await self._idle()
                continue
            await self._send_page(page)

    async def _idle(self) -> None:
        """Nothing to send: EOSE once, then wait for a wake, pinging meanwhile."""
        driver = self._driver
        if not driver.session.eose_sent:
            driver.session.send_eose()
            await driver.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._ping_interval)
        if not self._wake.is_set():
            driver.session.send_ping(driver.stats.frames_sent)
            await driver.flush()

    async def _send_snapshot(self, wanted: int) -> None:
        """Send a copy of the store in SNAPSHOT_PART frames (one credit each),
        then SNAPSHOT_END, and wait for the remote's new cursor. Sends nothing
        when the copy cannot be made or is larger than ``wanted`` bytes."""
        driver = self._driver
        outgoing = await driver.host.make_snapshot()
        if outgoing is None:
            return
        try:
            if outgoing.size > wanted:
                driver.log.info(
                    "session %s: a snapshot of %d bytes is over the remote's limit of %d",
                    driver.address,
                    outgoing.size,
                    wanted,
                )
                return
            step = min(driver.session.frame_limit - FRAME_OVERHEAD, SNAPSHOT_CHUNK)
            while chunk := await asyncio.to_thread(outgoing.read, step):
                await self._wait_credit()
                driver.session.send_snapshot_part(outgoing.size, chunk)
                await driver.flush()
            driver.session.send_snapshot_end(outgoing.sha256, outgoing.cursor)
            await driver.flush()
        finally:
            outgoing.discard()  # at once, even when cancelled: a close and an unlink
        try:
            # Pings keep a session alive, so a remote that never answers would
            # hold this sender for good: bound the wait like a silent remote.
            await asyncio.wait_for(self._answered.wait(), timeout=self._idle_timeout)
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
        driver = self._driver
        assert driver.remote is not None
        self._blocked.add(error.origin)
        driver.log.warning("session %s: cannot send: %s", driver.address, error)
        driver.host.emit(events.ValueTooLarge(driver.remote, error))

    def _still_lacking(self, page: list[Change]) -> list[Change]:
        """The rows of ``page`` the remote still lacks: while a read waits for
        the read thread, the remote may announce (HAVE) that it got some of
        them from another peer. Groups stay whole (one origin version each)."""
        known = self._driver.session.remote_cursor
        return [change for change in page if change[5] > known.get(change[6], 0)]

    async def _send_frame(self, changes: list[Change], *, final: bool) -> None:
        driver = self._driver
        await self._wait_credit()
        driver.session.send_changes(changes, final=final, schema=driver.host.served_schema)
        await driver.flush()
        driver.stats.rows_sent += len(changes)

    async def _send_large_group(
        self, group: LargeGroup, rows_per_frame: int, bytes_per_frame: int
    ) -> None:
        """One transaction larger than a frame: a page of several frames, the
        last one final (empty if the rows ran out exactly), so the receiver
        commits it whole. A row larger than a frame goes alone, its value in
        parts."""
        driver = self._driver
        async for chunk in driver.host.read_group(group, rows_per_frame, bytes_per_frame):
            await self._send_frame(chunk, final=False)
        await self._send_frame([], final=True)
        # The group may have shrunk while read (rows overwritten since):
        # the remote holds this version now, whatever it carried.
        driver.session.group_sent(group.origin, group.version)


def _is_short(page: list[Change], rows_per_frame: int, bytes_per_frame: int) -> bool:
    """Under half a frame, by rows and by bytes (see Nagle's rule in the send loop)."""
    return 2 * len(page) < rows_per_frame and 2 * sum(map(change_size, page)) < bytes_per_frame
