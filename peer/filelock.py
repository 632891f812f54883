"""One writer at a time for the small files next to a database, across processes.

The trust store and the status file are replaced atomically (a temporary file,
then ``os.replace``), so a reader never sees half a file. Two processes that
read, change and write the same file (``crpeer serve`` pairing while
``crpeer trust add`` runs) also need to take turns, or one's change is lost:
:func:`locked` holds an exclusive ``fcntl.flock`` on ``<file>.lock`` for the
read-change-write. The ``.lock`` file stays (removing it would race with the
next writer); it holds nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["lock_path", "locked"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: atomic replace only
    fcntl = None  # type: ignore[assignment]


def lock_path(path: Path) -> Path:
    """The lock file that serializes writers of ``path``."""
    return path.with_name(f"{path.name}.lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock for writing ``path``, waiting for other holders.

    The lock is per open file, so threads of one process that each call this
    take turns too. Raises OSError if the lock file cannot be created.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
