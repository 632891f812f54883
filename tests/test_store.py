"""Store against the real cr-sqlite extension: merging, cursors, bad input."""

from __future__ import annotations

import gc
import inspect
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer import crsqlite
from peer.errors import ConfigError, ExtensionError, InvalidChangeError, SchemaError, StoreError
from peer.identity import Identity
from peer.peer import Peer
from peer.store import Change, Store
from peer.store.connection import locate
from peer.store.merger import MERGE_ROWS_PER_STATEMENT, Merger
from peer.store.reader import ChangeReader

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER);
CREATE TABLE tags (item INTEGER NOT NULL, tag TEXT NOT NULL, note TEXT, PRIMARY KEY (item, tag));
"""


def new_store(path: str | Path = ":memory:") -> Store:
    store = Store(path)
    store.executescript(SCHEMA)
    store.make_crr("items", "tags")
    return store


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    opened = [new_store() for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def contents(store: Store) -> tuple[list[Any], list[Any]]:
    return (
        store.execute("SELECT * FROM items ORDER BY id"),
        store.execute("SELECT * FROM tags ORDER BY item, tag"),
    )


def sync(src: Store, dst: Store, limit: int = 1000) -> int:
    """Pull everything ``dst`` lacks from ``src``, page by page; return rows moved."""
    moved = 0
    while batch := src.changes_since(dst.cursor(), limit, exclude={dst.site_id}):
        dst.apply(batch)
        moved += len(batch)
    return moved


# -- convergence property ---------------------------------------------------

KEYS = st.integers(min_value=0, max_value=3)
WRITE = st.one_of(
    st.tuples(st.just("upsert"), KEYS, st.sampled_from(["a", "b", "c", None]), st.integers(-2, 2)),
    st.tuples(st.just("update"), KEYS, st.integers(-5, 5)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("tag"), KEYS, st.sampled_from(["x", "y"]), st.sampled_from(["n1", "n2"])),
    st.tuples(st.just("untag"), KEYS, st.sampled_from(["x", "y"])),
)


def run_write(store: Store, write: tuple[Any, ...]) -> None:
    kind = write[0]
    if kind == "upsert":
        store.execute(
            "INSERT INTO items VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
            "SET name = excluded.name, score = excluded.score",
            write[1:],
        )
    elif kind == "update":
        store.execute("UPDATE items SET score = ? WHERE id = ?", (write[2], write[1]))
    elif kind == "delete":
        store.execute("DELETE FROM items WHERE id = ?", (write[1],))
    elif kind == "tag":
        store.execute(
            "INSERT INTO tags VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET note = excluded.note",
            write[1:],
        )
    else:
        store.execute("DELETE FROM tags WHERE item = ? AND tag = ?", write[1:])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    count = draw(st.integers(min_value=3, max_value=5))
    peer = st.integers(min_value=0, max_value=count - 1)
    step = st.one_of(
        st.tuples(st.just("write"), peer, WRITE),
        st.tuples(st.just("pull"), peer, peer, st.integers(min_value=1, max_value=6)),
        st.tuples(st.just("replay"), peer),
    )
    return count, draw(st.lists(step, min_size=1, max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_edits_converge_to_the_oracle(scenario: tuple[int, list[tuple[Any, ...]]]) -> None:
    count, steps = scenario
    peers = [new_store() for _ in range(count)]
    oracle = new_store()
    delivered: list[tuple[int, list[Change]]] = []
    try:
        for step in steps:
            if step[0] == "write":
                run_write(peers[step[1]], step[2])
                sync(peers[step[1]], oracle)
            elif step[0] == "pull" and step[1] != step[2]:
                src, dst, limit = peers[step[1]], peers[step[2]], step[3]
                batch = src.changes_since(dst.cursor(), limit, exclude={dst.site_id})
                if batch:
                    dst.apply(batch)
                    delivered.append((step[2], batch))
            elif step[0] == "replay" and delivered:
                # A duplicate delivered late, after other changes landed.
                target, batch = delivered[step[1] % len(delivered)]
                peers[target].apply(batch)
        for _ in range(2):
            for src in peers:
                for dst in peers:
                    if src is not dst:
                        sync(src, dst, limit=3)
        expected = contents(oracle)
        for peer in peers:
            assert contents(peer) == expected
            sync(peer, oracle)  # the oracle already holds every change
            assert contents(oracle) == expected
    finally:
        for store in [*peers, oracle]:
            store.close()


# -- ordering and groups ----------------------------------------------------


def per_origin(changes: list[Change]) -> dict[bytes, list[Change]]:
    """Each origin's rows, in the order they were served."""
    out: dict[bytes, list[Change]] = {}
    for change in changes:
        out.setdefault(change[6], []).append(change)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 2), KEYS, st.integers(-3, 3), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    st.lists(st.integers(0, 30), min_size=4, max_size=4),
)
def test_the_one_pass_read_serves_what_the_per_origin_reads_serve(
    writes: list[tuple[int, int, int, bool]], behind: list[int]
) -> None:
    """A hub that merged three origins' writes interleaved serves a remote the
    same rows, in each origin's order, whichever way it reads them."""
    origins = [new_store() for _ in range(3)]
    hub = new_store()
    try:
        for writer, key, score, pull in writes:
            run_write(origins[writer], ("upsert", key, "w", score))
            if pull:
                sync(origins[writer], hub)
        for origin in origins:
            sync(origin, hub)
        hub.execute("INSERT INTO items VALUES (100, 'hub', 0)")
        held = hub.cursor() | {hub.site_id: hub.own_version()}
        lags = dict(zip(held, behind, strict=False))  # the hub and up to three origins
        remote = {site: max(0, version - lags[site]) for site, version in held.items()}
        one_pass = hub.changes_since(remote, 10_000)
        # A second reader of the hub's file that reads every page origin by origin.
        origin_by_origin = ChangeReader(locate(hub.path)[0], hub.site_id, combined_reads=0)
        try:
            by_origin = origin_by_origin.changes_since(remote, 10_000)
        finally:
            origin_by_origin.close()
        assert sorted(one_pass) == sorted(by_origin)
        assert per_origin(one_pass) == per_origin(by_origin)
    finally:
        for store in [*origins, hub]:
            store.close()


def test_rows_far_apart_in_the_log_are_found_origin_by_origin(stores: list[Store]) -> None:
    a, b, hub = stores
    a.execute("INSERT INTO items VALUES (1, 'early', 0)")
    sync(a, hub)
    for i in range(30):
        b.execute("INSERT INTO items VALUES (?, 'b', ?)", (10 + i, i))
        sync(b, hub)
    sync(hub, b)
    b.execute("UPDATE items SET name = 'b', score = 99 WHERE id = 1")  # a's write is gone
    sync(b, hub)
    a.execute("INSERT INTO items VALUES (2, 'late', 0)")
    sync(a, hub)
    # The remote lacks both of a's writes; only the second is still in the
    # log, thirty of b's transactions after where the first was.
    remote = {a.site_id: 0, b.site_id: b.own_version()}
    page = hub.next_page(remote, 2)
    assert isinstance(page, list)
    assert {(row[6], row[5]) for row in page} == {(a.site_id, 2)}
    assert len(page) == 2


def test_a_transaction_is_never_split_across_pages(stores: list[Store]) -> None:
    a, b, _ = stores
    a.executescript(
        "BEGIN;"
        + "".join(f"INSERT INTO items VALUES ({i}, 'n', {i});" for i in range(10))
        + "COMMIT;"
    )
    a.execute("INSERT INTO items VALUES (99, 'later', 0)")
    first = a.changes_since({}, 3)
    assert len(first) == 20  # the whole 20-row transaction, despite limit 3
    assert {row[5] for row in first} == {1}
    b.apply(first)
    rest = a.changes_since(b.cursor(), 3)
    assert [row[5] for row in rest] == [2, 2]


def test_relay_serves_origin_versions_in_order(stores: list[Store]) -> None:
    a, b, c = stores
    for i in range(6):
        a.execute("INSERT INTO items VALUES (?, 'a', ?)", (i, i))
    b.execute("INSERT INTO items VALUES (100, 'b', 0)")
    sync(a, b)
    relayed = b.changes_since({}, 1000, exclude={b.site_id})
    assert [row[5] for row in relayed] == sorted(row[5] for row in relayed)
    assert {row[6] for row in relayed} == {a.site_id}
    assert max(row[5] for row in relayed) == a.db_version() == 6
    sync(b, c, limit=2)
    assert c.cursor() == {a.site_id: 6, b.site_id: 1}
    assert contents(c) == contents(b)


def test_nothing_is_served_back_to_its_origin(stores: list[Store]) -> None:
    a, b, _ = stores
    a.execute("INSERT INTO items VALUES (1, 'a', 1)")
    sync(a, b)
    assert b.changes_since({}, 100, exclude={a.site_id}) == []
    assert b.apply(a.changes_since({}, 100)).merged == 2
    echoed = b.changes_since({}, 100)
    assert a.apply(echoed).skipped == len(echoed)


def test_the_backlog_estimate_bounds_what_changes_since_serves(stores: list[Store]) -> None:
    a, b, c = stores
    for i in range(5):
        a.execute("INSERT INTO items VALUES (?, 'a', ?)", (i, i))
    sync(a, b)
    b.execute("INSERT INTO items VALUES (50, 'b', 0)")
    assert b.backlog_estimate({}) == len(b.changes_since({}, 1000)) == 12
    assert b.backlog_estimate(c.cursor(), exclude={c.site_id}) == 12
    assert b.backlog_estimate({a.site_id: 5, b.site_id: b.own_version()}) == 0
    assert b.backlog_estimate({a.site_id: 3}, exclude={b.site_id}) >= len(
        b.changes_since({a.site_id: 3}, 1000, exclude={b.site_id})
    )


# -- crash safety -----------------------------------------------------------


def test_a_batch_failing_half_way_leaves_nothing_behind(stores: list[Store]) -> None:
    a, b, _ = stores
    a.execute("INSERT INTO items VALUES (1, 'one', 1)")
    a.execute("INSERT INTO items VALUES (2, 'two', 2)")
    good = a.changes_since({}, 100)
    # The last row passes validation but its packed primary key is garbage,
    # so cr-sqlite fails on it after merging the rows before it.
    broken = (*good[-1][:1], b"\xff\xff\xff", *good[-1][2:])
    with pytest.raises(StoreError):
        b.apply([*good, broken])
    assert contents(b) == ([], [])
    assert b.cursor() == {}
    assert b.db_version() == 0


def test_public_methods_keep_their_own_signature_and_name(stores: list[Store]) -> None:
    """The error-translating wrapper is transparent to introspection and help()."""
    assert list(inspect.signature(Store.execute).parameters) == ["self", "sql", "params"]
    assert Store.execute.__qualname__ == "Store.execute"
    assert "autocommit" in (Store.execute.__doc__ or "")
    with pytest.raises(StoreError, match=r"^execute: "):
        stores[0].execute("SELECT * FROM no_such_table")


def test_applying_the_same_batch_twice_changes_nothing_the_second_time(
    stores: list[Store],
) -> None:
    a, b, _ = stores
    a.execute("INSERT INTO items VALUES (1, 'one', 1)")
    a.execute("UPDATE items SET score = 5 WHERE id = 1")
    batch = a.changes_since({}, 100)
    b.apply(batch)
    state = (contents(b), b.cursor(), b.db_version())
    b.apply(batch)
    assert (contents(b), b.cursor(), b.db_version()) == state


def test_skip_known_passes_over_groups_the_cursor_covers(stores: list[Store]) -> None:
    a, b, _ = stores
    a.execute("INSERT INTO items VALUES (1, 'one', 1)")
    a.execute("INSERT INTO items VALUES (2, 'two', 2)")
    first, second = a.changes_since({}, 100)[:2], a.changes_since({}, 100)[2:]
    assert b.apply(first, skip_known=True).merged == 2
    # A copy of version 1 arriving by another path is not merged again; the
    # version after it is.
    result = b.apply([*first, *second], skip_known=True)
    assert (result.merged, result.skipped) == (2, 2)
    assert contents(b)[0] == [(1, "one", 1), (2, "two", 2)]
    assert b.cursor() == {a.site_id: 2}
    # Without skip_known the copy is merged again (to no effect).
    assert b.apply(first).merged == 2


def test_skip_known_keeps_every_chunk_of_a_streamed_page(tmp_path: Path) -> None:
    with new_store() as a, new_store(tmp_path / "b.db") as b:
        a.executescript(
            "BEGIN;"
            + "".join(f"INSERT INTO items VALUES ({i}, 'n', {i});" for i in range(10))
            + "COMMIT;"
        )
        group = a.changes_since({}, 100)
        b.begin_page()
        # Every chunk carries version 1; the cursor the page began with decides.
        merged = sum(
            b.apply(group[start : start + 7], skip_known=True).merged
            for start in range(0, len(group), 7)
        )
        b.end_page(commit=True)
        assert merged == len(group) == 20
        assert len(contents(b)[0]) == 10
        b.begin_page()
        again = b.apply(group, skip_known=True)
        b.end_page(commit=True)
        assert (again.merged, again.skipped) == (0, 20)


def test_the_local_high_water_moves_on_local_writes_only(stores: list[Store]) -> None:
    a, b, _ = stores
    assert b.local_high_water() == 0
    a.execute("INSERT INTO items VALUES (1, 'one', 1)")
    b.apply(a.changes_since({}, 100))
    assert b.local_high_water() == 0 < b.db_version()
    b.execute("INSERT INTO tags VALUES (1, 'x', 'n')")
    assert b.local_high_water() == b.db_version()


def test_a_file_store_keeps_its_cursor_across_reopen(tmp_path: Path) -> None:
    with new_store() as a:
        a.execute("INSERT INTO items VALUES (1, 'one', 1)")
        path = tmp_path / "b.db"
        with new_store(path) as b:
            sync(a, b)
            site = b.site_id
        with Store(path) as reopened:
            assert reopened.site_id == site
            assert reopened.cursor() == {a.site_id: 1}
            assert contents(reopened)[0] == [(1, "one", 1)]


def test_changes_are_read_from_committed_data_only(tmp_path: Path) -> None:
    with new_store(tmp_path / "a.db") as store:
        store.execute("BEGIN")
        store.execute("INSERT INTO items VALUES (1, 'pending', 1)")
        assert store.changes_since({}, 100) == []  # a reader never sees half a transaction
        assert store.backlog_estimate({}) == 0
        store.execute("COMMIT")
        assert len(store.changes_since({}, 100)) == 2


# -- bad input --------------------------------------------------------------


def _one_change(store: Store) -> Change:
    store.execute("INSERT OR REPLACE INTO items VALUES (7, 'seven', 7)")
    return store.changes_since({}, 100)[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (0, 42, "table must be str"),
        (1, "pk", "pk must be bytes"),
        (3, [1, 2], "val must be"),
        (4, "1", "col_version must be int"),
        (5, True, "version must be int"),
        (5, 0, "version must be >= 1"),
        (6, b"short", "site_id must be 16 bytes"),
        (6, b"x" * 17, "site_id must be 16 bytes"),
        (8, 2**64, "out of 64-bit range"),
        (0, "nope", "unknown table 'nope'"),
        (0, "plain", "unknown table 'plain'"),
        (0, "crsql_master", "not syncable"),
        (2, "color", "unknown column 'color'"),
    ],
)
def test_bad_changes_are_refused_and_nothing_is_applied(
    stores: list[Store], field: int, value: Any, message: str
) -> None:
    a, b, _ = stores
    b.execute("CREATE TABLE plain (id INTEGER PRIMARY KEY NOT NULL, v TEXT)")
    good = _one_change(a)
    bad = list(good)
    bad[field] = value
    with pytest.raises(InvalidChangeError, match=message):
        b.apply([good, tuple(bad)])  # type: ignore[list-item]
    assert contents(b) == ([], [])
    assert b.cursor() == {}


@pytest.mark.parametrize("batch", ["not a batch", [("too", "short")], [None], 5])
def test_malformed_batches_are_refused(stores: list[Store], batch: Any) -> None:
    with pytest.raises(InvalidChangeError):
        stores[0].apply(batch)


# -- schema versions --------------------------------------------------------


def test_changes_for_a_newer_schema_are_held_then_applied_after_migration(
    stores: list[Store],
) -> None:
    new, old, third = stores
    new.migrate(1, "ALTER TABLE items ADD COLUMN color TEXT", alter=["items"])
    new.execute("INSERT INTO items VALUES (1, 'one', 1, 'red')")
    batch = new.changes_since({}, 100)
    with pytest.raises(InvalidChangeError, match="unknown column 'color'"):
        old.apply(batch)
    result = old.apply(batch, hold_unknown=True)
    assert (result.merged, result.held) == (2, 1)
    assert old.held_count() == 1
    assert contents(old)[0] == [(1, "one", 1)]
    # A third peer with the new schema gets the held row through the old one.
    third.migrate(1, "ALTER TABLE items ADD COLUMN color TEXT", alter=["items"])
    sync(old, third)
    assert third.execute("SELECT color FROM items") == [("red",)]
    assert old.migrate(1, "ALTER TABLE items ADD COLUMN color TEXT", alter=["items"]) == 1
    assert old.held_count() == 0
    assert old.execute("SELECT * FROM items") == [(1, "one", 1, "red")]
    assert old.schema_version() == 1
    assert (
        old.schema_fingerprint()
        == new.schema_fingerprint()
        != Store(":memory:").schema_fingerprint()
    )


def test_a_failed_migration_changes_nothing(stores: list[Store]) -> None:
    store = stores[0]
    with pytest.raises(SchemaError):
        store.migrate(
            2, "ALTER TABLE items ADD COLUMN a TEXT; ALTER TABLE nope ADD COLUMN b", alter=["items"]
        )
    assert store.schema_version() == 0
    assert "a" not in store.crr_columns()["items"]


def test_make_crr_on_a_missing_table_is_a_schema_error(stores: list[Store]) -> None:
    with pytest.raises(SchemaError, match="missing"):
        stores[0].make_crr("missing")


# -- opening ------------------------------------------------------------------


def test_a_missing_override_names_the_file_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRPEER_CRSQLITE", "/nonexistent/crsqlite.so")
    with pytest.raises(
        ExtensionError, match=r"/nonexistent/crsqlite.so \(set by \$CRPEER_CRSQLITE\)"
    ):
        Store(":memory:")


def test_a_missing_extension_in_a_checkout_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CRPEER_CRSQLITE", raising=False)
    monkeypatch.setattr(crsqlite, "bundled_path", lambda: tmp_path / "crsqlite.so")
    with pytest.raises(ExtensionError, match=r"not found at .*crsqlite.so; build it with") as info:
        Store(":memory:")
    assert crsqlite.BUILD_COMMAND in str(info.value)


def test_a_missing_extension_in_an_installed_package_never_names_repository_scripts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CRPEER_CRSQLITE", raising=False)
    monkeypatch.setattr(crsqlite, "bundled_path", lambda: tmp_path / "crsqlite.so")
    monkeypatch.setattr(crsqlite, "_CHECKOUT_RECIPE", tmp_path / "no-such-script")
    with pytest.raises(ExtensionError, match=r"reinstall crpeer from a platform wheel") as info:
        Store(":memory:")
    assert str(tmp_path / "crsqlite.so") in str(info.value)
    assert "scripts/" not in str(info.value)


def test_a_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a usable database"):
        Store(path)


def _one_large_group(store: Store) -> list[Change]:
    """One transaction of 6,000 change rows: it spans many multi-row INSERTs
    (a large group merges at most ``MERGE_ROWS_PER_STATEMENT`` rows each)."""
    store.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
        "INSERT INTO items SELECT i, 'name ' || i, i * 2 FROM n"
    )
    batch = store.changes_since({}, 100_000)
    assert len(batch) == 6000
    assert len(batch) > 100 * MERGE_ROWS_PER_STATEMENT
    return batch


def test_a_group_larger_than_one_insert_statement_applies_whole(stores: list[Store]) -> None:
    a, b, _ = stores
    result = b.apply(_one_large_group(a))
    assert result.merged == 6000
    assert contents(b) == contents(a)
    assert b.cursor() == {a.site_id: a.db_version()}


def test_a_large_group_failing_in_its_last_statement_leaves_nothing_behind(
    stores: list[Store],
) -> None:
    a, b, _ = stores
    batch = _one_large_group(a)
    # The last row passes every check but the database refuses it (a trigger
    # of b's), after the statements before it merged 5,999 rows.
    batch[-1] = (*batch[-1][:3], "refused", *batch[-1][4:])
    b.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF score ON items WHEN NEW.score = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(StoreError, match="rejected by the database"):
        b.apply(batch)
    assert contents(b) == ([], [])
    assert b.cursor() == {}
    assert b.db_version() == 0


ANY_VALUE = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(ANY_VALUE, min_size=1, max_size=30))
def test_pages_carry_every_value_type_exactly(values: list[Any]) -> None:
    # A page is what crsql_changes holds, type and all, and applying it (one
    # multi-row INSERT per group) makes a copy identical to the original.
    a, b = Store(":memory:"), Store(":memory:")
    try:
        for store in (a, b):
            store.execute("CREATE TABLE anything (id INTEGER PRIMARY KEY NOT NULL, v)")
            store.make_crr("anything")
        for row_id, value in enumerate(values):
            a.execute("INSERT INTO anything VALUES (?, ?)", (row_id, value))
        page = a.next_page({}, 1000)
        raw = a.execute(
            'SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq '
            "FROM crsql_changes ORDER BY db_version, seq"
        )
        assert isinstance(page, list)
        assert [tuple(row) for row in page] == [tuple(row) for row in raw]
        assert [type(row[3]) for row in page] == [type(row[3]) for row in raw]
        b.apply(page)
        query = "SELECT id, v, typeof(v) FROM anything ORDER BY id"
        assert b.execute(query) == a.execute(query)
    finally:
        a.close()
        b.close()


def test_one_batch_of_several_origins_records_where_each_group_landed(
    stores: list[Store],
) -> None:
    # The whole batch merges in one statement; each group that changed
    # something still records (origin, local version) -> origin version.
    # cr-sqlite lands a merge at max(pending local version, its incoming
    # version), so after d's version 6, a's versions 1-3 land at 6 too: one
    # entry for a, at its highest version, and relaying still serves each
    # origin with its own versions.
    a, b, c = stores
    d = new_store()
    try:
        for i in range(3):
            a.execute("INSERT INTO items VALUES (?, 'a', ?)", (i, i))
        for i in range(6):
            d.execute("INSERT INTO items VALUES (?, 'd', ?)", (10 + i, i))
        batch = d.changes_since({}, 100)[-2:] + a.changes_since({}, 100)
        b.apply(batch)
        b.apply(a.changes_since({}, 100))  # changes nothing: records nothing
        landed = b.execute("SELECT origin, local_version, origin_version FROM crpeer_versions")
        assert {(bytes(origin), local, version) for origin, local, version in landed} == {
            (d.site_id, 6, 6),
            (a.site_id, 6, 3),
        }
        sync(b, c)
        assert c.cursor() == {d.site_id: 6, a.site_id: 3}
        assert contents(c) == contents(b)
    finally:
        d.close()


# -- connections and threads --------------------------------------------------


def _rows_of(store: Store, pages: list[Change]) -> int:
    return sum(1 for change in pages if change[6] != store.site_id)


@pytest.mark.parametrize("path", [":memory:", "file::memory:", "file:mem?mode=memory&cache=shared"])
def test_an_in_memory_store_is_a_private_file_removed_at_close(path: str) -> None:
    with new_store() as source:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        store = new_store(path)
        try:
            assert store.in_memory
            folder = Path(store.path).parent
            assert oct(folder.stat().st_mode & 0o777) == "0o700"
            assert oct(Path(store.path).stat().st_mode & 0o777) == "0o600"
            store.begin_page()  # a page spanning frames works as on any file store
            store.apply(source.changes_since({}, 100))
            store.end_page(commit=True)
            assert contents(store) == contents(source)
        finally:
            store.close()
        assert not folder.exists()


def test_an_in_memory_store_never_closed_is_removed_when_collected() -> None:
    store = Store(":memory:")
    folder = Path(store.path).parent
    assert folder.exists()
    del store
    gc.collect()
    assert not folder.exists()


def test_a_store_opened_by_a_file_uri_reads_and_merges(tmp_path: Path) -> None:
    with new_store() as source:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        with new_store(f"file:{tmp_path / 'uri.db'}") as store:
            store.apply(source.changes_since({}, 100))
            assert store.changes_since({}, 100, exclude={store.site_id}) == source.changes_since(
                {}, 100
            )
        with Store(f"file:{tmp_path / 'uri.db'}", read_only=True) as readable:
            assert readable.cursor() == {source.site_id: 1}


def test_the_reader_sees_committed_data_only_while_a_page_is_open_on_another_thread() -> None:
    with new_store() as source, new_store() as store, ThreadPoolExecutor(1) as read_thread:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        store.begin_page()
        store.apply(source.changes_since({}, 100))
        # The page holds the write lock on the merger's connection; the
        # reader, on its own connection and thread, neither waits nor sees it.
        pending = read_thread.submit(store.changes_since, {}, 100).result(timeout=10)
        assert pending == []
        store.end_page(commit=True)
        committed = read_thread.submit(store.changes_since, {}, 100).result(timeout=10)
        assert _rows_of(store, committed) == 2


def test_reads_and_merges_run_at_once_on_their_two_threads() -> None:
    with new_store() as source, new_store() as store, ThreadPoolExecutor(1) as read_thread:
        for i in range(60):
            source.execute("INSERT INTO items VALUES (?, 'n', ?)", (i, i))
        batches = [source.changes_since({source.site_id: v}, 2) for v in range(0, 60, 1)]
        stop = threading.Event()

        def read_until_stopped() -> int:
            reads = 0
            while not stop.is_set() and reads < 100_000:
                page = store.next_page({}, 10)
                assert isinstance(page, list)
                store.backlog_estimate({})
                reads += 1
            return reads

        reading = read_thread.submit(read_until_stopped)
        for batch in batches:
            store.apply(batch, skip_known=True)
        stop.set()
        assert reading.result(timeout=30) > 0
        assert contents(store) == contents(source)
        everything = read_thread.submit(store.changes_since, {}, 1000).result(timeout=10)
        assert sorted(everything) == sorted(source.changes_since({}, 1000))


def test_a_schema_change_through_any_connection_reaches_the_reader_and_the_merger(
    tmp_path: Path,
) -> None:
    alter = "ALTER TABLE items ADD COLUMN color TEXT"
    with new_store() as source, new_store(tmp_path / "b.db") as store:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        store.apply(source.changes_since({}, 100))  # the merger's connection is open
        assert store.next_page({}, 100) != []  # and the reader's
        # The app migrates on a connection of its own.
        app = sqlite3.connect(os.fspath(tmp_path / "b.db"), isolation_level=None)
        crsqlite.load(app)
        app.executescript(
            f"BEGIN; SELECT crsql_begin_alter('items'); {alter}; "
            "SELECT crsql_commit_alter('items'); PRAGMA user_version = 1; COMMIT;"
        )
        app.execute("SELECT crsql_finalize()")
        app.close()
        source.migrate(1, alter, alter=["items"])
        source.execute("UPDATE items SET color = 'red' WHERE id = 1")
        result = store.apply(source.changes_since({}, 100))  # no row held: it sees the column
        assert (result.held, store.held_count()) == (0, 0)
        assert store.execute("SELECT color FROM items") == [("red",)]
        page = store.next_page({}, 100)
        assert isinstance(page, list)
        assert ("items", "color") in {(row[0], row[2]) for row in page}
        assert store.served_schema == 1


def test_a_merger_page_commits_whole_and_rolls_back_on_an_error(tmp_path: Path) -> None:
    with new_store() as source, new_store(tmp_path / "b.db") as store:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        source.execute("INSERT INTO items VALUES (2, 'two', 2)")
        first, second = source.changes_since({}, 100)[:2], source.changes_since({}, 100)[2:]
        merger = Merger(locate(store.path)[0], store.site_id, held_schema=0)
        try:

            def a_page_with_a_bad_row() -> None:
                with merger.begin_page():
                    merger.apply(first)
                    merger.apply([("items", b"\x01", "name", "x", 1, 9, b"s" * 16, 1, 0)])

            with pytest.raises(InvalidChangeError):
                a_page_with_a_bad_row()
            assert merger.page is None
            assert (contents(store)[0], store.cursor()) == ([], {})
            with merger.begin_page():
                merger.apply(first)
                assert contents(store)[0] == []  # not committed yet
                merger.apply(second)
            assert contents(store)[0] == [(1, "one", 1), (2, "two", 2)]
            assert store.cursor() == {source.site_id: 2}
        finally:
            merger.close()


def test_a_closed_store_refuses_reads_and_merges() -> None:
    store = new_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.next_page({}, 10)
    with pytest.raises(StoreError, match="closed"):
        store.apply([])


def test_a_peer_on_an_in_memory_store_asks_for_a_trust_store(tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "key")
    with Store(":memory:") as store, pytest.raises(ConfigError, match="in-memory database"):
        Peer(store, [], identity=identity)
    assert not list(Path(store.path).parent.glob("*trust*"))


def test_a_merge_waiting_past_the_busy_timeout_is_a_store_error(tmp_path: Path) -> None:
    with new_store() as source, Store(tmp_path / "b.db", busy_timeout_ms=50) as store:
        store.executescript(SCHEMA)
        store.make_crr("items", "tags")
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        other = sqlite3.connect(os.fspath(tmp_path / "b.db"), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            with pytest.raises(StoreError, match="applying a batch failed: database is locked"):
                store.apply(source.changes_since({}, 100))
            with pytest.raises(StoreError, match="begin_page: database is locked"):
                store.begin_page()
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert store.apply(source.changes_since({}, 100)).merged == 2
