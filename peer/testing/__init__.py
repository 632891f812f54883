"""The multi-peer harness: many peers, a seeded workload, timed faults, a verdict.

::

    from peer.testing import ClusterSpec, Scenario, Workload, fault_preset, run

    scenario = Scenario(
        ClusterSpec(peers=6, topology="random", degree=2),
        Workload(rate=80, keys=50),
        faults=fault_preset("all", peers=6, duration=8, seed=7),
        seed=7,
        duration=8,
    )
    report = run(scenario)                 # or: await run_async(scenario)
    assert report.converged, report.problems
    print(report.to_dict()["time_to_converge"])

What a run does
---------------
1. :func:`make_plan` draws, from ``scenario.seed`` alone, who dials whom,
   every write (time, peer, statement, parameters) and the timeline of every
   fault start and end. Same seed, same plan: :meth:`Plan.digest` and
   :attr:`Report.write_log_digest` compare two runs.
2. The peers start, each with its own database file, and the plan runs in
   real time. Each committed write's changes go at once into an **oracle**
   store. After the last fault ends every peer writes a final **mark** (a
   row of the harness's own CRR table ``harness_marks``), the newest version
   of its origin.
3. The harness waits (at most ``converge_timeout``) until every peer holds
   every mark and all table digests equal the oracle's, then returns a
   :class:`Report` (see :mod:`peer.testing.report` for the exact verdict and
   the lag definition).

Modes
-----
``inproc`` (:mod:`peer.testing.inproc`): Peers on one event loop over a
:class:`~transports.memory.MemoryNetwork` seeded with the scenario's seed,
which makes every drop, duplicate, reorder and delay of a link replay
exactly; a kill cuts the peer's links and discards it, a restart reopens its
file. Only the interleaving with real time differs between two runs.

``process`` (:mod:`peer.testing.process`, :mod:`peer.testing.node`): one OS
process per peer (``python -m peer.testing.node``) with a TcpTransport on
127.0.0.1, driven over its stdin/stdout by JSON lines. A kill is SIGKILL (the
database may be mid-transaction); a restart reuses the file and the port. A
partition is a control command: each node refuses to dial the peers it is
cut from and closes any session with them, so no frame crosses. Link faults
are applied by each node to the frames it sends (see :class:`LinkFault`).

Large values
------------
``value_preset("large", workload)`` (the CLI's ``--values large``) makes
every write's value 1 KB to 3 MB of text or blob, half the writes many-row
transactions, and gives the cluster 256 KiB frames
(:data:`LARGE_VALUES_LIMITS`), so that pages are cut by bytes and a third of
the values travel in PART frames, in both modes. The plan holds each value's
seed and size only; the value is drawn where the write runs, the same every
time. The oracle compares values whole.

Clock skew
----------
crpeer takes no merge decision from a wall clock (cr-sqlite orders writes
by logical clocks: db_version, col_version, site id), so a skewed clock
cannot change what converges. :class:`ClockSkew` exercises what it can
reach: the ``:ts`` timestamps the skewed peer writes into rows (the tables
must still converge byte for byte to the oracle) and its reconnect timing
(backoff scaled by the clock rate).
"""

from peer.testing.driver import ClusterDriver, HarnessError, SessionCounts
from peer.testing.migrations import (
    MIGRATION_PRESETS,
    NOTES_MIGRATIONS,
    Migrate,
    SchemaChange,
    migration_preset,
)
from peer.testing.plan import FaultStep, Plan, Step, WriteStep, make_plan
from peer.testing.report import Report
from peer.testing.runner import Mode, Progress, ProgressCallback, run, run_async
from peer.testing.scenario import (
    FAULT_PRESETS,
    LARGE_VALUES,
    LARGE_VALUES_LIMITS,
    NOTES_SCHEMA,
    TOPOLOGIES,
    VALUE_PRESETS,
    ClockSkew,
    ClusterSpec,
    Crash,
    Fault,
    Join,
    LinkFault,
    Partition,
    Scenario,
    Schema,
    Topology,
    Workload,
    fault_preset,
    topology_edges,
    value_preset,
)
from transports.memory import LinkFaults

__all__ = [
    "FAULT_PRESETS",
    "LARGE_VALUES",
    "LARGE_VALUES_LIMITS",
    "MIGRATION_PRESETS",
    "NOTES_MIGRATIONS",
    "NOTES_SCHEMA",
    "TOPOLOGIES",
    "VALUE_PRESETS",
    "ClockSkew",
    "ClusterDriver",
    "ClusterSpec",
    "Crash",
    "Fault",
    "FaultStep",
    "HarnessError",
    "Join",
    "LinkFault",
    "LinkFaults",
    "Migrate",
    "Mode",
    "Partition",
    "Plan",
    "Progress",
    "ProgressCallback",
    "Report",
    "Scenario",
    "Schema",
    "SchemaChange",
    "SessionCounts",
    "Step",
    "Topology",
    "Workload",
    "WriteStep",
    "fault_preset",
    "make_plan",
    "migration_preset",
    "run",
    "run_async",
    "topology_edges",
    "value_preset",
]
