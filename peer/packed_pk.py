"""cr-sqlite's packed primary keys: encode, decode, and check against a table. Pure.

A change row names its row by the values of the table's primary key, packed
by cr-sqlite's ``crsql_pack_columns``::

    count:u8, then per column
      type:u8    low 3 bits: 1 integer, 2 real, 3 text, 4 blob, 5 null;
                 high 5 bits: a byte count n (integer, text and blob only)
      integer    n bytes, big-endian (n = 0 for zero, 1-7 for positive values
                 that fit, 8 for the rest, read as signed)
      real       8 bytes, IEEE 754 big-endian (n = 0)
      text, blob n bytes of big-endian length, then that many bytes

The extension decodes this with no room for error: an empty key, or a byte
count above 8 with enough bytes behind it, aborts the whole process, and a
key with fewer columns than the table's binds the row's value as its key.
:func:`check_key` is the gate: it accepts exactly the keys the extension
itself produces for a row the table can hold (:func:`pack` of the row's key
values), and says why it refuses any other.

Which values a key column can hold is SQLite's type affinity: a value the
column would convert (an integer for a TEXT column, ``'5'`` for an INTEGER
one) is refused, because cr-sqlite stores the key unconverted beside the
converted row, and the two would never match again.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KeyColumn", "KeyShape", "PackedKeyError", "check_key", "pack", "unpack"]

SqlValue = int | float | str | bytes | None

_INTEGER, _REAL, _TEXT, _BLOB, _NULL = 1, 2, 3, 4, 5
_DOUBLE = struct.Struct(">d")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMERIC_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)
"""Text SQLite's numeric affinities turn into a number (a superset: refusing
a text key that SQLite would keep costs a mismatch error, accepting one it
converts would split a row in two)."""


class PackedKeyError(ValueError):
    """A packed key is malformed or does not fit its table; the message says how."""


class KeyColumn(enum.Enum):
    """Which values one primary-key column holds unconverted."""

    INTEGER_ONLY = "integer"
    """An ``INTEGER PRIMARY KEY`` (the rowid) or a STRICT ``INT``/``INTEGER`` column."""
    REAL_ONLY = "real"
    """A STRICT ``REAL`` column."""
    TEXT_ONLY = "text"
    """A STRICT ``TEXT`` column."""
    BLOB_ONLY = "blob"
    """A STRICT ``BLOB`` column."""
    TEXT = "text affinity"
    """Text or blob (numbers would become text)."""
    NUMERIC = "numeric affinity"
    """Integer, non-integral real, blob, or text that does not read as a number."""
    REAL = "real affinity"
    """Real, blob, or text that does not read as a number."""
    ANY = "any value"
    """Blob affinity or STRICT ``ANY``: integer, real, text or blob."""

    @classmethod
    def of(cls, declared_type: str, *, strict: bool, rowid: bool) -> KeyColumn:
        """The rule for a key column of ``declared_type`` (SQLite's affinity
        rules, section 3.1 of its datatype documentation); ``rowid`` when the
        column is the table's ``INTEGER PRIMARY KEY``."""
        declared = declared_type.upper()
        if rowid:
            return cls.INTEGER_ONLY
        if strict:
            return _STRICT.get(declared, cls.ANY)
        if "INT" in declared:
            return cls.NUMERIC
        if "CHAR" in declared or "CLOB" in declared or "TEXT" in declared:
            return cls.TEXT
        if "BLOB" in declared or not declared:
            return cls.ANY
        if "REAL" in declared or "FLOA" in declared or "DOUB" in declared:
            return cls.REAL
        return cls.NUMERIC

    def holds(self, value: SqlValue) -> bool:
        """Whether the column stores ``value`` as it is (never NULL)."""
        kind = type(value)
        if kind is bytes:
            return self not in _NOT_BLOB
        if kind is int:
            return self in _INTEGER_OK
        if kind is float:
            if self is KeyColumn.NUMERIC:
                assert isinstance(value, float)
                return not (value.is_integer() and abs(value) < 2.0**63)
            if value == 0.0 and math.copysign(1.0, value) < 0:
                return self is KeyColumn.ANY  # REAL affinity stores -0.0 as 0.0
            return self in _REAL_OK
        if kind is str:
            if self is KeyColumn.NUMERIC or self is KeyColumn.REAL:
                assert isinstance(value, str)
                return _NUMERIC_TEXT.fullmatch(value) is None
            return self in _TEXT_OK
        return False


_STRICT = {
    "INT": KeyColumn.INTEGER_ONLY,
    "INTEGER": KeyColumn.INTEGER_ONLY,
    "REAL": KeyColumn.REAL_ONLY,
    "TEXT": KeyColumn.TEXT_ONLY,
    "BLOB": KeyColumn.BLOB_ONLY,
}
_NOT_BLOB = frozenset({KeyColumn.INTEGER_ONLY, KeyColumn.REAL_ONLY, KeyColumn.TEXT_ONLY})
_INTEGER_OK = frozenset({KeyColumn.INTEGER_ONLY, KeyColumn.NUMERIC, KeyColumn.ANY})
_REAL_OK = frozenset({KeyColumn.REAL_ONLY, KeyColumn.REAL, KeyColumn.ANY})
_TEXT_OK = frozenset({KeyColumn.TEXT_ONLY, KeyColumn.TEXT, KeyColumn.ANY})


@dataclass(frozen=True, slots=True)
class KeyShape:
    """The primary key of one CRR table, in key order (``PRAGMA table_info``'s ``pk``)."""

    names: tuple[str, ...]
    columns: tuple[KeyColumn, ...]


def _width(value: int) -> int:
    """Bytes ``crsql_pack_columns`` spends on a non-negative length or an integer."""
    if value < 0:
        return 8
    return (value.bit_length() + 7) // 8


def pack(values: Sequence[SqlValue]) -> bytes:
    """Pack key values exactly as ``crsql_pack_columns`` does.

    Raises PackedKeyError for more than 255 values or an integer outside 64 bits.
    """
    if len(values) > 255:
        raise PackedKeyError(f"a key has at most 255 columns, got {len(values)}")
    out = bytearray([len(values)])
    for value in values:
        if value is None:
            out.append(_NULL)
        elif type(value) is int:
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise PackedKeyError(f"integer {value} is out of 64-bit range")
            n = _width(value)
            out.append(n << 3 | _INTEGER)
            out += (value & (2**64 - 1)).to_bytes(8, "big")[8 - n :]
        elif type(value) is float:
            out.append(_REAL)
            out += _DOUBLE.pack(value)
        else:
            data, kind = (value.encode(), _TEXT) if type(value) is str else (value, _BLOB)
            assert isinstance(data, bytes)
            n = _width(len(data))
            out.append(n << 3 | kind)
            out += len(data).to_bytes(n, "big")
            out += data
    return bytes(out)


def unpack(packed: bytes) -> tuple[SqlValue, ...]:
    """Decode a packed key, refusing anything :func:`pack` would not produce.

    Refused: an empty key, a truncated column, an unknown type, a byte count
    the extension cannot read (above 8, or above 4 for a length), an integer
    or length not in its shortest form, a NaN real (SQLite stores it as
    NULL), text that is not UTF-8, and bytes after the last column. NULL
    decodes (as None); :func:`check_key` refuses it. Raises PackedKeyError.
    """
    size = len(packed)
    if size == 0:
        raise PackedKeyError("the packed key is empty")
    count = packed[0]
    at = 1
    values: list[SqlValue] = []
    for column in range(count):
        if at >= size:
            raise PackedKeyError(f"the packed key ends before column {column}")
        head = packed[at]
        at += 1
        kind, n = head & 7, head >> 3
        if kind == _INTEGER:
            if n > 8:
                raise PackedKeyError(f"column {column}: an integer of {n} bytes")
            if at + n > size:
                raise PackedKeyError(f"column {column}: the integer is cut short")
            value = int.from_bytes(packed[at : at + n], "big", signed=n == 8)
            if _width(value) != n:
                raise PackedKeyError(f"column {column}: integer {value} not in its shortest form")
            values.append(value)
            at += n
        elif kind in (_TEXT, _BLOB):
            if n > 4:
                raise PackedKeyError(f"column {column}: a length of {n} bytes")
            length = int.from_bytes(packed[at : at + n], "big")
            if at + n + length > size:
                raise PackedKeyError(f"column {column}: the value is cut short")
            if _width(length) != n:
                raise PackedKeyError(f"column {column}: length {length} not in its shortest form")
            at += n
            data = packed[at : at + length]
            at += length
            if kind == _BLOB:
                values.append(data)
                continue
            try:
                values.append(data.decode())
            except UnicodeDecodeError:
                raise PackedKeyError(f"column {column}: text that is not UTF-8") from None
        elif kind == _REAL:
            if n:
                raise PackedKeyError(f"column {column}: a real with a byte count")
            if at + 8 > size:
                raise PackedKeyError(f"column {column}: the real is cut short")
            (real,) = _DOUBLE.unpack_from(packed, at)
            if math.isnan(real):
                raise PackedKeyError(f"column {column}: a NaN real")
            values.append(real)
            at += 8
        elif kind == _NULL and not n:
            values.append(None)
        else:
            raise PackedKeyError(f"column {column}: unknown type byte {head:#04x}")
    if at != size:
        raise PackedKeyError(f"{size - at} bytes after the last column")
    return tuple(values)


def check_key(packed: bytes, shape: KeyShape | None) -> None:
    """Refuse ``packed`` unless it is a well-formed key of a table of ``shape``.

    With ``shape`` None (a table this database lacks, whose row is held)
    only the encoding and the absence of NULL are checked. Raises
    PackedKeyError saying what is wrong.
    """
    values = unpack(packed)
    if shape is None:
        if not values:
            raise PackedKeyError("the packed key has no columns")
        if None in values:
            raise PackedKeyError("a primary-key value is NULL")
        return
    if len(values) != len(shape.columns):
        raise PackedKeyError(
            f"the packed key has {len(values)} columns, the table's key has {len(shape.columns)}"
        )
    for name, column, value in zip(shape.names, shape.columns, values, strict=True):
        if value is None:
            raise PackedKeyError(f"key column {name!r} is NULL")
        if not column.holds(value):
            raise PackedKeyError(
                f"key column {name!r} ({column.value}) cannot hold a {type(value).__name__}"
            )
