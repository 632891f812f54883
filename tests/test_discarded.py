"""Disconnected.discarded: the changes of a page spanning frames that were
applied and then rolled back because the session ended inside the page.

The remote is a real SyncSession behind a scripted channel (dialed through a
transport of its own), so the test decides exactly where the link breaks;
the receiving side is a real Peer on a file store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from peer import events
from peer.errors import ChannelClosed, ConnectError
from peer.peer import Peer
from peer.protocol import (
    CreditReceived,
    CursorReceived,
    HelloReceived,
    Limits,
    LocalInfo,
    SyncSession,
)
from peer.retry import Backoff
from peer.store import Change, Store
from tests.hooked_store import HookedStore
from tests.support import wait_for
from transports.base import Channel, ChannelHandler, RemoteInfo, Transport

SCHEMA = "CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"


class ScriptedRemote(Channel):
    """The remote side of one session: sends ``send`` frames of a page of
    ``len(frames)`` frames (one transaction), waits until the receiver has
    applied ``applied`` of them (its credit), then breaks the link and sets
    ``broken``."""

    def __init__(
        self, session: SyncSession, frames: list[list[Change]], send: int, applied: int
    ) -> None:
        self._session = session
        self._frames = frames
        self._send = send
        self._wanted_credits = applied
        self.broken = threading.Event()
        self._sent = False
        self._credits = 0
        self._applied = asyncio.Event()
        if applied == 0:
            self._applied.set()
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        session.hello()
        self._queue_output()

    @property
    def remote(self) -> RemoteInfo:
        return RemoteInfo("scripted", "scripted://remote", False)

    def _queue_output(self) -> None:
        for frame in self._session.data_to_send():
            self._out.put_nowait(frame)

    async def send(self, frame: bytes) -> None:
        for event in self._session.receive(frame):
            if isinstance(event, HelloReceived):
                self._session.send_cursor({})
            elif isinstance(event, CursorReceived) and not self._sent:
                self._sent = True
                for index, changes in enumerate(self._frames[: self._send]):
                    self._session.send_changes(changes, final=index == len(self._frames) - 1)
            elif isinstance(event, CreditReceived):
                self._credits += 1
                if self._credits == self._wanted_credits:
                    self._applied.set()
        self._queue_output()

    async def recv(self) -> bytes:
        if self._out.empty() and self._sent:
            await self._applied.wait()
            self.broken.set()
            raise ChannelClosed("the link broke")
        return await self._out.get()

    async def close(self) -> None:
        self._applied.set()

    def authenticated(self) -> None:
        pass


class ScriptedTransport(Transport):
    """Dials the scripted remote once; later dials fail."""

    scheme = "scripted"

    def __init__(self, channel: Channel) -> None:
        self._channel: Channel | None = channel

    async def start(self, handler: ChannelHandler) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def dial(self, address: str) -> Channel:
        channel, self._channel = self._channel, None
        if channel is None:
            raise ConnectError("dialed once")
        return channel

    @property
    def listen_addresses(self) -> list[str]:
        return []


@pytest.mark.parametrize(
    ("frames", "send", "applied"),
    [
        (2, 1, 1),  # the first frame applied, the link breaks before the final one
        (4, 3, 2),  # three frames received, the third still queued when the link breaks
    ],
)
async def test_discarded_counts_the_changes_of_a_page_applied_then_rolled_back(
    tmp_path: Path, frames: int, send: int, applied: int
) -> None:
    per_frame = 30
    with Store(tmp_path / "source.db") as source:
        source.execute(SCHEMA)
        source.make_crr("notes")
        source.executescript(
            "BEGIN;"
            + "".join(f"INSERT INTO notes VALUES ({i}, 'n{i}');" for i in range(frames * per_frame))
            + "COMMIT;"
        )
        changes = source.changes_since({}, 10_000)
        local = LocalInfo(
            source.site_id, "remote", source.schema_version(), source.schema_fingerprint()
        )
    size = len(changes) // frames
    pages = [changes[i * size : (i + 1) * size] for i in range(frames - 1)]
    pages.append(changes[(frames - 1) * size :])
    remote = ScriptedRemote(SyncSession(local, Limits(), 7), pages, send, applied - 1)
    target = HookedStore(tmp_path / "target.db", [SCHEMA])
    target.make_crr("notes")
    merges: list[int] = []

    def last_merge_waits_for_the_break(changes: Sequence[Change], in_page: bool) -> None:
        # The receiver's last merge runs on while the link breaks, and the
        # next frame the remote sent stays queued, never applied.
        merges.append(len(changes))
        if len(merges) == applied:
            assert remote.broken.wait(10)

    target.before_apply = last_merge_waits_for_the_break
    peer = Peer(
        target,
        [ScriptedTransport(remote)],
        connect=["scripted://remote"],
        backoff=Backoff(initial=60, maximum=60),
        insecure=True,
    )
    seen: list[events.Event] = []
    peer.subscribe(seen.append)
    try:
        async with peer:
            await wait_for(lambda: any(isinstance(e, events.Disconnected) for e in seen))
            (gone,) = [e for e in seen if isinstance(e, events.Disconnected)]
            # What was applied in the page, and nothing else, was rolled back.
            assert merges == [len(page) for page in pages[:applied]]
            assert gone.discarded == sum(merges)
            assert await peer.execute("SELECT count(*) FROM notes") == [(0,)]
    finally:
        remote.broken.set()
        target.close()
