"""A graceful stop is quiet: no session error for a page cut by the close,
no task left pending behind the session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from peer import events
from peer.errors import LocalProtocolError
from peer.peer import Peer
from peer.protocol import Limits
from peer.retry import Backoff
from peer.store import Store
from tests.support import wait_for
from transports.memory import MemoryNetwork, MemoryTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"


_folders: list[Path] = []


@pytest.fixture(autouse=True)
def store_folder(tmp_path: Path) -> Iterator[None]:
    """Where :func:`new_store` puts its files: the test's own folder."""
    _folders.append(tmp_path)
    yield
    _folders.pop()


def new_store() -> Store:
    """A store in a new file in the test's folder."""
    folder = _folders[-1]
    store = Store(folder / f"store{len(list(folder.glob('store*.db')))}.db")
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def new_peer(network: MemoryNetwork, store: Store, name: str, connect: list[str]) -> Peer:
    return Peer(
        store,
        [MemoryTransport(network, name)],
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
    sender = new_peer(network, stores[0], "a", [])
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
        read_page = sender.next_page

        async def page_read_across_the_close(
            cursor: Any, limit: int, exclude: Collection[bytes], max_bytes: int
        ) -> Any:
            # The read finishes only once the session has closed: the page
            # reaches the sender after the stop began.
            page = await read_page(cursor, limit, exclude, max_bytes)
            await driver.closed.wait()
            return page

        sender.next_page = page_read_across_the_close  # type: ignore[method-assign]
        await sender.execute("INSERT INTO notes VALUES (1, 'cut by the stop')")
        await asyncio.sleep(0.05)  # the sender is inside the read
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
        await sender.stop()
        await receiver.stop()
        for store in stores:
            store.close()


async def test_a_stop_leaves_no_queue_put_pending() -> None:
    network = MemoryNetwork(seed=4)
    stores = [new_store(), new_store()]
    for i in range(40):
        stores[0].execute("INSERT INTO notes VALUES (?, 'x')", (i,))
    source = new_peer(network, stores[0], "a", [])
    receiver = new_peer(network, stores[1], "b", ["memory://a"])
    gate = asyncio.Event()
    applying = asyncio.Event()
    apply = receiver.apply

    async def stuck_apply(changes: Any, hold_for: int) -> Any:
        applying.set()
        await gate.wait()
        return await apply(changes, hold_for)

    receiver.apply = stuck_apply  # type: ignore[method-assign]
    await source.start()
    await receiver.start()
    try:
        await asyncio.wait_for(applying.wait(), 10)
        await asyncio.sleep(0.1)  # frames pile up: the reader waits to queue one
        waiting = [t for t in asyncio.all_tasks() if "Queue.put" in repr(t.get_coro())]
        assert waiting, "the reader should be waiting to queue a frame"
        stopping = asyncio.create_task(receiver.stop())
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(stopping, 10)
        await asyncio.sleep(0)  # a cancelled put finishes on the next turn
        left = [t for t in asyncio.all_tasks() if "Queue.put" in repr(t.get_coro())]
        assert not left, left
    finally:
        gate.set()
        await receiver.stop()
        await source.stop()
        for store in stores:
            store.close()
