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
from dataclasses import dataclass, field

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
        rule = _RULES[self]
        kind = type(value)
        if kind is int:
            return bool(rule & 1 << _INTEGER)
        if kind is float:
            assert isinstance(value, float)
            return bool(rule & 1 << _REAL) and _real_fits(rule, value)
        if kind is str:
            assert isinstance(value, str)
            return bool(rule & 1 << _TEXT) and _text_fits(rule, value)
        return kind is bytes and bool(rule & 1 << _BLOB)


_STRICT = {
    "INT": KeyColumn.INTEGER_ONLY,
    "INTEGER": KeyColumn.INTEGER_ONLY,
    "REAL": KeyColumn.REAL_ONLY,
    "TEXT": KeyColumn.TEXT_ONLY,
    "BLOB": KeyColumn.BLOB_ONLY,
}

# A column's rule: bit k set when it holds values of packed type k, plus the
# conversions its affinity makes within a type it holds.
_TEXT_NOT_NUMERIC = 1 << 8
"""Text that reads as a number is converted (NUMERIC and REAL affinity)."""
_REAL_NOT_INTEGRAL = 1 << 9
"""An integral real within 64 bits is stored as an integer (NUMERIC affinity)."""
_REAL_NOT_NEGATIVE_ZERO = 1 << 10
"""-0.0 is stored as 0.0 (REAL affinity, STRICT REAL)."""
_ANY_TYPE = 1 << _INTEGER | 1 << _REAL | 1 << _TEXT | 1 << _BLOB
_RULES = {
    KeyColumn.INTEGER_ONLY: 1 << _INTEGER,
    KeyColumn.REAL_ONLY: 1 << _REAL | _REAL_NOT_NEGATIVE_ZERO,
    KeyColumn.TEXT_ONLY: 1 << _TEXT,
    KeyColumn.BLOB_ONLY: 1 << _BLOB,
    KeyColumn.TEXT: 1 << _TEXT | 1 << _BLOB,
    KeyColumn.NUMERIC: _ANY_TYPE | _TEXT_NOT_NUMERIC | _REAL_NOT_INTEGRAL,
    KeyColumn.REAL: (
        1 << _REAL | 1 << _TEXT | 1 << _BLOB | _TEXT_NOT_NUMERIC | _REAL_NOT_NEGATIVE_ZERO
    ),
    KeyColumn.ANY: _ANY_TYPE,
}
_INTEGER_ONLY_RULE = _RULES[KeyColumn.INTEGER_ONLY]
_UNKNOWN_TABLE = _ANY_TYPE
"""The rule for the key columns of a table this database lacks (held rows)."""


def _real_fits(rule: int, value: float) -> bool:
    if rule & _REAL_NOT_INTEGRAL and value.is_integer() and abs(value) < 2.0**63:
        return False
    return not (rule & _REAL_NOT_NEGATIVE_ZERO and value == 0.0 and math.copysign(1.0, value) < 0)


def _text_fits(rule: int, value: str) -> bool:
    return not (rule & _TEXT_NOT_NUMERIC and _NUMERIC_TEXT.fullmatch(value))


@dataclass(frozen=True, slots=True)
class KeyShape:
    """The primary key of one CRR table, in key order (``PRAGMA table_info``'s ``pk``)."""

    names: tuple[str, ...]
    columns: tuple[KeyColumn, ...]
    rules: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(_RULES[column] for column in self.columns))


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
    values: list[SqlValue] = []
    _scan(packed, None, values)
    return tuple(values)


def check_key(packed: bytes, shape: KeyShape | None) -> None:
    """Refuse ``packed`` unless it is a well-formed key of a table of ``shape``.

    Well-formed is what :func:`unpack` accepts; it must also have the table's
    number of key columns, no NULL, and in each column a value the column
    holds (:meth:`KeyColumn.holds`). With ``shape`` None (a table this
    database lacks, whose row is held) any number of columns but zero and
    any type but NULL pass. Raises PackedKeyError saying what is wrong.
    """
    if shape is None:
        if packed[:1] == b"\x00":
            raise PackedKeyError("the packed key has no columns")
        _scan(packed, (), None)
        return
    # The common key, one integer column, in a few comparisons: count 1, type
    # integer, a byte count of at most 8 that is all that follows, no leading
    # zero byte.
    if (
        len(shape.rules) == 1
        and shape.rules[0] == _INTEGER_ONLY_RULE
        and packed[:1] == b"\x01"
        and len(packed) > 1
        and packed[1] & 7 == _INTEGER
        and len(packed) == 2 + (packed[1] >> 3) <= 10
        and (len(packed) == 2 or packed[2])
    ):
        return
    if packed and packed[0] != len(shape.rules):
        raise PackedKeyError(
            f"the packed key has {packed[0]} columns, the table's key has {len(shape.rules)}"
        )
    _scan(packed, shape, None)


def _scan(packed: bytes, shape: KeyShape | tuple[()] | None, out: list[SqlValue] | None) -> None:
    """Walk ``packed`` once, checking every byte; append the values to ``out``
    if given. ``shape``: check each value against it; ``()``: refuse NULL
    only; None: no value checks. Runs on every received row, hence the
    byte-level form (values are built only where a check needs them)."""
    size = len(packed)
    if not size:
        raise PackedKeyError("the packed key is empty")
    rules = shape.rules if isinstance(shape, KeyShape) else ()
    at = 1
    for column in range(packed[0]):
        if at >= size:
            raise PackedKeyError(f"the packed key ends before column {column}")
        head = packed[at]
        at += 1
        kind, n = head & 7, head >> 3
        rule = rules[column] if rules else _UNKNOWN_TABLE
        value: SqlValue = None
        if kind == _INTEGER:
            if n > 8:
                raise PackedKeyError(f"column {column}: an integer of {n} bytes")
            if at + n > size:
                raise PackedKeyError(f"column {column}: the integer is cut short")
            # Shortest form: no leading zero byte (8 bytes for every negative).
            if n and packed[at] == 0:
                value = int.from_bytes(packed[at : at + n], "big", signed=n == 8)
                raise PackedKeyError(f"column {column}: integer {value} not in its shortest form")
            if out is not None:
                value = int.from_bytes(packed[at : at + n], "big", signed=n == 8)
            at += n
        elif kind in (_TEXT, _BLOB):
            if n > 4:
                raise PackedKeyError(f"column {column}: a length of {n} bytes")
            length = int.from_bytes(packed[at : at + n], "big")
            if at + n + length > size:
                raise PackedKeyError(f"column {column}: the value is cut short")
            if n and packed[at] == 0:
                raise PackedKeyError(f"column {column}: length {length} not in its shortest form")
            at += n
            if kind == _TEXT:
                try:
                    value = packed[at : at + length].decode()
                except UnicodeDecodeError:
                    raise PackedKeyError(f"column {column}: text that is not UTF-8") from None
                if rule & _TEXT_NOT_NUMERIC and not _text_fits(rule, value):
                    rule = 0
            elif out is not None:
                value = packed[at : at + length]
            at += length
        elif kind == _REAL:
            if n:
                raise PackedKeyError(f"column {column}: a real with a byte count")
            if at + 8 > size:
                raise PackedKeyError(f"column {column}: the real is cut short")
            (value,) = _DOUBLE.unpack_from(packed, at)
            assert isinstance(value, float)
            if math.isnan(value):
                raise PackedKeyError(f"column {column}: a NaN real")
            if not _real_fits(rule, value):
                rule = 0
            at += 8
        elif kind == _NULL and not n:
            if shape is not None:
                raise PackedKeyError(_misfit(shape, column, "a primary-key value is NULL"))
        else:
            raise PackedKeyError(f"column {column}: unknown type byte {head:#04x}")
        if shape is not None and not rule >> kind & 1:
            raise PackedKeyError(_misfit(shape, column, f"cannot hold the {_KIND_NAMES[kind]}"))
        if out is not None:
            out.append(value)
    if at != size:
        raise PackedKeyError(f"{size - at} bytes after the last column")


_KIND_NAMES = {_INTEGER: "integer", _REAL: "real", _TEXT: "text", _BLOB: "blob"}


def _misfit(shape: KeyShape | tuple[()], column: int, what: str) -> str:
    if not isinstance(shape, KeyShape):
        return what
    name, rule = shape.names[column], shape.columns[column]
    if what.endswith("NULL"):
        return f"key column {name!r} is NULL"
    return f"key column {name!r} ({rule.value}) {what}"
