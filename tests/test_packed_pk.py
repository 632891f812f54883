"""Packed primary keys: the decoder against what cr-sqlite itself produces,
every malformed form refused with its reason, and the Store refusing rows
whose key, column or counters the extension would mishandle."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pysqlite3.dbapi2 as sqlite3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.changes import MAX_COUNTER
from peer.errors import InvalidChangeError
from peer.packed_pk import KeyColumn, KeyShape, PackedKeyError, check_key, pack, unpack
from peer.store import Store

SCHEMA = """
CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT);
CREATE TABLE files (k BLOB PRIMARY KEY NOT NULL, size INTEGER) WITHOUT ROWID;
CREATE TABLE points (x REAL NOT NULL, y NUMERIC NOT NULL, label, PRIMARY KEY (x, y));
CREATE TABLE loose (k NOT NULL PRIMARY KEY, v);
CREATE TABLE strict_kv (a INT NOT NULL, b TEXT NOT NULL, c ANY NOT NULL, d REAL NOT NULL,
    e BLOB NOT NULL, v ANY, PRIMARY KEY (a, b, c, d, e)) STRICT;
"""
TABLES = ("notes", "items", "files", "points", "loose", "strict_kv")


def new_store() -> Store:
    store = Store(":memory:")
    store.executescript(SCHEMA)
    store.make_crr(*TABLES)
    return store


@pytest.fixture
def store() -> Iterator[Store]:
    opened = new_store()
    yield opened
    opened.close()


INTS = st.one_of(st.integers(-300, 300), st.integers(-(2**63), 2**63 - 1))
REALS = st.floats(allow_nan=False)
TEXTS = st.text(max_size=300)
BLOBS = st.binary(max_size=300)
ANY = st.one_of(INTS, REALS, TEXTS, BLOBS)
KEYS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "notes": st.tuples(TEXTS),
    "items": st.tuples(INTS),
    "files": st.tuples(BLOBS),
    "points": st.tuples(REALS, ANY),
    "loose": st.tuples(ANY),
    "strict_kv": st.tuples(INTS, TEXTS, ANY, REALS, BLOBS),
}


# -- the decoder against the extension ---------------------------------------------


def _typed(rows: Any) -> set[tuple[tuple[str, str], ...]]:
    """Rows compared by type and exact value (1 != 1.0, 0.0 != -0.0)."""
    return {tuple((type(v).__name__, repr(v)) for v in row) for row in rows}


def _sql_equal(value: Any) -> Any:
    """A form equal for values SQLite compares equal (an integer and a real)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", Fraction(value) if math.isfinite(value) else value)
    return (type(value).__name__, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(
        st.sampled_from(TABLES).flatmap(lambda t: st.tuples(st.just(t), KEYS[t])), max_size=20
    )
)
def test_keys_the_extension_packs_decode_to_the_stored_row(
    keys: list[tuple[str, tuple[Any, ...]]],
) -> None:
    a, b = new_store(), new_store()
    try:
        seen: set[tuple[str, tuple[Any, ...]]] = set()
        for table, values in keys:
            # SQLite holds 0 and 0.0 as one key; the row takes the later value
            # while cr-sqlite keeps the key's first packed form. Distinct keys only.
            same = (table, tuple(_sql_equal(v) for v in values))
            if same in seen:
                continue
            seen.add(same)
            names = ", ".join(a.crr_keys()[table].names)
            marks = ", ".join("?" * len(values))
            a.execute(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", values)
        shapes = a.crr_keys()
        for table in TABLES:
            names = ", ".join(shapes[table].names)
            stored = a.execute(f"SELECT {names} FROM {table}")
            packed = a.execute('SELECT pk FROM crsql_changes WHERE "table" = ?', (table,))
            decoded = []
            for (pk,) in packed:
                values = unpack(pk)
                assert pack(values) == pk
                check_key(pk, shapes[table])
                decoded.append(values)
            assert _typed(decoded) == _typed(stored)
        # The same keys pass the Store's checks and make the same rows.
        b.apply(a.changes_since({}, 10_000))
        for table in TABLES:
            query = f"SELECT * FROM {table} ORDER BY 1"
            assert _typed(b.execute(query)) == _typed(a.execute(query))
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("values", "packed"),
    [
        ([0], b"\x01\x01"),
        ([1], b"\x01\x09\x01"),
        ([128], b"\x01\x09\x80"),
        ([256], b"\x01\x11\x01\x00"),
        ([-1], b"\x01\x41" + b"\xff" * 8),
        ([2**63 - 1], b"\x01\x41\x7f" + b"\xff" * 7),
        ([""], b"\x01\x03"),
        (["A"], b"\x01\x0b\x01A"),
        ([b""], b"\x01\x04"),
        ([b"\x00\x01"], b"\x01\x0c\x02\x00\x01"),
        ([1.5], b"\x01\x02\x3f\xf8" + b"\x00" * 6),
        ([7, "x"], b"\x02\x09\x07\x0b\x01x"),
        ([None], b"\x01\x05"),
        ([], b"\x00"),
    ],
)
def test_pack_and_unpack_follow_the_extension_format(values: list[Any], packed: bytes) -> None:
    assert pack(values) == packed
    assert unpack(packed) == tuple(values)


@pytest.mark.parametrize(
    ("packed", "reason"),
    [
        (b"", "empty"),
        (b"\x01", "ends before column 0"),
        (b"\x02\x09\x07", "ends before column 1"),
        (b"\x01\x49" + b"\x00" * 9, "integer of 9 bytes"),
        (b"\x01\xf9" + b"\x00" * 40, "integer of 31 bytes"),
        (b"\x01\x4b" + b"\x00" * 12, "length of 9 bytes"),
        (b"\x01\x2c" + b"\x00" * 9, "length of 5 bytes"),
        (b"\x01\x11\x00\x05", "not in its shortest form"),
        (b"\x01\x41" + b"\x00" * 7 + b"\x05", "not in its shortest form"),
        (b"\x01\x09\x00", "not in its shortest form"),
        (b"\x01\x0b\x00", "length 0 not in its shortest form"),
        (b"\x01\x11\x00", "integer is cut short"),
        (b"\x01\x0b\x05abc", "value is cut short"),
        (b"\x01\x0c", "value is cut short"),
        (b"\x01\x02\x00\x00", "real is cut short"),
        (b"\x01\x0a" + b"\x00" * 8, "real with a byte count"),
        (b"\x01\x02\x7f\xf8" + b"\x00" * 6, "NaN"),
        (b"\x01\x0b\x02\xc3\x28", "not UTF-8"),
        (b"\x01\x00", "unknown type byte 0x00"),
        (b"\x01\x06", "unknown type byte 0x06"),
        (b"\x01\x07", "unknown type byte 0x07"),
        (b"\x01\x0d", "unknown type byte 0x0d"),
        (b"\x01\x01\x00", "1 bytes after the last column"),
        (b"\x00\xff", "1 bytes after the last column"),
    ],
)
def test_malformed_keys_are_refused_with_their_reason(packed: bytes, reason: str) -> None:
    with pytest.raises(PackedKeyError, match=reason):
        unpack(packed)


TEXT_KEY = KeyShape(("id",), (KeyColumn.TEXT,))


@pytest.mark.parametrize(
    ("packed", "shape", "reason"),
    [
        (b"\x00", TEXT_KEY, "0 columns, the table's key has 1"),
        (pack(["a", "b"]), TEXT_KEY, "2 columns, the table's key has 1"),
        (pack([None]), TEXT_KEY, "'id' is NULL"),
        (pack([5]), TEXT_KEY, r"'id' \(text affinity\) cannot hold the integer"),
        (pack([5.5]), TEXT_KEY, "cannot hold the real"),
        (pack(["x"]), KeyShape(("id",), (KeyColumn.INTEGER_ONLY,)), "cannot hold the text"),
        (pack(["12"]), KeyShape(("n",), (KeyColumn.NUMERIC,)), "cannot hold the text"),
        (pack([3.0]), KeyShape(("n",), (KeyColumn.NUMERIC,)), "cannot hold the real"),
        (pack([3]), KeyShape(("r",), (KeyColumn.REAL,)), "cannot hold the integer"),
        (pack([-0.0]), KeyShape(("r",), (KeyColumn.REAL,)), "cannot hold the real"),
        (pack([b"x"]), KeyShape(("t",), (KeyColumn.TEXT_ONLY,)), "cannot hold the blob"),
        (b"\x00", None, "no columns"),
        (pack([1, None]), None, "NULL"),
    ],
)
def test_keys_that_do_not_fit_the_table_are_refused(
    packed: bytes, shape: KeyShape | None, reason: str
) -> None:
    with pytest.raises(PackedKeyError, match=reason):
        check_key(packed, shape)


DECLARED = st.sampled_from(
    ["TEXT", "VARCHAR(9)", "INTEGER", "INT", "BIGINT", "NUMERIC", "DECIMAL(5)", "REAL", "DOUBLE",
     "FLOAT", "BLOB", "", "DATE", "STRICT INT", "STRICT INTEGER", "STRICT REAL", "STRICT TEXT",
     "STRICT BLOB", "STRICT ANY"]
)  # fmt: skip
NUMERIC_LOOKING = st.from_regex(r"\s?[+-]?(\d{1,20}(\.\d{0,3})?|\.\d{1,3})([eE][+-]?\d{1,3})?\s?")
KEY_VALUES = st.one_of(
    INTS,
    st.floats(allow_nan=False),
    st.sampled_from([-0.0, 2.0**62, 2.0**63, -(2.0**63), 1e300]),
    st.text(max_size=8),
    NUMERIC_LOOKING,
    st.sampled_from(["0x10", "1e999", " 7 ", "1_0", "inf", "\u0663"]),
    st.binary(max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(declared=DECLARED, value=KEY_VALUES)
def test_a_key_column_holds_exactly_what_sqlite_stores_unconverted(
    declared: str, value: Any
) -> None:
    strict = declared.startswith("STRICT ")
    column_type = declared.removeprefix("STRICT ")
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE TABLE t (k {column_type}) {'STRICT' if strict else ''}")
        try:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            (stored,) = conn.execute("SELECT k FROM t").fetchone()
            kept = type(stored) is type(value) and repr(stored) == repr(value)
        except sqlite3.Error:
            kept = False
    finally:
        conn.close()
    assert KeyColumn.of(column_type, strict=strict, rowid=False).holds(value) is kept


def _reference_check(packed: bytes, shape: KeyShape | None) -> bool:
    """check_key's contract in terms of values: unpack, then every value held."""
    try:
        values = unpack(packed)
    except PackedKeyError:
        return False
    if shape is None:
        return bool(values) and None not in values
    return len(values) == len(shape.columns) and all(
        value is not None and column.holds(value)
        for column, value in zip(shape.columns, values, strict=True)
    )


COLUMNS = st.sampled_from(list(KeyColumn))
SHAPES = st.one_of(
    st.none(),
    st.lists(COLUMNS, min_size=1, max_size=3).map(
        lambda cs: KeyShape(tuple(f"c{i}" for i in range(len(cs))), tuple(cs))
    ),
)
PACKABLE = st.one_of(st.none(), INTS, st.floats(), TEXTS, BLOBS, NUMERIC_LOOKING)


@st.composite
def near_keys(draw: st.DrawFn) -> bytes:
    good = pack(draw(st.lists(PACKABLE, max_size=3)))
    if draw(st.booleans()):
        return good
    at = draw(st.integers(0, len(good)))
    return good[:at] + draw(st.binary(max_size=3)) + good[at + draw(st.integers(0, 2)) :]


@settings(max_examples=1000, deadline=None)
@given(packed=st.one_of(near_keys(), st.binary(max_size=24)), shape=SHAPES)
def test_check_key_reads_the_bytes_as_unpack_and_holds_read_the_values(
    packed: bytes, shape: KeyShape | None
) -> None:
    # check_key works on the bytes (it runs on every row); it must accept
    # exactly the keys whose decoded values the columns hold.
    try:
        check_key(packed, shape)
        accepted = True
    except PackedKeyError:
        accepted = False
    assert accepted is _reference_check(packed, shape)


ROWID_KEY = KeyShape(("id",), (KeyColumn.INTEGER_ONLY,))


@pytest.mark.parametrize(
    ("packed", "accepted"),
    [
        (b"\x01\x01", True),
        (b"\x01\x09\x80", True),
        (b"\x01\x41\x01" + b"\x00" * 7, True),
        (b"\x01\x41" + b"\xff" * 8, True),
        (b"\x01\x09\x00", False),
        (b"\x01\x41\x00" + b"\xff" * 7, False),
        (b"\x01\x49" + b"\x01" * 9, False),
        (b"\x01\x09\x05\x00", False),
        (b"\x01\x11\x05", False),
        (b"\x01\x0b\x01a", False),
        (b"\x01\x05", False),
        (b"\x02\x09\x01\x09\x02", False),
        (b"\x01", False),
        (b"", False),
    ],
)
def test_the_one_integer_key_is_checked_like_any_other(packed: bytes, accepted: bool) -> None:
    assert _reference_check(packed, ROWID_KEY) is accepted
    if accepted:
        check_key(packed, ROWID_KEY)
    else:
        with pytest.raises(PackedKeyError):
            check_key(packed, ROWID_KEY)


def test_the_rowid_key_holds_integers_only() -> None:
    rowid = KeyColumn.of("integer", strict=False, rowid=True)
    assert rowid.holds(5)
    assert not any(rowid.holds(v) for v in ("5", 5.5, b"5", None))


def test_the_store_reads_each_tables_key(store: Store) -> None:
    keys = store.crr_keys()
    assert keys["notes"] == KeyShape(("id",), (KeyColumn.TEXT,))
    assert keys["items"] == KeyShape(("id",), (KeyColumn.INTEGER_ONLY,))
    assert keys["files"] == KeyShape(("k",), (KeyColumn.ANY,))
    assert keys["points"] == KeyShape(("x", "y"), (KeyColumn.REAL, KeyColumn.NUMERIC))
    assert keys["strict_kv"].columns == (
        KeyColumn.INTEGER_ONLY,
        KeyColumn.TEXT_ONLY,
        KeyColumn.ANY,
        KeyColumn.REAL_ONLY,
        KeyColumn.BLOB_ONLY,
    )


# -- the Store refuses what the extension would mishandle --------------------------


SITE = os.urandom(16)


def _row(**fields: Any) -> tuple[Any, ...]:
    row = {"table": "notes", "pk": pack(["k"]), "cid": "body", "val": "v", "col_version": 1}
    row |= {"version": 1, "site_id": SITE, "cl": 1, "seq": 0} | fields
    return tuple(row.values())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"pk": b"\x00"}, "bad primary key for table 'notes': the packed key has 0 columns"),
        ({"pk": b"\x01\x19abc"}, "key column 'id' .* cannot hold the integer"),
        ({"pk": b"\x01\x0bk"}, "value is cut short"),
        ({"pk": pack(["k"]) + b"\x00"}, "1 bytes after the last column"),
        ({"cid": "id"}, "column 'id' is part of the primary key of 'notes'"),
        ({"col_version": MAX_COUNTER + 1}, "col_version .* is above 2\\*\\*62"),
        ({"version": 2**63 - 1}, "version .* is above 2\\*\\*62"),
        ({"cl": MAX_COUNTER + 1}, "cl .* is above 2\\*\\*62"),
        ({"seq": MAX_COUNTER + 1}, "seq .* is above 2\\*\\*62"),
        ({"val": "a\ud800"}, "not valid Unicode"),
    ],
)
def test_rows_the_extension_would_mishandle_are_refused_and_nothing_is_lost(
    store: Store, fields: dict[str, Any], reason: str
) -> None:
    store.execute("INSERT INTO notes VALUES ('mine', 'kept')")
    before = store.db_version()
    good = _row(pk=pack(["other"]))
    with pytest.raises(InvalidChangeError, match=reason):
        store.apply([good, _row(**fields)])
    assert store.execute("SELECT * FROM notes") == [("mine", "kept")]
    assert store.cursor() == {}
    assert store.db_version() == before
    # The counters' bound itself is accepted.
    store.apply([_row(col_version=MAX_COUNTER, cl=MAX_COUNTER - 1, seq=MAX_COUNTER)])


def test_a_held_row_whose_key_does_not_fit_the_new_table_is_never_merged(store: Store) -> None:
    held = [
        _row(table="later", pk=pack(["one", "two"]), cid="v"),
        _row(table="later", pk=pack([3]), cid="v", seq=1),
    ]
    result = store.apply(held, hold_unknown=True)
    assert result.held == 2
    with pytest.raises(InvalidChangeError, match="has no columns"):
        store.apply([_row(table="later", pk=b"\x00", cid="v", version=2)], hold_unknown=True)
    merged = store.migrate(
        1, "CREATE TABLE later (id INTEGER PRIMARY KEY NOT NULL, v TEXT)", new_crrs=["later"]
    )
    assert merged == 1
    assert store.execute("SELECT * FROM later") == [(3, "v")]


def test_a_held_row_left_held_for_its_key_is_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.apply([_row(table="later", pk=pack(["one", "two"]), cid="v")], hold_unknown=True)
    with caplog.at_level(logging.WARNING, logger="crpeer.store"):
        merged = store.migrate(
            1, "CREATE TABLE later (id INTEGER PRIMARY KEY NOT NULL, v TEXT)", new_crrs=["later"]
        )
    assert merged == 0
    assert "primary key does not fit the table: later from" in caplog.text
