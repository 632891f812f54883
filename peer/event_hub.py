"""Events to the app: callbacks and async iterators, in order, on the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from peer import events as ev

__all__ = ["EventHub"]

_log = logging.getLogger("crpeer.peer")


class EventHub:
    """Gives each event to every subscriber, then to every open stream.

    A subscriber that raises is logged and keeps its subscription; streams
    queue without bound (they are read on the same loop).
    """

    def __init__(self) -> None:
        self._subscribers: list[ev.EventCallback] = []
        self._queues: list[asyncio.Queue[ev.Event]] = []

    def subscribe(self, callback: ev.EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for each event; returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def stream(self) -> AsyncIterator[ev.Event]:
        """Every event from now on, in order, until the iterator is closed."""
        queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def emit(self, event: ev.Event) -> None:
        """Give ``event`` to every subscriber and stream (call on the loop)."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                _log.exception("event callback %r failed", callback)
        for queue in self._queues:
            queue.put_nowait(event)
