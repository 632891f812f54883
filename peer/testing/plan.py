"""The plan of a run: every write and every fault, with its time, from one seed.

:func:`make_plan` is pure: the same :class:`~peer.testing.scenario.Scenario`
gives the same :class:`Plan` (and the same :meth:`Plan.digest`) on any
machine. The runner executes the steps in order, each at its time or as soon
after as it can; nothing random happens in the harness outside the plan and
the memory network (seeded with the scenario's seed).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

from peer.store import SqlValue
from peer.testing.scenario import (
    OPS,
    ClockSkew,
    Crash,
    Fault,
    Join,
    Scenario,
    Workload,
    fault_to_dict,
    topology_edges,
)

__all__ = ["MARK_SQL", "MARK_TABLE", "FaultStep", "Plan", "Step", "WriteStep", "make_plan"]

MARK_TABLE = "harness_marks"
"""The harness's own CRR table: one row per peer, written only by that peer."""
MARK_DDL = (
    f"CREATE TABLE IF NOT EXISTS {MARK_TABLE} "
    "(peer TEXT PRIMARY KEY NOT NULL, seq INTEGER, ts INTEGER)"
)
MARK_SQL = (
    f"INSERT INTO {MARK_TABLE} (peer, seq, ts) VALUES (:author, :number, :ts) "
    "ON CONFLICT (peer) DO UPDATE SET seq = excluded.seq, ts = excluded.ts"
)
EPOCH_MS = 1_700_000_000_000
"""Where the harness's simulated clock starts (``:ts`` of a write at t=0)."""


@dataclass(frozen=True, slots=True)
class WriteStep:
    """Peer ``peer`` runs statement ``op`` with ``params``.

    ``op`` is ``insert``, ``update``, ``delete`` or ``mark`` (the final write
    of each peer into the harness's own table, after every fault ended: the
    last version of each origin, which every peer must end up holding).
    A sized or many-row write also has ``size`` and ``rows`` among its
    ``params``: the seeds of its values, expanded where it runs (see
    :func:`peer.testing.database.expand_write`).
    """

    at: float
    peer: int
    op: Literal["insert", "update", "delete", "mark"]
    params: tuple[tuple[str, SqlValue], ...]

    def to_dict(self) -> dict[str, object]:
        return {"at": self.at, "write": self.op, "peer": self.peer, "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class FaultStep:
    """Fault number ``index`` of the scenario starts (``start``) or ends."""

    at: float
    index: int
    fault: Fault
    start: bool

    def to_dict(self) -> dict[str, object]:
        edge = "start" if self.start else "end"
        return {"at": self.at, "fault": edge, "index": self.index, **fault_to_dict(self.fault)}


Step: TypeAlias = WriteStep | FaultStep


@dataclass(frozen=True, slots=True)
class Plan:
    """Who dials whom, then every step in execution order."""

    seed: int
    edges: tuple[tuple[int, int], ...]
    steps: tuple[Step, ...]

    @property
    def writes(self) -> Iterator[WriteStep]:
        return (s for s in self.steps if isinstance(s, WriteStep))

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "edges": [list(e) for e in self.edges],
            "steps": [s.to_dict() for s in self.steps],
        }

    def digest(self) -> str:
        """sha256 of the plan's canonical JSON: equal digests, equal runs."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def make_plan(scenario: Scenario) -> Plan:
    """Draw the topology, every write and the fault timeline from the seed.

    A write goes to a peer that is up at its time (crash windows are known in
    advance); with every peer down the write is skipped. After the last
    fault ends (at ``duration``) each peer writes its mark.
    """
    spec, work = scenario.cluster, scenario.workload
    edges = topology_edges(spec.peers, spec.topology, spec.degree, scenario.seed)
    rng = random.Random(f"plan/{scenario.seed}")
    timed: list[tuple[float, int, Step]] = []
    for index, fault in enumerate(scenario.faults):
        # Ends sort before starts at the same instant, and both before writes.
        timed.append((fault.at, 1, FaultStep(fault.at, index, fault, True)))
        end = round(fault.at + fault.duration, 6)
        timed.append((end, 0, FaultStep(end, index, fault, False)))

    crashes = [f for f in scenario.faults if isinstance(f, Crash)]
    # A peer that joins late is down from the start until it joins.
    crashes += [Crash(0.0, f.at + f.quiet, f.peer) for f in scenario.faults if isinstance(f, Join)]
    skews = [f for f in scenario.faults if isinstance(f, ClockSkew)]
    # Sizes and row counts come from a stream of their own: a workload
    # without them draws exactly the plan it always drew.
    shapes = random.Random(f"shapes/{scenario.seed}")
    t, count = 0.0, 0
    while work.writes is None or count < work.writes:
        t += rng.expovariate(work.rate)
        if t >= scenario.duration:
            break
        at = round(t, 6)
        up = [p for p in range(spec.peers) if not _down(p, at, crashes)]
        op = rng.choices(OPS, weights=work.mix)[0]
        key, number, token = rng.randrange(work.keys), rng.randrange(1 << 31), rng.getrandbits(32)
        shape = _shape(work, shapes)
        if not up:
            continue
        peer = rng.choice(up)
        params = _params(
            peer, at, skews, key=key, number=number, text=f"p{peer}#{count}:{token:08x}"
        )
        timed.append((at, 2, WriteStep(at, peer, op, params + shape)))
        count += 1
    end = scenario.duration
    for peer in range(spec.peers):
        params = _params(peer, end, skews, key=0, number=count, text="")
        timed.append((end, 3, WriteStep(end, peer, "mark", params)))
    timed.sort(key=lambda item: (item[0], item[1]))
    return Plan(scenario.seed, tuple(edges), tuple(step for _, _, step in timed))


def _shape(work: Workload, rng: random.Random) -> tuple[tuple[str, SqlValue], ...]:
    """``size`` and ``rows`` of one write (none for a plain workload)."""
    out: list[tuple[str, SqlValue]] = []
    rows = 1 if work.rows == 1 or rng.random() < 0.5 else rng.randint(2, work.rows)
    if rows > 1:
        out.append(("rows", rows))
    if work.value_bytes is not None:
        low, high = work.value_bytes
        size = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        size = max(low, min(size, work.transaction_bytes // rows))
        out.append(("size", size))
    return tuple(out)


def _down(peer: int, at: float, crashes: list[Crash]) -> bool:
    return any(c.peer == peer and c.at <= at < c.at + c.duration for c in crashes)


def _params(
    peer: int, at: float, skews: list[ClockSkew], *, key: int, number: int, text: str
) -> tuple[tuple[str, SqlValue], ...]:
    """The named parameters of a write, with the writer's skewed clock as ``ts``."""
    clock = at
    for skew in skews:
        if skew.peer == peer and skew.at <= at < skew.at + skew.duration:
            clock = skew.at + (at - skew.at) * skew.rate + skew.offset
    return (
        ("key", key),
        ("text", text),
        ("number", number),
        ("author", f"p{peer}"),
        ("ts", EPOCH_MS + round(clock * 1000)),
    )
