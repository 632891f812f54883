#!/usr/bin/env python3
"""Probes behind the figures in BENCHMARKS.md that scripts/bench.py does not print.

``probe.py mesh-counts [--writes N]``
    Runs the ``mesh`` role of scripts/bench_node.py in this process with
    ``Store.next_page``, ``apply``, ``execute`` and ``local_high_water``
    wrapped, and prints, beside the role's own JSON line, how often each ran,
    the rows it read, merged and skipped, and its thread CPU seconds.

``probe.py mesh-timeline [--writes N]``
    The same role, printing every 2 s what that window held: calls of
    ``next_page``, ``apply``, ``execute`` and ``change_marker`` with their
    wall and thread-CPU milliseconds per call, rows read, merged and
    skipped; how long calls waited for a store or read thread to start
    them; the event loop's lag (how late a 10 ms sleep wakes); and the round
    trip of ``Peer.execute`` (p50 and p90 each).

``probe.py mesh-copies [--writes N]``
    The same role, sorting every change row a peer receives by what the
    receiver knew when the frame arrived: already announced to that sender
    (HAVE, or sent or received over that session), already merged here but
    not announced, received over another session and not merged yet, or new.
    Only the last kind is work that had to be done.

``probe.py next-page [--writes N]``
    Builds a hub that merged N interleaved writes from 20 origins, then times
    ``Store.next_page`` for a remote 0, 1, 3 and 20 versions behind on every
    origin: once as the store reads (one pass over the log) and once with the
    one-pass read switched off (origin by origin).

``probe.py beside-busy-thread [--writes N]``
    Builds the same hub, then copies its changes into a fresh store page by
    page (``next_page`` then ``apply``, 100 rows a page) and times the reads
    and the applies twice: alone, and while another thread runs Python
    without pause, as an event loop busy with other sessions does. SQLite
    calls give up the GIL; each time a thread takes it back from a busy
    thread it waits out the switch interval, so this shows how many times
    a store call does that.

``probe.py bind-cost``
    Times one 512-row, 11-column ``INSERT ... VALUES`` into a TEMP table
    with every parameter of one type (int, float, str, bytearray, bytes,
    None), then again after registering identity adapters for bytes and
    None. pysqlite3 looks for an adapter for every parameter that is not an
    int, float, str or bytearray; for bytes and None that lookup fails, and
    failing costs microseconds per parameter, with the GIL held.

``probe.py merge-statement-size [--writes N]``
    Builds the benchmark's catch-up source with N rows (default 100,000;
    ``bench.build_source``, 1,000 per transaction), reads its changes in
    5,000-row pages,
    and times applying every page into a fresh store (``Store.apply``, one
    transaction a page) with 1,000, 250, 100, 32, 10 and 1 rows per
    ``INSERT INTO crsql_changes`` statement, three rounds interleaved; prints
    the median change rows/s of each.

``probe.py apply-binding [--writes N]``
    The same pages applied three ways: ``Store.apply`` page by page, and,
    as ``apply_limit`` in scripts/bench.py measures, one ``executemany`` of
    every row in one transaction, once with the rows as SQLite returned
    them (blobs as ``bytes``) and once with blobs as ``bytearray``, which
    pysqlite3 binds without an adapter lookup (see ``bind-cost``).

Measurement tools only: they reach into the store's internals on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import runpy
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bench
import pysqlite3.dbapi2 as sqlite3
from bench_node import SCHEMA, TABLE

import peer.store.bookkeeping as store_bookkeeping
import peer.store.merger as store_merger
from peer import protocol
from peer.peer import Peer
from peer.peer_host import PeerSessionHost
from peer.store import Store
from peer.store.connection import locate
from peer.store.reader import ChangeReader

_HERE = Path(__file__).resolve().parent
_TABLE = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER)"
_UPSERT = (
    "INSERT INTO t VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
    "SET name = excluded.name, score = excluded.score"
)


Tally = Callable[[Any], dict[str, int]]
"""What one call's result adds to the counts (rows read, merged, ...)."""


class _StoreCalls:
    """Calls of some :class:`Store` methods, from any thread: how many, their
    wall and thread-CPU seconds, and what each result adds to the counts."""

    def __init__(self, tallies: dict[str, Tally]) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.wall: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
        for name, tally in tallies.items():
            setattr(Store, name, self._counted(name, getattr(Store, name), tally))

    def _counted(self, name: str, method: Callable[..., Any], tally: Tally) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, thread_started = time.perf_counter(), time.thread_time()
            result = method(*args, **kwargs)
            with self.lock:
                self.counts[name] += 1
                self.wall[name] += time.perf_counter() - started
                self.cpu[name] += time.thread_time() - thread_started
                self.counts.update(tally(result))
            return result

        return wrapper


def mesh_counts(writes: int) -> None:
    def page_tally(page: Any) -> dict[str, int]:
        rows = len(page) if isinstance(page, list) else 0
        return {"next_page_rows": rows, "next_page_empty": int(isinstance(page, list) and not rows)}

    calls = _StoreCalls(
        {
            "next_page": page_tally,
            "apply": lambda result: {"merged": result.merged, "skipped": result.skipped},
            "execute": lambda _: {},
            "local_high_water": lambda _: {},
        }
    )
    _run_mesh_role(writes)
    spent = {name: round(seconds, 1) for name, seconds in calls.cpu.items()}
    print(json.dumps({"calls": dict(calls.counts), "thread_cpu_s": spent}))


def _run_mesh_role(writes: int) -> None:
    """The ``mesh`` role of scripts/bench_node.py, in this process (seed 1)."""
    with tempfile.TemporaryDirectory() as folder:
        sys.argv = [
            "bench_node.py",
            "mesh",
            *("--dir", folder, "--peers", "20", "--degree", "4", "--keys", "1000"),
            *("--writes", str(writes), "--seed", "1", "--timeout", "600"),
        ]
        try:
            runpy.run_path(str(_HERE / "bench_node.py"), run_name="__main__")
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise


def mesh_copies(writes: int) -> None:
    """Each change row received in the mesh role, by what its receiver knew."""
    kinds: collections.Counter[str] = collections.Counter()
    merged: collections.defaultdict[bytes, dict[bytes, int]] = collections.defaultdict(dict)
    received: collections.defaultdict[bytes, dict[bytes, int]] = collections.defaultdict(dict)
    on_changes, applied = protocol.SyncSession._on_changes, PeerSessionHost.applied

    def sorted_on_changes(session: protocol.SyncSession, message: Any) -> Any:
        here, frame_high = session.local.site_id, dict[bytes, int]()
        for change in message.changes:
            origin, version = change[6], change[5]
            if version <= session.announced.get(origin, 0):
                kinds["announced to its sender"] += 1
            elif version <= merged[here].get(origin, 0):
                kinds["merged here, not announced"] += 1
            elif version <= received[here].get(origin, 0):
                kinds["on its way over another session"] += 1
            else:
                kinds["new"] += 1
            frame_high[origin] = max(version, frame_high.get(origin, 0))
        for origin, version in frame_high.items():
            received[here][origin] = max(version, received[here].get(origin, 0))
        return on_changes(session, message)

    def recorded_applied(host: PeerSessionHost, source: Any, result: Any) -> None:
        known = merged[source.session.local.site_id]
        for origin, version in result.cursor.items():
            known[origin] = max(version, known.get(origin, 0))
        applied(host, source, result)

    for owner, name, wrapper in (
        (protocol.SyncSession, "_on_changes", sorted_on_changes),
        (PeerSessionHost, "applied", recorded_applied),
    ):
        setattr(owner, name, wrapper)
    _run_mesh_role(writes)
    print(json.dumps({"rows received": dict(kinds)}))


def mesh_timeline(writes: int) -> None:
    """Every 2 s of the mesh role: what the store calls did in that window,
    how long calls waited for a store or read thread to start them, the
    event loop's lag and the round trip of ``Peer.execute``."""
    calls = _StoreCalls(
        {
            "next_page": lambda page: {"rows read": len(page) if isinstance(page, list) else 0},
            "apply": lambda result: {"rows merged": result.merged, "rows skipped": result.skipped},
            "execute": lambda _: {},
            "change_marker": lambda _: {},
        }
    )
    waits: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    submit = ThreadPoolExecutor.submit

    def submit_timed(pool: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        handed = time.perf_counter()
        thread = (pool._thread_name_prefix or "").removeprefix("crpeer-")

        def started(*inner: Any, **named: Any) -> Any:
            if thread in ("store", "read"):
                waits[f"{thread} thread start"].append(time.perf_counter() - handed)
            return fn(*inner, **named)

        return submit(pool, started, *args, **kwargs)

    execute = Peer.execute

    async def execute_timed(peer: Peer, sql: str, params: Any = ()) -> Any:
        started = time.perf_counter()
        try:
            return await execute(peer, sql, params)
        finally:
            waits["Peer.execute"].append(time.perf_counter() - started)

    start = Peer.start

    lag_probes: list[asyncio.Task[None]] = []

    async def start_with_lag_probe(peer: Peer) -> None:
        if not lag_probes:
            lag_probes.append(asyncio.get_running_loop().create_task(_loop_lag(waits["loop lag"])))
        await start(peer)

    wrapped: list[tuple[type, str, Any]] = [
        (ThreadPoolExecutor, "submit", submit_timed),
        (Peer, "execute", execute_timed),
        (Peer, "start", start_with_lag_probe),
    ]
    for owner, name, replacement in wrapped:
        setattr(owner, name, replacement)

    def report() -> None:
        began = time.perf_counter()
        while True:
            time.sleep(2)
            with calls.lock:
                window = (calls.counts.copy(), calls.wall.copy(), calls.cpu.copy())
                for tally in (calls.counts, calls.wall, calls.cpu):
                    tally.clear()
                spread = {name: sorted(values) for name, values in waits.items() if values}
                for values in waits.values():
                    del values[:]
            counts, walls, cpus = window
            parts = [f"{name} {counts[name]}" for name in counts if name.startswith("rows")]
            for name in ("execute", "next_page", "apply", "change_marker"):
                if counts[name]:
                    per = 1000 / counts[name]
                    parts.append(
                        f"{name} {counts[name]} x {walls[name] * per:.1f} ms "
                        f"(cpu {cpus[name] * per:.1f})"
                    )
            for name, values in spread.items():
                p50, p90 = values[len(values) // 2], values[int(len(values) * 0.9)]
                parts.append(f"{name} p50 {p50 * 1000:.1f} p90 {p90 * 1000:.1f} ms")
            print(f"t={time.perf_counter() - began:5.1f} s  " + "; ".join(parts), flush=True)

    threading.Thread(target=report, daemon=True).start()
    _run_mesh_role(writes)


async def _loop_lag(lags: list[float]) -> None:
    """How late a 10 ms sleep wakes, for as long as the loop runs."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - started - 0.01)


def _store(folder: str, name: str) -> Store:
    opened = Store(os.path.join(folder, name))
    opened.execute(_TABLE)
    opened.make_crr("t")
    return opened


def _hub(folder: str, writes: int) -> Store:
    """A store that merged ``writes`` interleaved one-row writes from 20 origins."""
    origins = [_store(folder, f"o{i}.db") for i in range(20)]
    hub = _store(folder, "hub.db")
    rng = random.Random(1)
    for n in range(writes):
        origins[n % 20].execute(_UPSERT, (rng.randrange(5000), f"w{n}", n))
        if n % 7 == 0:
            for origin in origins:
                hub.apply(origin.changes_since(hub.cursor(), 1000), skip_known=True)
    for origin in origins:
        hub.apply(origin.changes_since(hub.cursor(), writes * 4), skip_known=True)
        origin.close()
    return hub


def next_page(writes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        hub = _hub(folder, writes)
        held = hub.cursor()
        readers = {
            "one pass": ChangeReader(locate(hub.path)[0], hub.site_id),
            "per origin": ChangeReader(locate(hub.path)[0], hub.site_id, combined_reads=0),
        }
        for label, reader in readers.items():
            for behind in (0, 1, 3, 20):
                remote = {site: max(0, version - behind) for site, version in held.items()}
                started = time.perf_counter()
                for _ in range(20):
                    page = reader.next_page(remote, 5000)
                spent = (time.perf_counter() - started) / 20 * 1000
                rows = len(page) if isinstance(page, list) else 0
                print(f"{label:10s} {behind:2d} behind each origin: {spent:7.2f} ms, {rows} rows")
            reader.close()
        hub.close()


def beside_busy_thread(writes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        hub = _hub(folder, writes)
        for busy in (False, True):
            running = threading.Event()
            if busy:
                running.set()
                spinner = threading.Thread(target=_spin, args=(running,), daemon=True)
                spinner.start()
            copy = _store(folder, f"copy-{busy}.db")
            cursor: dict[bytes, int] = {}
            reading = applying = 0.0
            pages = rows = 0
            while True:
                started = time.perf_counter()
                page = hub.next_page(cursor, 100)
                reading += time.perf_counter() - started
                if not isinstance(page, list) or not page:
                    break
                started = time.perf_counter()
                copy.apply(page, skip_known=True)
                applying += time.perf_counter() - started
                for change in page:
                    cursor[change[6]] = max(cursor.get(change[6], 0), change[5])
                pages, rows = pages + 1, rows + len(page)
            running.clear()
            label = "beside a busy thread" if busy else "alone"
            print(
                f"{label:21s} {pages} pages, {rows} rows: "
                f"read {reading:6.2f} s, apply {applying:6.2f} s"
            )
            copy.close()
        hub.close()


def bind_cost() -> None:
    rows, width = 512, 11
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(f"CREATE TEMP TABLE wide ({', '.join(f'c{i}' for i in range(width))})")
    one = "(" + ", ".join("?" * width) + ")"
    insert = "INSERT INTO wide VALUES " + ", ".join([one] * rows)
    samples: list[tuple[str, Any]] = [
        ("int", 7),
        ("float", 1.5),
        ("str", "ab"),
        ("bytearray", bytearray(b"ab")),
        ("bytes", b"ab"),
        ("None", None),
    ]

    def timed(value: Any) -> float:
        params = [value] * (rows * width)
        conn.execute(insert, params)  # compiled and cached
        started = time.perf_counter()
        for _ in range(10):
            conn.execute(insert, params)
        return (time.perf_counter() - started) / 10 / (rows * width) * 1e6

    for label, value in samples:
        print(f"{label:9s} {timed(value):6.2f} us per parameter")
    for kind in (bytes, type(None)):
        sqlite3.register_adapter(kind, lambda value: value)
    for label, value in samples[4:]:
        print(f"{label:9s} {timed(value):6.2f} us per parameter, identity adapter registered")
    conn.close()


def _catchup_pages(folder: str, writes: int) -> list[list[Any]]:
    """The benchmark's catch-up source (``bench.build_source``: ``writes`` rows,
    1,000 per transaction), read in 5,000-row pages."""
    path = Path(folder) / "source.db"
    bench.build_source(path, writes)
    pages: list[list[Any]] = []
    cursor: dict[bytes, int] = {}
    with Store(path) as source:
        while page := source.next_page(cursor, 5_000, exclude=set()):
            assert isinstance(page, list)
            pages.append(page)
            for change in page:
                cursor[change[6]] = max(cursor.get(change[6], 0), change[5])
    return pages


def _catchup_target(folder: str, name: str) -> Store:
    """A fresh store with the benchmark's table, as its receiver has."""
    target = Store(os.path.join(folder, name))
    target.execute(SCHEMA)
    target.make_crr(TABLE)
    return target


Variant = Callable[[Store, list[list[Any]]], float]
"""Applies the pages into a fresh store; returns the seconds its timed part took."""


def _interleaved(writes: int, variants: dict[str, Variant]) -> None:
    """Apply the catch-up pages into a fresh store with each variant, three
    rounds interleaved; print each variant's median change rows/s."""
    rates: dict[str, list[float]] = {label: [] for label in variants}
    with tempfile.TemporaryDirectory() as folder:
        pages = _catchup_pages(folder, writes)
        rows = sum(len(page) for page in pages)
        for round_ in range(3):
            for number, (label, apply) in enumerate(variants.items()):
                target = _catchup_target(folder, f"target-{round_}-{number}.db")
                rates[label].append(rows / apply(target, pages))
                target.close()
    for label, runs in rates.items():
        each = " / ".join(f"{rate:,.0f}" for rate in runs)
        print(f"{label:44s} {sorted(runs)[1]:8,.0f} change rows/s  ({each})")


def _store_apply(target: Store, pages: list[list[Any]]) -> float:
    started = time.perf_counter()
    for page in pages:
        target.apply(page, types_checked=True, skip_known=True)
    return time.perf_counter() - started


def merge_statement_size(writes: int) -> None:
    def with_size(size: int) -> Variant:
        def apply(target: Store, pages: list[list[Any]]) -> float:
            store_merger.MERGE_ROWS_PER_STATEMENT = size
            return _store_apply(target, pages)

        return apply

    sizes = [1_000, 250, 100, 32, 10, 1]
    _interleaved(writes, {f"{size:5d} rows per statement": with_size(size) for size in sizes})


def apply_binding(writes: int) -> None:
    insert = f"INSERT INTO {store_bookkeeping.CHANGES_INTO} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

    def executemany(blobs: Callable[[Any], Any]) -> Variant:
        """As bench.py's apply_limit: one transaction, ``executemany``; the
        rows are prepared outside the timed part."""

        def apply(target: Store, pages: list[list[Any]]) -> float:
            rows = [tuple(blobs(value) for value in row) for page in pages for row in page]
            connection = target._merger._connection()
            started = time.perf_counter()
            connection.execute("BEGIN")
            connection.executemany(insert, rows)
            connection.execute("COMMIT")
            return time.perf_counter() - started

        return apply

    def as_bytearray(value: Any) -> Any:
        return bytearray(value) if type(value) is bytes else value

    _interleaved(
        writes,
        {
            "Store.apply, 5,000-row pages": _store_apply,
            "executemany, blobs as bytes (apply_limit)": executemany(lambda value: value),
            "executemany, blobs as bytearray": executemany(as_bytearray),
        },
    )


def _spin(running: threading.Event) -> None:
    count = 0
    while running.is_set():
        count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "probe",
        choices=[
            "mesh-counts",
            "mesh-timeline",
            "mesh-copies",
            "next-page",
            "beside-busy-thread",
            "bind-cost",
            "merge-statement-size",
            "apply-binding",
        ],
    )
    parser.add_argument(
        "--writes",
        type=int,
        help="default: 3,000 (mesh-counts), 10,000 (mesh-timeline, mesh-copies), "
        "2,000 (beside-busy), 100,000 (merge-statement-size, apply-binding), 20,000",
    )
    args = parser.parse_args()
    if args.probe == "mesh-counts":
        mesh_counts(args.writes or 3_000)
    elif args.probe == "mesh-timeline":
        mesh_timeline(args.writes or 10_000)
    elif args.probe == "mesh-copies":
        mesh_copies(args.writes or 10_000)
    elif args.probe == "beside-busy-thread":
        beside_busy_thread(args.writes or 2_000)
    elif args.probe == "bind-cost":
        bind_cost()
    elif args.probe == "merge-statement-size":
        merge_statement_size(args.writes or 100_000)
    elif args.probe == "apply-binding":
        apply_binding(args.writes or 100_000)
    else:
        next_page(args.writes or 20_000)


if __name__ == "__main__":
    main()
