"""Where a peer stands: version-vector comparison and status snapshots.

The comparison is pure (:func:`classify`, :func:`lag_versions`): two cursors
(version vectors ``{origin site_id: origin version}``, a missing origin being
version 0) and nothing else. So is :func:`build_peer_status`: it turns plain
data (the local cursor and counters, session snapshots, dials, history) into
frozen dataclasses an app can show, log, or serialize (``as_dict()``).
:meth:`Peer.status <peer.peer.Peer.status>` is the one place that gathers
that data from a running peer.

What a status can and cannot know
---------------------------------
The local vector is the store's cursor plus this site's own version. The
remote vector is what the session knows the remote holds
(:attr:`SyncSession.remote_cursor <peer.protocol.SyncSession.remote_cursor>`:
its CURSOR message, raised by every change sent to it or received from it).
The protocol does not announce a peer's own version, so the remote's entry for
its own origin is taken to be what we hold from it: changes the remote wrote
that have not reached us yet are invisible until they arrive. Before EOSE
(``state == "catching_up"``) a status may therefore read ``in_sync`` or
``local_ahead`` while the remote still has stored changes for us; after EOSE
only changes in flight are missing. Changes counted as sent may still be in
flight to the remote.

The peer's :class:`SessionHistory` (``Peer.history``, subscribed to its
events) adds what a live session does not keep: when each remote last sent
EOSE, and the last error of an earlier session with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from peer import events
from peer.errors import ConfigError
from peer.session_snapshot import SessionSnapshot, SessionState
from peer.store import Store

__all__ = [
    "Classification",
    "DialStatus",
    "LocalState",
    "PeerStatus",
    "SessionHistory",
    "SessionState",
    "SessionStatus",
    "VersionLag",
    "build_peer_status",
    "classify",
    "lag_versions",
    "read_local_state",
    "session_status",
]

Classification = Literal["in_sync", "local_ahead", "remote_ahead", "diverged"]
"""How two version vectors compare:

- ``in_sync``: equal (missing origins count as version 0);
- ``local_ahead``: the local side holds something the remote lacks, not the reverse;
- ``remote_ahead``: the remote holds something the local side lacks, not the reverse;
- ``diverged``: each holds something the other lacks.
"""


_CLASSIFICATIONS: tuple[Classification, ...] = (
    "in_sync",
    "local_ahead",
    "remote_ahead",
    "diverged",
)
_STATES: tuple[SessionState, ...] = ("catching_up", "live")


@dataclass(frozen=True, slots=True)
class VersionLag:
    """How far apart two vectors are, in origin versions summed over origins.

    Versions of one origin are not dense (cr-sqlite's clock jumps on merges),
    so these are upper bounds on the number of missing transactions, and zero
    exactly when nothing is missing in that direction.
    """

    to_send: int
    """Versions the local side holds that the remote lacks."""
    to_receive: int
    """Versions the remote holds that the local side lacks."""


def lag_versions(local: Mapping[bytes, int], remote: Mapping[bytes, int]) -> VersionLag:
    """Per-origin differences of two version vectors, summed each way. Pure."""
    to_send = to_receive = 0
    for origin in local.keys() | remote.keys():
        difference = local.get(origin, 0) - remote.get(origin, 0)
        if difference > 0:
            to_send += difference
        else:
            to_receive -= difference
    return VersionLag(to_send, to_receive)


def classify(local: Mapping[bytes, int], remote: Mapping[bytes, int]) -> Classification:
    """Compare two version vectors (see :data:`Classification`). Pure."""
    lag = lag_versions(local, remote)
    if lag.to_send and lag.to_receive:
        return "diverged"
    if lag.to_send:
        return "local_ahead"
    if lag.to_receive:
        return "remote_ahead"
    return "in_sync"


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """One live session, as seen from this side."""

    remote_name: str
    site_id: str
    """The remote's cr-sqlite site id, hex."""
    peer_id: str | None
    """The remote's authenticated peer id; None on a plaintext channel."""
    address: str
    transport: str
    inbound: bool
    state: SessionState
    classification: Classification
    lag: VersionLag
    bytes_sent: int
    bytes_received: int
    rows_sent: int
    rows_received: int
    last_eose: float | None
    """When the remote last sent EOSE (seconds since the epoch), if known."""
    last_error: str | None
    """This session's error, else the last error of an earlier session with this remote."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "remote_name": self.remote_name,
            "site_id": self.site_id,
            "peer_id": self.peer_id,
            "address": self.address,
            "transport": self.transport,
            "inbound": self.inbound,
            "state": self.state,
            "classification": self.classification,
            "lag": {"to_send": self.lag.to_send, "to_receive": self.lag.to_receive},
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rows_sent": self.rows_sent,
            "rows_received": self.rows_received,
            "last_eose": self.last_eose,
            "last_error": self.last_error,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SessionStatus:
        """Read :meth:`as_dict` output back. Raises ConfigError if it does not fit."""
        try:
            state, classification = data["state"], data["classification"]
            if state not in _STATES or classification not in _CLASSIFICATIONS:
                raise ValueError(f"unknown state {state!r} or classification {classification!r}")
            return cls(
                remote_name=_typed(data["remote_name"], str),
                site_id=_typed(data["site_id"], str),
                peer_id=_optional(data["peer_id"], str),
                address=_typed(data["address"], str),
                transport=_typed(data["transport"], str),
                inbound=_typed(data["inbound"], bool),
                state=cast(SessionState, state),
                classification=cast(Classification, classification),
                lag=VersionLag(
                    _typed(data["lag"]["to_send"], int), _typed(data["lag"]["to_receive"], int)
                ),
                bytes_sent=_typed(data["bytes_sent"], int),
                bytes_received=_typed(data["bytes_received"], int),
                rows_sent=_typed(data["rows_sent"], int),
                rows_received=_typed(data["rows_received"], int),
                last_eose=_optional_time(data["last_eose"]),
                last_error=_optional(data["last_error"], str),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a session status: {exc}") from exc


_DIAL_STATES = get_args(events.DialStateName)


@dataclass(frozen=True, slots=True)
class DialStatus:
    """One address the peer dials, as its last :class:`~peer.events.DialState` left it."""

    address: str
    state: events.DialStateName
    attempt: int
    last_error: str | None
    retry_at: float | None
    """When the next attempt starts (``backing_off`` only), seconds since the epoch."""

    @classmethod
    def from_event(cls, event: events.DialState) -> DialStatus:
        error = None if event.error is None else str(event.error) or type(event.error).__name__
        return cls(event.address, event.state, event.attempt, error, event.retry_at)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "address": self.address,
            "state": self.state,
            "attempt": self.attempt,
            "last_error": self.last_error,
            "retry_at": self.retry_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DialStatus:
        """Read :meth:`as_dict` output back. Raises ConfigError if it does not fit."""
        try:
            if data["state"] not in _DIAL_STATES:
                raise ValueError(f"unknown dial state {data['state']!r}")
            return cls(
                address=_typed(data["address"], str),
                state=cast(events.DialStateName, data["state"]),
                attempt=_typed(data["attempt"], int),
                last_error=_optional(data["last_error"], str),
                retry_at=_optional_time(data["retry_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a dial status: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """This node and its live sessions."""

    site_id: str
    """This database's cr-sqlite site id, hex."""
    peer_id: str | None
    """This node's peer id; None in insecure mode without an identity."""
    name: str
    db_version: int
    schema_version: int
    held_rows: int
    """Rows held for a newer schema (see ``Store.migrate``)."""
    cursor: Mapping[str, int] = field(default_factory=dict)
    """The local version vector, hex origin -> version (own origin included)."""
    sessions: tuple[SessionStatus, ...] = ()
    dials: tuple[DialStatus, ...] = ()
    """Each address the peer dials (``connect``) and where it stands."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "site_id": self.site_id,
            "peer_id": self.peer_id,
            "name": self.name,
            "db_version": self.db_version,
            "schema_version": self.schema_version,
            "held_rows": self.held_rows,
            "cursor": dict(self.cursor),
            "sessions": [session.as_dict() for session in self.sessions],
            "dials": [dial.as_dict() for dial in self.dials],
        }

    @classmethod
    def from_dict(cls, data: Any) -> PeerStatus:
        """Read :meth:`as_dict` output back. Raises ConfigError if it does not fit."""
        try:
            cursor = data["cursor"]
            if not isinstance(cursor, dict):
                raise TypeError("cursor must be an object")
            return cls(
                site_id=_typed(data["site_id"], str),
                peer_id=_optional(data["peer_id"], str),
                name=_typed(data["name"], str),
                db_version=_typed(data["db_version"], int),
                schema_version=_typed(data["schema_version"], int),
                held_rows=_typed(data["held_rows"], int),
                cursor={_typed(k, str): _typed(v, int) for k, v in cursor.items()},
                sessions=tuple(SessionStatus.from_dict(s) for s in data["sessions"]),
                dials=tuple(DialStatus.from_dict(d) for d in data.get("dials", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a peer status: {exc}") from exc


def _typed(value: Any, *types: type) -> Any:
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise TypeError(f"{value!r:.40} is not {'/'.join(t.__name__ for t in types)}")
    return value


def _optional(value: Any, *types: type) -> Any:
    return None if value is None else _typed(value, *types)


def _optional_time(value: Any) -> float | None:
    return None if value is None else float(_typed(value, float, int))


class SessionHistory:
    """Remembers, per remote site id, its last EOSE time and last session error.

    Each Peer keeps one (``Peer.history``), subscribed to its events from
    the start, and :meth:`Peer.status <peer.peer.Peer.status>` reads it.
    ``clock`` (default :func:`time.time`) stamps EOSE. :meth:`record` runs on
    the peer's event loop; reads from other threads see whole values.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.last_eose: dict[bytes, float] = {}
        self.last_error: dict[bytes, str] = {}

    def record(self, event: events.Event) -> None:
        """Take note of one event (an :data:`~peer.events.EventCallback`)."""
        match event:
            case events.Eose(remote=remote):
                self.last_eose[remote.site_id] = self._clock()
            case events.SessionFailed(remote=events.RemotePeer() as remote, error=error):
                self.last_error[remote.site_id] = str(error)
            case events.Disconnected(remote=remote, error=error) if error is not None:
                self.last_error[remote.site_id] = str(error)
            case events.ValueTooLarge(remote=remote, error=error):
                self.last_error[remote.site_id] = str(error)
            case events.SnapshotRefused(remote=remote, error=error):
                self.last_error[remote.site_id] = f"snapshot refused: {error}"
            case _:
                pass


@dataclass(frozen=True, slots=True)
class LocalState:
    """What a peer's store says of it (see :func:`read_local_state`)."""

    site_id: bytes
    cursor: Mapping[bytes, int]
    """The local version vector, this site's own version included."""
    db_version: int
    schema_version: int
    held_rows: int


def read_local_state(store: Store) -> LocalState:
    """The store's part of a status, read on the thread that owns its main
    connection (a running Peer's store thread: ``peer.run_in_store``)."""
    cursor = {**store.cursor(), store.site_id: store.own_version()}
    return LocalState(
        store.site_id, cursor, store.db_version(), store.schema_version(), store.held_count()
    )


def build_peer_status(
    local: LocalState,
    *,
    peer_id: str | None,
    name: str,
    sessions: Iterable[SessionSnapshot],
    dials: Mapping[str, events.DialState],
    history: SessionHistory | None = None,
) -> PeerStatus:
    """A :class:`PeerStatus` from plain data. Pure.

    ``sessions`` are :meth:`SessionDriver.snapshot
    <peer.session.SessionDriver.snapshot>` results (those not past the
    handshake are left out); ``history`` adds last EOSE times and earlier
    errors. :meth:`Peer.status <peer.peer.Peer.status>` gathers these.
    """
    cursor = local.cursor
    statuses = (session_status(snapshot, cursor, history) for snapshot in sessions)
    return PeerStatus(
        site_id=local.site_id.hex(),
        peer_id=peer_id,
        name=name,
        db_version=local.db_version,
        schema_version=local.schema_version,
        held_rows=local.held_rows,
        cursor={origin.hex(): version for origin, version in sorted(cursor.items())},
        sessions=tuple(status for status in statuses if status is not None),
        dials=tuple(DialStatus.from_event(state) for _, state in sorted(dials.items())),
    )


def session_status(
    snapshot: SessionSnapshot, local: Mapping[bytes, int], history: SessionHistory | None = None
) -> SessionStatus | None:
    """One session's :class:`SessionStatus` against the local vector, or
    None if it is not past the handshake. Pure."""
    remote, site = snapshot.remote, snapshot.site_id
    if remote is None or site is None:
        return None
    known = dict(snapshot.remote_cursor)
    known[site] = max(known.get(site, 0), local.get(site, 0))
    error = snapshot.error or (history.last_error.get(site) if history else None)
    stats = snapshot.stats
    return SessionStatus(
        remote_name=remote.name,
        site_id=site.hex(),
        peer_id=remote.peer_id,
        address=remote.address,
        transport=remote.transport,
        inbound=remote.inbound,
        state=snapshot.state,
        classification=classify(local, known),
        lag=lag_versions(local, known),
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
        rows_sent=stats.rows_sent,
        rows_received=stats.rows_received,
        last_eose=history.last_eose.get(site) if history else None,
        last_error=None if error is None else str(error),
    )
