"""BlockingPeer: the asyncio Peer driven from plain threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from peer import events
from peer.blocking import BlockingPeer, CallTimeoutError, LoopThread
from peer.errors import ConfigError, CrpeerError, StoreError
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from tests.support import wait_until
from transports.memory import MemoryNetwork, MemoryTransport
from transports.tcp import TcpTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
FAST = Backoff(initial=0.01, maximum=0.2)
_T = TypeVar("_T")


def database(path: Path) -> Path:
    with Store(path) as store:
        store.execute(SCHEMA)
        store.make_crr("notes")
    return path


def in_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a fresh plain thread and return its result (or raise its error)."""
    result: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="app-thread")
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0]


def drain(q: Any) -> list[events.Event]:
    out: list[events.Event] = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.fixture
def shared_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    loop.start()
    yield loop
    loop.stop()


def test_two_peers_on_a_shared_loop_sync_from_plain_threads(
    tmp_path: Path, shared_loop: LoopThread
) -> None:
    network = MemoryNetwork()
    a = BlockingPeer(
        database(tmp_path / "a.db"),
        [MemoryTransport(network, "a")],
        loop=shared_loop,
        name="a",
        backoff=FAST,
        insecure=True,
    )
    b = BlockingPeer(
        database(tmp_path / "b.db"),
        [MemoryTransport(network, "b")],
        loop=shared_loop,
        name="b",
        connect=["memory://a"],
        backoff=FAST,
        insecure=True,
    )
    seen: list[tuple[events.Event, str]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="app-pool") as pool:
        b.subscribe(lambda e: seen.append((e, threading.current_thread().name)), executor=pool)
        in_thread(a.start)
        in_thread(b.start)

        def insert(i: int) -> Callable[[], object]:
            return lambda: a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"n{i}"))

        for i in range(3):
            in_thread(insert(i))
        wait_until(lambda: len(b.execute("SELECT * FROM notes")) == 3, interval=0.01)
        b.execute("INSERT INTO notes VALUES (10, 'from b')")
        wait_until(lambda: len(a.execute("SELECT * FROM notes")) == 4, interval=0.01)

        queued = [e for e in drain(b.events) if not isinstance(e, events.DialState)]
        assert isinstance(queued[0], events.Connected)
        assert any(isinstance(e, events.Changed) and e.tables == {"notes"} for e in queued)
        wait_until(lambda: any(isinstance(e, events.Changed) for e, _ in seen), interval=0.01)
        assert {name for _, name in seen} <= {f"app-pool_{i}" for i in range(2)}

        wait_until(lambda: b.status().sessions[0].last_eose is not None, interval=0.01)
        status = b.status()
        assert [s.remote_name for s in status.sessions] == ["a"]
        assert status.sessions[0].state == "live"
        assert b.site_id != a.site_id
        assert b.peer_id is None

        in_thread(b.stop)  # from another thread than the one that started it
        assert not b.running
        with pytest.raises(ConfigError, match="stopped"):
            b.execute("SELECT 1")
        with pytest.raises(ConfigError, match="stopped"):
            b.subscribe(print)
        b.stop()  # idempotent
        a.stop()
    assert shared_loop.running  # the peers did not stop a loop they did not make


def test_private_loops_over_tcp_and_an_in_order_callback_thread(tmp_path: Path) -> None:
    a = BlockingPeer(database(tmp_path / "a.db"), [TcpTransport()], insecure=True, backoff=FAST)
    order: list[tuple[type, str]] = []
    with a:
        (address,) = a.listen_addresses()
        b = BlockingPeer(
            database(tmp_path / "b.db"),
            [TcpTransport(listen=False)],
            connect=[address],
            insecure=True,
            backoff=FAST,
        )
        b.subscribe(lambda e: order.append((type(e), threading.current_thread().name)))
        with b:
            for i in range(20):
                a.execute("INSERT INTO notes VALUES (?, 'x')", (i,))
            wait_until(lambda: b.execute("SELECT count(*) FROM notes") == [(20,)], interval=0.01)
            wait_until(lambda: events.Changed in {kind for kind, _ in order}, interval=0.01)
        assert {name for _, name in order} == {"crpeer-events"}
        session_order = [kind for kind, _ in order if kind is not events.DialState]
        assert session_order[0] is events.Connected
        assert session_order[-1] is events.Disconnected  # delivered before stop() returned
        with pytest.raises(ConfigError, match="stopped"):
            b.status()


def test_calls_before_start_after_stop_and_twice(tmp_path: Path) -> None:
    peer = BlockingPeer(database(tmp_path / "a.db"), insecure=True)
    with pytest.raises(ConfigError, match="not started"):
        peer.execute("SELECT 1")
    with pytest.raises(ConfigError, match="not started"):
        peer.notify_local_change()
    peer.start()
    with pytest.raises(ConfigError, match="starts once"):
        peer.start()
    assert peer.execute("SELECT 40 + 2") == [(42,)]
    with pytest.raises(StoreError):
        peer.execute("SELECT * FROM no_such_table")
    peer.notify_local_change()
    peer.stop()
    with pytest.raises(ConfigError, match="stopped"):
        peer.run_in_store(lambda: None)
    never_started = BlockingPeer(database(tmp_path / "b.db"), insecure=True)
    never_started.stop()
    with pytest.raises(ConfigError, match="starts once"):
        never_started.start()


def test_a_bad_option_fails_in_the_callers_thread(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no transport"):
        BlockingPeer(database(tmp_path / "a.db"), connect=["tcp://127.0.0.1:1"], insecure=True)
    with pytest.raises(ConfigError, match="encrypts by default"):
        BlockingPeer(database(tmp_path / "a.db"))


def test_a_failed_start_leaves_no_thread(tmp_path: Path, shared_loop: LoopThread) -> None:
    network = MemoryNetwork()
    first = BlockingPeer(
        database(tmp_path / "a.db"),
        [MemoryTransport(network, "x")],
        loop=shared_loop,
        insecure=True,
    )
    second = BlockingPeer(
        database(tmp_path / "b.db"),
        [MemoryTransport(network, "x")],
        loop=shared_loop,
        insecure=True,
    )
    first.start()
    second.subscribe(print)  # a dispatch thread is started with the peer, and must end
    with pytest.raises(ConfigError, match="taken"):
        second.start()
    assert not second.running
    first.stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lonely = BlockingPeer(database(tmp_path / "c.db"), [TcpTransport(port=port)], insecure=True)
        with pytest.raises(CrpeerError, match="cannot listen"):
            lonely.start()


def test_a_slow_call_times_out_as_a_crpeer_error(tmp_path: Path) -> None:
    with BlockingPeer(database(tmp_path / "a.db"), insecure=True, call_timeout=0.1) as peer:
        with pytest.raises(CallTimeoutError) as caught:
            peer.run_in_store(time.sleep, 0.5)
        assert isinstance(caught.value, CrpeerError)
        assert isinstance(caught.value, TimeoutError)
        peer.call_timeout = 10.0
        assert peer.execute("SELECT 1") == [(1,)]  # the store thread is free again later


def test_a_migration_from_a_plain_thread(tmp_path: Path) -> None:
    with BlockingPeer(database(tmp_path / "a.db"), insecure=True) as peer:
        merged = in_thread(
            lambda: peer.migrate(1, "ALTER TABLE notes ADD COLUMN c TEXT", alter=["notes"])
        )
        assert merged == 0
        peer.execute("INSERT INTO notes VALUES (1, 'b', 'c')")
        assert peer.run_in_store(peer.peer.store.schema_version) == 1
        assert peer.execute("SELECT * FROM notes") == [(1, "b", "c")]


def test_a_blocking_call_on_the_loop_thread_is_refused(tmp_path: Path) -> None:
    with BlockingPeer(database(tmp_path / "a.db"), insecure=True) as peer:

        async def nested(_: Peer) -> object:
            return peer.execute("SELECT 1")

        with pytest.raises(ConfigError, match="loop thread"):
            peer.call(nested)

        async def stop_here(_: Peer) -> None:
            peer.stop()

        with pytest.raises(ConfigError, match="loop thread"):
            peer.call(stop_here)
        assert peer.running


def test_a_full_event_queue_drops_the_oldest(tmp_path: Path) -> None:
    remote = events.RemotePeer(b"r" * 16, "r", "memory://r", "memory", False)
    with BlockingPeer(database(tmp_path / "a.db"), insecure=True, event_queue_size=2) as peer:

        async def emit(p: Peer) -> None:
            for rows in range(1, 6):
                p._events.emit(events.Changed(remote, frozenset({"notes"}), rows))

        peer.call(emit)
        kept = drain(peer.events)
    assert [e.rows for e in kept if isinstance(e, events.Changed)] == [4, 5]
    assert peer.events_dropped == 3


def test_stop_from_an_event_callback(tmp_path: Path) -> None:
    peer = BlockingPeer(database(tmp_path / "a.db"), insecure=True)
    stopped = threading.Event()
    failures: list[BaseException] = []

    def on_event(event: events.Event) -> None:
        try:
            peer.stop()
        except BaseException as exc:
            failures.append(exc)
        stopped.set()

    peer.subscribe(on_event)
    peer.start()
    remote = events.RemotePeer(b"r" * 16, "r", "memory://r", "memory", False)

    async def emit(p: Peer) -> None:
        p._events.emit(events.Eose(remote))

    peer.call(emit)
    assert stopped.wait(10)
    assert failures == []
    assert not peer.running
    peer.stop()


def test_a_loop_thread_refuses_work_once_stopped() -> None:
    loop = LoopThread()
    with pytest.raises(ConfigError, match="not started"):
        _ = loop.loop

    async def answer() -> int:
        return 42

    loop.start()
    assert loop.run(answer(), timeout=5) == 42
    loop.stop()
    loop.stop()
    with pytest.raises(ConfigError, match="not running"):
        loop.run(answer(), timeout=5)
    with pytest.raises(ConfigError, match="starts once"):
        loop.start()
