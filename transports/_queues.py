"""Waiting blocks for transports that queue frames themselves (memory, HTTP/SSE)."""

from __future__ import annotations

import asyncio
from collections import deque

from peer.errors import ChannelClosed, TransportError

__all__ = ["FrameQueue", "Signal"]


class Signal:
    """Wakes every task waiting on :meth:`waiter` when fired; fire() needs no await.

    A waiter takes ``waiter()`` *before* checking its condition, then waits on
    it: a fire() in between is not missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


class FrameQueue:
    """Bounded FIFO of numbered frames. put() waits while ``limit`` bytes are
    queued (a single frame always fits); get() waits while empty. After
    close(error): put() raises ChannelClosed; get() returns what is left, then
    raises ``error`` once, then ChannelClosed."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._size = 0
        self._limit = limit
        self._error: TransportError | None = None
        self.closed = False
        self._changed = Signal()

    async def put(self, number: int, frame: bytes) -> None:
        while not self.closed and self._items and self._size + len(frame) > self._limit:
            await self._changed.waiter().wait()
        if self.closed:
            raise ChannelClosed("channel is closed")
        self._items.append((number, frame))
        self._size += len(frame)
        self._changed.fire()

    async def get(self) -> tuple[int, bytes]:
        while not self._items and not self.closed:
            await self._changed.waiter().wait()
        if self._items:
            number, frame = self._items.popleft()
            self._size -= len(frame)
            self._changed.fire()
            return number, frame
        error, self._error = self._error, None
        raise error or ChannelClosed("channel is closed")

    def set_limit(self, limit: int) -> None:
        """Queue up to ``limit`` bytes from now on."""
        self._limit = limit
        self._changed.fire()

    def close(self, error: TransportError, *, discard: bool = False) -> None:
        if not self.closed:
            self.closed, self._error = True, error
        if discard:
            self._items.clear()
        self._changed.fire()
