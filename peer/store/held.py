"""Held rows on the merger's connection: keeping them, and merging them later.

A row for a table or column this database lacks yet is *held* (see
:mod:`peer.store.bookkeeping`): :func:`hold` records it in ``crpeer_held``
while its batch merges, and once a migration adds what it needs,
:func:`ready_to_merge` finds it and :func:`merge_ready` merges it. The
:class:`~peer.store.merger.Merger` calls these on its own connection, on its
thread, inside the transactions it opens (:meth:`Merger.apply
<peer.store.merger.Merger.apply>`, :meth:`Merger.apply_held
<peer.store.merger.Merger.apply_held>`); nothing here commits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from peer.changes import Change, by_group, fits
from peer.packed_pk import KeyShape, PackedKeyError, check_key
from peer.store.bookkeeping import CHANGES_INTO, INSERT_HELD, VERSIONS_INTO, VERSIONS_UPSERT, insert
from peer.store.schema import CrrSchema

__all__ = ["HeldRow", "hold", "merge_ready", "ready_to_merge"]

_log = logging.getLogger("crpeer.store")

HeldRow = tuple[Any, ...]
"""One pending row of ``crpeer_held`` as :func:`ready_to_merge` reads it: ``(rowid,
table, pk, cid, val, col_version, version, origin, cl, seq)``."""


def hold(
    conn: Any, origin: bytes, local: int, version: int, rows: Sequence[Change], needs: int
) -> None:
    """Record ``rows`` of the group ``(origin, version)``, which landed at the
    local version ``local``, as held until schema version ``needs``; a row
    held already stays as it is."""
    conn.executemany(
        INSERT_HELD, [(origin, local, version, r[8], *r[:5], r[7], needs) for r in rows]
    )


def ready_to_merge(conn: Any, crr_schema: CrrSchema) -> list[HeldRow]:
    """The held rows not merged yet whose table and column exist in
    ``crr_schema`` (as ``conn`` sees it), in the order of their origin,
    version and seq.

    A row naming a primary-key column as its column, or whose packed
    primary key does not fit the table, is left out: it stays held,
    and a warning names the tables and origins of the rows whose key does
    not fit.
    """
    columns, keys = crr_schema
    pending = conn.execute(
        "SELECT rowid, tbl, pk, cid, val, col_version, version, origin, cl, seq "
        "FROM crpeer_held WHERE applied = 0 ORDER BY origin, version, seq"
    ).fetchall()
    known = [r for r in pending if fits(r[1], r[3], columns) and r[3] not in keys[r[1]].names]
    ready, unfit = [], set()
    for r in known:
        if _key_fits(bytes(r[2]), keys[r[1]]):
            ready.append(r)
        else:
            unfit.add(f"{r[1]} from {bytes(r[7]).hex()}")
    if unfit:
        _log.warning(
            "held rows stay held, their primary key does not fit the table: %s",
            ", ".join(sorted(unfit)),
        )
    return ready


def merge_ready(conn: Any, rows: Sequence[HeldRow], rows_per_statement: int) -> None:
    """Merge ``rows`` (from :func:`ready_to_merge`) in the caller's open write
    transaction: each group's rows (at most ``rows_per_statement`` per
    INSERT), then the local version it merged at, recorded as a replay
    (never served again: the held rows are still served at their original
    place), and the rows marked applied. Raises sqlite3.Error as SQLite
    does; the caller rolls back."""
    for (origin, version), group in by_group(rows, lambda r: (bytes(r[7]), r[6])):
        insert(
            conn, CHANGES_INTO, [tuple(r[1:]) for r in group], rows_per_statement=rows_per_statement
        )
        (local,) = conn.execute("SELECT crsql_next_db_version()").fetchone()
        insert(conn, VERSIONS_INTO, [(origin, local, version, 1)], VERSIONS_UPSERT)
        conn.executemany(
            "UPDATE crpeer_held SET applied = 1 WHERE rowid = ?", [(r[0],) for r in group]
        )


def _key_fits(packed: bytes, shape: KeyShape) -> bool:
    try:
        check_key(packed, shape)
    except PackedKeyError:
        return False
    return True
