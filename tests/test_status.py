"""Status: version-vector classification, and a real two-peer status before/after sync."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest

from peer import events
from peer.errors import ChannelClosed, ConfigError
from peer.peer import Peer
from peer.retry import Backoff
from peer.session import SessionSnapshot, SessionStats
from peer.status import (
    DialStatus,
    LocalState,
    PeerStatus,
    SessionHistory,
    SessionStatus,
    VersionLag,
    build_peer_status,
    classify,
    lag_versions,
)
from peer.store import Store
from tests.support import peek, wait_for
from transports.memory import MemoryNetwork, MemoryTransport

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"


@pytest.mark.parametrize(
    ("local", "remote", "expected", "lag"),
    [
        ({}, {}, "in_sync", (0, 0)),
        ({A: 3}, {A: 3}, "in_sync", (0, 0)),
        ({A: 3, B: 0}, {A: 3}, "in_sync", (0, 0)),  # a missing origin is version 0
        ({A: 5}, {A: 3}, "local_ahead", (2, 0)),
        ({A: 3, B: 1}, {A: 3}, "local_ahead", (1, 0)),
        ({A: 3}, {A: 7}, "remote_ahead", (0, 4)),
        ({A: 3}, {A: 3, C: 2}, "remote_ahead", (0, 2)),
        ({A: 5, B: 1}, {A: 3, B: 4}, "diverged", (2, 3)),
        ({A: 1}, {C: 1}, "diverged", (1, 1)),
        ({A: 9, B: 2, C: 4}, {A: 9, B: 2, C: 4}, "in_sync", (0, 0)),
    ],
)
def test_classify_and_lag(
    local: dict[bytes, int], remote: dict[bytes, int], expected: str, lag: tuple[int, int]
) -> None:
    assert classify(local, remote) == expected
    assert lag_versions(local, remote) == VersionLag(*lag)
    mirrored = {"local_ahead": "remote_ahead", "remote_ahead": "local_ahead"}
    assert classify(remote, local) == mirrored.get(expected, expected)
    assert lag_versions(remote, local) == VersionLag(lag[1], lag[0])


def session_status(**overrides: Any) -> SessionStatus:
    fields: dict[str, Any] = {
        "remote_name": "b",
        "site_id": B.hex(),
        "peer_id": None,
        "address": "memory://b",
        "transport": "memory",
        "inbound": False,
        "state": "live",
        "classification": "in_sync",
        "lag": VersionLag(0, 0),
        "bytes_sent": 10,
        "bytes_received": 20,
        "rows_sent": 1,
        "rows_received": 2,
        "last_eose": 1234.5,
        "last_error": None,
    }
    fields.update(overrides)
    return SessionStatus(**fields)


def test_status_round_trips_through_json() -> None:
    status = PeerStatus(
        site_id=A.hex(),
        peer_id=None,
        name="a",
        db_version=7,
        schema_version=1,
        held_rows=0,
        cursor={A.hex(): 7, B.hex(): 3},
        sessions=(session_status(), session_status(state="catching_up", last_eose=None)),
    )
    assert PeerStatus.from_dict(json.loads(json.dumps(status.as_dict()))) == status


@pytest.mark.parametrize("state", get_args(events.DialStateName))
def test_every_dial_state_round_trips_through_json(state: events.DialStateName) -> None:
    dial = DialStatus.from_event(events.DialState("tcp://h:1", state, 2))
    assert DialStatus.from_dict(json.loads(json.dumps(dial.as_dict()))) == dial
    with pytest.raises(ConfigError):
        DialStatus.from_dict({**dial.as_dict(), "state": "sleeping"})


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("site_id"),
        lambda d: d.update(db_version="7"),
        lambda d: d.update(cursor=[]),
        lambda d: d["sessions"][0].update(state="sleeping"),
        lambda d: d["sessions"][0].update(inbound=1),
        lambda d: d["sessions"][0].update(rows_sent=True),
        lambda d: d["sessions"][0]["lag"].pop("to_send"),
    ],
)
def test_a_damaged_status_is_a_config_error(damage: Callable[[dict[str, Any]], object]) -> None:
    data = PeerStatus(A.hex(), None, "a", 1, 0, 0, {}, (session_status(),)).as_dict()
    damage(data)
    with pytest.raises(ConfigError):
        PeerStatus.from_dict(data)


# -- a real pair of peers -----------------------------------------------------------


@dataclass
class Pair:
    a: Peer
    b: Peer
    store_a: Store
    store_b: Store
    release: asyncio.Event
    hold_merges: Callable[[], None]
    """Call right after ``b.start()``: b merges nothing until ``release`` is set."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    network = MemoryNetwork()
    stores = [Store(tmp_path / "a.db"), Store(tmp_path / "b.db")]
    for store in stores:
        store.execute(SCHEMA)
        store.make_crr("notes")
    fast = Backoff(initial=0.01, maximum=0.2)
    a = Peer(
        stores[0], [MemoryTransport(network, "a")], name="a", backoff=fast, insecure=True, seed=1
    )
    b = Peer(
        stores[1],
        [MemoryTransport(network, "b")],
        name="b",
        connect=["memory://a"],
        backoff=fast,
        insecure=True,
        seed=2,
    )
    release = asyncio.Event()
    holding: list[asyncio.Task[None]] = []

    async def hold_merges() -> None:
        # b's merges wait for their turn (on the loop: b's store thread stays
        # free for status) until the test has looked.
        async with b._worker.merge_turn():
            await release.wait()

    def hold() -> None:
        holding.append(asyncio.ensure_future(hold_merges()))

    yield Pair(a, b, stores[0], stores[1], release, hold)
    release.set()
    await asyncio.gather(*holding)
    await b.stop()
    await a.stop()
    for store in stores:
        store.close()


async def test_status_before_during_and_after_sync(pair: Pair) -> None:
    for i in range(5):
        pair.store_a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"note {i}"))
    own_a = pair.store_a.own_version()
    change_rows = len(pair.store_a.changes_since({}, 1000))

    await pair.a.start()
    alone = await pair.a.status()
    assert alone.sessions == ()
    assert (alone.name, alone.site_id, alone.peer_id) == ("a", pair.store_a.site_id.hex(), None)
    assert alone.db_version == await pair.a.run_in_store(pair.store_a.db_version)
    assert alone.cursor == {pair.store_a.site_id.hex(): own_a}
    assert (alone.schema_version, alone.held_rows) == (0, 0)

    await pair.b.start()
    pair.hold_merges()
    # b has received a's page but may not apply it yet: a is ahead of b, as b sees it.
    await wait_for(
        lambda: bool(pair.b.sessions) and pair.b.sessions[0].snapshot().stats.rows_received == 0,
        interval=0.01,
    )
    await wait_for(
        lambda: pair.b.sessions[0].snapshot().stats.frames_received >= 5, interval=0.01
    )  # HELLO, LIMITS, CURSOR, BACKLOG, then the page b holds
    during = (await pair.b.status()).sessions[0]
    assert during.remote_name == "a"
    assert during.site_id == pair.store_a.site_id.hex()
    assert (during.address, during.transport, during.inbound) == ("memory://a", "memory", False)
    assert during.state == "catching_up"
    assert during.classification == "remote_ahead"
    assert during.lag == VersionLag(0, own_a)
    assert during.last_eose is None

    pair.release.set()
    await wait_for(lambda: len(peek(pair.store_b, "SELECT * FROM notes")) == 5, interval=0.01)
    await wait_for(
        lambda: (
            all(s.snapshot().state == "live" for s in pair.a.sessions + pair.b.sessions)
            and len(pair.a.sessions) == 1
        ),
        interval=0.01,
    )
    after_b = await pair.b.status()
    after_a = await pair.a.status()
    (seen_from_b,) = after_b.sessions
    (seen_from_a,) = after_a.sessions
    for seen in (seen_from_a, seen_from_b):
        assert (seen.state, seen.classification, seen.lag) == ("live", "in_sync", VersionLag(0, 0))
        assert seen.last_error is None
    assert seen_from_a.rows_sent == seen_from_b.rows_received == change_rows
    assert seen_from_a.bytes_sent > 0
    assert seen_from_b.bytes_received > 0
    assert seen_from_a.inbound
    assert not seen_from_b.inbound
    assert seen_from_b.last_eose is not None
    assert after_b.cursor[pair.store_a.site_id.hex()] == own_a

    # Live writes keep the pair in sync once they have gone out.
    before = pair.b.sessions[0].snapshot()
    await pair.b.execute("INSERT INTO notes VALUES (100, 'from b')")
    await wait_for(lambda: len(peek(pair.store_a, "SELECT * FROM notes")) == 6, interval=0.01)
    await wait_for(lambda: pair.b.sessions[0].snapshot().stats.rows_sent > 0, interval=0.01)
    # A snapshot is a copy: the session went on without it.
    assert (before.stats.rows_sent, before.state) == (0, "live")
    assert pair.store_b.site_id not in before.remote_cursor
    assert pair.store_b.site_id in pair.b.sessions[0].snapshot().remote_cursor
    final = (await pair.b.status()).sessions[0]
    assert final.classification == "in_sync"


def test_history_keeps_the_last_error_of_a_remote() -> None:
    history = SessionHistory(clock=FakeClock())
    remote = events.RemotePeer(B, "b", "memory://b", "memory", False)
    history.record(events.Connected(remote))
    history.record(events.Eose(remote))
    history.record(events.Disconnected(remote, ChannelClosed("link cut")))
    history.record(events.SessionFailed(None, "memory://x", ChannelClosed("no remote")))
    assert history.last_eose == {B: 1001.0}
    assert history.last_error == {B: "link cut"}


def snapshot_of(remote: events.RemotePeer | None, **overrides: Any) -> SessionSnapshot:
    fields: dict[str, Any] = {
        "remote": remote,
        "site_id": remote.site_id if remote else B,
        "peer_id": None,
        "address": "memory://b",
        "outbound": True,
        "remote_cursor": {A: 2},
        "eose_sent": True,
        "eose_received": True,
        "eose_at": 1000.0,
        "stats": SessionStats(rows_sent=3, rows_received=4, bytes_sent=5, bytes_received=6),
        "error": None,
        "duplicate": False,
        "closed": False,
    }
    fields.update(overrides)
    return SessionSnapshot(**fields)


def test_a_peer_status_is_built_from_plain_data() -> None:
    remote = events.RemotePeer(B, "b", "memory://b", "memory", False)
    history = SessionHistory(clock=FakeClock())
    history.record(events.Eose(remote))
    history.record(events.Disconnected(remote, ChannelClosed("an earlier cut")))
    dial = events.DialState("memory://b", "connected", 1)
    status = build_peer_status(
        LocalState(A, {A: 5, B: 1}, db_version=9, schema_version=1, held_rows=2),
        peer_id=None,
        name="a",
        sessions=[
            snapshot_of(remote),
            snapshot_of(None),  # not past the handshake: left out
            snapshot_of(
                events.RemotePeer(C, "c", "memory://c", "memory", True),
                eose_received=False,
                remote_cursor={A: 5, C: 3},
                error=ChannelClosed("cut"),
            ),
        ],
        dials={"memory://b": dial},
        history=history,
    )
    assert (status.site_id, status.db_version, status.held_rows) == (A.hex(), 9, 2)
    assert status.cursor == {A.hex(): 5, B.hex(): 1}
    b, c = status.sessions
    # b's own origin counts as what we hold from it; a's: 2 of 5.
    assert (b.state, b.classification, b.lag) == ("live", "local_ahead", VersionLag(3, 0))
    assert (b.rows_sent, b.rows_received, b.bytes_sent, b.bytes_received) == (3, 4, 5, 6)
    assert (b.last_eose, b.last_error) == (1001.0, "an earlier cut")
    assert (c.state, c.classification, c.lag) == ("catching_up", "diverged", VersionLag(1, 3))
    assert c.last_error == "cut"
    assert status.dials == (DialStatus.from_event(dial),)
