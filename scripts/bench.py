#!/usr/bin/env python3
"""Benchmarks against the hardware limit: how close crpeer syncs to cr-sqlite's own apply rate.

::

    .venv/bin/python scripts/bench.py            # full mode: 1,000,000 rows, 3 runs
    .venv/bin/python scripts/bench.py --quick    # CI-sized: 10,000 rows, under a minute
    .venv/bin/python scripts/bench.py --only apply_limit,initial_sync_tcp --rows 100000
    .venv/bin/python scripts/bench.py --only write_wait --runs 1

It prints a table (figure, median of the runs, each run, target, PASS/MISS)
and, as its very last line, one JSON object of the medians. A benchmark that
fails reports ``null``. The exit code is 0 whatever the figures (benchmarks
report; they do not assert); 2 for bad arguments, 130 when interrupted
(SIGINT or SIGTERM: child processes are stopped and the temporary directory
removed first).

What each figure is (BENCHMARKS.md has results and profiles):

- ``apply_limit``: change rows/s of ``INSERT INTO crsql_changes`` (executemany,
  one transaction) of the source database's changes into a fresh store (made
  by Store, written on a plain connection), in this process. The ceiling for
  replication.
- ``initial_sync_<transport>``: change rows/s for a fresh peer catching up
  from one holding ``rows`` rows, sender and receiver in separate processes
  (memory: both in one child process, as that transport is in-process), TLS on
  tcp, websocket and http_sse; timed from just before the receiver's
  ``Peer.start()`` until its Changed events count every change row.
  ``..._ratio`` is that rate over ``apply_limit`` of the same run.
- ``live_latency_p50_ms`` / ``_p99_ms``: one-row ``Peer.execute`` on a peer
  until the Changed event on a directly connected peer in another process,
  TCP+TLS; ``relay_latency_p99_ms``: the same across a line of 5 peers, all in
  one process over TCP+TLS loopback.
- ``peak_rss_mb``: the receiver process's peak RSS in the tcp initial sync.
- ``write_wait_p99_ms``: while a fresh peer catches up from one holding
  ``wait_rows`` rows (1,000 per transaction; full 100,000, quick 10,000) over
  TCP+TLS in separate processes, the receiving app calls ``Peer.execute`` of
  a one-row insert into a plain (non-CRR) table every 20 ms, open loop; the
  99th percentile of how long a call took from its due time until it
  returned (p50 and max in the notes). ``write_wait_big_txn_max_ms``: the
  longest such wait when the source holds one transaction of
  ``big_txn_rows`` rows (full 60,000, quick 6,000): a transaction spans
  frames and applies atomically, so a write waits for all of it.
- ``write_overhead``: plain-table insert rate over CRR insert rate (both
  shown in the table), executemany in one transaction.
- ``bootstrap_ratio``: a fresh device joining a peer that holds
  ``bootstrap_rows`` rows (100,000 in both modes) of a 4-column table
  (300,000 change rows, 1,000 rows per transaction), over WebSocket+TLS in
  separate processes: seconds of a change replay (the receiver declines
  snapshots) over seconds of a snapshot bootstrap (it takes one), both timed
  from just before the receiver's ``Peer.start()`` until it holds every row
  (replay: its Changed events count every change row; bootstrap: its EOSE
  after the Bootstrapped event). ``bootstrap_mb_s`` is the snapshot's size
  over the bootstrap's seconds, ``file_copy_mb_s`` a plain copy (and fsync)
  of the same database file on the same disk, the physical limit;
  ``bootstrap_peak_rss_mb`` the receiver's peak RSS in the bootstrap.
  ``bootstrap_1m_ratio`` (and its ``_mb_s``, ``_peak_rss_mb``): the same at
  1,000,000 rows, full mode only.
- ``mesh_converge_s``: 20 peers in a seeded random mesh (one process, memory
  transport), random upserts spread over the peers; seconds from the first
  write until every table is the same.

Medians are taken over ``--runs`` repetitions; each repetition runs every
selected benchmark once, in order, so a ratio always divides two figures of
the same repetition. The source database is built once per invocation in a
temporary directory and copied for every sync; everything runs on 127.0.0.1
and every child process is bounded in time and reaped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
from bench_node import SCHEMA, TABLE, TRANSPORTS, WIDE_SCHEMA, WIDE_TABLE
from rich.console import Console
from rich.table import Table

from peer import crsqlite
from peer.identity import Identity
from peer.store import Store
from peer.trust import TrustStore

__all__ = ["main"]

NODE = Path(__file__).resolve().parent / "bench_node.py"
ROWS_PER_TRANSACTION = 1_000
"""The source database is written 1,000 rows (2,000 change rows) per transaction."""
_CHANGE_COLUMNS = '"table", pk, cid, val, col_version, db_version, site_id, cl, seq'
_APPLY_CHUNK = 50_000
APP_WRITE_INTERVAL = 0.02
"""Seconds between the app's writes in write_wait (open loop)."""


@dataclass(frozen=True, slots=True)
class Mode:
    """Sizes of one mode; every figure scales with these."""

    name: str
    rows: int
    """Rows the initial-sync sender holds (each is 2 change rows)."""
    samples: int
    """Latency samples per run."""
    interval: float
    """Seconds between latency writes (open loop)."""
    mesh_writes: int
    write_rows: int
    """Rows per insert in write_overhead."""
    wait_rows: int
    """Rows the write_wait sender holds (1,000 per transaction; not ``--rows``)."""
    big_txn_rows: int
    """Rows of the one transaction the write_wait big-transaction sender holds."""
    runs: int
    bootstrap_rows: int = 100_000
    """Rows of the 4-column table the bootstrap sender holds."""
    bootstrap_1m_rows: int = 0
    """The same for bootstrap_1m (0: not in this mode)."""


FULL = Mode(
    "full",
    rows=1_000_000,
    samples=1_000,
    interval=0.01,
    mesh_writes=10_000,
    write_rows=100_000,
    wait_rows=100_000,
    big_txn_rows=60_000,
    runs=3,
    bootstrap_1m_rows=1_000_000,
)
QUICK = Mode(
    "quick",
    rows=10_000,
    samples=100,
    interval=0.01,
    mesh_writes=1_000,
    write_rows=10_000,
    wait_rows=10_000,
    big_txn_rows=6_000,
    runs=1,
)

GROUPS: dict[str, tuple[str, ...]] = {
    "apply_limit": ("apply_limit",),
    **{f"initial_sync_{t}": (f"initial_sync_{t}", f"initial_sync_{t}_ratio") for t in TRANSPORTS},
    "live_latency": ("live_latency_p50_ms", "live_latency_p99_ms"),
    "relay_latency": ("relay_latency_p99_ms",),
    "peak_rss_mb": ("peak_rss_mb",),
    "write_overhead": ("write_overhead",),
    "mesh_converge_s": ("mesh_converge_s",),
    "write_wait": ("write_wait_p99_ms", "write_wait_big_txn_max_ms"),
    "bootstrap": ("bootstrap_ratio", "bootstrap_mb_s", "file_copy_mb_s"),
    "bootstrap_1m": ("bootstrap_1m_ratio", "bootstrap_1m_mb_s", "bootstrap_1m_peak_rss_mb"),
}
"""Benchmarks (run order) and the JSON keys each produces."""
NEEDS: dict[str, tuple[str, ...]] = {
    **{f"initial_sync_{t}": ("apply_limit",) for t in TRANSPORTS},
    "peak_rss_mb": ("initial_sync_tcp",),
}
"""A benchmark also runs what its figure is computed from."""

TARGETS: dict[str, tuple[str, float]] = {
    "initial_sync_tcp_ratio": (">=", 0.7),
    "initial_sync_websocket_ratio": (">=", 0.6),
    "live_latency_p99_ms": ("<=", 50.0),
    "relay_latency_p99_ms": ("<=", 200.0),
    "peak_rss_mb": ("<=", 250.0),
    "mesh_converge_s": ("<=", 30.0),
    "write_wait_p99_ms": ("<=", 100.0),
    "bootstrap_ratio": (">=", 3.0),
    "bootstrap_1m_ratio": (">=", 5.0),
    "bootstrap_1m_peak_rss_mb": ("<=", 150.0),
}
"""Full-mode targets (peak_rss_mb for 1,000,000 rows)."""

UNITS: dict[str, str] = {
    "apply_limit": "change rows/s",
    "live_latency_p50_ms": "ms",
    "live_latency_p99_ms": "ms",
    "relay_latency_p99_ms": "ms",
    "peak_rss_mb": "MB",
    "write_overhead": "x (plain/CRR)",
    "mesh_converge_s": "s",
    "write_wait_p99_ms": "ms",
    "write_wait_big_txn_max_ms": "ms",
    "bootstrap_ratio": "x (replay s / bootstrap s)",
    "bootstrap_1m_ratio": "x (replay s / bootstrap s)",
    "bootstrap_mb_s": "MB/s",
    "bootstrap_1m_mb_s": "MB/s",
    "file_copy_mb_s": "MB/s",
    "bootstrap_1m_peak_rss_mb": "MB",
    **{f"initial_sync_{t}": "change rows/s" for t in TRANSPORTS},
    **{f"initial_sync_{t}_ratio": "x apply_limit" for t in TRANSPORTS},
}

log = logging.getLogger("crpeer.bench")
err = Console(stderr=True, highlight=False)


class BenchError(Exception):
    """One benchmark run failed; its figure is missing from that run."""


# -- child processes ---------------------------------------------------------------


class Child:
    """One ``bench_node.py`` process. Read its JSON lines with :meth:`read`;
    :meth:`close` always reaps it (SIGTERM, then SIGKILL after ``grace`` s)."""

    def __init__(self, label: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.label = label
        self.process = process
        self.stderr = stderr

    @classmethod
    async def start(cls, label: str, workdir: Path, args: Sequence[str]) -> Child:
        stderr = workdir / f"{label}.stderr"
        with stderr.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(NODE),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
                limit=16 * 1024 * 1024,
            )
        return cls(label, process, stderr)

    def _tail(self) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    async def read(self, within: float) -> dict[str, Any]:
        """The next JSON line; raises BenchError on timeout, exit or a reported failure."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise BenchError(f"{self.label}: no answer within {within:.0f} s") from None
        if not line:
            await self.process.wait()
            raise BenchError(
                f"{self.label} exited ({self.process.returncode}) early: {self._tail()}"
            )
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise BenchError(f"{self.label}: {message['error']}")
        return message

    async def close(self, grace: float = 15.0) -> None:
        process = self.process
        try:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), grace)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def child(label: str, workdir: Path, *args: str) -> AsyncIterator[Child]:
    started = await Child.start(label, workdir, args)
    try:
        yield started
    finally:
        await started.close()


# -- SQLite helpers ----------------------------------------------------------------


def connect(path: Path) -> Any:
    """A raw connection set up like Store's (cr-sqlite loaded, WAL, synchronous=NORMAL)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    crsqlite.load(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def disconnect(conn: Any) -> None:
    try:
        conn.execute("SELECT crsql_finalize()")
    finally:
        conn.close()


def build_source(
    path: Path, rows: int, per_transaction: int = ROWS_PER_TRANSACTION, *, wide: bool = False
) -> int:
    """The sender's database: ``rows`` rows written through Store,
    ``per_transaction`` per transaction (``wide``: of the 4-column table).
    Returns its number of change rows."""
    table = WIDE_TABLE if wide else TABLE
    columns, values = "id, name, score", "i, 'name-' || i, (i * 7919) % 1000003"
    if wide:
        columns, values = f"{columns}, note", f"{values}, 'note ' || hex(i * 31)"
    with Store(path) as store:
        store.execute(WIDE_SCHEMA if wide else SCHEMA)
        store.make_crr(table)
        for start in range(1, rows + 1, per_transaction):
            store.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                f"INSERT INTO {table} ({columns}) SELECT {values} FROM n",
                (start, min(rows, start + per_transaction - 1)),
            )
        (count,) = store.execute("SELECT count(*) FROM crsql_changes")[0]
    return int(count)


@dataclass(frozen=True, slots=True)
class Source:
    """A sender's database built once per invocation and copied for each sync."""

    path: Path
    rows: int
    change_rows: int


def measure_file_copy(source: Path, target: Path) -> float:
    """MB/s of a plain copy of the database file (then fsync), on the same disk."""
    started = time.perf_counter()
    shutil.copyfile(source, target)
    descriptor = os.open(target, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    seconds = time.perf_counter() - started
    size = target.stat().st_size
    target.unlink()
    return size / 1e6 / seconds


def copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def measure_apply_limit(source: Path, target: Path) -> float:
    """Change rows/s of applying the source's changes into a fresh database.

    The target is made by Store, as the receiver's is (same schema, same
    indexes); then, on a plain connection, one transaction: the changes are
    read in chunks of 50,000 outside the timed part, and each chunk goes in
    with ``executemany`` ``INSERT INTO crsql_changes``.
    """
    with Store(target) as store:
        store.execute(SCHEMA)
        store.make_crr(TABLE)
    src, dst = connect(source), connect(target)
    try:
        reader = src.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM crsql_changes ORDER BY db_version, seq"
        )
        insert = f"INSERT INTO crsql_changes ({_CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        total, elapsed = 0, 0.0
        started = time.perf_counter()
        dst.execute("BEGIN")
        elapsed += time.perf_counter() - started
        while chunk := reader.fetchmany(_APPLY_CHUNK):
            started = time.perf_counter()
            dst.executemany(insert, chunk)
            elapsed += time.perf_counter() - started
            total += len(chunk)
        started = time.perf_counter()
        dst.execute("COMMIT")
        elapsed += time.perf_counter() - started
        (applied,) = dst.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    finally:
        disconnect(src)
        disconnect(dst)
        remove_database(target)
    if applied * 2 != total:
        raise BenchError(f"apply_limit: {applied} rows from {total} change rows")
    return total / elapsed


def measure_write_overhead(folder: Path, rows: int) -> tuple[float, float]:
    """(plain rows/s, CRR rows/s): the same executemany insert, one transaction each."""
    data = [(i, f"name-{i}", (i * 7919) % 1_000_003) for i in range(1, rows + 1)]
    rates: list[float] = []
    for crr in (False, True):
        path = folder / f"write-{'crr' if crr else 'plain'}.db"
        conn = connect(path)
        try:
            conn.execute(SCHEMA)
            if crr:
                conn.execute("SELECT crsql_as_crr(?)", (TABLE,))
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO {TABLE} (id, name, score) VALUES (?, ?, ?)", data)
            conn.execute("COMMIT")
            rates.append(rows / (time.perf_counter() - started))
        finally:
            disconnect(conn)
            remove_database(path)
    return rates[0], rates[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- the runner --------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.runs.setdefault(key, []).append(value)

    def fail(self, keys: Sequence[str], error: str) -> None:
        for key in keys:
            self.errors.setdefault(key, []).append(error)

    def median(self, key: str) -> float | None:
        values = self.runs.get(key)
        return statistics.median(values) if values else None


class Bench:
    """Runs the selected benchmarks ``mode.runs`` times in ``workdir``."""

    def __init__(
        self, mode: Mode, workdir: Path, selected: Sequence[str], node_args: Sequence[str]
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.selected = selected
        self.node_args = list(node_args)
        self.results = Results()
        self.source = Source(workdir / "source.db", mode.rows, 0)
        self.wait_source = self.source
        self.big_txn_source = Source(workdir / "big-txn-source.db", mode.big_txn_rows, 0)
        self.boot_sources: dict[str, Source] = {
            "bootstrap": Source(workdir / "boot-source.db", mode.bootstrap_rows, 0),
            "bootstrap_1m": Source(workdir / "boot-1m-source.db", mode.bootstrap_1m_rows, 0),
        }
        self._keys: dict[str, tuple[Path, Path]] = {}

    # setup

    def _identities(self, names: Sequence[str]) -> dict[str, tuple[Path, Path]]:
        """Key and trust files for ``names``, each trusting all the others."""
        folder = self.workdir / "keys"
        folder.mkdir(exist_ok=True)
        paths = {n: (folder / f"{n}.key", folder / f"{n}.trust.json") for n in names}
        ids = {n: Identity.load_or_create(key).peer_id for n, (key, _) in paths.items()}
        for name, (_, trust_path) in paths.items():
            trust = TrustStore.load(trust_path)
            for other, peer_id in ids.items():
                if other != name:
                    trust.add(peer_id, other)
        return paths

    def _build(
        self, source: Source, per_transaction: int = ROWS_PER_TRANSACTION, *, wide: bool = False
    ) -> Source:
        started = time.perf_counter()
        built = replace(
            source, change_rows=build_source(source.path, source.rows, per_transaction, wide=wide)
        )
        err.print(
            f"source {source.path.name}: {built.rows:,} rows = {built.change_rows:,} change "
            f"rows, {per_transaction:,} per transaction, in {time.perf_counter() - started:.1f} s"
        )
        return built

    def prepare(self) -> None:
        needs_source = any(
            g == "apply_limit" or g.startswith("initial_sync") for g in self.selected
        )
        if needs_source:
            self.source = self._build(self.source)
        if "write_wait" in self.selected:
            if needs_source and self.mode.wait_rows == self.mode.rows:
                self.wait_source = self.source
            else:
                self.wait_source = self._build(
                    Source(self.workdir / "wait-source.db", self.mode.wait_rows, 0)
                )
            self.big_txn_source = self._build(self.big_txn_source, self.mode.big_txn_rows)
        for group, source in self.boot_sources.items():
            if group in self.selected and source.rows:
                self.boot_sources[group] = self._build(source, wide=True)
        self._keys = self._identities(["sender", "receiver"])

    async def run(self) -> Results:
        self.prepare()
        for rep in range(self.mode.runs):
            for group in self.selected:
                started = time.perf_counter()
                try:
                    await self._run_one(group, rep)
                except BenchError as exc:
                    self.results.fail(GROUPS[group], str(exc))
                    err.print(f"[red]run {rep + 1} {group}: {exc}[/red]")
                    continue
                shown = ", ".join(
                    f"{k}={self.results.runs[k][-1]:,.4g}"
                    for k in GROUPS[group]
                    if k in self.results.runs
                )
                err.print(
                    f"run {rep + 1}/{self.mode.runs} {group}: {shown} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
        return self.results

    async def _run_one(self, group: str, rep: int) -> None:
        r = self.results
        if group == "apply_limit":
            target = self.workdir / "apply.db"
            r.add(
                "apply_limit",
                await asyncio.to_thread(measure_apply_limit, self.source.path, target),
            )
        elif group.startswith("initial_sync_"):
            transport = group.removeprefix("initial_sync_")
            outcome = await self.initial_sync(transport, rep, self.source)
            rate = outcome["change_rows"] / outcome["seconds"]
            r.add(group, rate)
            r.add(f"{group}_receiver_busy", outcome["cpu_s"] / outcome["seconds"])
            if "sender_cpu_s" in outcome:
                r.add(f"{group}_sender_busy", outcome["sender_cpu_s"] / outcome["seconds"])
            limits = r.runs.get("apply_limit", [])
            if len(limits) == rep + 1:
                r.add(f"{group}_ratio", rate / limits[rep])
            if transport == "tcp":
                r.add("peak_rss_mb", outcome["peak_rss_mb"])
        elif group == "peak_rss_mb":
            pass  # measured by initial_sync_tcp
        elif group == "live_latency":
            latencies = await self.live_latency(rep)
            r.add("live_latency_p50_ms", percentile(latencies, 0.50))
            r.add("live_latency_p99_ms", percentile(latencies, 0.99))
        elif group == "relay_latency":
            latencies = await self.relay_latency(rep)
            r.add("relay_latency_p99_ms", percentile(latencies, 0.99))
            r.add("relay_latency_p50_ms", percentile(latencies, 0.50))
        elif group == "write_overhead":
            plain, crr = await asyncio.to_thread(
                measure_write_overhead, self.workdir, self.mode.write_rows
            )
            r.add("write_overhead", plain / crr)
            r.add("write_plain_rows_s", plain)
            r.add("write_crr_rows_s", crr)
        elif group == "mesh_converge_s":
            outcome = await self.mesh(rep)
            r.add("mesh_converge_s", outcome["seconds"])
            r.add("mesh_writes_issued_s", outcome["writes_issued_s"])
            r.add("mesh_busy", outcome["cpu_s"] / outcome["seconds"])
        elif group == "write_wait":
            await self._write_wait(rep)
        elif group in self.boot_sources:
            await self._bootstrap(group, rep)
        else:  # pragma: no cover - GROUPS and this dispatch go together
            raise AssertionError(group)

    # the benchmarks that run children

    async def _write_wait(self, rep: int) -> None:
        """Both write_wait catch-ups; a failed big-transaction one fails only its figure."""
        r = self.results
        for source, prefix in (
            (self.wait_source, "write_wait"),
            (self.big_txn_source, "write_wait_big_txn"),
        ):
            try:
                outcome = await self.initial_sync(
                    "tcp",
                    rep,
                    source,
                    ["--app-write-interval", str(APP_WRITE_INTERVAL)],
                    f"{prefix}-{rep}",
                )
                waits: list[float] = outcome.get("write_waits_ms") or []
                if not waits:
                    raise BenchError(f"{prefix}: no app write finished during the catch-up")
            except BenchError as exc:
                if prefix == "write_wait":
                    raise
                r.fail(("write_wait_big_txn_max_ms",), str(exc))
                err.print(f"[red]run {rep + 1} {prefix}: {exc}[/red]")
                continue
            r.add(f"{prefix}_p50_ms", percentile(waits, 0.50))
            r.add(f"{prefix}_p99_ms", percentile(waits, 0.99))
            r.add(f"{prefix}_max_ms", max(waits))
            r.add(f"{prefix}_writes", len(waits))
            r.add(f"{prefix}_catchup_s", outcome["seconds"])

    async def _bootstrap(self, group: str, rep: int) -> None:
        """A change replay, then a snapshot bootstrap, of the same source."""
        r = self.results
        source = self.boot_sources[group]
        if not source.rows:
            raise BenchError(f"{group}: full mode only")
        replay = await self.initial_sync(
            "websocket", rep, source, ["--wide"], f"{group}-replay-{rep}"
        )
        boot = await self.initial_sync(
            "websocket", rep, source, ["--wide", "--bootstrap"], f"{group}-boot-{rep}"
        )
        r.add(f"{group}_ratio", replay["seconds"] / boot["seconds"])
        r.add(f"{group}_replay_s", replay["seconds"])
        r.add(f"{group}_s", boot["seconds"])
        r.add(f"{group}_mb_s", boot["snapshot_bytes"] / 1e6 / boot["seconds"])
        r.add(f"{group}_peak_rss_mb", boot["peak_rss_mb"])
        r.add(f"{group}_replay_peak_rss_mb", replay["peak_rss_mb"])
        if group == "bootstrap":
            copied = self.workdir / "file-copy.db"
            r.add("file_copy_mb_s", await asyncio.to_thread(measure_file_copy, source.path, copied))

    def _sync_timeout(self, change_rows: int) -> float:
        return 60.0 + change_rows / 5_000

    async def initial_sync(
        self,
        transport: str,
        rep: int,
        source: Source,
        catchup_args: Sequence[str] = (),
        name: str = "",
    ) -> dict[str, Any]:
        """One catch-up of a fresh peer from a copy of ``source``; the catchup
        role's result line. ``catchup_args`` go to the receiver only."""
        folder = self.workdir / (name or f"sync-{transport}-{rep}")
        folder.mkdir()
        sender_db, receiver_db = folder / "sender.db", folder / "receiver.db"
        copy_database(source.path, sender_db)
        timeout = self._sync_timeout(source.change_rows)
        common = [*self.node_args, "--transport", transport, "--timeout", str(timeout)]
        expect = ["--expect", str(source.change_rows)]
        try:
            if transport == "memory":
                args = ["--source", str(sender_db), "--db", str(receiver_db), *expect]
                async with child(f"memory-sync-{rep}", folder, "memory-sync", *common, *args) as c:
                    outcome = await c.read(timeout + 30)
            else:
                key, trust = self._keys["sender"]
                serve = ["--db", str(sender_db), "--key", str(key), "--trust", str(trust)]
                async with child(f"serve-{transport}-{rep}", folder, "serve", *common, *serve) as s:
                    address = (await s.read(60))["address"]
                    sender_cpu = cpu_seconds(s.process.pid)
                    key, trust = self._keys["receiver"]
                    catchup = [
                        *("--db", str(receiver_db), "--key", str(key), "--trust", str(trust)),
                        *("--connect", address, *expect, *catchup_args),
                    ]
                    label = f"catchup-{transport}-{rep}"
                    async with child(label, folder, "catchup", *common, *catchup) as c:
                        outcome = await c.read(timeout + 30)
                    outcome["sender_cpu_s"] = cpu_seconds(s.process.pid) - sender_cpu
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if outcome["rows"] != source.rows:
            raise BenchError(f"{transport}: {outcome['rows']} rows arrived, not {source.rows}")
        return outcome

    def _latency_args(self) -> list[str]:
        mode = self.mode
        timeout = 30.0 + 3 * mode.samples * mode.interval
        return [
            *("--samples", str(mode.samples), "--interval", str(mode.interval)),
            *("--timeout", str(timeout)),
        ]

    async def live_latency(self, rep: int) -> list[float]:
        folder = self.workdir / f"live-{rep}"
        folder.mkdir()
        args = self._latency_args()
        within = 60.0 + 3 * self.mode.samples * self.mode.interval
        try:
            key, trust = self._keys["receiver"]
            reader = ["--db", str(folder / "reader.db"), "--key", str(key), "--trust", str(trust)]
            async with child(f"live-reader-{rep}", folder, "live-reader", *args, *reader) as r:
                address = (await r.read(60))["address"]
                key, trust = self._keys["sender"]
                writer = [
                    *("--db", str(folder / "writer.db"), "--key", str(key)),
                    *("--trust", str(trust), "--connect", address),
                ]
                async with child(f"live-writer-{rep}", folder, "live-writer", *args, *writer):
                    latencies: list[float] = (await r.read(within))["latencies_ms"]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return latencies

    async def relay_latency(self, rep: int) -> list[float]:
        folder = self.workdir / f"relay-{rep}"
        folder.mkdir()
        timeout = 30.0 + self.mode.samples * (0.2 + self.mode.interval)  # one in flight
        within = timeout + 30.0
        try:
            args = [
                *("--samples", str(self.mode.samples), "--interval", str(self.mode.interval)),
                *("--timeout", str(timeout), "--dir", str(folder), "--peers", "5"),
            ]
            async with child(f"relay-{rep}", folder, "relay", *args) as c:
                latencies: list[float] = (await c.read(within))["latencies_ms"]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return latencies

    async def mesh(self, rep: int) -> dict[str, Any]:
        folder = self.workdir / f"mesh-{rep}"
        folder.mkdir()
        timeout = 60.0 + self.mode.mesh_writes / 25
        try:
            args = [
                *("--dir", str(folder), "--peers", "20", "--degree", "4"),
                *("--writes", str(self.mode.mesh_writes), "--keys", "1000"),
                *("--seed", str(rep + 1), "--timeout", str(timeout)),
            ]
            async with child(f"mesh-{rep}", folder, "mesh", *args) as c:
                outcome = await c.read(timeout + 60)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return outcome


# -- reporting ---------------------------------------------------------------------


def verdict(key: str, value: float | None) -> tuple[str, str]:
    """(target text, PASS/MISS/-)."""
    if key not in TARGETS:
        return "", ""
    op, bound = TARGETS[key]
    if value is None:
        return f"{op} {bound:g}", "MISS"
    ok = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}", "PASS" if ok else "MISS"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def whole(value: float | None) -> str:
    """A count (a median of counts may end in .5)."""
    return "-" if value is None else f"{value:,.{0 if value == int(value) else 1}f}"


def busy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def notes_for(key: str, mode: Mode, results: Results) -> str:
    if key.startswith("bootstrap"):
        group = "bootstrap_1m" if key.startswith("bootstrap_1m") else "bootstrap"
        rows = mode.bootstrap_1m_rows if group == "bootstrap_1m" else mode.bootstrap_rows
        return (
            f"{rows:,} rows of 4 columns; WebSocket+TLS, separate processes; replay "
            f"{fmt(results.median(f'{group}_replay_s'))} s, bootstrap "
            f"{fmt(results.median(f'{group}_s'))} s; receiver peak RSS "
            f"{fmt(results.median(f'{group}_peak_rss_mb'))} MB (replay "
            f"{fmt(results.median(f'{group}_replay_peak_rss_mb'))} MB)"
        )
    if key == "file_copy_mb_s":
        return "plain copy + fsync of the bootstrap source file, same disk"
    if key == "apply_limit" or key.endswith("_ratio"):
        return f"{mode.rows:,} rows"
    if key.startswith("initial_sync_"):
        receiver = busy(results.median(f"{key}_receiver_busy"))
        if key == "initial_sync_memory":
            return f"{mode.rows:,} rows; both peers in one child process (CPU {receiver})"
        sender = busy(results.median(f"{key}_sender_busy"))
        return (
            f"{mode.rows:,} rows; TLS; separate processes "
            f"(CPU: receiver {receiver}, sender {sender})"
        )
    if key.startswith("live_latency"):
        rate = 1 / mode.interval
        return (
            f"{mode.samples} samples/run, {rate:.0f} writes/s; TCP+TLS; "
            "writer and reader in separate processes"
        )
    if key == "relay_latency_p99_ms":
        p50 = fmt(results.median("relay_latency_p50_ms"))
        return (
            f"{mode.samples} samples/run, one in flight; line of 5 peers in one process, "
            f"TCP+TLS loopback; p50 {p50} ms"
        )
    if key == "peak_rss_mb":
        return f"receiver of initial_sync_tcp, {mode.rows:,} rows (target is for 1,000,000)"
    if key == "write_overhead":
        plain = results.median("write_plain_rows_s")
        crr = results.median("write_crr_rows_s")
        return f"plain {fmt(plain)} rows/s, CRR {fmt(crr)} rows/s; {mode.write_rows:,} rows"
    if key == "write_wait_p99_ms":
        return (
            f"p50 {fmt(results.median('write_wait_p50_ms'))} ms, "
            f"max {fmt(results.median('write_wait_max_ms'))} ms; "
            f"{whole(results.median('write_wait_writes'))} app writes (plain table, one every "
            f"{APP_WRITE_INTERVAL * 1e3:.0f} ms, open loop) during a {mode.wait_rows:,}-row "
            f"catch-up of {fmt(results.median('write_wait_catchup_s'))} s; TCP+TLS, "
            "separate processes"
        )
    if key == "write_wait_big_txn_max_ms":
        return (
            f"the same, the source one {mode.big_txn_rows:,}-row transaction (applied whole, "
            f"so a write waits for all of it); p50 "
            f"{fmt(results.median('write_wait_big_txn_p50_ms'))} ms, p99 "
            f"{fmt(results.median('write_wait_big_txn_p99_ms'))} ms; "
            f"{whole(results.median('write_wait_big_txn_writes'))} writes; catch-up "
            f"{fmt(results.median('write_wait_big_txn_catchup_s'))} s"
        )
    if key == "mesh_converge_s":
        issued = fmt(results.median("mesh_writes_issued_s"))
        cpu = busy(results.median("mesh_busy"))
        return (
            f"20 peers, mean degree 4, one process, memory transport, {mode.mesh_writes:,} "
            f"writes (all issued after {issued} s; CPU {cpu})"
        )
    return ""


def report(
    results: Results,
    mode: Mode,
    keys: Sequence[str],
    elapsed: float,
    load: tuple[float, float, float],
) -> dict[str, Any]:
    """Print the table (stdout) and return the JSON object of medians."""
    table = Table(
        title=f"crpeer benchmarks — {mode.name} mode, median of {mode.runs} run(s)",
        caption=(
            f"{elapsed:.0f} s in all; load average {load[0]:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end; targets are for full mode"
        ),
    )
    for column in ("figure", "median", "unit", "runs", "target", "", "notes"):
        table.add_column(column, justify="right" if column in ("median", "runs") else "left")
    out: dict[str, Any] = {}
    for key in keys:
        value = results.median(key)
        target, mark = verdict(key, value)
        runs = " / ".join(fmt(v) for v in results.runs.get(key, []))
        note = notes_for(key, mode, results)
        if key in results.errors:
            note = f"{note}; FAILED: {results.errors[key][0]}"
        colour = {"PASS": "green", "MISS": "red"}.get(mark, "")
        table.add_row(
            key,
            fmt(value),
            UNITS.get(key, ""),
            runs,
            target,
            f"[{colour}]{mark}[/{colour}]" if colour else mark,
            note,
        )
        out[key] = None if value is None else round(value, 3 if value < 100 else 1)
    width = None if sys.stdout.isatty() else 200
    Console(width=width, highlight=False).print(table)
    return out


# -- command line ------------------------------------------------------------------


def selection(only: str | None) -> list[str]:
    """Benchmarks to run, in GROUPS order, with what their figures need."""
    by_key = {key: group for group, keys in GROUPS.items() for key in keys}
    wanted: set[str] = set()
    for token in (only or ",".join(GROUPS)).split(","):
        token = token.strip()
        if not token:
            continue
        if token in GROUPS:
            wanted.add(token)
        elif token in by_key:
            wanted.add(by_key[token])
        else:
            names = ", ".join([*GROUPS, *(k for k in by_key if k not in GROUPS)])
            raise argparse.ArgumentTypeError(f"unknown benchmark {token!r}; known: {names}")
    for group in list(wanted):
        wanted.update(NEEDS.get(group, ()))
    return [group for group in GROUPS if group in wanted]


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Mode, list[str]]:
    parser = argparse.ArgumentParser(
        description="crpeer benchmarks against the hardware limit (cr-sqlite's apply rate)."
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    parser.add_argument("--only", metavar="KEY,...", help="run a subset (benchmarks or JSON keys)")
    parser.add_argument("--runs", type=int, help="repetitions (default: 3 full, 1 quick)")
    parser.add_argument("--rows", type=int, help="rows the initial-sync sender holds")
    parser.add_argument("--samples", type=int, help="latency samples per run")
    parser.add_argument("--mesh-writes", type=int, help="writes in mesh_converge_s")
    parser.add_argument("--batch-rows", type=int, help="Limits.max_batch_rows of the sync peers")
    parser.add_argument("--window", type=int, help="Limits.window of the sync peers")
    parser.add_argument(
        "--poll-interval", type=float, help="Peer poll_interval (s) of the sync peers"
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    overrides: Mapping[str, Any] = {
        "runs": args.runs,
        "rows": args.rows,
        "samples": args.samples,
        "mesh_writes": args.mesh_writes,
    }
    for name, value in overrides.items():
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1")
            mode = replace(mode, **{name: value})
    try:
        groups = selection(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not mode.bootstrap_1m_rows and "bootstrap_1m" in groups:
        if args.only:
            parser.error("bootstrap_1m runs in full mode only")
        groups.remove("bootstrap_1m")
    return args, mode, groups


async def run(mode: Mode, groups: Sequence[str], node_args: Sequence[str]) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    started, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="crpeer-bench-") as tmp:
        results = await Bench(mode, Path(tmp), groups, node_args).run()
    keys = [key for group in groups for key in GROUPS[group]]
    return report(results, mode, keys, time.perf_counter() - started, load)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    args, mode, groups = parse(sys.argv[1:] if argv is None else argv)
    node_args: list[str] = []
    if args.batch_rows:
        node_args += ["--batch-rows", str(args.batch_rows)]
    if args.window:
        node_args += ["--window", str(args.window)]
    if args.poll_interval:
        node_args += ["--poll-interval", str(args.poll_interval)]
    err.print(f"crpeer bench: {mode.name} mode, {mode.runs} run(s): {', '.join(groups)}")
    try:
        figures = asyncio.run(run(mode, groups, node_args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted: children stopped, temporary files removed")
        return 130
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
