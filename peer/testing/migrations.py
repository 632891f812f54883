"""Live schema migrations as harness steps: what changes, who migrates, when.

A :class:`SchemaChange` is one numbered migration of a
:class:`~peer.testing.scenario.Schema` (the SQL, the CRRs it alters, and the
workload statements that replace the base ones from that version on). A
:class:`Migrate` step makes one peer run the migrations up to a version at a
given time, while the cluster runs: through ``Peer.migrate`` (the documented
API) or, with ``own_connection``, the way an app without crpeer's API does it
(its own connection, ``crsql_begin_alter`` / ``crsql_commit_alter``,
``PRAGMA user_version``). A peer that is down at that time is migrated on its
database file, as an app upgraded while stopped would be.

Peers that migrated write through the new statements; peers that did not
keep writing the old ones and hold what they cannot apply yet. The oracle has
every migration from the start, and every peer must have migrated by the end
of the run (the verdict compares whole tables).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from peer.errors import ConfigError

__all__ = [
    "MIGRATION_PRESETS",
    "NOTES_MIGRATIONS",
    "Migrate",
    "SchemaChange",
    "migration_preset",
]

MIGRATION_PRESETS: tuple[str, ...] = ("none", "rolling", "line")


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """Migration to ``version``: ``sql`` run between cr-sqlite's begin/commit
    alter of each table in ``alter``. ``insert``, ``update`` and ``delete``
    (None: keep the previous ones) are what peers at this version write."""

    version: int
    sql: str
    alter: tuple[str, ...] = ()
    insert: str | None = None
    update: str | None = None
    delete: str | None = None

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ConfigError("a schema change's version must be >= 1")
        if not self.sql.strip():
            raise ConfigError("a schema change needs SQL")


@dataclass(frozen=True, slots=True)
class Migrate:
    """At ``at``, peer ``peer`` migrates to ``version`` (every schema change
    above its current version, in order); ``own_connection`` does it as an
    app on its own connection instead of through ``Peer.migrate``.

    A step, not a lasting fault: ``duration`` is always 0.
    """

    at: float
    peer: int
    version: int
    own_connection: bool = False
    duration: float = 0.0
    kind: Literal["migrate"] = "migrate"

    def __post_init__(self) -> None:
        if self.duration != 0:
            raise ConfigError("a migration is a step: its duration is 0")


NOTES_MIGRATIONS: tuple[SchemaChange, ...] = (
    SchemaChange(
        1,
        "ALTER TABLE notes ADD COLUMN tag TEXT",
        alter=("notes",),
        insert=(
            "INSERT INTO notes (id, body, author, n, ts, tag) "
            "VALUES (:key, :text, :author, :number, :ts, "
            "CASE WHEN typeof(:text) = 'blob' THEN 'tag ' || hex(substr(:text, 1, 8)) "
            "ELSE 'tag ' || :text END) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body, author = excluded.author, "
            "n = excluded.n, ts = excluded.ts, tag = excluded.tag"
        ),
        update="UPDATE notes SET tag = :text, author = :author, ts = :ts WHERE id = :key",
    ),
    SchemaChange(
        2,
        "ALTER TABLE notes ADD COLUMN score INTEGER",
        alter=("notes",),
        update="UPDATE notes SET score = :number, body = :text, ts = :ts WHERE id = :key",
    ),
)
"""Two migrations of :data:`~peer.testing.scenario.NOTES_SCHEMA`: a ``tag``
column, then a ``score`` column, each written by the peers that have it."""


def migration_preset(
    name: str, *, peers: int, duration: float, seed: int, version: int = 2
) -> tuple[Migrate, ...]:
    """Named migration plans, drawn from ``seed``; all within ``0.8 * duration``.

    ``none``; ``rolling`` (every peer migrates to ``version`` one version at
    a time, one peer at a time, in a random order, about half of them on the
    app's own connection); ``line`` (mixed versions in a line: peer 0, one
    end, migrates first, the others only near the end, in a random order, so
    the middle peers hold and serve on rows they cannot apply for most of the
    run). Raises ConfigError for an unknown name.
    """
    if name not in MIGRATION_PRESETS:
        raise ConfigError(f"migration preset must be one of {', '.join(MIGRATION_PRESETS)}")
    if name == "none":
        return ()
    rng = random.Random(f"migrations/{name}/{seed}")
    steps: list[tuple[int, int]] = []  # (peer, version), in execution order
    if name == "rolling":
        for target in range(1, version + 1):
            order = list(range(peers))
            rng.shuffle(order)
            steps.extend((peer, target) for peer in order)
        start, end = 0.1, 0.8
    else:
        steps.append((0, version))
        others = list(range(1, peers))
        rng.shuffle(others)
        steps.extend((peer, version) for peer in others)
        start, end = 0.1, 0.8
    out: list[Migrate] = []
    for index, (peer, target) in enumerate(steps):
        if name == "line" and index > 0:
            fraction = 0.6 + (end - 0.6) * index / max(1, len(steps) - 1)
        else:
            fraction = start + (end - start) * index / max(1, len(steps) - 1)
        at = round(fraction * duration, 3)
        out.append(Migrate(at, peer, target, own_connection=rng.random() < 0.5))
    return tuple(out)
