"""App writes cut into a large batch between its slices (Store.apply ``yield_to``)."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from peer.errors import InvalidChangeError
from peer.store import APPLY_SLICE_ROWS, Change, Store
from peer.store.jobs import StoreJobs
from peer.store_worker import StoreWorker

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER);
CREATE TABLE tags (item INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (item, tag));
"""
GROUPS = 12
ROWS_PER_GROUP = 100
"""Each group (one transaction of the source) is 200 change rows: a slice
holds five of them."""


def new_store(path: str | Path = ":memory:") -> Store:
    store = Store(path)
    store.executescript(SCHEMA)
    store.make_crr("items", "tags")
    return store


def source_batch(groups: int = GROUPS) -> tuple[bytes, list[Change]]:
    """A batch of ``groups`` transactions; transaction g writes the items
    g * 1000 .. g * 1000 + 99 named ``g``."""
    with new_store() as a:
        for g in range(1, groups + 1):
            a.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO items SELECT ? * 1000 + i, ?, i FROM n",
                (ROWS_PER_GROUP - 1, g, f"g{g}"),
            )
        batch = a.changes_since({}, 100_000)
        return a.site_id, batch


def landed_groups(store: Store) -> dict[int, tuple[int, set[int]]]:
    """Each group that landed: (its rows, the local db_versions they merged at)."""
    found: dict[int, tuple[int, set[int]]] = {}
    for g, count, versions in store.execute(
        "SELECT i.id / 1000, count(DISTINCT i.id), group_concat(DISTINCT c.db_version) "
        "FROM items AS i JOIN items__crsql_clock AS c ON c.key = "
        "(SELECT __crsql_key FROM items__crsql_pks WHERE id = i.id) "
        "WHERE i.id >= 1000 GROUP BY i.id / 1000"
    ):
        found[int(g)] = (int(count), {int(v) for v in str(versions).split(",")})
    return found


def test_the_batch_spans_several_slices() -> None:
    _, batch = source_batch()
    assert len(batch) == GROUPS * 2 * ROWS_PER_GROUP
    assert len(batch) > 2 * APPLY_SLICE_ROWS


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_waiting_call_runs_after_the_first_slice_commits(tmp_path: Path, in_memory: bool) -> None:
    origin, batch = source_batch()
    jobs = StoreJobs()
    with new_store(":memory:" if in_memory else tmp_path / "b.db") as b:
        seen: list[Any] = []

        def app_write() -> None:
            seen.append((b.cursor(), len(landed_groups(b))))
            b.execute("INSERT INTO items VALUES (1, 'app', 0)")

        # Queued before the batch starts: it runs at the first slice's end.
        write = jobs.submit(app_write)
        result = b.apply(batch, yield_to=jobs)
        assert write.done()
        assert write.exception() is None
        first_slice = APPLY_SLICE_ROWS // (2 * ROWS_PER_GROUP)
        # The app saw the first slice committed, with its cursor, and nothing more.
        assert seen == [({origin: first_slice}, first_slice)]
        assert result.merged == len(batch)
        assert b.cursor() == {origin: GROUPS}
        # The app's write landed between the first slice and the last group.
        app_version = b.local_high_water()
        groups = landed_groups(b)
        assert max(groups[1][1]) < app_version < min(groups[GROUPS][1])
        # Every group landed whole, in one transaction.
        assert sorted(groups) == list(range(1, GROUPS + 1))
        assert all(count == ROWS_PER_GROUP and len(v) == 1 for count, v in groups.values())


def test_with_no_call_waiting_the_batch_is_one_transaction(tmp_path: Path) -> None:
    origin, batch = source_batch()
    with new_store(tmp_path / "b.db") as b:
        b.apply(batch, yield_to=StoreJobs())
        # One transaction: every group at or below one pending local version.
        versions = set().union(*(v for _, v in landed_groups(b).values()))
        assert b.db_version() == max(versions)
        assert b.execute("SELECT count(*) FROM crpeer_versions")[0][0] <= len(versions)
        assert b.cursor() == {origin: GROUPS}


def test_a_bad_row_at_the_end_lands_nothing_and_runs_no_call_early(tmp_path: Path) -> None:
    _, batch = source_batch()
    bad = (*batch[-1][:2], "no_such_column", *batch[-1][3:])
    jobs = StoreJobs()
    with new_store(tmp_path / "b.db") as b:
        write = jobs.submit(lambda: b.execute("INSERT INTO items VALUES (1, 'app', 0)"))
        with pytest.raises(InvalidChangeError, match="no_such_column"):
            b.apply([*batch, bad], yield_to=jobs)
        assert not write.done()
        assert b.cursor() == {}
        assert b.execute("SELECT count(*) FROM items") == [(0,)]
        assert jobs.run_waiting() == 1
        assert b.execute("SELECT id FROM items") == [(1,)]


def test_a_call_that_drops_a_table_has_the_rest_checked_again(tmp_path: Path) -> None:
    origin, batch = source_batch()
    with new_store() as a:
        a.execute("INSERT INTO tags VALUES (1, 'x')")
        tagged = [(*row[:5], GROUPS + 1, origin, *row[7:]) for row in a.changes_since({}, 10)]
    jobs = StoreJobs()
    with new_store(tmp_path / "b.db") as b:
        jobs.submit(lambda: b.execute("DROP TABLE tags"))
        # The rows for tags were valid when the batch began, not after the
        # call between slices: they never reach cr-sqlite.
        with pytest.raises(InvalidChangeError, match="unknown table 'tags'"):
            b.apply([*batch, *tagged], yield_to=jobs)
        first_slice = APPLY_SLICE_ROWS // (2 * ROWS_PER_GROUP)
        assert b.cursor() == {origin: first_slice}
        groups = landed_groups(b)
        assert sorted(groups) == list(range(1, first_slice + 1))
        assert all(count == ROWS_PER_GROUP for count, _ in groups.values())


CRASHING_APPLY = """
import os, pickle, sys
from peer.store import Store
from peer.store.jobs import StoreJobs
from peer.store_worker import StoreWorker
path, batch_file = sys.argv[1], sys.argv[2]
with open(batch_file, "rb") as f:
    batch = pickle.load(f)
store = Store(path)
jobs = StoreJobs()
jobs.submit(lambda: os._exit(17))  # the process dies between two slices
store.apply(batch, yield_to=jobs)
sys.exit(0)
"""


def test_a_process_killed_between_slices_keeps_whole_groups_and_their_cursor(
    tmp_path: Path,
) -> None:
    origin, batch = source_batch()
    path = tmp_path / "b.db"
    new_store(path).close()
    batch_file = tmp_path / "batch.pickle"
    batch_file.write_bytes(pickle.dumps(batch))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_APPLY, str(path), str(batch_file)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 17, done.stderr.decode()
    with Store(path) as b:
        first_slice = APPLY_SLICE_ROWS // (2 * ROWS_PER_GROUP)
        assert b.cursor() == {origin: first_slice}
        groups = landed_groups(b)
        assert sorted(groups) == list(range(1, first_slice + 1))
        assert all(count == ROWS_PER_GROUP for count, _ in groups.values())
        # The sender sends again from the cursor; the whole batch again is harmless too.
        b.apply(batch, skip_known=True)
        assert sorted(landed_groups(b)) == list(range(1, GROUPS + 1))
        assert b.cursor() == {origin: GROUPS}


async def test_an_app_write_lands_before_the_last_slice_of_a_page_being_applied(
    tmp_path: Path,
) -> None:
    origin, batch = source_batch()
    store = new_store(tmp_path / "b.db")
    worker = StoreWorker(store, [])  # the Peer's store threads (Peer.execute is an app_write)
    await worker.open()
    try:
        gate = threading.Event()
        # The store thread is busy; the page, then the app's write, queue behind it.
        busy = asyncio.ensure_future(worker.app_call(gate.wait, 10.0))
        page = asyncio.ensure_future(worker.apply(list(batch), 0))
        await asyncio.sleep(0)
        write = asyncio.ensure_future(
            worker.app_write(lambda: store.execute("INSERT INTO items VALUES (1, 'app', 0)"))
        )
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(asyncio.gather(busy, page, write), 30)
        app_version = await worker.run(store.local_high_water)
        groups = await worker.run(landed_groups, store)
        # The write ran at the first slice's end, not after the page.
        assert max(groups[1][1]) < app_version < min(groups[GROUPS][1])
        assert all(count == ROWS_PER_GROUP and len(v) == 1 for count, v in groups.values())
        assert await worker.run(store.cursor) == {origin: GROUPS}
    finally:
        await worker.close()
        store.close()
