"""What the ``crpeer`` commands check about a database file before using it.

- :class:`InstanceLock`: one node per database. ``crpeer serve`` and ``crpeer
  pair join`` hold ``DATABASE.lock`` (``fcntl.flock``) for the life of the
  process; the kernel releases it on any exit, SIGKILL included, so a lock
  left by a dead process never blocks a restart.
- :func:`check_health`: ``PRAGMA quick_check`` (without cr-sqlite, which may
  crash on a damaged file), as a ConfigError that says what to do.
- :func:`read_local_status`: the database's own sync state, read without
  writing anything (``crpeer status`` is a read-only command).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from peer.errors import ConfigError
from peer.filelock import lock_path
from peer.identity import Identity, default_key_path
from peer.status import PeerStatus, build_peer_status, read_local_state
from peer.store import Store, file_integrity_problems

__all__ = [
    "InstanceLock",
    "check_health",
    "damage_message",
    "lock_path",
    "read_local_status",
    "serve_is_running",
]


class InstanceLock:
    """An exclusive, non-blocking lock on ``DATABASE.lock``.

    :meth:`acquire` raises ConfigError, naming the holder's pid, if another
    process holds it. :meth:`release` (or process exit, however it happens)
    frees it. The file itself stays: its presence means nothing, only the
    kernel lock does.
    """

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"another crpeer node is already running on {self.path.with_suffix('')}{who}; "
                "stop it first (one node per database)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def serve_is_running(database: Path) -> bool:
    """Whether some process holds ``database``'s instance lock (read-only test)."""
    try:
        fd = os.open(lock_path(database), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops a shared lock just taken
    return False


def damage_message(database: Path, problems: list[str]) -> str:
    """One line saying ``database`` is damaged, what was found, and what to do."""
    return (
        f"{database} is damaged ({problems[0]}): stop using it; restore it from a "
        "snapshot (`crpeer restore`) or sync a fresh copy from another device"
    )


def check_health(database: Path) -> None:
    """Raise ConfigError (see :func:`damage_message`) if ``PRAGMA quick_check``
    fails on ``database``; checked before cr-sqlite ever touches the file."""
    problems = file_integrity_problems(database)
    if problems:
        raise ConfigError(damage_message(database, problems))


def read_local_status(database: Path) -> tuple[PeerStatus, list[str]]:
    """What ``database`` itself says (no running node), and its integrity problems.

    Opens it read-only. Raises StoreError if it is not a crpeer database. A
    damaged file is not opened further: its status is all zeros.
    """
    key = default_key_path(database)
    peer_id = Identity.load_or_create(key).peer_id if key.exists() else None
    problems = file_integrity_problems(database)
    if problems:
        return PeerStatus("", peer_id, "", 0, 0, 0), problems
    with Store(database, read_only=True) as store:
        local = read_local_state(store)
    status = build_peer_status(local, peer_id=peer_id, name="", sessions=(), dials={})
    return status, problems
