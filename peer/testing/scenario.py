"""What a harness run does, as plain data: the cluster, the workload, the faults.

A :class:`Scenario` is everything a run depends on; with the same scenario
(``seed`` included) :func:`peer.testing.make_plan` produces the same
:class:`~peer.testing.plan.Plan` every time. Every value is checked when the
object is built; a bad one raises :class:`~peer.errors.ConfigError`.

Times are seconds from the start of the run. Every fault has an ``at`` and a
``duration`` and must end within the scenario's ``duration``: after that the
harness writes one final mark per peer and waits for convergence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from peer.errors import ConfigError
from peer.protocol import Limits
from peer.retry import Backoff
from peer.testing.migrations import NOTES_MIGRATIONS, Migrate, SchemaChange
from transports.memory import LinkFaults

__all__ = [
    "FAULT_PRESETS",
    "LARGE_VALUES",
    "LARGE_VALUES_LIMITS",
    "NOTES_SCHEMA",
    "TOPOLOGIES",
    "VALUE_PRESETS",
    "ClockSkew",
    "ClusterSpec",
    "Crash",
    "Fault",
    "Join",
    "LinkFault",
    "Partition",
    "Scenario",
    "Schema",
    "Topology",
    "Workload",
    "fault_preset",
    "topology_edges",
    "value_preset",
]

Topology: TypeAlias = Literal["mesh", "line", "ring", "star", "random"]
TOPOLOGIES: tuple[str, ...] = ("mesh", "line", "ring", "star", "random")
FAULT_PRESETS: tuple[str, ...] = ("none", "partitions", "crashes", "lossy", "skew", "all")
WriteOp: TypeAlias = Literal["insert", "update", "delete"]
OPS: tuple[WriteOp, ...] = ("insert", "update", "delete")


@dataclass(frozen=True, slots=True)
class Schema:
    """The replicated tables and the three statements the workload runs.

    ``ddl`` creates the tables (it runs once, on a new database, and on the
    oracle); ``crr_tables`` become CRRs. ``insert``, ``update`` and
    ``delete`` are single SQL statements with named parameters, any of
    ``:key`` (int in the key space), ``:text`` (str), ``:number`` (int),
    ``:author`` (the writing peer's name) and ``:ts`` (the writer's clock in
    milliseconds, see :class:`ClockSkew`); unused ones are ignored. Every
    statement must succeed whatever rows exist (use upserts). Table names
    must not start with ``harness_``, the prefix of the harness's own table.
    ``migrations`` (in ascending version) are what :class:`Migrate` steps
    run (see :mod:`peer.testing.migrations`).
    """

    ddl: str
    crr_tables: tuple[str, ...]
    insert: str
    update: str
    delete: str
    migrations: tuple[SchemaChange, ...] = ()

    def __post_init__(self) -> None:
        if not self.crr_tables:
            raise ConfigError("a schema needs at least one CRR table")
        if any(t.startswith("harness_") for t in self.crr_tables):
            raise ConfigError("table names starting with 'harness_' are the harness's own")
        for op in OPS:
            if not getattr(self, op).strip():
                raise ConfigError(f"the schema's {op} statement is empty")
        versions = [change.version for change in self.migrations]
        if versions != sorted(set(versions)):
            raise ConfigError("schema migrations must have distinct ascending versions")

    def statement(self, op: str, version: int = 0) -> str:
        """The SQL of ``op`` (``insert``, ``update`` or ``delete``) for a
        database migrated to ``version``."""
        if op not in OPS:
            raise ConfigError(f"unknown write op {op!r}")
        sql: str = getattr(self, op)
        for change in self.migrations:
            if change.version <= version and getattr(change, op) is not None:
                sql = getattr(change, op)
        return sql


NOTES_SCHEMA = Schema(
    ddl=(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, "
        "body TEXT, author TEXT, n INTEGER, ts INTEGER)"
    ),
    crr_tables=("notes",),
    insert=(
        "INSERT INTO notes (id, body, author, n, ts) VALUES (:key, :text, :author, :number, :ts) "
        "ON CONFLICT (id) DO UPDATE SET body = excluded.body, author = excluded.author, "
        "n = excluded.n, ts = excluded.ts"
    ),
    update="UPDATE notes SET body = :text, author = :author, ts = :ts WHERE id = :key",
    delete="DELETE FROM notes WHERE id = :key",
    migrations=NOTES_MIGRATIONS,
)
"""The default schema: one notes table, upserts, updates and deletes by id."""


@dataclass(frozen=True, slots=True)
class Workload:
    """Writes: a Poisson stream of ``rate`` writes per second, spread over
    the live peers, until ``writes`` (if given) or the scenario's duration.

    ``mix`` weighs insert, update and delete; ``keys`` is the key space
    (small key spaces make concurrent edits of the same row likely).

    Sized writes (``value_bytes`` set, see :data:`LARGE_VALUES`): each
    write's ``:text`` is a value of about ``n`` bytes, ``n`` drawn
    log-uniformly within ``value_bytes``, as text (with 2-, 3- and 4-byte
    UTF-8 characters among ASCII) or, for about half the rows, as a blob.
    With ``rows`` > 1, half the writes are one transaction of 2..``rows``
    statements (keys ``:key``, ``:key + 1``, ..., each with a ``:text`` of
    its own), their values cut so that a transaction carries at most
    ``transaction_bytes``. The plan holds only each value's seed and size
    (see :func:`peer.testing.database.expand_write`), so plans stay small.
    In process mode a write's changes come back over a pipe in one line of
    at most 16 MiB: keep ``transaction_bytes`` under about 10 MB there.
    """

    rate: float = 50.0
    writes: int | None = None
    mix: tuple[float, float, float] = (0.5, 0.35, 0.15)
    keys: int = 100
    value_bytes: tuple[int, int] | None = None
    rows: int = 1
    transaction_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError("workload rate must be positive")
        if self.writes is not None and self.writes < 0:
            raise ConfigError("workload writes must be >= 0")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ConfigError("workload mix is three non-negative weights, not all zero")
        if self.keys < 1:
            raise ConfigError("workload keys must be >= 1")
        if self.value_bytes is not None:
            low, high = self.value_bytes
            if not 1 <= low <= high:
                raise ConfigError("workload value_bytes is (low, high) with 1 <= low <= high")
        if self.rows < 1:
            raise ConfigError("workload rows must be >= 1")
        if self.transaction_bytes < 1:
            raise ConfigError("workload transaction_bytes must be >= 1")


VALUE_PRESETS: tuple[str, ...] = ("small", "large")
LARGE_VALUES = Workload(
    rate=6.0,
    keys=40,
    value_bytes=(1024, 3 * 1024 * 1024),
    rows=12,
    transaction_bytes=4 * 1024 * 1024,
)
"""The large-values workload: values of 1 KB to 3 MB (a third of them larger
than :data:`LARGE_VALUES_LIMITS`' frames), single-row and many-row
transactions of up to 4 MB, at 6 writes per second."""
LARGE_VALUES_LIMITS = Limits(max_frame_bytes=256 * 1024)
"""Limits for a large-values cluster: 256 KiB frames, so that values of
300 KB to 3 MB travel in PART frames and pages are cut by bytes, without
the megabytes a run would need to exceed the default 8 MiB frame."""


def value_preset(name: str, workload: Workload) -> tuple[Workload, Limits]:
    """``workload`` and the cluster limits for value preset ``name``:
    ``small`` (the workload as given, default limits) or ``large``
    (:data:`LARGE_VALUES`' sizes and transactions with ``workload``'s rate,
    count, mix and keys; :data:`LARGE_VALUES_LIMITS`). Raises ConfigError
    for an unknown name."""
    if name not in VALUE_PRESETS:
        raise ConfigError(f"value preset must be one of {', '.join(VALUE_PRESETS)}")
    if name == "small":
        return workload, Limits()
    large = LARGE_VALUES
    sized = replace(
        workload,
        value_bytes=large.value_bytes,
        rows=large.rows,
        transaction_bytes=large.transaction_bytes,
    )
    return sized, LARGE_VALUES_LIMITS


@dataclass(frozen=True, slots=True)
class Partition:
    """From ``at`` for ``duration`` seconds, peers in different ``groups``
    cannot talk (open sessions break, dials are refused). Peers in no group
    keep talking to everyone."""

    at: float
    duration: float
    groups: tuple[tuple[int, ...], ...]
    kind: Literal["partition"] = "partition"


@dataclass(frozen=True, slots=True)
class LinkFault:
    """From ``at`` for ``duration`` seconds, ``faults`` on the links between
    the pairs in ``links`` (both directions; ``None``: every pair).

    In-process these are exactly :class:`~transports.memory.LinkFaults`.
    Over TCP (process mode) a node applies them to every frame it sends:
    delay and bandwidth as written, while drop, duplicate and reorder (which
    TCP never does) become the probability of resetting the connection on a
    frame, which is what a lost or misordered frame does to a session.
    Where two link faults overlap on a link, the later one in the scenario's
    list wins until it ends.
    """

    at: float
    duration: float
    faults: LinkFaults
    links: tuple[tuple[int, int], ...] | None = None
    kind: Literal["link"] = "link"


@dataclass(frozen=True, slots=True)
class Crash:
    """At ``at`` peer ``peer`` dies without a goodbye; ``duration`` seconds
    later it restarts from its database file (see the package docstring for
    what "dies" means in each mode)."""

    at: float
    duration: float
    peer: int
    kind: Literal["crash"] = "crash"


@dataclass(frozen=True, slots=True)
class Join:
    """Peer ``peer`` is not running from the start: at ``at`` it starts for
    the first time, a fresh device (its replicated tables empty), and catches
    up; with a low ``Limits.snapshot_threshold`` (``ClusterSpec.limits``) it
    bootstraps from a snapshot of a neighbour. No write goes to it before
    ``at + quiet`` (a write of its own makes it no longer fresh: a snapshot
    under way is then refused and it replays changes)."""

    at: float
    peer: int
    quiet: float = 0.0
    duration: float = 0.0
    kind: Literal["join"] = "join"


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """From ``at`` for ``duration`` seconds, peer ``peer``'s clock reads
    ``offset`` seconds off and runs at ``rate`` times real speed.

    crpeer takes no merge decision from a wall clock (cr-sqlite orders
    writes with logical clocks), so skew can only reach two things, and the
    harness models exactly those: the ``:ts`` values the peer writes (app
    data carrying disagreeing timestamps must still converge to one state)
    and the peer's timers (its reconnect backoff delays last ``1 / rate`` of
    their nominal time). It does not reach TLS certificate validity (the
    harness runs plaintext) nor any timeout measured by the other side.
    """

    at: float
    duration: float
    peer: int
    offset: float = 0.0
    rate: float = 1.0
    kind: Literal["skew"] = "skew"


Fault: TypeAlias = Partition | LinkFault | Crash | ClockSkew | Migrate | Join


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The peers and how they are wired.

    ``peers`` nodes named ``p0`` … ``p{N-1}``; ``topology`` says who dials
    whom (see :func:`topology_edges`; ``degree`` is for ``random``). The
    timing knobs are short by default so that faults are noticed quickly:
    ``ping_interval`` and ``idle_timeout`` bound how long a lost frame
    stalls a session, ``backoff`` how fast a peer redials. The harness
    writes through the Peer (which pushes at once), so ``poll_interval``
    (how often a peer looks for writes by other connections) can be long.
    """

    peers: int = 4
    topology: Topology = "mesh"
    degree: int = 3
    schema: Schema = NOTES_SCHEMA
    limits: Limits = field(default_factory=Limits)
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.02, maximum=0.5))
    ping_interval: float = 0.3
    idle_timeout: float = 1.5
    poll_interval: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.peers <= 64:
            raise ConfigError("peers must be within 1..64")
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}")
        if self.degree < 1:
            raise ConfigError("degree must be >= 1")
        if not 0 < self.ping_interval < self.idle_timeout:
            raise ConfigError("need 0 < ping_interval < idle_timeout")

    @property
    def names(self) -> list[str]:
        return [f"p{i}" for i in range(self.peers)]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One run: the cluster, the workload, timed faults, the seed.

    ``duration`` is the length of the write-and-fault phase;
    ``converge_timeout`` bounds the wait for convergence after it;
    ``sample_interval`` is how often per-peer lag is sampled.
    """

    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    workload: Workload = field(default_factory=Workload)
    faults: tuple[Fault, ...] = ()
    seed: int = 0
    duration: float = 5.0
    converge_timeout: float = 30.0
    sample_interval: float = 0.2

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise ConfigError("duration must be positive")
        if not self.converge_timeout > 0 or not self.sample_interval > 0:
            raise ConfigError("converge_timeout and sample_interval must be positive")
        count = self.cluster.peers
        for fault in self.faults:
            if fault.at < 0 or fault.duration < 0 or fault.at + fault.duration > self.duration:
                raise ConfigError(f"{fault.kind} fault must lie within [0, duration]: {fault}")
            if (
                isinstance(fault, Crash | ClockSkew | Migrate | Join)
                and not 0 <= fault.peer < count
            ):
                raise ConfigError(f"{fault.kind} fault names peer {fault.peer} of {count}")
            if isinstance(fault, ClockSkew) and not fault.rate > 0:
                raise ConfigError("clock skew rate must be positive")
            if isinstance(fault, Partition):
                members = [p for group in fault.groups for p in group]
                if len(fault.groups) < 2 or len(set(members)) != len(members):
                    raise ConfigError("a partition needs two or more disjoint groups")
                if any(not 0 <= p < count for p in members):
                    raise ConfigError(f"partition names a peer outside 0..{count - 1}")
            if isinstance(fault, LinkFault) and any(
                not (0 <= a < count and 0 <= b < count and a != b) for a, b in fault.links or ()
            ):
                raise ConfigError(f"link fault names a bad link: {fault.links}")
        self._check_migrations()
        joins = [f for f in self.faults if isinstance(f, Join)]
        if len({f.peer for f in joins}) != len(joins):
            raise ConfigError("a peer joins at most once")
        for join in joins:
            if any(
                isinstance(f, Crash | Migrate) and f.peer == join.peer and f.at < join.at
                for f in self.faults
            ):
                raise ConfigError(f"peer {join.peer} crashes or migrates before it joins")

    def _check_migrations(self) -> None:
        """Every migration step names a version the schema has, and every peer
        ends at the same version (the verdict compares whole tables)."""
        steps = [f for f in self.faults if isinstance(f, Migrate)]
        if not steps:
            return
        known = {change.version for change in self.cluster.schema.migrations}
        for step in steps:
            if step.version not in known:
                raise ConfigError(f"the schema has no migration to version {step.version}")
        final = [
            max((s.version for s in steps if s.peer == peer), default=0)
            for peer in range(self.cluster.peers)
        ]
        if len(set(final)) != 1:
            raise ConfigError(f"every peer must end at one schema version, got {final}")


def topology_edges(count: int, topology: str, degree: int, seed: int) -> list[tuple[int, int]]:
    """Who dials whom: ``(dialer, listener)`` pairs, each unordered pair once.

    ``mesh``: every pair; ``line``: i dials i-1; ``ring``: a line closed
    back to 0; ``star``: everyone dials 0; ``random``: a random spanning
    tree plus random links until each peer has ``degree`` links (or all it
    can have), drawn from ``seed``. Always connected.
    """
    if topology == "mesh":
        return [(i, j) for i in range(count) for j in range(i)]
    if topology == "line":
        return [(i, i - 1) for i in range(1, count)]
    if topology == "ring":
        return [(i, i - 1) for i in range(1, count)] + ([(0, count - 1)] if count > 2 else [])
    if topology == "star":
        return [(i, 0) for i in range(1, count)]
    if topology != "random":
        raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}")
    rng = random.Random(f"topology/{seed}")
    order = list(range(count))
    rng.shuffle(order)
    edges = {(order[i], order[rng.randrange(i)]) for i in range(1, count)}
    linked = {frozenset(e) for e in edges}
    for node in range(count):
        candidates = [other for other in range(count) if other != node]
        rng.shuffle(candidates)
        for other in candidates:
            if sum(node in pair for pair in linked) >= min(degree, count - 1):
                break
            if frozenset((node, other)) not in linked:
                linked.add(frozenset((node, other)))
                edges.add((node, other))
    return sorted(edges)


def fault_preset(name: str, *, peers: int, duration: float, seed: int) -> tuple[Fault, ...]:
    """Named fault sets for the CLI and for soaks, drawn from ``seed``.

    ``none``; ``partitions`` (two splits of the cluster in two groups);
    ``crashes`` (two peers killed and restarted, one at a time); ``lossy``
    (drop, duplicate, reorder and delay on every link, and one slow link);
    ``skew`` (one peer's clock an hour fast and running double speed, one
    slow); ``all`` (every one of these, overlapping). Everything ends by
    0.85 * ``duration``. Raises ConfigError for an unknown name.
    """
    if name not in FAULT_PRESETS:
        raise ConfigError(f"fault preset must be one of {', '.join(FAULT_PRESETS)}")
    rng = random.Random(f"faults/{name}/{seed}")
    d = duration
    out: list[Fault] = []
    if name in {"partitions", "all"} and peers >= 2:
        for start, length in ((0.10, 0.25), (0.50, 0.25)):
            members = list(range(peers))
            rng.shuffle(members)
            cut = rng.randrange(1, peers)
            groups = (tuple(sorted(members[:cut])), tuple(sorted(members[cut:])))
            out.append(Partition(round(start * d, 3), round(length * d, 3), groups))
    if name in {"crashes", "all"} and peers >= 2:
        victims = rng.sample(range(peers), 2)
        for victim, (start, length) in zip(victims, ((0.15, 0.2), (0.55, 0.25)), strict=True):
            out.append(Crash(round(start * d, 3), round(length * d, 3), victim))
    if name in {"lossy", "all"} and peers >= 2:
        lossy = LinkFaults(drop=0.02, duplicate=0.01, reorder=0.02, delay=(0.0, 0.005))
        out.append(LinkFault(round(0.05 * d, 3), round(0.6 * d, 3), lossy))
        a, b = rng.sample(range(peers), 2)
        slow = LinkFaults(delay=(0.01, 0.04), bandwidth=64_000.0)
        out.append(LinkFault(round(0.2 * d, 3), round(0.65 * d, 3), slow, ((a, b),)))
    if name in {"skew", "all"}:
        fast, slow_peer = rng.sample(range(peers), 2) if peers >= 2 else (0, 0)
        out.append(ClockSkew(0.0, round(0.85 * d, 3), fast, offset=3600.0, rate=2.0))
        if slow_peer != fast:
            out.append(ClockSkew(0.0, round(0.85 * d, 3), slow_peer, offset=-5400.0, rate=0.5))
    return tuple(out)


def fault_to_dict(fault: Fault) -> dict[str, object]:
    """A JSON-ready description of ``fault``."""
    out: dict[str, object] = {"kind": fault.kind, "at": fault.at, "duration": fault.duration}
    if isinstance(fault, Partition):
        out["groups"] = [list(g) for g in fault.groups]
    elif isinstance(fault, LinkFault):
        f = fault.faults
        out["faults"] = {
            "drop": f.drop,
            "duplicate": f.duplicate,
            "reorder": f.reorder,
            "delay": list(f.delay),
            "bandwidth": f.bandwidth,
        }
        out["links"] = None if fault.links is None else [list(link) for link in fault.links]
    elif isinstance(fault, Crash):
        out["peer"] = fault.peer
    elif isinstance(fault, Join):
        out.update(peer=fault.peer, quiet=fault.quiet)
    elif isinstance(fault, Migrate):
        out.update(peer=fault.peer, version=fault.version, own_connection=fault.own_connection)
    else:
        out.update(peer=fault.peer, offset=fault.offset, rate=fault.rate)
    return out
