"""The queries that read a page of changes, on a connection they are given.

:class:`peer.store.reader.ChangeReader` calls them inside one read
transaction of its own connection, on its thread; they keep no state. A
page holds whole groups only (every change of one ``(origin, version)``),
each origin's in ascending ``(version, seq)``, with each row's sixth field
the **origin version** (see :mod:`peer.store`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from peer.changes import Change, by_group, change_size
from peer.store.bookkeeping import CHANGE_COLUMNS

__all__ = [
    "LargeGroup",
    "combined_page",
    "fetch_within",
    "held_rows",
    "in_chunks",
    "own_changes",
    "relayed_changes",
]

MAX_COMBINED_ORIGINS = 500
"""Past this many origins to serve, pages are read origin by origin (SQL variables)."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LargeGroup:
    """A group (one origin transaction) larger than a page: read it with
    :meth:`peer.store.Store.read_group`, chunk by chunk."""

    origin: bytes
    local_version: int
    version: int
    largest_value: int = 0
    """Bytes of its largest value (text in UTF-8, or blob), so a sender can
    tell before it starts whether the receiver takes every value of it."""


def combined_page(
    conn: Any,
    site_id: bytes,
    cursor: Mapping[bytes, int],
    limit: int,
    origins: Sequence[bytes],
    max_bytes: int | None,
    reads: int,
) -> list[Change] | None:
    """The page of every origin in ``origins`` read in one pass over the
    change log (at most ``reads`` reads of it); None where the per-origin
    reads must do it (held rows exist, one transaction exceeds ``limit``, or
    the rows to send lie far apart in the log).

    Each origin's versions rise with the local versions it merged at, so
    reading ``crsql_changes`` in local order from the lowest local version
    any origin still lacks, and keeping each row whose origin version is
    above the remote's cursor, serves every origin in its own order.
    """
    remote = [origin for origin in origins if origin != site_id]
    if reads < 1 or len(remote) > MAX_COMBINED_ORIGINS or (remote and _any_held(conn)):
        return None
    starts: list[int] = []
    if site_id in origins:
        (start,) = conn.execute(
            "SELECT min(db_version) FROM crsql_changes WHERE site_id = ? AND db_version > ?",
            (site_id, cursor.get(site_id, 0)),
        ).fetchone()
        if start is not None:
            starts.append(int(start))
    if remote:
        wanted = ", ".join("(?, ?)" for _ in remote)
        (start,) = conn.execute(
            f"WITH wanted (origin, after) AS (VALUES {wanted}) "
            "SELECT min(v.local_version) FROM wanted JOIN crpeer_versions AS v "
            "ON v.origin = wanted.origin AND v.origin_version > wanted.after "
            "AND v.replay = 0",
            [value for origin in remote for value in (origin, cursor.get(origin, 0))],
        ).fetchone()
        if start is not None:
            starts.append(int(start))
    if not starts:
        return []
    wanted_origins = set(origins)
    out: list[Change] = []
    start = min(starts)
    for _ in range(reads):
        rows, full = fetch_within(
            conn.execute(
                f"SELECT {CHANGE_COLUMNS} FROM crsql_changes WHERE db_version >= ? "
                "ORDER BY db_version, seq LIMIT ?",
                (start, limit + 1),
            ),
            limit + 1,
            max_bytes,
        )
        if full:
            last = rows[-1][5]
            rows = [row for row in rows if row[5] != last]
            if not rows:
                return out or None  # one local version alone fills a page
        versions = _origin_versions(conn, rows[0][5], rows[-1][5]) if rows else {}
        for _, group in by_group(rows, lambda row: row[5]):
            kept = _rows_to_send(group, site_id, cursor, wanted_origins, versions)
            if len(out) + len(kept) > limit:
                return out or None
            out.extend(kept)
        if not full or out:
            return out
        start = last
    return None  # what is left lies far apart: the per-origin reads seek to it


def _any_held(conn: Any) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM crpeer_held)").fetchone()[0])


def _origin_versions(conn: Any, low: int, high: int) -> dict[tuple[bytes, int], tuple[int, bool]]:
    """``(origin, local version) -> (origin version, replay)`` for local versions in range."""
    return {
        (bytes(origin), int(local)): (int(version), bool(replay))
        for origin, local, version, replay in conn.execute(
            "SELECT origin, local_version, origin_version, replay FROM crpeer_versions "
            "WHERE local_version BETWEEN ? AND ?",
            (low, high),
        )
    }


def _rows_to_send(
    rows: Sequence[tuple[Any, ...]],
    site_id: bytes,
    cursor: Mapping[bytes, int],
    origins: Collection[bytes],
    versions: Mapping[tuple[bytes, int], tuple[int, bool]],
) -> list[Change]:
    """The rows of one local version the remote lacks, with their origin
    versions, each origin's rows together (in ``seq`` order)."""
    kept: list[Change] = []
    for row in rows:
        origin = bytes(row[6])
        if origin not in origins:
            continue
        if origin == site_id:
            version = row[5]
        else:
            version, replay = versions.get((origin, row[5]), (0, True))
            if replay:
                continue
        if version > cursor.get(origin, 0):
            table, pk, cid, val, col_version, _, _, cl, seq = row
            kept.append((table, pk, cid, val, col_version, version, origin, cl, seq))
    kept.sort(key=lambda change: change[6])  # stable: seq order within each origin
    return kept


def own_changes(
    conn: Any, site_id: bytes, after: int, limit: int, max_bytes: int | None
) -> list[Change] | LargeGroup:
    """This site's own changes above version ``after``, whole groups only."""
    sql = (
        f"SELECT {CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version > ? "
        "ORDER BY db_version, seq LIMIT ?"
    )
    rows, full = fetch_within(conn.execute(sql, (site_id, after, limit + 1)), limit + 1, max_bytes)
    if not full:
        return rows
    last = rows[-1][5]
    whole = [row for row in rows if row[5] != last]
    return whole or _large_group(conn, site_id, last, last)


def relayed_changes(
    conn: Any, origin: bytes, after: int, limit: int, max_bytes: int | None
) -> list[Change] | LargeGroup:
    """Another origin's changes above its version ``after``, merged and held
    rows in their order, whole groups only."""
    (start,) = conn.execute(
        "SELECT min(local_version) FROM crpeer_versions "
        "WHERE origin = ? AND origin_version > ? AND replay = 0",
        (origin, after),
    ).fetchone()
    (held_start,) = conn.execute(
        "SELECT min(local_version) FROM crpeer_held WHERE origin = ? AND version > ?",
        (origin, after),
    ).fetchone()
    starts = [s for s in (start, held_start) if s is not None]
    if not starts:
        return []
    lo = min(starts)
    merged: list[tuple[int, tuple[Any, ...]]] = []
    held: list[tuple[int, Change]] = []
    merged_full = held_full = False
    if start is not None:
        merged, merged_full = _merged_rows(conn, origin, lo, limit + 1, max_bytes)
    if held_start is not None:
        held, held_full = held_rows(conn, origin, after, lo, None, limit + 1, max_bytes)
    # A full page may end inside a local version; keep whole ones only.
    cut = min(
        [rows[-1][0] for rows, full in ((merged, merged_full), (held, held_full)) if full],
        default=None,
    )
    if cut is not None:
        merged = [r for r in merged if r[0] < cut]
        held = [r for r in held if r[0] < cut]
        if not merged and not held:
            (version,) = conn.execute(
                "SELECT coalesce(max(origin_version), 0) FROM crpeer_versions "
                "WHERE origin = ? AND local_version = ?",
                (origin, cut),
            ).fetchone()
            return _large_group(conn, origin, cut, int(version))
    hi = max([r[0] for r in merged[-1:] + held[-1:]], default=lo)
    mapping = {
        int(local): (int(version), bool(replay))
        for local, version, replay in conn.execute(
            "SELECT local_version, origin_version, replay FROM crpeer_versions "
            "WHERE origin = ? AND local_version BETWEEN ? AND ?",
            (origin, lo, hi),
        )
    }
    out: list[tuple[int, Change]] = []
    for local, row in merged:
        version, replay = mapping.get(local, (0, True))
        if replay or version <= after:
            continue
        out.append(
            (local, (row[0], row[1], row[2], row[3], row[4], version, row[6], row[7], row[8]))
        )
    if held:
        out = list(heapq.merge(out, [(r[0], r[1]) for r in held], key=lambda item: item[0]))
        out.sort(key=lambda item: (item[0], item[1][5], item[1][8]))
        if max_bytes is not None and merged:
            # Each read kept to the budget; the two together may not.
            whole = _whole_versions_within(out, max_bytes)
            if out and not whole:
                return _large_group(conn, origin, out[0][0], out[0][1][5])
            out = whole
    return [change for _, change in out]


def _large_group(conn: Any, origin: bytes, local_version: int, version: int) -> LargeGroup:
    """A :class:`LargeGroup`, its largest value measured in SQL (no value
    crosses into Python)."""
    sized = "CASE WHEN typeof(val) IN ('text', 'blob') THEN octet_length(val) ELSE 0 END"
    (largest,) = conn.execute(
        f"SELECT max((SELECT coalesce(max({sized}), 0) FROM crsql_changes "
        "WHERE site_id = ?1 AND db_version = ?2), "
        f"(SELECT coalesce(max({sized}), 0) FROM crpeer_held "
        "WHERE origin = ?1 AND local_version = ?2 AND version = ?3))",
        (origin, local_version, version),
    ).fetchone()
    return LargeGroup(origin, local_version, version, int(largest))


def _merged_rows(
    conn: Any, origin: bytes, lo: int, limit: int, max_bytes: int | None
) -> tuple[list[tuple[int, tuple[Any, ...]]], bool]:
    sql = (
        f"SELECT {CHANGE_COLUMNS} FROM crsql_changes WHERE site_id = ? AND db_version >= ? "
        "ORDER BY db_version, seq LIMIT ?"
    )
    rows, full = fetch_within(conn.execute(sql, (origin, lo, limit)), limit, max_bytes)
    return [(int(r[5]), r) for r in rows], full


def held_rows(
    conn: Any,
    origin: bytes,
    after: int,
    lo: int,
    hi: int | None,
    limit: int | None,
    max_bytes: int | None = None,
) -> tuple[list[tuple[int, Change]], bool]:
    """Held rows of ``origin`` above version ``after`` at local versions from
    ``lo`` (to ``hi``), as ``(local version, change)``, and whether a limit
    stopped the read."""
    sql = (
        "SELECT local_version, tbl, pk, cid, val, col_version, version, origin, cl, seq "
        "FROM crpeer_held WHERE origin = ? AND version > ? AND local_version >= ?"
    )
    params: list[Any] = [origin, after, lo]
    if hi is not None:
        sql += " AND local_version <= ?"
        params.append(hi)
    sql += " ORDER BY local_version, version, seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    if limit is None:
        rows, full = conn.execute(sql, params).fetchall(), False
    else:
        rows, full = fetch_within(
            conn.execute(sql, params), limit, max_bytes, lambda r: change_size(r[1:5])
        )
    held = [
        (int(r[0]), (r[1], bytes(r[2]), r[3], r[4], r[5], r[6], bytes(r[7]), r[8], r[9]))
        for r in rows
    ]
    return held, full


def fetch_within(
    rows: Any, max_rows: int, max_bytes: int | None, size: Callable[[Any], int] = change_size
) -> tuple[list[Any], bool]:
    """Read the query ``rows`` (whose ``LIMIT`` is ``max_rows``) to its end, or
    until the rows' ``size`` passes ``max_bytes`` (the row that passes it is
    included, so the caller can drop that row's whole transaction); True when
    a limit stopped it."""
    if max_bytes is None:
        fetched = rows.fetchmany(max_rows)
        full = len(fetched) >= max_rows
    else:
        fetched, total, full = [], 0, False
        for row in rows:
            fetched.append(row)
            total += size(row)
            if total > max_bytes:
                full = True
                break
        full = full or len(fetched) >= max_rows
    if full:
        rows.close()
    return fetched, full


def in_chunks(
    rows: Iterable[_T], chunk: int, max_bytes: int | None, size: Callable[[_T], int]
) -> Iterator[list[_T]]:
    """``rows`` in lists of at most ``chunk`` rows and ``max_bytes`` by
    ``size``; a row larger than ``max_bytes`` comes alone."""
    out: list[_T] = []
    total = 0
    for row in rows:
        row_size = size(row) if max_bytes is not None else 0
        if out and (len(out) >= chunk or (max_bytes is not None and total + row_size > max_bytes)):
            yield out
            out, total = [], 0
        out.append(row)
        total += row_size
    if out:
        yield out


def _whole_versions_within(
    rows: list[tuple[int, Change]], max_bytes: int
) -> list[tuple[int, Change]]:
    """The longest prefix of ``(local version, change)`` rows that ends at a
    local version boundary and stays within ``max_bytes``."""
    total, cut = 0, 0
    for index, (local, change) in enumerate(rows):
        if index and local != rows[index - 1][0]:
            cut = index
        total += change_size(change)
        if total > max_bytes:
            return rows[:cut]
    return rows
