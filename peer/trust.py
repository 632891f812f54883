"""Which peers this node syncs with: an allow-list of peer ids and a join secret.

The store is a small JSON file next to the database (``<database>.trust.json``,
mode 0600, replaced atomically on every change)::

    {"format": "crpeer-trust", "version": 1, "join_secret": "ABCDEFG-..." | null,
     "peers": [{"peer_id": "...", "label": "laptop", "added": "2026-01-01T00:00:00+00:00"}]}

Every change is a read-change-write of the file under an exclusive lock on
``<database>.trust.json.lock`` (:mod:`peer.filelock`): two processes changing
the store at once (``crpeer serve`` pairing while ``crpeer trust add`` runs)
take turns, and neither loses the other's change.

A corrupt file is an error (:class:`~peer.errors.ConfigError`), never silently
reset: resetting would forget every trusted peer. Methods are thread-safe;
removal callbacks run in the thread that called :meth:`TrustStore.remove`.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peer.errors import ConfigError, IdentityError, UntrustedPeerError
from peer.filelock import locked
from peer.identity import read_private_file, write_private_file
from peer.pairing import generate_join_secret, normalize_join_secret, parse_peer_id

__all__ = ["TrustStore", "TrustedPeer", "default_trust_path"]

_FORMAT = "crpeer-trust"
_VERSION = 1
_log = logging.getLogger(__name__)


def default_trust_path(database: str | os.PathLike[str]) -> Path:
    """Where a node keeps its trust store unless told otherwise."""
    return Path(f"{os.fspath(database)}.trust.json")


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """One allowed peer: its canonical id, a label for people, when it was added."""

    peer_id: str
    label: str
    added: dt.datetime


class TrustStore:
    """The allow-list of peer ids and the current join secret, persisted to a file.

    Open it with :meth:`load`. Every change is written to disk before the
    method returns; if writing fails, ConfigError is raised and nothing changed.
    """

    def __init__(
        self,
        path: Path,
        peers: dict[str, TrustedPeer],
        join_secret: str | None,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._path = path
        self._peers = peers
        self._join_secret = join_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._removal_callbacks: builtins.list[Callable[[str], None]] = []
        self._stamp = _stamp(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, clock: Callable[[], dt.datetime] | None = None
    ) -> TrustStore:
        """Read the store at ``path``; a missing file is an empty store.

        ``clock`` (default: current UTC time) dates new entries. Raises
        ConfigError, naming the file and what to do, if it is unreadable,
        accessible to other users, or corrupt.
        """
        store_path = Path(path)
        data = read_private_file(store_path, ConfigError)
        peers, secret = ({}, None) if data is None else _parse(data, store_path)
        return cls(store_path, peers, secret, clock or (lambda: dt.datetime.now(dt.UTC)))

    @property
    def path(self) -> Path:
        """The file this store is persisted to."""
        return self._path

    @property
    def join_secret(self) -> str | None:
        """The current join secret as it was set, or None when joining is closed."""
        return self._join_secret

    def add(self, peer_id: str, label: str = "") -> TrustedPeer:
        """Trust ``peer_id`` (any form :func:`~peer.pairing.parse_peer_id` accepts).

        Adding a trusted id again keeps its added time and replaces its label
        if ``label`` is not empty. Returns the entry. Raises IdentityError for a
        malformed id, ConfigError if the file cannot be written.
        """
        canonical = parse_peer_id(peer_id)
        with self._changing() as removed:
            old = self._peers.get(canonical)
            if old is None:
                entry = TrustedPeer(canonical, label, self._clock())
            else:
                entry = TrustedPeer(canonical, label or old.label, old.added)
            self._save({**self._peers, canonical: entry}, self._join_secret)
        self._notify_removed(removed)
        return entry

    def remove(self, peer_id: str) -> bool:
        """Stop trusting ``peer_id``; return whether it was trusted.

        Callbacks registered with :meth:`on_removed` are then called with the
        canonical id, so that live sessions of that peer can be closed. Raises
        IdentityError for a malformed id, ConfigError if the file cannot be
        written.
        """
        canonical = parse_peer_id(peer_id)
        with self._changing() as removed:
            if canonical in self._peers:
                peers = {key: value for key, value in self._peers.items() if key != canonical}
                self._save(peers, self._join_secret)
                removed.append(canonical)
        self._notify_removed(removed)
        return canonical in removed

    @contextlib.contextmanager
    def _changing(self) -> Iterator[builtins.list[str]]:
        """Hold the thread lock and the file lock, with the file's current
        contents loaded; yields the ids another process removed (append the
        ones this change removes; the caller notifies after)."""
        with self._lock:
            try:
                with locked(self._path):
                    removed = self._reload_locked()
                    yield removed
            except OSError as exc:
                raise ConfigError(
                    f"cannot write the trust store {self._path}: {exc.strerror or exc}; "
                    "check that its folder exists and is writable"
                ) from exc

    def _reload_locked(self) -> builtins.list[str]:
        """Re-read the file (the caller holds ``_lock``); the ids that disappeared."""
        data = read_private_file(self._path, ConfigError)
        peers, secret = ({}, None) if data is None else _parse(data, self._path)
        removed = sorted(set(self._peers) - set(peers))
        self._peers, self._join_secret, self._stamp = peers, secret, _stamp(self._path)
        return removed

    def _notify_removed(self, peer_ids: builtins.list[str]) -> None:
        """Tell every :meth:`on_removed` listener; one failing does not stop the others."""
        with self._lock:
            callbacks = builtins.list(self._removal_callbacks)
        for peer_id in peer_ids:
            for callback in callbacks:
                try:
                    callback(peer_id)
                except Exception:
                    _log.exception("a trust removal callback failed for %s", peer_id)

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process changed it; return whether it did.

        Ids that disappeared fire the :meth:`on_removed` callbacks, exactly as
        :meth:`remove` does. Raises ConfigError if the new file is corrupt (the
        store keeps its previous contents).
        """
        with self._lock:
            if _stamp(self._path) == self._stamp:
                return False
            removed = self._reload_locked()
        self._notify_removed(removed)
        return True

    def list(self) -> builtins.list[TrustedPeer]:
        """Every trusted peer, oldest first."""
        with self._lock:
            return sorted(self._peers.values(), key=lambda entry: (entry.added, entry.peer_id))

    def is_trusted(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is trusted; a malformed id never is."""
        try:
            canonical = parse_peer_id(peer_id)
        except IdentityError:
            return False
        with self._lock:
            return canonical in self._peers

    def check(self, peer_id: str) -> None:
        """Return normally if ``peer_id`` is trusted.

        Raises UntrustedPeerError otherwise: the caller closes the session
        before any sync frame (or starts pairing, if a join secret is set).
        """
        if not self.is_trusted(peer_id):
            raise UntrustedPeerError(f"peer {peer_id} is not in the trust store {self._path}")

    def on_removed(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(peer_id)`` after each removal; returns a function
        that unregisters it. Exceptions from the callback are logged."""
        with self._lock:
            self._removal_callbacks.append(callback)

        def unregister() -> None:
            with self._lock:
                if callback in self._removal_callbacks:
                    self._removal_callbacks.remove(callback)

        return unregister

    def set_join_secret(self, secret: str) -> None:
        """Open joining with a chosen secret (prefer :meth:`rotate_join_secret`).

        Raises ConfigError if it is shorter than
        :data:`~peer.pairing.JOIN_SECRET_MIN_LENGTH` or cannot be written.
        """
        normalize_join_secret(secret)
        with self._changing() as removed:
            self._save(self._peers, secret.strip())
        self._notify_removed(removed)

    def rotate_join_secret(self) -> str:
        """Replace the join secret with a new random 128-bit one and return it
        for display. Devices that have not joined yet need the new one.
        Raises ConfigError if it cannot be written."""
        secret = generate_join_secret()
        with self._changing() as removed:
            self._save(self._peers, secret)
        self._notify_removed(removed)
        return secret

    def clear_join_secret(self) -> None:
        """Close joining: no new device can pair until a secret is set again.
        Raises ConfigError if it cannot be written."""
        with self._changing() as removed:
            self._save(self._peers, None)
        self._notify_removed(removed)

    def _save(self, peers: dict[str, TrustedPeer], join_secret: str | None) -> None:
        document = {
            "format": _FORMAT,
            "version": _VERSION,
            "join_secret": join_secret,
            "peers": [
                {"peer_id": entry.peer_id, "label": entry.label, "added": entry.added.isoformat()}
                for entry in peers.values()
            ],
        }
        data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            write_private_file(self._path, data, replace=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the trust store {self._path}: {exc.strerror or exc}; "
                "check that its folder exists and is writable"
            ) from exc
        self._peers, self._join_secret = peers, join_secret
        self._stamp = _stamp(self._path)


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells a changed file apart: modification time and size."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_size


def _parse(data: bytes, path: Path) -> tuple[dict[str, TrustedPeer], str | None]:
    def corrupt(reason: str) -> ConfigError:
        return ConfigError(
            f"{path} is not a valid crpeer trust store ({reason}); fix it, or move it "
            "away to start with an empty one (every trusted peer must then be added again)"
        )

    try:
        document: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt("not UTF-8 JSON") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise corrupt(f'no "format": "{_FORMAT}"')
    if document.get("version") != _VERSION:
        raise corrupt(f"version {document.get('version')!r}, this crpeer reads {_VERSION}")
    secret, entries = document.get("join_secret"), document.get("peers")
    if secret is not None:
        try:
            normalize_join_secret(secret)
        except (TypeError, AttributeError, ConfigError) as exc:
            raise corrupt("join_secret is neither null nor a long enough string") from exc
    if not isinstance(entries, builtins.list):
        raise corrupt("peers is not a list")
    peers: dict[str, TrustedPeer] = {}
    for index, entry in enumerate(entries):
        try:
            peer_id, label = entry["peer_id"], entry["label"]
            added = dt.datetime.fromisoformat(entry["added"])
            if not isinstance(peer_id, str) or not isinstance(label, str):
                raise TypeError("peer_id and label must be strings")
            if added.tzinfo is None or parse_peer_id(peer_id) != peer_id:
                raise ValueError("added lacks a time zone, or peer_id is not canonical")
        except (KeyError, TypeError, ValueError, IdentityError) as exc:
            raise corrupt(f"peers[{index}] is invalid: {exc}") from exc
        if peer_id in peers:
            raise corrupt(f"peers[{index}] repeats {peer_id}")
        peers[peer_id] = TrustedPeer(peer_id, label, added)
    return peers, secret
