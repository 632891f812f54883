"""The verdict of a harness run.

A run **converged** when, after every fault ended and each peer wrote its
final mark, within ``converge_timeout``:

1. every peer holds, for every other origin, at least that origin's final
   mark version (the sync protocol streams each origin in order, so nothing
   that origin committed before it is missing, apart from changes the CRDT
   superseded, which are not meant to travel);
2. every peer's tables have the same digest (sha256 over the rows sorted by
   every column), and
3. that digest equals the oracle's: a store that merged the changes of every
   committed write the moment it committed.

**Lag** of a peer at a sample time is ``sum over origins o != peer of
max(0, U[o] - cursor[o])``, where ``U`` is the union (element-wise maximum)
of every cursor seen, the oracle's included: the distance, in origin
versions, between what the peer holds and what exists. A peer that is down
has no sample (``None``). Origin versions can skip numbers (a merge also
advances a database's clock), so lag is a distance, not a count of
transactions; a change superseded before it reached a peer may keep that
peer's lag above zero until its origin writes again (the final marks close
every such gap before the verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from peer.store import Cursor

__all__ = ["Report", "lag_of", "union_of"]


@dataclass(slots=True)
class Report:
    """What a run did and whether it converged. :meth:`to_dict` is JSON-ready.

    Keys of :meth:`to_dict` (all always present): ``converged``, ``mode``,
    ``seed``, ``peers``, ``topology``, ``duration``, ``elapsed``,
    ``time_to_converge`` (seconds from the final marks to convergence, or
    null), ``writes`` (committed), ``writes_by_op``, ``writes_late`` (max
    seconds a step ran behind its time), ``faults_injected``,
    ``faults_by_kind``, ``bytes_sent``, ``traffic`` (mode-specific
    counters), ``sessions`` (``opened``: handshakes done; ``ended``: every
    session that ended after a hello, i.e. the resets, refused duplicates
    included; ``failed``: those that ended with an error, such as a frame
    gap; a cut connection ends a session without one; ``bootstrapped``:
    snapshots a fresh peer installed, ``snapshots_refused``), ``digests`` (per peer, per table),
    ``oracle_digests``, ``behind`` (per peer, the origins it still missed
    at the end), ``problems`` (why it did not converge), ``plan_digest``,
    ``write_log_digest``, ``lag`` (per peer, ``[[t, lag or null], ...]``).
    """

    mode: str
    seed: int
    peers: int
    topology: str
    duration: float
    plan_digest: str
    converged: bool = False
    elapsed: float = 0.0
    time_to_converge: float | None = None
    writes: int = 0
    writes_by_op: dict[str, int] = field(default_factory=dict)
    writes_late: float = 0.0
    faults_injected: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    traffic: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    oracle_digests: dict[str, str] = field(default_factory=dict)
    behind: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    write_log_digest: str = ""
    lag: dict[str, list[tuple[float, int | None]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values (tuples become lists)."""
        out = asdict(self)
        out["lag"] = {name: [list(s) for s in samples] for name, samples in self.lag.items()}
        return out

    def max_lag(self) -> dict[str, int]:
        """The largest lag sampled for each peer."""
        return {
            name: max((lag for _, lag in samples if lag is not None), default=0)
            for name, samples in self.lag.items()
        }


def union_of(cursors: Mapping[str, Cursor], extra: Cursor) -> Cursor:
    """The element-wise maximum of ``cursors`` and ``extra``."""
    union = dict(extra)
    for cursor in cursors.values():
        for origin, version in cursor.items():
            union[origin] = max(version, union.get(origin, 0))
    return union


def lag_of(site_id: bytes, cursor: Cursor, union: Cursor) -> int:
    """Origin versions this peer lacks against ``union`` (its own origin excluded)."""
    return sum(
        max(0, version - cursor.get(origin, 0))
        for origin, version in union.items()
        if origin != site_id
    )
