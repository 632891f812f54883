"""The one thread a connection belongs to while a Peer runs on the store.

Each object of a :class:`~peer.store.Store` that owns a connection (the
:class:`~peer.store.main.MainConnection`, the
:class:`~peer.store.merger.Merger`, the
:class:`~peer.store.reader.ChangeReader`) holds an :class:`OwnerThread`
and calls :meth:`OwnerThread.check` as each of its calls begins.

Unbound (a Store used directly), the check passes on every thread: the
caller uses the store from one thread at a time. Bound to a thread
(:meth:`peer.store.Store.bind_threads`, called by a Peer's
:class:`~peer.store_worker.StoreWorker` once its threads run, undone by
:meth:`peer.store.Store.unbind_threads` when they stop), a call from any
other thread raises StoreError instead of interleaving its statements with
the owner's on the same connection. The check compares two thread idents;
it takes no lock.
"""

from __future__ import annotations

import threading
from threading import get_ident

from peer.errors import StoreError

__all__ = ["OwnerThread"]


class OwnerThread:
    """The thread allowed to use one connection: any while unbound.

    :meth:`bind` and :meth:`unbind` are called while no thread uses the
    connection (before a Peer's threads use the store, after they stopped);
    :meth:`check` and :meth:`owns_caller` from any thread.
    """

    __slots__ = ("_ident", "_name", "_role")

    def __init__(self, role: str) -> None:
        self._role = role
        self._ident: int | None = None
        self._name = ""

    def bind(self, thread: threading.Thread) -> None:
        """Allow only ``thread`` from now on (a started thread)."""
        if thread.ident is None:
            raise StoreError("a store binds to a running thread only")
        self._ident, self._name = thread.ident, thread.name

    def unbind(self) -> None:
        """Allow any thread again (one at a time)."""
        self._ident, self._name = None, ""

    def owns_caller(self) -> bool:
        """Whether the calling thread may use the connection now."""
        ident = self._ident
        return ident is None or ident == get_ident()

    def check(self) -> None:
        """Raise StoreError, saying what to do instead, unless the calling
        thread may use the connection now."""
        ident = self._ident
        if ident is not None and ident != get_ident():
            raise StoreError(
                f"this store belongs to a running Peer, whose {self._name!r} thread "
                f"alone uses its {self._role}: call peer.execute(...) or "
                "peer.run_in_store(...) instead of using the Store from another "
                "thread (or open a Store of your own on the same file)"
            )
