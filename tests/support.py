"""Helpers shared by the tests that run secure peers on loopback."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peer import events
from peer.identity import Identity
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from peer.trust import TrustStore
from transports.base import Transport
from transports.tcp import TcpTransport

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
FAST = Backoff(initial=0.02, maximum=0.3)


class Node:
    """A database, an identity and a trust store in one directory."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.store = Store(directory / f"{name}.db")
        self.store.execute(SCHEMA)
        self.store.make_crr("notes")
        self.identity = Identity.load_or_create(directory / f"{name}.key")
        self.trust = TrustStore.load(directory / f"{name}.trust.json")
        self.seen: list[events.Event] = []

    def tcp(self) -> TcpTransport:
        return TcpTransport(
            "127.0.0.1",
            0,
            server_ssl=self.identity.server_ssl_context(),
            client_ssl=self.identity.client_ssl_context(),
        )

    def peer(
        self,
        connect: Sequence[str] = (),
        join_secret: str | None = None,
        transports: Sequence[Transport] | None = None,
        **options: Any,
    ) -> Peer:
        peer = Peer(
            self.store,
            list(transports) if transports is not None else [self.tcp()],
            name=self.name,
            connect=list(connect),
            identity=self.identity,
            trust=self.trust,
            join_secret=join_secret,
            backoff=FAST,
            **options,
        )
        peer.subscribe(self.seen.append)
        return peer

    def rows(self) -> list[Any]:
        """The notes, read by :func:`peek` (from any thread, the peer running or not)."""
        return peek(self.store, "SELECT * FROM notes ORDER BY id")

    def close(self) -> None:
        self.store.close()


def peek(
    store: Store, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> list[tuple[Any, ...]]:
    """``sql``'s rows, read through a read-only Store of its own on ``store``'s
    file (committed data only). Safe on any thread whether or not a Peer
    runs on ``store``, whose own connections belong to the Peer's threads
    while it runs (writes, and reads that must see the store's own
    connection, go through ``peer.execute`` / ``peer.run_in_store``)."""
    with Store(store.path, read_only=True) as reader:
        return reader.execute(sql, params)


def _timeout_scale() -> float:
    raw = os.environ.get("CRPEER_TEST_TIMEOUT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"CRPEER_TEST_TIMEOUT_SCALE must be a positive number, not {raw!r}")
    return scale


TIMEOUT_SCALE = _timeout_scale()
"""How much longer than written the tests wait: ``CRPEER_TEST_TIMEOUT_SCALE``
from the environment (default 1), raised on slow or loaded machines."""


def scaled(seconds: float) -> float:
    """``seconds`` times :data:`TIMEOUT_SCALE`: use it for every timeout a test waits on."""
    return seconds * TIMEOUT_SCALE


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    *,
    interval: float = 0.02,
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds; a predicate
    that returns an awaitable (an ``async def``) is awaited each time.

    Raises AssertionError if it still does not after ``scaled(within)`` seconds
    (by the event loop's clock).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(within)
    while not await _holds(predicate):
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {scaled(within):g} s")
        await asyncio.sleep(interval)


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    if inspect.isawaitable(result):
        return bool(await result)
    return bool(result)


def wait_until(
    predicate: Callable[[], bool], within: float = 10.0, *, interval: float = 0.02
) -> None:
    """:func:`wait_for` for code off the event loop: blocks the calling thread."""
    deadline = time.monotonic() + scaled(within)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {scaled(within):g} s")
        time.sleep(interval)


def holds_within(
    predicate: Callable[[], bool], within: float = 10.0, *, interval: float = 0.002
) -> bool:
    """Whether ``predicate`` comes to hold within ``scaled(within)`` seconds,
    polled on the calling thread: for a hook on a store thread, where an
    AssertionError would fail the store call instead of the test. The test
    asserts the result."""
    try:
        wait_until(predicate, within, interval=interval)
    except AssertionError:
        return False
    return True


def address(peer: Peer) -> str:
    return peer.transports[0].listen_addresses[0]


def refusals(node: Node) -> list[events.SessionFailed]:
    return [e for e in node.seen if isinstance(e, events.SessionFailed)]
