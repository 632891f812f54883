"""The channel handler of a transport, and the tasks that run it.

Every transport hands each new channel to the handler given to ``start()``
in a task of its own, and on ``stop()`` waits a while for those tasks before
cancelling them. :class:`HandlerTasks` is that, once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from peer.errors import ConfigError
from transports.base import Channel, ChannelHandler

__all__ = ["HandlerTasks"]


class HandlerTasks:
    """Runs a transport's channel handler, one task per channel.

    Call :meth:`set` from the transport's ``start()``, then :meth:`spawn` (or
    :meth:`serve` from a task the transport already has) for each channel,
    and :meth:`stop` from its ``stop()``, which gives handlers ``grace``
    seconds to return. Failures and late handlers are logged on ``log``, the
    transport's logger.
    """

    def __init__(self, owner: str, log: logging.Logger, *, grace: float) -> None:
        self._owner = owner
        self._log = log
        self._grace = grace
        self._handler: ChannelHandler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def started(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._handler is not None

    def set(self, handler: ChannelHandler) -> None:
        """Remember ``handler``; raises ConfigError the second time (``start()`` twice)."""
        if self._handler is not None:
            raise ConfigError(f"{self._owner}.start() called twice")
        self._handler = handler

    def spawn(self, channel: Channel, name: str) -> None:
        """Run the handler with ``channel`` in a new task called ``name``."""
        self._track(asyncio.create_task(self.serve(channel), name=name))

    async def serve(self, channel: Channel) -> None:
        """Run the handler with ``channel`` in this task, then close the channel.

        The task counts as a handler task (:meth:`stop` waits for it) from now on.
        """
        task = asyncio.current_task()
        assert task is not None
        assert self._handler is not None, "serve() before set()"
        if task not in self._tasks:
            self._track(task)
        try:
            await self._handler(channel)
        except Exception:
            self._log.exception("channel handler for %s failed", channel.remote.address)
        finally:
            await channel.close()

    async def stop(self) -> None:
        """Give the handlers (but the calling one) ``grace`` seconds to return,
        cancel the rest, and wait for them all to finish."""
        others = self._tasks - {asyncio.current_task()}
        if not others:
            return
        _, late = await asyncio.wait(others, timeout=self._grace)
        for task in late:
            self._log.warning("channel handler did not return after stop(); cancelling it")
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
