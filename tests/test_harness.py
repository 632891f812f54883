"""The multi-peer harness: plans replay, clusters converge through faults, the CLI.

Budget: the whole file runs in about 70 seconds on two cores. Every run is
bounded by its scenario (duration + converge_timeout); the process-mode run
kills and reaps its children in the driver's close().
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from peer.errors import ConfigError
from peer.protocol import Limits
from peer.store import Cursor, SqlValue, Store
from peer.testing import (
    LARGE_VALUES,
    LARGE_VALUES_LIMITS,
    ClusterSpec,
    Crash,
    Join,
    LinkFault,
    LinkFaults,
    Migrate,
    Partition,
    Report,
    Scenario,
    Schema,
    Workload,
    fault_preset,
    make_plan,
    migration_preset,
    run,
    run_async,
    topology_edges,
    value_preset,
)
from peer.testing.database import expand_write, sized_value, table_digests
from peer.testing.inproc import InProcessDriver
from peer.testing.runner import _Run

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "scripts" / "harness.py")]
REPORT_KEYS = {
    "converged",
    "mode",
    "seed",
    "peers",
    "topology",
    "duration",
    "elapsed",
    "time_to_converge",
    "writes",
    "writes_by_op",
    "writes_late",
    "faults_injected",
    "faults_by_kind",
    "bytes_sent",
    "traffic",
    "sessions",
    "digests",
    "oracle_digests",
    "behind",
    "problems",
    "plan_digest",
    "write_log_digest",
    "lag",
}


def scenario(
    peers: int,
    topology: str,
    faults: str | tuple[str, ...],
    seed: int,
    *,
    duration: float = 3.0,
    rate: float = 25.0,
    keys: int = 40,
    migrations: str = "none",
) -> Scenario:
    names = (faults,) if isinstance(faults, str) else faults
    chosen = tuple(
        fault
        for name in names
        for fault in fault_preset(name, peers=peers, duration=duration, seed=seed)
    ) + migration_preset(migrations, peers=peers, duration=duration, seed=seed)
    return Scenario(
        ClusterSpec(peers=peers, topology=topology, degree=2),  # type: ignore[arg-type]
        Workload(rate=rate, keys=keys),
        faults=chosen,
        seed=seed,
        duration=duration,
        converge_timeout=20.0,
    )


def assert_converged(report: Report) -> None:
    assert report.converged, report.problems
    assert not report.problems
    digests = list(report.digests.values())
    assert digests
    assert all(d == report.oracle_digests for d in digests)
    assert report.writes > 0
    assert report.time_to_converge is not None
    for name, samples in report.lag.items():
        assert samples, name
        assert samples[-1][1] == 0, (name, samples[-3:])


# -- the plan -----------------------------------------------------------------------


def test_the_same_seed_gives_the_same_plan_and_another_seed_does_not() -> None:
    first = make_plan(scenario(6, "random", "all", seed=5))
    again = make_plan(scenario(6, "random", "all", seed=5))
    other = make_plan(scenario(6, "random", "all", seed=6))
    assert first.to_dict() == again.to_dict()
    assert first.digest() == again.digest()
    assert first.digest() != other.digest()
    kinds = {type(step).__name__ for step in first.steps}
    assert kinds == {"WriteStep", "FaultStep"}
    assert [s.at for s in first.steps] == sorted(s.at for s in first.steps)


def test_plans_never_write_to_a_crashed_peer_and_end_with_one_mark_per_peer() -> None:
    crash = Crash(at=0.5, duration=1.5, peer=2)
    plan = make_plan(
        Scenario(ClusterSpec(peers=3), Workload(rate=200), faults=(crash,), seed=1, duration=3)
    )
    writes = list(plan.writes)
    assert not [w for w in writes if w.peer == 2 and 0.5 <= w.at < 2.0 and w.op != "mark"]
    assert sorted(w.peer for w in writes if w.op == "mark") == [0, 1, 2]
    assert all(w.op == "mark" for w in writes[-3:])


async def test_two_runs_with_one_seed_execute_the_same_writes_and_faults() -> None:
    runs = [await run_async(scenario(3, "mesh", ("lossy", "crashes"), seed=9, duration=1.5))]
    runs.append(await run_async(scenario(3, "mesh", ("lossy", "crashes"), seed=9, duration=1.5)))
    first, second = runs
    assert first.plan_digest == second.plan_digest
    assert first.write_log_digest == second.write_log_digest
    assert first.faults_by_kind == second.faults_by_kind
    assert first.writes == second.writes
    assert_converged(first)
    assert_converged(second)


@pytest.mark.parametrize("topology", ["mesh", "line", "ring", "star", "random"])
@pytest.mark.parametrize("count", [1, 2, 5, 10])
def test_every_topology_is_connected(topology: str, count: int) -> None:
    edges = topology_edges(count, topology, 2, seed=count)
    reached, frontier = {0}, [0]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == node and y not in reached:
                    reached.add(y)
                    frontier.append(y)
    assert reached == set(range(count))
    assert len({frozenset(e) for e in edges}) == len(edges)


@pytest.mark.parametrize(
    "bad",
    [
        {"faults": (Crash(at=4.0, duration=2.0, peer=0),)},
        {"faults": (Crash(at=0.0, duration=1.0, peer=7),)},
        {"faults": (Partition(at=0.0, duration=1.0, groups=((0, 1), (1, 2))),)},
        {"faults": (LinkFault(at=0.0, duration=1.0, faults=LinkFaults(), links=((0, 0),)),)},
        {"duration": 0.0},
        {"faults": (Migrate(at=1.0, peer=0, version=9),)},  # the schema has no version 9
        {"faults": (Migrate(at=1.0, peer=0, version=1),)},  # the others stay at 0
    ],
)
def test_bad_scenarios_are_refused_with_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Scenario(ClusterSpec(peers=3), **{"duration": 5.0, **bad})  # type: ignore[arg-type]


# -- in-process clusters --------------------------------------------------------------


def test_the_blocking_api_runs_a_custom_schema() -> None:
    schema = Schema(
        ddl=(
            "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY NOT NULL, v TEXT, hits INTEGER);"
            "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY NOT NULL, who TEXT)"
        ),
        crr_tables=("kv", "audit"),
        insert="INSERT INTO kv VALUES ('k' || :key, :text, :number) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        update="UPDATE kv SET hits = hits + 1 WHERE k = 'k' || :key",
        delete="DELETE FROM kv WHERE k = 'k' || :key",
    )
    report = run(
        Scenario(
            ClusterSpec(peers=3, topology="line", schema=schema),
            Workload(rate=30, keys=10),
            seed=8,
            duration=1.0,
            converge_timeout=20,
        )
    )
    assert_converged(report)
    assert set(report.oracle_digests) == {"kv", "audit", "harness_marks"}


@pytest.mark.parametrize(
    ("peers", "topology", "faults", "seed"),
    [
        (4, "mesh", "partitions", 1),
        (5, "random", "lossy", 2),
        (6, "line", "crashes", 3),
        (5, "ring", "all", 4),
    ],
)
async def test_small_clusters_converge_through_faults(
    peers: int, topology: str, faults: str, seed: int
) -> None:
    report = await run_async(scenario(peers, topology, faults, seed))
    assert_converged(report)
    assert report.faults_injected == len(fault_preset(faults, peers=peers, duration=3, seed=seed))
    assert report.bytes_sent > 0
    if faults in {"lossy", "all"}:
        assert report.traffic["frames_dropped"] > 0
        assert report.sessions["failed"] > 0


def test_migration_plans_replay_and_migrate_every_peer_one_at_a_time() -> None:
    first = make_plan(scenario(5, "random", "all", seed=21, migrations="rolling"))
    again = make_plan(scenario(5, "random", "all", seed=21, migrations="rolling"))
    other = make_plan(scenario(5, "random", "all", seed=22, migrations="rolling"))
    assert first.digest() == again.digest() != other.digest()
    steps = [s.to_dict() for s in first.steps]
    migrations = [s for s in steps if s.get("kind") == "migrate" and s["fault"] == "start"]
    # Two versions, each peer once per version, never two at one instant.
    assert sorted((m["peer"], m["version"]) for m in migrations) == [
        (p, v) for p in range(5) for v in (1, 2)
    ]
    assert len({m["at"] for m in migrations}) == len(migrations)
    assert {m["own_connection"] for m in migrations} == {True, False}
    line = migration_preset("line", peers=4, duration=3.0, seed=1)
    assert line[0].peer == 0
    assert all(m.at >= 0.6 * 3.0 for m in line[1:])


@pytest.mark.parametrize(
    ("peers", "topology", "faults", "migrations", "seed"),
    [
        (4, "random", "all", "rolling", 21),
        (4, "line", "all", "line", 22),
        (3, "line", "crashes", "line", 23),
    ],
)
async def test_clusters_converge_through_live_migrations(
    peers: int, topology: str, faults: str, migrations: str, seed: int
) -> None:
    report = await run_async(scenario(peers, topology, faults, seed, migrations=migrations))
    assert_converged(report)
    preset = migration_preset(migrations, peers=peers, duration=3.0, seed=seed)
    assert report.faults_by_kind["migrate"] == len(preset)
    assert not [p for p in report.problems if "write" in p]


async def test_ten_peers_converge_through_partitions_and_crashes() -> None:
    """The issue's bar: 10 in-process peers, partitions and kill/restart."""
    report = await run_async(
        scenario(10, "random", ("partitions", "crashes"), seed=10, duration=15, rate=25, keys=100)
    )
    assert_converged(report)
    assert report.faults_by_kind == {"partition": 2, "crash": 2}
    assert report.peers == 10


async def test_fresh_peers_joining_mid_run_under_faults_bootstrap_and_converge() -> None:
    """Bootstraps mixed into a run: two peers join late, fresh, during
    partitions and a crash; every catch-up of one row or more goes by snapshot."""
    faults = (
        *fault_preset("partitions", peers=5, duration=4.0, seed=31),
        Crash(at=1.6, duration=0.6, peer=0),
        Join(at=1.5, peer=3, quiet=0.8),
        Join(at=2.5, peer=4, quiet=0.8),
    )
    report = await run_async(
        Scenario(
            ClusterSpec(peers=5, topology="random", limits=Limits(snapshot_threshold=1)),
            Workload(rate=40, keys=50),
            faults=faults,
            seed=31,
            duration=4.0,
            converge_timeout=30.0,
        )
    )
    assert_converged(report)
    assert report.faults_by_kind["join"] == 2
    assert report.sessions["bootstrapped"] >= 1


def test_a_plan_writes_nothing_to_a_peer_before_it_joins() -> None:
    plan = make_plan(
        Scenario(
            ClusterSpec(peers=3), Workload(rate=50), faults=(Join(at=2.0, peer=1),), duration=3.0
        )
    )
    writes = [step for step in plan.writes if step.peer == 1]
    assert writes
    assert all(step.at >= 2.0 for step in writes)
    with pytest.raises(ConfigError):
        Scenario(ClusterSpec(peers=3), faults=(Crash(0.5, 0.5, 1), Join(at=2.0, peer=1)))


# -- large values ---------------------------------------------------------------------

KB, MB = 1024, 1024 * 1024


def large_scenario(peers: int, topology: str, faults: str, seed: int) -> Scenario:
    workload, limits = value_preset("large", Workload(rate=6.0, keys=40))
    return Scenario(
        ClusterSpec(peers=peers, topology=topology, degree=2, limits=limits),  # type: ignore[arg-type]
        workload,
        faults=fault_preset(faults, peers=peers, duration=3.0, seed=seed),
        seed=seed,
        duration=3.0,
        converge_timeout=30.0,
    )


def test_large_value_plans_replay_with_values_past_a_frame_in_one_and_many_row_writes() -> None:
    first = make_plan(large_scenario(4, "mesh", "all", seed=31))
    assert first.digest() == make_plan(large_scenario(4, "mesh", "all", seed=31)).digest()
    assert first.digest() != make_plan(large_scenario(4, "mesh", "all", seed=32)).digest()
    shapes = [dict(w.params) for w in first.writes if w.op != "mark"]
    sizes = [int(p["size"]) for p in shapes]  # type: ignore[arg-type]
    rows = [int(p.get("rows", 1)) for p in shapes]  # type: ignore[arg-type]
    low, high = LARGE_VALUES.value_bytes or (0, 0)
    assert all(low <= size <= high for size in sizes)
    assert max(sizes) > LARGE_VALUES_LIMITS.max_frame_bytes  # travels in PART frames
    assert 1 in rows
    assert max(rows) > 1
    assert all(
        n * size <= LARGE_VALUES.transaction_bytes for n, size in zip(rows, sizes, strict=True)
    )
    # A plain workload's plan carries no sizes: its seeds draw what they always drew.
    plain = make_plan(scenario(4, "mesh", "all", seed=31))
    assert not [w for w in plain.writes if {"size", "rows"} & dict(w.params).keys()]


def test_sized_writes_expand_to_exact_values_of_text_and_blobs() -> None:
    params: dict[str, SqlValue] = {
        "key": 5,
        "text": "p1#3:0badf00d",
        "number": 8,
        "author": "p1",
        "ts": 1,
    }
    one = expand_write({**params, "size": 300 * KB})
    assert len(one) == 1
    assert one == expand_write({**params, "size": 300 * KB})  # the same seed, the same value
    text = one[0]["text"]
    assert isinstance(text, str)
    assert abs(len(text.encode()) - 300 * KB) < 3 * KB
    assert {"é", "€", "\U0001d11e"} <= set(text)  # 2-, 3- and 4-byte UTF-8 characters
    many = expand_write({**params, "size": 2 * KB, "rows": 4})
    assert [row["key"] for row in many] == [5, 6, 7, 8]
    assert [type(row["text"]) for row in many] == [str, bytes, str, bytes]
    assert len({bytes(str(row["text"]), "utf-8") for row in many}) == 4
    assert all("size" not in row and "rows" not in row for row in many)
    assert expand_write(params) == [params]


def test_the_oracle_digest_tells_one_byte_and_text_from_blob_apart() -> None:
    value = sized_value("seed", 1 * MB, blob=True)
    assert isinstance(value, bytes)
    flipped = value[:-1] + bytes([value[-1] ^ 1])
    digests = []
    for body in (value, flipped, value.hex(), value):
        with Store(":memory:") as store:
            store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
            store.make_crr("notes")
            store.execute("INSERT INTO notes VALUES (1, ?)", (body,))
            digests.append(table_digests(store)["notes"])
    assert digests[0] == digests[3]
    assert len(set(digests)) == 3


async def test_large_values_converge_in_process_through_every_fault(tmp_path: Path) -> None:
    report = await run_async(large_scenario(4, "mesh", "all", seed=33), directory=tmp_path)
    assert_converged(report)
    assert report.faults_by_kind == {"partition": 2, "crash": 2, "link": 2, "skew": 2}
    with Store(tmp_path / "p3.db") as store:
        ((largest,),) = store.execute("SELECT max(length(CAST(body AS BLOB))) FROM notes")
        kinds = {kind for (kind,) in store.execute("SELECT DISTINCT typeof(body) FROM notes")}
    assert largest > LARGE_VALUES_LIMITS.max_frame_bytes
    assert {"text", "blob"} <= kinds


async def test_large_values_converge_over_tcp_through_a_sigkill(tmp_path: Path) -> None:
    report = await run_async(
        large_scenario(3, "line", "crashes", seed=34), mode="process", directory=tmp_path
    )
    assert_converged(report)
    assert report.traffic["restarts"] == 2
    with Store(tmp_path / "p0.db") as store:
        ((largest,),) = store.execute("SELECT max(length(CAST(body AS BLOB))) FROM notes")
    assert largest > LARGE_VALUES_LIMITS.max_frame_bytes


class _DriverDroppingCancels(InProcessDriver):
    """The real in-process driver, except that a cancellation arriving while
    it reads a peer's vector is dropped, as ``asyncio.wait_for`` does on
    Python 3.11 when the answer arrives at the same moment (a process-mode
    request awaits one)."""

    dropping = True

    async def vector(self, peer: int) -> tuple[bytes, Cursor] | None:
        try:
            await asyncio.sleep(0.05)  # a slow answer: the sampler is nearly always here
            return await super().vector(peer)
        except asyncio.CancelledError:
            if not self.dropping:
                raise
            return None


async def test_the_lag_sampler_stops_even_when_a_request_drops_its_cancellation(
    tmp_path: Path,
) -> None:
    chosen = replace(scenario(3, "mesh", "none", seed=35, duration=1.0), sample_interval=1e-4)
    driver = _DriverDroppingCancels(chosen, tmp_path)
    running = asyncio.ensure_future(_Run(chosen, make_plan(chosen), driver, None).run())
    await asyncio.wait({running}, timeout=30)
    if not running.done():  # the sampler never stopped: end the run, then fail
        driver.dropping = False
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        pytest.fail("the run did not end: its lag sampler ignored the stop")
    assert_converged(running.result())


# -- process mode ---------------------------------------------------------------------


async def test_three_processes_over_tcp_converge_after_a_sigkill_and_restart(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transports.tcp", reason="TcpTransport is not available yet")
    crash = Crash(at=1.0, duration=1.0, peer=1)
    report = await run_async(
        Scenario(
            ClusterSpec(peers=3, topology="mesh"),
            Workload(rate=20, keys=30),
            faults=(crash,),
            seed=12,
            duration=3.0,
            converge_timeout=30.0,
        ),
        mode="process",
        directory=tmp_path,
    )
    assert_converged(report)
    assert report.mode == "process"
    assert report.traffic["restarts"] == 1
    assert report.bytes_sent > 0
    assert (tmp_path / "p1.log").exists()


@pytest.mark.parametrize("victim", [0, 2], ids=["source", "joiner"])
async def test_a_process_joining_fresh_bootstraps_through_a_sigkill(
    tmp_path: Path, victim: int
) -> None:
    """SIGKILL of a snapshot's source or of the fresh peer around its
    bootstrap: the joiner ends unchanged or bootstrapped, never half (the
    oracle check), and a partial download is gone after its restart."""
    report = await run_async(
        Scenario(
            ClusterSpec(peers=3, topology="mesh", limits=Limits(snapshot_threshold=1)),
            Workload(rate=20, keys=30),
            faults=(Join(at=1.0, peer=2, quiet=1.5), Crash(at=1.05, duration=0.8, peer=victim)),
            seed=13,
            duration=3.0,
            converge_timeout=30.0,
        ),
        mode="process",
        directory=tmp_path,
    )
    assert_converged(report)
    assert report.sessions["bootstrapped"] >= 1
    assert not [p for p in os.listdir(tmp_path) if ".snapshot-" in p]


async def test_processes_in_a_line_converge_through_live_migrations(tmp_path: Path) -> None:
    report = await run_async(
        scenario(3, "line", "none", 24, migrations="line"), mode="process", directory=tmp_path
    )
    assert_converged(report)
    assert report.faults_by_kind["migrate"] == 3


# -- the CLI --------------------------------------------------------------------------


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cli_help() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for option in ("--peers", "--topology", "--mode", "--faults", "--seed", "--json", "--plot"):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "0"], "--peers"),
        (["--topology", "torus"], "--topology"),
        (["--faults", "meteor"], "--faults"),
        (["--duration", "-1"], "--duration"),
        (["--mode", "cloud"], "--mode"),
        (["--values", "huge"], "--values"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Error" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="has matplotlib")
def test_cli_plot_without_matplotlib_exits_2(tmp_path: Path) -> None:
    done = cli("--plot", str(tmp_path / "lag.png"))
    assert done.returncode == 2
    assert "matplotlib" in done.stderr


def test_cli_plan_only_prints_the_same_plan_for_the_same_seed() -> None:
    args = ["--plan-only", "--peers", "4", "--faults", "all", "--seed", "3", "--duration", "2"]
    first, second = cli(*args), cli(*args)
    assert first.returncode == second.returncode == 0
    assert json.loads(first.stdout) == json.loads(second.stdout)


def test_cli_values_large_plans_sized_writes() -> None:
    done = cli("--plan-only", "--values", "large", "--seed", "3", "--duration", "3")
    assert done.returncode == 0, done.stderr
    writes = [s for s in json.loads(done.stdout)["steps"] if s.get("write") not in (None, "mark")]
    assert writes
    assert all(s["params"]["size"] >= 1024 for s in writes)
    assert len(writes) < 40  # the large preset's rate: 6 writes/s


def test_cli_json_report_has_the_documented_keys() -> None:
    done = cli("--peers", "3", "--duration", "1.5", "--rate", "20", "--faults", "lossy", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == REPORT_KEYS
    assert report["converged"] is True
    assert report["peers"] == 3
    assert set(report["lag"]) == {"p0", "p1", "p2"}
    assert "verdict" in done.stderr
