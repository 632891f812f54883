"""A running node's numbers for Prometheus: :class:`NodeMetrics`.

:class:`NodeMetrics` is a ``prometheus_client`` collector. It learns what a
:class:`~peer.peer.Peer` exposes and nothing more: its status
(:meth:`Peer.status <peer.peer.Peer.status>`), its events (it subscribes
when built, so build it before ``peer.start()`` to see every session), each
live session's counters (``SessionDriver.snapshot()``), the database files, and
how long applies and reads take (it adds itself to
:attr:`Peer.timing_observers <peer.peer.Peer.timing_observers>`).

``prometheus_client`` collectors are synchronous and the status is read on
the peer's store thread, so a scrape is two steps, both on the peer's event
loop: ``await metrics.refresh()`` takes the snapshot, then
``prometheus_client.generate_latest(registry)`` renders it
(:meth:`NodeMetrics.exposition` does both). Every metric is listed in
:data:`METRICS` (name and help text) and in README.md.

Per-peer series carry ``peer`` (the remote's peer id, or its site id in hex
on a plaintext channel) and ``name`` (the name the remote announces).
Counters of rows and bytes add up every session with that peer since this
node started: a session's last counts are kept when it ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from peer import events
from peer.errors import (
    CrpeerError,
    IdentityError,
    PairingError,
    RemoteProtocolError,
    UntrustedPeerError,
)
from peer.housekeeping import wal_size
from peer.status import PeerStatus

if TYPE_CHECKING:
    from peer.peer import Peer
    from peer.session import SessionDriver, SessionStats

__all__ = ["METRICS", "TIME_BUCKETS", "NodeMetrics", "database_path", "error_code", "file_size"]

METRICS: dict[str, str] = {
    "crpeer_node": "This node: peer id, site id and name (value 1).",
    "crpeer_sessions": "Live sessions past their handshake, by transport and state.",
    "crpeer_dials": "Addresses this node dials (--connect), by dial state.",
    "crpeer_peer_rows_sent": "Changes sent to a peer, over every session with it.",
    "crpeer_peer_rows_received": "Changes received from a peer, over every session with it.",
    "crpeer_peer_bytes_sent": "Frame bytes sent to a peer, over every session with it.",
    "crpeer_peer_bytes_received": "Frame bytes received from a peer, over every session with it.",
    "crpeer_peer_lag_versions": (
        "Origin versions one side holds that the other lacks (direction to_send: "
        "the peer lacks them; to_receive: this node lacks them), per live session."
    ),
    "crpeer_peer_backlog_changes": (
        "Changes a peer still announced for this node's catch-up (0 after its EOSE)."
    ),
    "crpeer_peer_classification": (
        "How a live peer's version vector compares with this node's "
        "(1 for its classification, 0 for the others)."
    ),
    "crpeer_held_rows": "Changes held for a newer schema until this database is migrated.",
    "crpeer_db_version": "This database's cr-sqlite db_version.",
    "crpeer_schema_version": "This database's schema version (PRAGMA user_version).",
    "crpeer_pairing_attempts": (
        "Pairings with a join secret, by outcome (paired: a new peer joined; "
        "refused: a wrong secret or a peer that takes no joins)."
    ),
    "crpeer_refusals": "Connections refused before any sync frame, by reason.",
    "crpeer_session_failures": "Sessions that ended with an error, by error code.",
    "crpeer_database_size_bytes": "Size of the database file.",
    "crpeer_wal_size_bytes": "Size of the database's write-ahead log (-wal) file.",
    "crpeer_apply_seconds": (
        "Time the store takes to apply one frame of a peer's changes (on the store thread)."
    ),
    "crpeer_read_seconds": (
        "Time the store takes to read one page or chunk of changes to send (on the read thread)."
    ),
}

TIME_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the apply and read time histograms' buckets."""

_CLASSIFICATIONS = ("in_sync", "local_ahead", "remote_ahead", "diverged")
_STATES = ("catching_up", "live")
_DIAL_STATES = get_args(events.DialStateName)
_PEER = ["peer", "name"]


def error_code(error: CrpeerError) -> str:
    """A short label for an error: the wire code's name for a remote protocol
    error (``invalid_change``, ``timeout``), else the error class in snake case
    without ``_error`` (``store``, ``channel_closed``, ``untrusted_peer``)."""
    if isinstance(error, RemoteProtocolError):
        return error.code.name.lower()
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
    return snake.removesuffix("_error") or snake


def file_size(path: str | os.PathLike[str]) -> int:
    """``path``'s size in bytes; 0 when it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _refusal_reason(error: CrpeerError) -> str:
    if isinstance(error, PairingError):
        return "pairing"
    if isinstance(error, UntrustedPeerError):
        return "untrusted"
    if isinstance(error, IdentityError):
        return "identity"
    if isinstance(error, RemoteProtocolError):
        return "protocol"
    return "transport"


def _peer_key(remote: events.RemotePeer) -> tuple[str, str]:
    return (remote.peer_id or remote.site_id.hex(), remote.name)


class NodeMetrics(Collector):
    """Counters from a peer's events plus a snapshot of its status.

    Built on the peer's loop thread (or before the loop runs); it subscribes
    to ``peer`` at once. ``clock`` (default :func:`time.time`) stamps
    :attr:`connected_since`. Call :meth:`close` to unsubscribe.
    """

    def __init__(self, peer: Peer, clock: Callable[[], float] = time.time) -> None:
        self.peer = peer
        self._clock = clock
        self._started = dt.datetime.now(dt.UTC)
        self._unsubscribe = peer.subscribe(self.record)
        self.connected_since: dict[bytes, float] = {}
        """When each live remote (by site id) connected, seconds since the epoch."""
        self._live: dict[events.RemotePeer, SessionDriver] = {}
        """The session with each live remote, read through its snapshot."""
        self._ended: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self._backlog: dict[tuple[str, str], int] = {}
        self._paired: set[str] = set()
        self._pairings: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._status: PeerStatus | None = None
        self._transports: tuple[str, ...] = ()
        self._sizes = (0, 0)
        self._timings = {
            kind: Histogram(name, METRICS[name], buckets=TIME_BUCKETS, registry=None)
            for kind, name in (("apply", "crpeer_apply_seconds"), ("read", "crpeer_read_seconds"))
        }
        peer.timing_observers.append(self.observe)
        self.registry = CollectorRegistry(auto_describe=False)
        """A registry holding this collector alone: what ``GET /metrics`` renders."""
        self.registry.register(self)

    def close(self) -> None:
        """Stop listening to the peer's events and timings. Idempotent."""
        self._unsubscribe()
        self._unsubscribe = lambda: None
        with contextlib.suppress(ValueError):
            self.peer.timing_observers.remove(self.observe)

    def observe(self, kind: str, seconds: float) -> None:
        """Add one apply or read time (a :data:`~peer.peer.TimingObserver`;
        thread-safe). Other kinds are ignored."""
        histogram = self._timings.get(kind)
        if histogram is not None:
            histogram.observe(seconds)

    # -- events -------------------------------------------------------------------

    def record(self, event: events.Event) -> None:
        """Count one event (an :data:`~peer.events.EventCallback`)."""
        match event:
            case events.Connected(remote=remote):
                self.connected_since[remote.site_id] = self._clock()
                self._track(remote)
                self._count_pairing(remote)
            case events.Progress(remote=remote, rows_received=got, rows_expected=expected):
                self._backlog[_peer_key(remote)] = max(0, expected - got)
            case events.Eose(remote=remote):
                self._backlog[_peer_key(remote)] = 0
            case events.Disconnected(remote=remote):
                self._end(remote)
            case events.SessionFailed(remote=None, error=error):
                reason = _refusal_reason(error)
                self._refusals[reason] += 1
                if reason == "pairing":
                    self._pairings["refused"] += 1
            case events.SessionFailed(error=error):
                self._failures[error_code(error)] += 1
            case _:
                pass

    def _track(self, remote: events.RemotePeer) -> None:
        for driver in self.peer.sessions:
            if driver.snapshot().remote == remote:
                self._live[remote] = driver

    def _end(self, remote: events.RemotePeer) -> None:
        driver = self._live.pop(remote, None)
        if driver is not None:
            self._ended[_peer_key(remote)].update(_counts(driver.snapshot().stats))
        self._backlog.pop(_peer_key(remote), None)
        if not any(live.site_id == remote.site_id for live in self._live):
            self.connected_since.pop(remote.site_id, None)

    def _count_pairing(self, remote: events.RemotePeer) -> None:
        """A peer that joined with the join secret is trusted as ``paired`` just
        before its session connects (see peer.auth); count each once."""
        trust = self.peer.gate.trust
        if trust is None or remote.peer_id is None or remote.peer_id in self._paired:
            return
        entry = next((e for e in trust.list() if e.peer_id == remote.peer_id), None)
        if entry is not None and entry.label == "paired" and entry.added >= self._started:
            self._paired.add(remote.peer_id)
            self._pairings["paired"] += 1

    # -- scraping -----------------------------------------------------------------

    async def refresh(self) -> None:
        """Take the snapshot :meth:`collect` reports. Call on the peer's loop.

        Raises ConfigError if the peer is not started, StoreError if its
        store fails.
        """
        self._status = await self.peer.status()
        for driver in self.peer.sessions:  # sessions that began before we subscribed
            remote = driver.snapshot().remote
            if remote is not None and remote not in self._live:
                self._live[remote] = driver
                self.connected_since.setdefault(remote.site_id, self._clock())
        self._transports = tuple(t.scheme for t in self.peer.transports)
        path = database_path(self.peer)
        if path is not None:
            self._sizes = (file_size(path), wal_size(path))

    async def exposition(self) -> bytes:
        """:meth:`refresh`, then the Prometheus text format of :attr:`registry`."""
        await self.refresh()
        return generate_latest(self.registry)

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the snapshot; collect() gives them

    def collect(self) -> Iterator[Metric]:
        """The metrics of the last :meth:`refresh` (nothing before the first)."""
        status = self._status
        if status is None:
            return
        node = InfoMetricFamily("crpeer_node", METRICS["crpeer_node"], labels=[])
        node.add_metric(
            [], {"peer_id": status.peer_id or "", "site_id": status.site_id, "name": status.name}
        )
        yield node
        yield from self._session_metrics(status)
        yield from self._peer_counters()
        for name, value in (
            ("crpeer_held_rows", status.held_rows),
            ("crpeer_db_version", status.db_version),
            ("crpeer_schema_version", status.schema_version),
            ("crpeer_database_size_bytes", self._sizes[0]),
            ("crpeer_wal_size_bytes", self._sizes[1]),
        ):
            yield GaugeMetricFamily(name, METRICS[name], value=value)
        for name, label, counts, known in (
            ("crpeer_pairing_attempts", "outcome", self._pairings, ("paired", "refused")),
            (
                "crpeer_refusals",
                "reason",
                self._refusals,
                ("untrusted", "pairing", "identity", "protocol", "transport"),
            ),
            ("crpeer_session_failures", "code", self._failures, ()),
        ):
            family = CounterMetricFamily(name, METRICS[name], labels=[label])
            for key in sorted(set(known) | set(counts)):
                family.add_metric([key], counts[key])
            yield family
        for histogram in self._timings.values():
            yield from histogram.collect()

    def _session_metrics(self, status: PeerStatus) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "crpeer_sessions", METRICS["crpeer_sessions"], labels=["transport", "state"]
        )
        by_kind: Counter[tuple[str, str]] = Counter((s.transport, s.state) for s in status.sessions)
        for transport in sorted(set(self._transports) | {s.transport for s in status.sessions}):
            for state in _STATES:
                sessions.add_metric([transport, state], by_kind[(transport, state)])
        yield sessions
        dials = GaugeMetricFamily("crpeer_dials", METRICS["crpeer_dials"], labels=["state"])
        dial_states: Counter[str] = Counter(d.state for d in status.dials)
        for state in _DIAL_STATES:
            dials.add_metric([state], dial_states[state])
        yield dials
        lag = GaugeMetricFamily(
            "crpeer_peer_lag_versions",
            METRICS["crpeer_peer_lag_versions"],
            labels=[*_PEER, "direction"],
        )
        classification = GaugeMetricFamily(
            "crpeer_peer_classification",
            METRICS["crpeer_peer_classification"],
            labels=[*_PEER, "classification"],
        )
        backlog = GaugeMetricFamily(
            "crpeer_peer_backlog_changes", METRICS["crpeer_peer_backlog_changes"], labels=_PEER
        )
        for session in status.sessions:
            key = [session.peer_id or session.site_id, session.remote_name]
            lag.add_metric([*key, "to_send"], session.lag.to_send)
            lag.add_metric([*key, "to_receive"], session.lag.to_receive)
            for name in _CLASSIFICATIONS:
                classification.add_metric([*key, name], int(session.classification == name))
            backlog.add_metric(key, self._backlog.get((key[0], key[1]), 0))
        yield lag
        yield classification
        yield backlog

    def _peer_counters(self) -> Iterator[Metric]:
        totals: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for key, counts in self._ended.items():
            totals[key].update(counts)
        for remote, driver in self._live.items():
            totals[_peer_key(remote)].update(_counts(driver.snapshot().stats))
        for field in ("rows_sent", "rows_received", "bytes_sent", "bytes_received"):
            name = f"crpeer_peer_{field}"
            family = CounterMetricFamily(name, METRICS[name], labels=_PEER)
            for key, counts in sorted(totals.items()):
                family.add_metric(list(key), counts[field])
            yield family


def _counts(stats: SessionStats) -> Counter[str]:
    return Counter(
        rows_sent=stats.rows_sent,
        rows_received=stats.rows_received,
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
    )


def database_path(peer: Peer) -> Path | None:
    """The file of ``peer``'s (started) database; None for an in-memory or URI one."""
    store = peer.store
    return None if store.in_memory or store.path.startswith("file:") else Path(store.path)
