"""A graceful stop is quiet: no session error for a page cut by the close,
no task left pending behind the session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer import events
from peer.errors import ChannelClosed, LocalProtocolError
from peer.peer import Peer
from peer.protocol import Limits
from peer.retry import Backoff
from peer.store import Store
from tests.hooked_store import HookedStore
from tests.support import holds_within, wait_for
from transports.base import Channel, ChannelHandler, RemoteInfo
from transports.memory import MemoryNetwork, MemoryTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"


_folders: list[Path] = []


@pytest.fixture(autouse=True)
def store_folder(tmp_path: Path) -> Iterator[None]:
    """Where :func:`new_store` puts its files: the test's own folder."""
    _folders.append(tmp_path)
    yield
    _folders.pop()


def new_store() -> HookedStore:
    """A store in a new file in the test's folder, whose merges and reads
    call a test's hooks."""
    folder = _folders[-1]
    store = HookedStore(folder / f"store{len(list(folder.glob('store*.db')))}.db", [SCHEMA])
    store.make_crr("notes")
    return store


class SlowToClose(Channel):
    """A channel whose end comes late: its close, and a recv that finds it
    closed, first wait for ``may_close`` (at most 10 s)."""

    def __init__(self, inner: Channel, may_close: asyncio.Event) -> None:
        self._inner, self._may_close = inner, may_close

    @property
    def remote(self) -> RemoteInfo:
        return self._inner.remote

    async def send(self, frame: bytes) -> None:
        await self._inner.send(frame)

    async def recv(self) -> bytes:
        try:
            return await self._inner.recv()
        except ChannelClosed:
            await self._wait()
            raise

    def authenticated(self) -> None:
        self._inner.authenticated()

    async def close(self) -> None:
        await self._wait()
        await self._inner.close()

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._may_close.wait(), 10)


class SetsOnLog(logging.Handler):
    """Sets ``event`` (an asyncio.Event: log on the loop's thread) on a
    record whose message holds ``text``."""

    def __init__(self, text: str, event: asyncio.Event) -> None:
        super().__init__(logging.DEBUG)
        self._text, self._event = text, event

    def emit(self, record: logging.LogRecord) -> None:
        if self._text in record.getMessage():
            self._event.set()


class SlowToCloseTransport(MemoryTransport):
    """A memory listener whose accepted channels are :class:`SlowToClose`."""

    def __init__(self, network: MemoryNetwork, name: str, may_close: asyncio.Event) -> None:
        super().__init__(network, name)
        self._may_close = may_close

    async def start(self, handler: ChannelHandler) -> None:
        async def wrapped(channel: Channel) -> None:
            await handler(SlowToClose(channel, self._may_close))

        await super().start(wrapped)


def new_peer(
    network: MemoryNetwork,
    store: Store,
    name: str,
    connect: list[str],
    transport: MemoryTransport | None = None,
) -> Peer:
    return Peer(
        store,
        [transport or MemoryTransport(network, name)],
        name=name,
        connect=connect,
        limits=Limits(max_batch_rows=5, window=4),
        backoff=Backoff(initial=0.01, maximum=0.2),
        poll_interval=0.02,
        insecure=True,
    )


async def test_a_page_cut_by_a_stop_is_not_a_session_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    network = MemoryNetwork(seed=3)
    stores = [new_store(), new_store()]
    # The channel closes only once the sender task has ended on the page
    # read across the close (it logs "sender stopped ..." either way).
    sender_ended = asyncio.Event()
    ended = SetsOnLog("sender stopped", sender_ended)
    logging.getLogger("crpeer.session").addHandler(ended)
    sender = new_peer(
        network, stores[0], "a", [], transport=SlowToCloseTransport(network, "a", sender_ended)
    )
    receiver = new_peer(network, stores[1], "b", ["memory://a"])
    seen: list[events.Event] = []
    sender.subscribe(seen.append)
    await sender.start()
    await receiver.start()
    try:
        await wait_for(
            lambda: len(sender.sessions) == 1 and len(receiver.sessions) == 1, interval=0.01
        )
        driver = sender.sessions[0]
        reading = threading.Event()

        def read_across_the_close(page: object) -> None:
            # The read (on the sender's read thread) finishes only once the
            # session has closed: the page reaches the sender after the stop
            # began, and before its channel has closed.
            if not page:
                return
            reading.set()
            holds_within(lambda: driver.session.closed, interval=0.001)

        stores[0].after_next_page = read_across_the_close
        await sender.execute("INSERT INTO notes VALUES (1, 'cut by the stop')")
        await asyncio.to_thread(reading.wait, 10)  # the sender is inside the read
        with caplog.at_level(logging.DEBUG, logger="crpeer.session"):
            await sender.stop()
        failed = [e for e in seen if isinstance(e, events.SessionFailed)]
        assert not failed, failed
        disconnected = [e for e in seen if isinstance(e, events.Disconnected)]
        assert [e.error for e in disconnected] == [None]
        assert "sender stopped after close" in caplog.text
        assert not [r for r in caplog.records if r.name == "crpeer.session" and r.levelno >= 30]
        assert not isinstance(driver.error, LocalProtocolError)
    finally:
        logging.getLogger("crpeer.session").removeHandler(ended)
        await sender.stop()
        await receiver.stop()
        for store in stores:
            store.close()


def queue_puts() -> list[asyncio.Task[object]]:
    """Pending tasks that put into an asyncio.Queue (a reader handing on a frame)."""
    return [t for t in asyncio.all_tasks() if "Queue.put" in repr(t.get_coro())]


async def test_a_stop_leaves_no_queue_put_pending() -> None:
    network = MemoryNetwork(seed=4)
    stores = [new_store(), new_store()]
    for i in range(40):
        stores[0].execute("INSERT INTO notes VALUES (?, 'x')", (i,))
    source = new_peer(network, stores[0], "a", [])
    receiver = new_peer(network, stores[1], "b", ["memory://a"])
    gate = threading.Event()
    applying = threading.Event()

    def stuck_apply(changes: object, in_page: bool) -> None:
        # The receiver's store thread is stuck in a merge until the gate opens.
        applying.set()
        gate.wait(10)

    stores[1].before_apply = stuck_apply
    await source.start()
    await receiver.start()
    try:
        assert await asyncio.to_thread(applying.wait, 10)
        # Frames pile up: the reader waits to queue one.
        await wait_for(lambda: bool(queue_puts()), interval=0.01)
        stopping = asyncio.create_task(receiver.stop())
        # The stop cancels the reader while the merge is still stuck: its
        # put goes with it, before the stop can finish.
        await wait_for(lambda: not queue_puts(), interval=0.01)
        assert not stopping.done()
        gate.set()
        await asyncio.wait_for(stopping, 10)
        await asyncio.sleep(0)  # a cancelled put finishes on the next turn
        left = queue_puts()
        assert not left, left
    finally:
        gate.set()
        await receiver.stop()
        await source.stop()
        for store in stores:
            store.close()
