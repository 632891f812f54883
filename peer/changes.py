"""Validating change rows and grouping them into transactions: pure, no SQL.

A change row is ``(table, pk, cid, val, col_version, version, site_id, cl,
seq)`` (see :mod:`peer.store`). :func:`plan_groups` checks every row of a
batch and splits it into ``(site_id, version)`` groups, each of which the store
merges whole.

The checks are the cr-sqlite extension's preconditions: it trusts every field
of a row it merges, and some malformed rows abort the whole process inside it
(see :mod:`peer.packed_pk`) or leave the database unable to take local writes
(a counter at the 64-bit limit). Nothing reaches it unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from peer.errors import InvalidChangeError
from peer.packed_pk import KeyShape, PackedKeyError, check_key

__all__ = [
    "MAX_COUNTER",
    "ROW_OVERHEAD",
    "SENTINEL_CID",
    "SITE_ID_LENGTH",
    "Change",
    "Group",
    "SqlValue",
    "by_group",
    "change_size",
    "fits",
    "plan_groups",
]

SqlValue: TypeAlias = int | float | str | bytes | None
Change: TypeAlias = tuple[str, bytes, str, SqlValue, int, int, bytes, int, int]
"""``(table, pk, cid, val, col_version, version, site_id, cl, seq)``."""
Cursor: TypeAlias = dict[bytes, int]
"""A version vector: origin site_id -> highest origin version held."""

SITE_ID_LENGTH = 16
SENTINEL_CID = "-1"
"""The cid cr-sqlite uses for a row's existence (create/delete) record."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_COUNTER = 2**62
"""The highest col_version, version, cl and seq a row may carry. cr-sqlite
adds one to them on local writes (and takes the highest version it merged
as its own clock) with no overflow check: at 2**63 - 1 a merged row makes
the next local write fail or wrap to a negative version. 2**62 leaves that
many writes of headroom, far beyond any real count."""
_VALUE_TYPES = (type(None), int, float, str, bytes)


ROW_OVERHEAD = 96
"""Bytes a change row may take in a CHANGES frame beyond its table name, pk,
cid and value: msgpack headers, the four integers, and a group header and a
table-name header in case the row starts a group or a table (see
:func:`change_size`)."""


def change_size(change: Change) -> int:
    """An upper bound on the bytes ``change`` adds to an encoded CHANGES frame.

    Cheap (lengths only, nothing is encoded; a non-ASCII text counts 4 bytes
    a character, UTF-8's most): frames and pages are cut by it, so it must
    never be below the real size.
    """
    table, pk, cid, val = change[0], change[1], change[2], change[3]
    if type(val) is bytes:
        size = len(val)
    elif type(val) is str:
        size = len(val) if val.isascii() else 4 * len(val)
    else:
        size = 9
    return (
        ROW_OVERHEAD
        + size
        + len(pk)
        + (len(table) if table.isascii() else 4 * len(table))
        + (len(cid) if cid.isascii() else 4 * len(cid))
    )


def fits(table: str, cid: str, columns: Mapping[str, frozenset[str]]) -> bool:
    known = columns.get(table)
    return known is not None and (cid == SENTINEL_CID or cid in known)


def by_group(rows: Sequence[Any], key: Callable[[Any], Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Split consecutive rows with equal ``key`` into groups."""
    group: list[Any] = []
    current: Any = None
    for row in rows:
        k = key(row)
        if group and k != current:
            yield current, group
            group = []
        current = k
        group.append(row)
    if group:
        yield current, group


Group = tuple[bytes, int, list[Change], list[Change]]
"""One transaction of a batch: (origin, origin version, rows to merge, rows to hold)."""


def plan_groups(
    changes: Sequence[Any],
    columns: Mapping[str, frozenset[str]],
    keys: Mapping[str, KeyShape],
    own_site: bytes,
    hold_unknown: bool,
    types_checked: bool = False,
) -> list[Group]:
    """Validate every row and split the batch into (origin, version) groups.

    ``columns`` maps each CRR table to its column names, ``keys`` to its
    primary key. ``types_checked`` skips the per-field type and range checks,
    for rows that :func:`peer.messages.decode` already checked the same way;
    tables, columns and packed primary keys are always checked (a held row's
    key only for its encoding, its table being unknown). Raises
    InvalidChangeError naming the first bad row; nothing is touched.
    """
    if not isinstance(changes, Sequence) or isinstance(changes, str | bytes):
        raise InvalidChangeError(
            f"a batch must be a sequence of changes, got {type(changes).__name__}"
        )
    groups: list[tuple[bytes, int, list[Change], list[Change]]] = []
    known_cells: dict[tuple[str, str], bool] = {}
    mergeable: list[Change] = []
    held: list[Change] = []
    current: tuple[bytes, int] | None = None
    last_table: str | None = None
    last_pk: bytes | None = None
    for index, row in enumerate(changes):
        if not types_checked and not _row_is_valid(row):
            _check_row(index, row)  # raises, naming what is wrong
        table, pk, cid, _, _, version, site_id, _, _ = row
        if site_id == own_site:
            continue
        known = known_cells.get((table, cid))
        if known is None:
            if table.startswith(_RESERVED_PREFIXES):
                raise InvalidChangeError(f"change {index}: table {table!r} is not syncable")
            shape = keys.get(table)
            if shape is not None and cid in shape.names:
                raise InvalidChangeError(
                    f"change {index}: column {cid!r} is part of the primary key of {table!r}"
                )
            known = known_cells[(table, cid)] = fits(table, cid, columns)
        if not known and not hold_unknown:
            if table not in columns:
                raise InvalidChangeError(f"change {index}: unknown table {table!r} (or not a CRR)")
            raise InvalidChangeError(f"change {index}: unknown column {cid!r} of table {table!r}")
        # A row's cells share its key: most rows repeat the previous row's.
        if pk != last_pk or table != last_table:
            try:
                check_key(pk, keys.get(table))
            except PackedKeyError as exc:
                raise InvalidChangeError(
                    f"change {index}: bad primary key for table {table!r}: {exc}"
                ) from None
            last_table, last_pk = table, pk
        if (site_id, version) != current:
            current = (site_id, version)
            mergeable, held = [], []
            groups.append((bytes(site_id), version, mergeable, held))
        (mergeable if known else held).append(row)
    return groups


_VALUE_TYPE_SET = frozenset(_VALUE_TYPES)
_RESERVED_PREFIXES = ("crsql_", "crpeer_", "sqlite_")


def _row_is_valid(row: Any) -> bool:
    """The fast check, one expression per row; :func:`_check_row` explains a failure."""
    return (
        (type(row) is tuple or type(row) is list)
        and len(row) == 9
        and type(row[0]) is str
        and row[0] != ""
        and type(row[1]) is bytes
        and type(row[2]) is str
        and type(row[3]) in _VALUE_TYPE_SET
        and (type(row[3]) is not int or _INT64_MIN <= row[3] <= _INT64_MAX)
        and type(row[4]) is int
        and 0 <= row[4] <= MAX_COUNTER
        and type(row[5]) is int
        and 1 <= row[5] <= MAX_COUNTER
        and type(row[6]) is bytes
        and len(row[6]) == SITE_ID_LENGTH
        and type(row[7]) is int
        and 0 <= row[7] <= MAX_COUNTER
        and type(row[8]) is int
        and 0 <= row[8] <= MAX_COUNTER
    )


_FIELD_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("table", (str,)),
    ("pk", (bytes,)),
    ("cid", (str,)),
    ("val", _VALUE_TYPES),
    ("col_version", (int,)),
    ("version", (int,)),
    ("site_id", (bytes,)),
    ("cl", (int,)),
    ("seq", (int,)),
)


def _check_row(index: int, row: Any) -> None:
    if not isinstance(row, tuple | list) or len(row) != len(_FIELD_TYPES):
        raise InvalidChangeError(f"change {index}: expected a 9-field change row, got {row!r:.80}")
    for (name, types), value in zip(_FIELD_TYPES, row, strict=True):
        if isinstance(value, bool) or not isinstance(value, types):
            raise InvalidChangeError(
                f"change {index}: {name} must be {'/'.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidChangeError(f"change {index}: {name} {value} is out of 64-bit range")
    if len(row[6]) != SITE_ID_LENGTH:
        raise InvalidChangeError(
            f"change {index}: site_id must be {SITE_ID_LENGTH} bytes, got {len(row[6])}"
        )
    if row[5] < 1:
        raise InvalidChangeError(f"change {index}: version must be >= 1, got {row[5]}")
    if row[4] < 0 or row[7] < 0 or row[8] < 0:
        raise InvalidChangeError(f"change {index}: col_version, cl and seq must be >= 0")
    for name, field_index in (("col_version", 4), ("version", 5), ("cl", 7), ("seq", 8)):
        value = row[field_index]
        if value > MAX_COUNTER:
            raise InvalidChangeError(f"change {index}: {name} {value} is above 2**62")
    if not row[0] or row[0].startswith(("crsql_", "crpeer_", "sqlite_")):
        raise InvalidChangeError(f"change {index}: table {row[0]!r} is not syncable")
