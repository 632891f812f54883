"""One owner per connection: a Store a Peer runs on belongs to the peer's
threads until it stops; a call from any other thread fails with StoreError
instead of racing the peer on a connection (real Store, real Peer threads)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from peer.errors import CrpeerError, StoreError
from peer.peer import Peer
from peer.store import Store
from peer.store.snapshot import prepare_received, snapshot_reference
from transports.tcp import TcpTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
WHAT_TO_DO = r"belongs to a running Peer.*peer\.execute\(\.\.\.\) or peer\.run_in_store\(\.\.\.\)"


def new_store(path: str | Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def lone_peer(store: Store) -> Peer:
    return Peer(store, [], insecure=True)


CALLS: dict[str, Callable[[Store], Any]] = {
    "execute": lambda store: store.execute("SELECT * FROM notes"),
    "cursor": lambda store: store.cursor(),
    "schema_version": lambda store: store.schema_version(),
    "changes_since": lambda store: store.changes_since({}, 100),
    "next_page": lambda store: store.next_page({}, 100),
    "apply": lambda store: store.apply([]),
    "begin_page": lambda store: store.begin_page(),
    "apply_held": lambda store: store.apply_held(),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_call_on_a_running_peers_store_from_the_loop_thread_fails(
    tmp_path: Path, call: str
) -> None:
    with new_store(tmp_path / "a.db") as store:
        async with lone_peer(store):
            with pytest.raises(StoreError, match=WHAT_TO_DO):
                CALLS[call](store)


async def test_the_same_calls_work_through_run_in_store_and_after_the_stop(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        async with lone_peer(store) as peer:
            await peer.execute("INSERT INTO notes VALUES (1, 'through the peer')")
            assert await peer.run_in_store(store.execute, "SELECT * FROM notes") == [
                (1, "through the peer")
            ]
            assert await peer.run_in_store(store.cursor) == {}
            assert await peer.run_in_store(store.schema_version) == 0
            # Changes are read through a reader of the call's own (the
            # peer's reader is its read thread's).
            changes = await peer.run_in_store(store.changes_since, {}, 100)
            assert changes
            assert {change[0] for change in changes} == {"notes"}
            # Still the loop thread's failure after those calls.
            with pytest.raises(StoreError, match=WHAT_TO_DO):
                store.changes_since({}, 100)
        # The peer stopped: the Store is the app's again, on any one thread.
        assert store.execute("SELECT * FROM notes") == [(1, "through the peer")]
        assert store.cursor() == {}
        assert store.changes_since({}, 100) == changes
        store.execute("INSERT INTO notes VALUES (2, 'after the stop')")
        assert store.next_page({}, 100) != []


async def test_plain_attributes_read_from_any_thread_while_a_peer_runs(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        async with lone_peer(store) as peer:
            assert store.site_id == peer.site_id
            assert store.path == str(tmp_path / "a.db")
            assert (store.in_memory, store.read_only) == (False, False)
            assert (store.served_schema, store.held_schema) == (0, 0)
            assert not store.closed


async def test_a_store_belongs_to_one_running_peer_at_a_time(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        async with lone_peer(store) as first:
            second = lone_peer(store)
            with pytest.raises(StoreError, match="already belongs to a running Peer"):
                await second.start()
            await second.stop()
            # The second peer's stop left the first one's binding alone.
            with pytest.raises(StoreError, match=WHAT_TO_DO):
                store.execute("SELECT 1")
            assert await first.execute("SELECT 1") == [(1,)]
        async with lone_peer(store) as again:  # the first one stopped: a new peer may run
            assert await again.execute("SELECT 1") == [(1,)]
        assert store.execute("SELECT 1") == [(1,)]


async def test_a_peer_that_opens_its_store_keeps_it_to_its_threads(tmp_path: Path) -> None:
    new_store(tmp_path / "a.db").close()
    async with Peer(tmp_path / "a.db", [], insecure=True) as peer:
        with pytest.raises(StoreError, match=WHAT_TO_DO):
            peer.store.execute("SELECT 1")
        assert await peer.run_in_store(peer.store.execute, "SELECT 1") == [(1,)]


def test_a_store_used_directly_works_from_one_thread_then_another(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        store.execute("INSERT INTO notes VALUES (1, 'here')")
        assert store.cursor() == {}
        with ThreadPoolExecutor(1) as pool:  # another thread, once this one is done
            rows = pool.submit(store.execute, "SELECT * FROM notes").result()
            page = pool.submit(store.next_page, {}, 100).result()
            pool.submit(store.apply, []).result()
        assert rows == [(1, "here")]
        assert isinstance(page, list)
        assert page
        assert store.changes_since({}, 100) == page


def test_a_snapshot_install_keeps_the_store_bound_to_its_threads(tmp_path: Path) -> None:
    """:meth:`Store.install_snapshot` makes its connection objects anew: they
    belong to the same threads as before."""
    with new_store(tmp_path / "source.db") as source, new_store(tmp_path / "b.db") as receiver:
        source.execute("INSERT INTO notes VALUES (1, 'from the source')")
        out = tmp_path / "copy.db"
        source.copy_into(out)
        prepare_received(out, snapshot_reference(receiver))
        with ThreadPoolExecutor(1) as store_pool, ThreadPoolExecutor(1) as read_pool:
            store_thread = store_pool.submit(threading.current_thread).result()
            read_thread = read_pool.submit(threading.current_thread).result()
            receiver.bind_threads(store_thread, read_thread)
            try:
                store_pool.submit(receiver.install_snapshot, out).result()
                with pytest.raises(StoreError, match=WHAT_TO_DO):
                    receiver.execute("SELECT * FROM notes")
                with pytest.raises(StoreError, match=WHAT_TO_DO):
                    read_pool.submit(receiver.execute, "SELECT * FROM notes").result()
                with pytest.raises(StoreError, match=WHAT_TO_DO):
                    store_pool.submit(receiver.next_page, {}, 100).result()
                rows = store_pool.submit(receiver.execute, "SELECT * FROM notes").result()
                assert rows == [(1, "from the source")]
                page = read_pool.submit(receiver.next_page, {}, 100).result()
                assert isinstance(page, list)
                assert "from the source" in {change[3] for change in page}
            finally:
                receiver.unbind_threads()
        assert receiver.execute("SELECT * FROM notes") == [(1, "from the source")]


async def test_a_peer_that_fails_to_start_gives_its_store_and_threads_back(tmp_path: Path) -> None:
    taken = TcpTransport("127.0.0.1", 0)
    await taken.start(lambda channel: channel.close())
    try:
        port = int(taken.listen_addresses[0].rsplit(":", 1)[1])
        with new_store(tmp_path / "a.db") as store:
            peer = Peer(store, [TcpTransport("127.0.0.1", port)], insecure=True)
            with pytest.raises(CrpeerError):
                await peer.start()  # the port is taken
            assert store.execute("SELECT count(*) FROM notes") == [(0,)]  # the app's again
            assert not [t for t in threading.enumerate() if t.name.startswith("crpeer-")]
    finally:
        await taken.stop()
