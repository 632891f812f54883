"""StoreWorker: page transactions spanning frames, and what waits for them
(file stores, the real extension, the worker's real threads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from peer import events
from peer.errors import StoreError
from peer.store import Change, Store
from peer.store_worker import StoreWorker
from tests.support import Node, address, scaled, wait_for

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"


def new_store(path: str | Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def frames(tmp_path: Path, count: int, first_id: int = 0) -> tuple[bytes, list[list[Change]]]:
    """``count`` transactions of one row each, written on a source store: one
    frame of changes per transaction, in order."""
    source = new_store(tmp_path / f"source-{first_id}.db")
    try:
        for i in range(first_id, first_id + count):
            source.execute("INSERT INTO notes VALUES (?, 'remote')", (i,))
        site = source.site_id
        return site, [source.changes_since({site: v}, 100) for v in range(count)]
    finally:
        source.close()


async def notes(worker: StoreWorker) -> list[Any]:
    """The notes, read on the worker's store thread: the store is its
    threads' from open to close."""
    return await worker.run(worker.store.execute, "SELECT id FROM notes ORDER BY id")


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[StoreWorker]:
    worker = StoreWorker(tmp_path / "target.db", [])
    await worker.open()
    await worker.run(worker.store.execute, SCHEMA)
    await worker.run(worker.store.make_crr, "notes")
    yield worker
    await worker.close()


async def test_a_page_commits_when_its_block_ends(worker: StoreWorker, tmp_path: Path) -> None:
    site, pages = frames(tmp_path, 3)
    async with worker.page() as page:
        for changes in pages:
            result = await page.apply(changes, 0)
            assert result.merged == len(changes)
        assert await notes(worker) == []  # other connections see nothing before the commit
    assert await notes(worker) == [(0,), (1,), (2,)]
    assert (await worker.run(worker.store.cursor))[site] == 3
    with pytest.raises(StoreError, match="ended"):
        await page.apply(pages[0], 0)


async def test_a_page_rolls_back_when_its_block_raises(worker: StoreWorker, tmp_path: Path) -> None:
    site, pages = frames(tmp_path, 3)

    async def cut_mid_page() -> None:
        async with worker.page() as page:
            await page.apply(pages[0], 0)
            await page.apply(pages[1], 0)
            raise RuntimeError("cut mid-page")

    with pytest.raises(RuntimeError, match="cut"):
        await cut_mid_page()
    assert await notes(worker) == []
    assert site not in await worker.run(worker.store.cursor)
    # The store is left with no page open: the next one works.
    async with worker.page() as page:
        for changes in pages:
            await page.apply(changes, 0)
    assert await notes(worker) == [(0,), (1,), (2,)]


async def test_a_page_rolls_back_when_its_task_is_cancelled(
    worker: StoreWorker, tmp_path: Path
) -> None:
    site, pages = frames(tmp_path, 2)
    inside = asyncio.Event()

    async def session() -> None:
        async with worker.page() as page:
            await page.apply(pages[0], 0)
            inside.set()
            await asyncio.Event().wait()  # the next frame never comes

    task = asyncio.create_task(session())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await worker.run(lambda: None)  # the rollback was queued before the task ended
    assert await notes(worker) == []
    assert site not in await worker.run(worker.store.cursor)
    await worker.app_write(lambda: worker.store.execute("INSERT INTO notes VALUES (9, 'app')"))
    assert await notes(worker) == [(9,)]


async def test_a_page_cancelled_while_it_opens_leaves_no_transaction_open(
    worker: StoreWorker, tmp_path: Path
) -> None:
    _, pages = frames(tmp_path, 1)
    for turns in range(8):  # cancelled at each point of its opening, in turn
        task = asyncio.create_task(_open_a_page(worker))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with worker.page() as page:
        await page.apply(pages[0], 0)
    assert await notes(worker) == [(0,)]


async def _open_a_page(worker: StoreWorker) -> None:
    async with worker.page():
        await asyncio.Event().wait()


async def test_an_app_write_during_a_page_waits_for_its_commit_then_lands(
    worker: StoreWorker, tmp_path: Path
) -> None:
    _, pages = frames(tmp_path, 2)
    order: list[str] = []

    def app_write() -> None:
        worker.store.execute("INSERT INTO notes VALUES (100, 'app')")
        order.append("app write")

    async with worker.page() as page:
        await page.apply(pages[0], 0)
        write = asyncio.create_task(worker.app_write(app_write))
        call = asyncio.create_task(worker.app_call(lambda: order.append("app call")))
        await wait_for(lambda: worker.waiting_for_page == 2)  # both parked behind the page
        await worker.run(lambda: None)  # the store thread is free meanwhile
        assert not write.done()
        assert not call.done()
        await page.apply(pages[1], 0)
        order.append("last frame")
    order.append("page committed")
    await asyncio.wait_for(asyncio.gather(write, call), 10)
    assert order[:2] == ["last frame", "page committed"]
    assert sorted(order[2:]) == ["app call", "app write"]
    assert await notes(worker) == [(0,), (1,), (100,)]


async def test_pages_and_applies_never_interleave(worker: StoreWorker, tmp_path: Path) -> None:
    _, first = frames(tmp_path, 3, first_id=0)
    _, second = frames(tmp_path, 3, first_id=10)
    _, single = frames(tmp_path, 1, first_id=20)
    log: list[tuple[str, str]] = []

    async def paged(name: str, pages: list[list[Change]]) -> None:
        async with worker.page() as page:
            log.append((name, "open"))
            for changes in pages:
                await asyncio.sleep(0.01)  # frames arrive apart; others may try to merge
                await page.apply(changes, 0)
                log.append((name, "frame"))
            log.append((name, "close"))

    async def applied() -> None:
        await asyncio.sleep(0.005)
        await worker.apply(single[0], 0)
        log.append(("apply", "done"))

    await asyncio.wait_for(asyncio.gather(paged("a", first), paged("b", second), applied()), 30)
    names = [name for name, _ in log]
    # Each page's entries are contiguous: nothing else merged while it was open.
    runs = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert sorted(runs) == ["a", "apply", "b"], log
    assert len(await notes(worker)) == 7


async def test_an_in_memory_store_keeps_a_page_open_like_a_file_store(tmp_path: Path) -> None:
    site, pages = frames(tmp_path, 3)
    with new_store(":memory:") as store:
        worker = StoreWorker(store, [])
        await worker.open()
        try:
            async with worker.page() as page:
                for changes in pages:
                    await page.apply(changes, 0)
                assert await notes(worker) == []  # not committed yet
            assert await notes(worker) == [(0,), (1,), (2,)]
            assert (await worker.run(store.cursor))[site] == 3
        finally:
            await worker.close()
        assert not store.closed  # a Store passed in stays open


async def test_admitting_a_new_site_waits_for_a_page_another_session_has_open(
    tmp_path: Path,
) -> None:
    """Binding a remote's site id to its peer id is a write: while a page is
    open it waits, instead of blocking the store thread until SQLite's busy
    timeout ("database is locked", the session refused)."""
    a, b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    a.store.close()
    a.store = Store(tmp_path / "a" / "a.db", busy_timeout_ms=100)
    try:
        async with a.peer() as pa, b.peer([address(pa)]) as pb:
            async with pa._worker.page():  # what a session does for a page spanning frames
                await wait_for(lambda: len(pb.sessions) == 1)  # a's HELLO reached b
                await asyncio.sleep(scaled(0.5))  # b's reached a: five busy timeouts
                assert pa.sessions == []
                assert not [e for e in a.seen if isinstance(e, events.SessionFailed)]
            await wait_for(lambda: len(pa.sessions) == 1)
            assert not [e for e in a.seen if isinstance(e, events.SessionFailed)]
            owners = await pa.run_in_store(pa.store.site_owners)
            assert owners == {b.store.site_id: b.identity.peer_id}
    finally:
        a.close()
        b.close()
