"""Drives one SyncSession over one Channel: the asyncio half of a session.

A :class:`SessionDriver` owns its channel from :meth:`~SessionDriver.run`
until it returns. It reads frames and feeds the pure protocol; its
:class:`~peer.session_receive.Receiver` applies pages through the peer's
store thread, and its :class:`~peer.session_send.Sender` streams changes
(catch-up, EOSE, then live) whenever the peer wakes it. The Peer supplies
the hooks in :class:`SessionHost`. Everything runs on the peer's event loop.
What the driver knows is read through :meth:`SessionDriver.snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from peer import events
from peer.errors import (
    ChannelClosed,
    CrpeerError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from peer.protocol import (
    CreditReceived,
    CursorReceived,
    HelloReceived,
    PongReceived,
    SnapshotAnswered,
    SyncSession,
)
from peer.session_ending import ending_for
from peer.session_host import PageTransaction, Refusal, SessionHost
from peer.session_receive import Receiver
from peer.session_send import SNAPSHOT_CHUNK, Sender
from peer.session_snapshot import SessionSnapshot, SessionStats
from peer.store import Cursor
from transports.base import Channel

__all__ = [
    "SNAPSHOT_CHUNK",
    "PageTransaction",
    "Refusal",
    "SessionDriver",
    "SessionHost",
    "SessionSnapshot",
    "SessionStats",
]


class SessionDriver:
    """One live session. Call :meth:`run` once; :meth:`wake` when the store changed."""

    def __init__(
        self,
        channel: Channel,
        session: SyncSession,
        host: SessionHost[SessionDriver],
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
        self.eose_received = asyncio.Event()
        """Set once the remote's EOSE is handled (every page before it applied)."""
        self.eose_at: float | None = None
        """Wall-clock time of the remote's EOSE, for status reports."""
        self.done = asyncio.Event()
        """Set when :meth:`run` has returned."""
        self.log = logging.getLogger("crpeer.session")
        self._connected = False
        self._idle_timeout = idle_timeout
        self._send_lock = asyncio.Lock()
        self._sending = Sender(self, ping_interval, idle_timeout)
        self._receiving = Receiver(self)
        self._sender: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._reading = False

    @property
    def address(self) -> str:
        return self.channel.remote.address

    def snapshot(self) -> SessionSnapshot:
        """What this session knows now, copied (see :class:`SessionSnapshot`)."""
        hello = self.session.remote
        return SessionSnapshot(
            remote=self.remote,
            site_id=hello.site_id if hello is not None else None,
            peer_id=self.peer_id,
            address=self.address,
            outbound=self.outbound,
            remote_cursor=dict(self.session.remote_cursor),
            eose_sent=self.session.eose_sent,
            eose_received=self.eose_received.is_set(),
            eose_at=self.eose_at,
            stats=dataclasses.replace(self.stats),
            error=self.error,
            duplicate=self.duplicate,
            closed=self.session.closed,
        )

    def wake(self) -> None:
        """Something new may be in the store: the sender looks again."""
        self._sending.wake()

    def announce(self, cursor: Cursor) -> None:
        """Tell the remote we now hold ``cursor`` (committed changes that came
        from another session), so it does not send them to us again."""
        self.session.send_have(cursor)
        self.flush_soon()

    def flush_soon(self) -> None:
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
            await self.flush()
        except ChannelClosed:
            pass  # the reader sees it too, and ends the session
        except CrpeerError as exc:
            self.log.warning("session %s: send failed: %s", self.address, exc)
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
            if not self.session.closed or code is not None:
                if code is not None:
                    self.session.send_error(code, reason)
                else:
                    self.session.send_close()
            await asyncio.wait_for(self.flush(), timeout=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.channel.close(), timeout=2.0)

    async def run(self) -> None:
        """Run the session until either side ends it; never raises a CrpeerError.

        Failures are kept in :attr:`error` and reported as events (see
        :func:`~peer.session_ending.ending_for`).
        """
        try:
            self.session.hello()
            await self.flush()
            await self._read_loop()
        except (CrpeerError, TimeoutError) as exc:
            ending = ending_for(exc, self.address, self.log)
            if ending is None:
                raise
            if ending.error is not None:
                self.error = ending.error
            if ending.code is not None:
                await self.close(ending.code)
        finally:
            # An unfinished page was rolled back (whole transactions only):
            # say how many of its changes the remote must send again.
            discarded = self._receiving.rolled_back
            for task in (self._sender, self._announcing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CrpeerError):
                        await task
            self._receiving.discard_snapshot()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.close(), timeout=2.0)
            if self.error is not None:
                self.host.emit(events.SessionFailed(self.remote, self.address, self.error))
            if self.remote is not None and self._connected:
                self.host.emit(events.Disconnected(self.remote, self.error, discarded))
            self.done.set()

    async def flush(self) -> None:
        """Send every queued frame in order (frames are numbered when queued),
        including those queued while it sends."""
        async with self._send_lock:
            while frames := self.session.data_to_send():
                for frame in frames:
                    await self.channel.send(frame)
                    self.stats.frames_sent += 1
                    self.stats.bytes_sent += len(frame)

    async def _read_loop(self) -> None:
        """Read and decode frames; hand what they carry to the Receiver.

        Decoding the next frame overlaps the store's apply of this one. The
        receiver takes events in order (changes, backlog, EOSE, close), so the
        app sees them in the order the remote sent them; credit is taken here,
        at once, so the sender is never held up by an apply. If the receiver
        fails, its error ends the session from here (and the remote is told).
        """
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        receiving = self._receiving
        handler = asyncio.create_task(receiving.run(queue), name="crpeer-apply")
        reader = asyncio.current_task()
        assert reader is not None

        def handler_done(task: asyncio.Task[None]) -> None:
            if self._reading and not task.cancelled() and task.exception() is not None:
                reader.cancel()  # stop waiting for a frame; the error is raised below

        handler.add_done_callback(handler_done)
        try:
            while not self.session.closed:
                if handler.done():
                    handler.result()  # raises its error
                self._reading = True
                try:
                    frame = await asyncio.wait_for(self.channel.recv(), timeout=self._idle_timeout)
                except asyncio.CancelledError:
                    if handler.done() and not handler.cancelled() and handler.exception():
                        reader.uncancel()
                        handler.result()
                    raise
                finally:
                    self._reading = False
                self.stats.frames_received += 1
                self.stats.bytes_received += len(frame)
                for event in self.session.receive(frame):
                    match event:
                        case HelloReceived():
                            await self._on_hello(event)
                            if self.session.closed:  # refused at admission
                                return
                        case CursorReceived():
                            assert self.remote is not None
                            self.host.emit(events.Synced(self.remote, event.cursor))
                            self._sender = asyncio.create_task(
                                self._sending.run(), name="crpeer-sender"
                            )
                            self._sender.add_done_callback(self._sender_done)
                        case CreditReceived():
                            self._sending.credit_received()
                        case SnapshotAnswered():
                            self._sending.snapshot_answered()
                        case PongReceived():
                            pass  # the remote is alive: its frame reset the idle timeout
                        case _:
                            await _put(queue, handler, event)
                self.flush_soon()
            await _put(queue, handler, None)
            await handler
        finally:
            if not handler.done():
                # Let an apply under way finish (a page half-opened by a
                # cancelled call would stay open); cancel only a waiting handler.
                receiving.stop = True
                if not receiving.handling:
                    handler.cancel()
                with contextlib.suppress(asyncio.CancelledError, CrpeerError):
                    await handler

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, LocalProtocolError) and self.session.closed:
            # The session closed (a stop, the remote's close or error) while
            # a page was on its way: nothing failed, the sender just ends, and
            # whoever ended the session closes the channel, after sending its
            # ERROR or CLOSE, which closing here could cut off.
            self.log.debug("session %s: sender stopped after close", self.address)
            return
        if not isinstance(exc, ChannelClosed):
            self.log.warning("session %s: sender stopped: %r", self.address, exc)
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
                self.log.debug("session %s: %s", self.address, refusal.detail)
            else:
                self.error = RemoteProtocolError(refusal.code, refusal.detail)
            await self.close(refusal.code, refusal.reason)
            return
        self._connected = True
        self.host.emit(events.Connected(self.remote))
        snapshot = await self.host.takes_snapshot()
        self.session.send_cursor(await self.host.local_cursor(), snapshot=snapshot)
        await self.flush()


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
