"""App calls waiting for the store thread, run there even in the middle of an apply.

:meth:`peer.store_worker.StoreWorker.app_write` (what
:meth:`peer.peer.Peer.execute` calls) queues its statement here and asks the
store thread to drain the queue. Whichever reaches it first runs it: that drain
call, or :meth:`peer.store.Store.apply` between two slices of a large batch
(it commits what it merged so far, runs what waits here, and goes on in a
new transaction). So an app write waits for at most one slice of a merge,
not for the whole batch.

Each call runs exactly once, on the thread that drains the queue, in the
order queued; its result or exception goes to the future :meth:`submit`
returned. A call cancelled before it starts never runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["StoreJobs"]

_R = TypeVar("_R")


class StoreJobs:
    """A queue of calls for the store thread; :meth:`submit` from any thread,
    :meth:`run_waiting` on the store thread."""

    def __init__(self) -> None:
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()

    def submit(self, fn: Callable[[], _R]) -> Future[_R]:
        """Queue ``fn``; the future holds its result once a drain ran it.

        The caller must then make sure a drain comes (the Peer queues
        :meth:`run_waiting` on its store thread's executor).
        """
        future: Future[_R] = Future()
        self._jobs.append((fn, future))
        return future

    @property
    def waiting(self) -> bool:
        """Whether a call waits; cheap, from any thread."""
        return bool(self._jobs)

    def run_waiting(self) -> int:
        """Run every waiting call, the ones queued meanwhile included; return how many ran.

        An exception of a call goes to its future; one that is not an
        Exception (a KeyboardInterrupt, SystemExit) also propagates from here.
        """
        ran = 0
        while True:
            try:
                fn, future = self._jobs.popleft()  # atomic: each call is taken once
            except IndexError:
                return ran
            if not future.set_running_or_notify_cancel():
                continue
            ran += 1
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                future.set_result(result)
