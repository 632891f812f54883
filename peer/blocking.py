"""A blocking facade over :class:`~peer.peer.Peer` for apps that are not asyncio.

Qt, Tk or plain-thread apps use :class:`BlockingPeer`: it runs the asyncio
Peer on an event loop in a thread of its own (the way python-zeroconf runs
its core) and turns every call into a blocking one with a timeout::

    with BlockingPeer("notes.db", [TcpTransport("0.0.0.0", 9000)], identity=me) as peer:
        peer.execute("INSERT INTO notes VALUES (?, ?)", (1, "hi"))
        event = peer.events.get(timeout=5)          # any thread, at its own pace
        peer.subscribe(on_event, executor=pool)     # or pushed to an executor

Threads it makes, all joined by :meth:`BlockingPeer.stop`: the loop thread
(``crpeer-loop``, unless a shared :class:`LoopThread` is passed in), the
Peer's own store thread, and, once a callback is subscribed without an
executor, one event-dispatch thread (``crpeer-events``) that runs those
callbacks in order. Nothing of the app ever runs on the loop thread. The
threads are not daemons: an app must call :meth:`BlockingPeer.stop` (or use
``with``) before it exits, which also closes the database cleanly.

Errors: crpeer errors from the Peer pass through unchanged; a call that does
not finish within its timeout raises :class:`CallTimeoutError`; a call before
``start()`` or after ``stop()`` raises :class:`~peer.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from peer import events as ev
from peer.errors import CallTimeoutError, ConfigError, CrpeerError
from peer.peer import Peer
from peer.status import PeerStatus, SessionHistory
from peer.store import Store
from transports.base import Transport

__all__ = ["BlockingPeer", "CallTimeoutError", "LoopThread"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_log = logging.getLogger("crpeer.blocking")


class _Default(enum.Enum):
    TOKEN = 0


_DEFAULT = _Default.TOKEN
"""Use the object's ``call_timeout``."""


class LoopThread:
    """An asyncio event loop running forever in one non-daemon thread.

    ``start()`` it, submit coroutines with :meth:`run` from any other thread,
    ``stop()`` it (cancels what is left, shuts the loop's default executor
    down, closes the loop, joins the thread). Several :class:`BlockingPeer`
    objects may share one, e.g. to use one in-memory transport network; the
    code that made it stops it, after them.
    """

    def __init__(self, name: str = "crpeer-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (ConfigError before start)."""
        if self._loop is None:
            raise ConfigError("the loop thread is not started")
        return self._loop

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> None:
        """Start the thread and its loop; returns once the loop runs. Once."""
        with self._lock:
            if self._thread is not None or self._stopped:
                raise ConfigError("a LoopThread starts once")
            self._loop = asyncio.new_event_loop()
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._loop, ready), name=self.name, daemon=False
            )
            self._thread.start()
        ready.wait()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the loop, cancel its remaining tasks, join the thread. Idempotent.

        Calls waiting in :meth:`run` then raise ConfigError. Raises
        ConfigError when called on the loop thread itself (it cannot join
        itself), CallTimeoutError if the thread does not end within ``timeout``.
        """
        if self.in_loop_thread():
            raise ConfigError("LoopThread.stop() cannot run on the loop thread")
        with self._lock:
            thread, loop = self._thread, self._loop
            already, self._stopped = self._stopped, True
            if thread is not None and loop is not None and not already:
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise CallTimeoutError(f"the loop thread did not end within {timeout} s")

    def run(self, coro: Coroutine[Any, Any, _R], timeout: float | None) -> _R:
        """Run ``coro`` on the loop and wait for its result, at most ``timeout`` s.

        Raises what the coroutine raises; CallTimeoutError (after cancelling
        it) when time runs out; ConfigError when the loop is not running, is
        stopped meanwhile, or the caller is on the loop thread (that would
        deadlock: await the coroutine there instead).
        """
        if self.in_loop_thread():
            coro.close()
            raise ConfigError("a blocking call cannot run on the loop thread; await the Peer")
        with self._lock:
            if not self.running or self._loop is None:
                coro.close()
                raise ConfigError("the loop thread is not running")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CallTimeoutError(f"the call did not finish within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise ConfigError("the loop thread stopped while the call was running") from None

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` on the loop without waiting. ConfigError if not running."""
        with self._lock:
            if not self.running or self._loop is None:
                raise ConfigError("the loop thread is not running")
            self._loop.call_soon_threadsafe(fn)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()


class _Dispatcher:
    """One thread that runs callbacks in the order their events came."""

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="crpeer-events", daemon=False)
        self._thread.start()

    def put(self, callback: Callable[[ev.Event], None], event: ev.Event) -> None:
        self._queue.put((callback, event))

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self, timeout: float | None) -> None:
        """Run what is queued, then end; join unless called from a callback."""
        self._queue.put(self._STOP)
        if not self.is_current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            callback, event = item
            _call(callback, event)


def _call(callback: Callable[[ev.Event], None], event: ev.Event) -> None:
    try:
        callback(event)
    except Exception:  # one faulty callback must not stop the others
        _log.exception("event callback %r failed", callback)


class BlockingPeer:
    """A :class:`~peer.peer.Peer` driven from any thread.

    ``database``, ``transports`` and ``options`` go to ``Peer(...)`` as they
    are (so a bad option raises ConfigError here, in the caller's thread).
    ``loop`` shares a started :class:`LoopThread` (default: a private one,
    started by :meth:`start` and stopped by :meth:`stop`). ``call_timeout``
    bounds each blocking call (None: wait forever). :attr:`events` receives
    every event; it holds at most ``event_queue_size`` (0: unbounded), and when
    it is full the oldest event is dropped (counted in
    :attr:`events_dropped`) so that an app that never reads it cannot run out
    of memory.

    Lifecycle: ``start()`` once, any calls, ``stop()`` (or ``with``). Every
    method may be called from any thread except the loop thread.
    """

    def __init__(
        self,
        database: Store | str | Path,
        transports: Sequence[Transport] = (),
        *,
        loop: LoopThread | None = None,
        call_timeout: float | None = 30.0,
        event_queue_size: int = 10_000,
        **options: Any,
    ) -> None:
        self._peer = Peer(database, transports, **options)
        self._own_loop = loop is None
        self._loop = loop if loop is not None else LoopThread()
        self.call_timeout = call_timeout
        self.events: queue.Queue[ev.Event] = queue.Queue(maxsize=max(0, event_queue_size))
        """Every event, in order, for the app to ``get()`` from any thread."""
        self.events_dropped = 0
        self._subscribers: list[tuple[Callable[[ev.Event], None], Executor | None]] = []
        self._dispatcher: _Dispatcher | None = None
        self._lock = threading.Lock()
        self._state = "new"
        self._stopped = threading.Event()
        self._start_done = threading.Event()
        self._peer.subscribe(self._on_event)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def history(self) -> SessionHistory:
        """The peer's :class:`~peer.status.SessionHistory` (last EOSE and error per remote)."""
        return self._peer.history

    @property
    def peer(self) -> Peer:
        """The asyncio Peer; use it only through :meth:`call` (it lives on the loop)."""
        return self._peer

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self, timeout: float | _Default | None = _DEFAULT) -> None:
        """Start the loop thread (if private) and the Peer; once.

        Raises what ``Peer.start`` raises (after stopping what had started),
        CallTimeoutError, or ConfigError if called twice.
        """
        with self._lock:
            if self._state != "new":
                raise ConfigError("a BlockingPeer starts once; make a new one")
            self._state = "starting"
            if any(executor is None for _, executor in self._subscribers):
                self._dispatcher = _Dispatcher()
        limit = self._timeout(timeout)
        try:
            if self._own_loop:
                self._loop.start()
            self._loop.run(self._peer.start(), limit)
        except BaseException:
            try:
                if self._loop.running:
                    with contextlib.suppress(CrpeerError):
                        self._loop.run(self._peer.stop(), limit)
            finally:
                self._shutdown(limit)
                self._start_done.set()
            raise
        with self._lock:
            if self._state == "starting":  # not stopped meanwhile
                self._state = "running"
        self._start_done.set()

    def stop(self, timeout: float | _Default | None = _DEFAULT) -> None:
        """Stop the Peer, deliver the events already queued for callbacks, and
        join every thread this object made. Idempotent, from any thread but
        the loop's.

        A stop during ``start()`` waits for the start to end first. A second
        concurrent call waits for the first to finish, except from an event
        callback (the first call is joining that thread). A first call from
        an event callback returns before its dispatch thread ends, which it
        does right after. Raises CallTimeoutError if the Peer does not stop
        within ``timeout`` (the threads are stopped all the same).
        """
        limit = self._timeout(timeout)
        if self._loop.in_loop_thread():
            raise ConfigError("BlockingPeer.stop() cannot run on the loop thread")
        with self._lock:
            state = self._state
            if state not in ("stopping", "stopped"):
                self._state = "stopping"
        if state == "stopped":
            return
        if state == "stopping":
            dispatcher = self._dispatcher
            if dispatcher is None or not dispatcher.is_current_thread():
                self._stopped.wait(limit)
            return
        if state == "starting":
            self._start_done.wait(limit)
        try:
            if state != "new" and self._loop.running:
                self._loop.run(self._peer.stop(), limit)
        finally:
            self._shutdown(limit)

    def __enter__(self) -> BlockingPeer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- calls --------------------------------------------------------------------

    def call(
        self,
        fn: Callable[[Peer], Awaitable[_R]],
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> _R:
        """Run ``await fn(peer)`` on the loop and return its result.

        The escape hatch for any Peer API without a blocking twin here.
        Raises what it raises, CallTimeoutError, or ConfigError when not running.
        """
        self._check_running()
        peer = self._peer

        async def invoke() -> _R:
            return await fn(peer)

        return self._loop.run(invoke(), self._timeout(timeout))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement on the store and push any change at once.

        Returns its rows. Raises StoreError (or SchemaError) if SQLite fails.
        """
        return self.call(lambda peer: peer.execute(sql, params))

    def run_in_store(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``fn(*args, **kwargs)`` on the Peer's store thread; return its result.

        Follow a write with :meth:`notify_local_change` to push it at once
        (else the peer notices it within its poll interval).
        """
        return self.call(lambda peer: peer.run_in_store(fn, *args, **kwargs))

    def notify_local_change(self) -> None:
        """Something was written locally (e.g. through another connection): push it now."""
        self._check_running()
        self._loop.call_soon(self._peer.notify_local_change)

    def connect(self, address: str) -> None:
        """Dial ``address`` and keep redialing it until stop. ConfigError for an
        address no transport handles."""

        async def dial(peer: Peer) -> None:
            peer.connect(address)

        self.call(dial)

    def migrate(
        self, version: int, sql: str, *, alter: Sequence[str] = (), new_crrs: Sequence[str] = ()
    ) -> int:
        """Migrate the schema and announce it (see :meth:`Peer.migrate`)."""
        return self.call(lambda peer: peer.migrate(version, sql, alter=alter, new_crrs=new_crrs))

    def refresh_schema(self) -> None:
        """Re-read the schema after a migration (see :meth:`Peer.refresh_schema`)."""
        self.call(lambda peer: peer.refresh_schema())

    def status(self) -> PeerStatus:
        """A :class:`~peer.status.PeerStatus` snapshot of the peer and its sessions."""
        return self.call(lambda peer: peer.status())

    @property
    def site_id(self) -> bytes:
        """This database's site id (ConfigError before start)."""
        return self._peer.site_id

    @property
    def peer_id(self) -> str | None:
        """This node's peer id (None in insecure mode)."""
        return self._peer.peer_id

    def listen_addresses(self) -> list[str]:
        """Addresses others can dial, from every transport (after start)."""

        async def addresses(peer: Peer) -> list[str]:
            return [a for transport in peer.transports for a in transport.listen_addresses]

        return self.call(addresses)

    # -- events -------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[ev.Event], None], executor: Executor | None = None
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe.

        With ``executor`` each call is submitted to it (a pool with several
        workers may run them out of order); without, they run one after the
        other, in order, on this peer's event-dispatch thread. Exceptions are
        logged. Events already queued may still arrive after unsubscribing.
        Raises ConfigError after stop.
        """
        entry = (callback, executor)
        with self._lock:
            if self._state in ("stopping", "stopped"):
                raise ConfigError("this BlockingPeer is stopped; make a new one")
            if executor is None and self._dispatcher is None and self._state != "new":
                self._dispatcher = _Dispatcher()
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    def _on_event(self, event: ev.Event) -> None:
        """On the loop thread: hand the event over, never run app code here."""
        while True:
            try:
                self.events.put_nowait(event)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.events.get_nowait()
                    self.events_dropped += 1
        with self._lock:
            subscribers, dispatcher = list(self._subscribers), self._dispatcher
        for callback, executor in subscribers:
            if executor is not None:
                try:
                    executor.submit(_call, callback, event)
                except RuntimeError:  # the app shut its executor down
                    _log.warning("event executor for %r is shut down; event dropped", callback)
            elif dispatcher is not None:
                dispatcher.put(callback, event)

    # -- internals ----------------------------------------------------------------

    def _timeout(self, timeout: float | _Default | None) -> float | None:
        return self.call_timeout if isinstance(timeout, _Default) else timeout

    def _check_running(self) -> None:
        state = self._state
        if state == "new":
            raise ConfigError("this BlockingPeer is not started: call start() first")
        if state != "running":
            raise ConfigError("this BlockingPeer is stopped; make a new one")

    def _shutdown(self, timeout: float | None) -> None:
        """Join what this object started; after the Peer stopped (or failed to start)."""
        try:
            with self._lock:
                dispatcher = self._dispatcher
            if dispatcher is not None:
                dispatcher.close(timeout)
            if self._own_loop:
                self._loop.stop(timeout)
        finally:
            with self._lock:
                self._state = "stopped"
            self._stopped.set()
