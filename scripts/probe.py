#!/usr/bin/env python3
"""Probes behind the figures in BENCHMARKS.md that scripts/bench.py does not print.

``probe.py mesh-counts [--writes N]``
    Runs the ``mesh`` role of scripts/bench_node.py in this process with
    ``Store.next_page``, ``apply``, ``execute`` and ``local_high_water``
    wrapped, and prints, beside the role's own JSON line, how often each ran,
    the rows it read, merged and skipped, and its thread CPU seconds.

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

Measurement tools only: they reach into the store's internals on purpose.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

from peer.store import Store

_HERE = Path(__file__).resolve().parent
_TABLE = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER)"
_UPSERT = (
    "INSERT INTO t VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
    "SET name = excluded.name, score = excluded.score"
)


def mesh_counts(writes: int) -> None:
    counts: collections.Counter[str] = collections.Counter()
    cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
    lock = threading.Lock()

    Tally = Callable[[Any], dict[str, int]]

    def counted(name: str, method: Callable[..., Any], tally: Tally) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            result = method(*args, **kwargs)
            spent = time.thread_time() - started
            with lock:
                counts[name] += 1
                cpu[name] += spent
                counts.update(tally(result))
            return result

        return wrapper

    def page_tally(page: Any) -> dict[str, int]:
        rows = len(page) if isinstance(page, list) else 0
        return {"next_page_rows": rows, "next_page_empty": int(isinstance(page, list) and not rows)}

    patches = {
        "next_page": page_tally,
        "apply": lambda result: {"merged": result.merged, "skipped": result.skipped},
        "execute": lambda _: {},
        "local_high_water": lambda _: {},
    }
    for name, tally in patches.items():
        setattr(Store, name, counted(name, getattr(Store, name), tally))
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
    spent = {name: round(seconds, 1) for name, seconds in cpu.items()}
    print(json.dumps({"calls": dict(counts), "thread_cpu_s": spent}))


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
        for label in ("one pass", "per origin"):
            if label == "per origin":
                hub._combined_page = lambda *args: None  # type: ignore[method-assign]
            for behind in (0, 1, 3, 20):
                remote = {site: max(0, version - behind) for site, version in held.items()}
                started = time.perf_counter()
                for _ in range(20):
                    page = hub.next_page(remote, 5000)
                spent = (time.perf_counter() - started) / 20 * 1000
                rows = len(page) if isinstance(page, list) else 0
                print(f"{label:10s} {behind:2d} behind each origin: {spent:7.2f} ms, {rows} rows")
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


def _spin(running: threading.Event) -> None:
    count = 0
    while running.is_set():
        count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["mesh-counts", "next-page", "beside-busy-thread"])
    parser.add_argument(
        "--writes", type=int, help="default: 3,000 (mesh-counts), 2,000 (beside-busy), 20,000"
    )
    args = parser.parse_args()
    if args.probe == "mesh-counts":
        mesh_counts(args.writes or 3_000)
    elif args.probe == "beside-busy-thread":
        beside_busy_thread(args.writes or 2_000)
    else:
        next_page(args.writes or 20_000)


if __name__ == "__main__":
    main()
