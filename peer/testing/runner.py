"""Run a plan on a cluster driver, keep the oracle, sample lag, give the verdict.

:func:`run_async` is the one entry point; :func:`run` wraps it for code
without an event loop. Both return a :class:`~peer.testing.report.Report`
(they raise only for a broken harness or bad arguments, never because the
cluster diverged: that is ``report.converged``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from peer.errors import ConfigError, CrpeerError
from peer.store import ApplyResult, Change, Cursor, Store
from peer.testing.database import migrate_store, open_prepared, table_digests
from peer.testing.driver import ClusterDriver, HarnessError
from peer.testing.migrations import Migrate
from peer.testing.plan import MARK_SQL, FaultStep, Plan, WriteStep, make_plan
from peer.testing.report import Report, lag_of, union_of
from peer.testing.scenario import (
    ClockSkew,
    Crash,
    Join,
    LinkFault,
    Partition,
    Scenario,
    Schema,
)
from transports.memory import LinkFaults

__all__ = ["Mode", "Progress", "ProgressCallback", "run", "run_async"]

Mode = Literal["inproc", "process"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: ``phase`` is ``start``, ``run`` (``elapsed`` of
    ``total`` = the scenario's duration), ``converge`` (``elapsed`` of
    ``total`` = the convergence timeout) or ``done``."""

    phase: str
    elapsed: float
    total: float
    writes: int
    faults: int


ProgressCallback = Callable[[Progress], None]


def run(
    scenario: Scenario,
    *,
    mode: Mode = "inproc",
    directory: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Run ``scenario`` on a new event loop; see :func:`run_async`."""
    return asyncio.run(run_async(scenario, mode=mode, directory=directory, progress=progress))


async def run_async(
    scenario: Scenario,
    *,
    mode: Mode = "inproc",
    directory: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Run ``scenario`` in ``mode`` and return its report.

    Databases go in ``directory`` (kept afterwards, for inspection) or in a
    temporary one (removed). ``progress`` is called on the event loop a few
    times a second. Raises ConfigError for a bad mode, HarnessError when the
    harness cannot run the cluster. Every peer, task, thread and process is
    gone when it returns or raises.
    """
    if mode not in ("inproc", "process"):
        raise ConfigError(f"mode must be 'inproc' or 'process', not {mode!r}")
    plan = make_plan(scenario)
    temporary = None
    if directory is None:
        temporary = tempfile.TemporaryDirectory(prefix="crpeer-harness-")
        path = Path(temporary.name)
    else:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
    try:
        driver: ClusterDriver
        if mode == "inproc":
            from peer.testing.inproc import InProcessDriver

            driver = InProcessDriver(scenario, path)
        else:
            from peer.testing.process import ProcessDriver

            driver = ProcessDriver(scenario, path)
        return await _Run(scenario, plan, driver, progress).run()
    finally:
        if temporary is not None:
            temporary.cleanup()


class _Oracle:
    """The store that merges every committed write's changes, in commit order,
    on a thread of its own (so that a busy cluster does not slow it, nor it
    the event loop)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-oracle")
        self._store: Store | None = None
        self._pending: list[asyncio.Future[ApplyResult]] = []

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, schema: Schema, version: int) -> None:
        """The oracle is at ``version`` (the one every peer ends at) from the
        start: it merges what every peer writes, at any version."""
        self._store = await self._call(open_prepared, ":memory:", schema)
        await self._call(migrate_store, self._store, schema, version)

    def apply(self, changes: list[Change]) -> None:
        """Queue a merge; :meth:`settle` reports a failed one."""
        assert self._store is not None
        loop = asyncio.get_running_loop()
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(loop.run_in_executor(self._pool, self._store.apply, changes))

    async def settle(self) -> None:
        """Wait for every queued merge; raise the first failure."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)

    async def cursor(self) -> Cursor:
        assert self._store is not None
        return await self._call(self._store.cursor)

    async def digests(self) -> dict[str, str]:
        assert self._store is not None
        return await self._call(table_digests, self._store)

    async def close(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending, return_exceptions=True)
        if self._store is not None:
            await self._call(self._store.close)
        self._pool.shutdown(wait=True)


async def _stop(task: asyncio.Task[None], running: asyncio.Event) -> None:
    """Stop a loop that runs while ``running`` is set, and wait for it.

    Cancelling alone is not enough: on Python 3.11, ``asyncio.wait_for``
    (which a driver's request may be awaiting) drops a cancellation that
    arrives just as its answer does, and the loop would go on for good. The
    cleared event ends it at its next turn whatever happened to the
    cancellation."""
    running.clear()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Run:
    def __init__(
        self,
        scenario: Scenario,
        plan: Plan,
        driver: ClusterDriver,
        progress: ProgressCallback | None,
    ) -> None:
        self.scenario, self.plan, self.driver = scenario, plan, driver
        self.names = scenario.cluster.names
        self.progress = progress
        self.report = Report(
            mode=driver.mode,
            seed=scenario.seed,
            peers=scenario.cluster.peers,
            topology=scenario.cluster.topology,
            duration=scenario.duration,
            plan_digest=plan.digest(),
            lag={name: [] for name in self.names},
        )
        self.write_log = hashlib.sha256()
        self.sites: dict[int, bytes] = {}
        self.cursors: dict[int, Cursor] = {}
        self.marks: dict[bytes, int] = {}
        self.versions = [0] * scenario.cluster.peers
        """Each peer's schema version (migrations done so far)."""
        self.partitions: dict[int, Partition] = {}
        self.link_faults: dict[int, LinkFault] = {}
        self.phase, self.phase_total = "start", 0.0
        self.t0 = self.phase_t0 = 0.0

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(
                Progress(
                    self.phase,
                    min(self._now() - self.phase_t0, self.phase_total),
                    self.phase_total,
                    self.report.writes,
                    self.report.faults_injected,
                )
            )

    def _enter(self, phase: str, total: float) -> None:
        self.phase, self.phase_total, self.phase_t0 = phase, total, self._now()
        self._tick()

    async def run(self) -> Report:
        started = time.monotonic()
        oracle = _Oracle()
        sampler: asyncio.Task[None] | None = None
        sampling = asyncio.Event()
        sampling.set()
        try:
            final = max(
                (f.version for f in self.scenario.faults if isinstance(f, Migrate)), default=0
            )
            await oracle.open(self.scenario.cluster.schema, final)
            self._enter("start", 0.0)
            await self.driver.start(self.plan)
            self.t0 = self._now()
            self._enter("run", self.scenario.duration)
            sampler = asyncio.create_task(
                self._sample_forever(oracle, sampling), name="harness-sampler"
            )
            for step in self.plan.steps:
                delay = self.t0 + step.at - self._now()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.report.writes_late = max(self.report.writes_late, -delay)
                if isinstance(step, WriteStep):
                    await self._write(step, oracle)
                else:
                    await self._fault(step)
            self._enter("converge", self.scenario.converge_timeout)
            converged_at = await self._converge(oracle)
            await _stop(sampler, sampling)
            await self._sample(oracle)
            if converged_at is not None:
                self.report.time_to_converge = round(converged_at - self.phase_t0, 3)
            await self._verdict(oracle, converged_at is not None)
        finally:
            if sampler is not None:
                await _stop(sampler, sampling)
            try:
                await self.driver.close()
            finally:
                await oracle.close()
        self.report.traffic = self.driver.traffic()
        self.report.bytes_sent = self.report.traffic.get("bytes_sent", 0)
        self.report.sessions = self.driver.sessions.to_dict()
        self.report.write_log_digest = self.write_log.hexdigest()
        self.report.elapsed = round(time.monotonic() - started, 3)
        self._enter("done", 0.0)
        return self.report

    async def _write(self, step: WriteStep, oracle: _Oracle) -> None:
        schema = self.scenario.cluster.schema
        sql = MARK_SQL if step.op == "mark" else schema.statement(step.op, self.versions[step.peer])
        entry = [step.peer, step.op, [list(p) for p in step.params]]
        self.write_log.update(json.dumps(entry).encode() + b"\n")
        try:
            changes = await self.driver.write(step.peer, sql, dict(step.params))
        except CrpeerError as exc:
            self.report.problems.append(f"write {step.op} on {self.names[step.peer]}: {exc}")
            return
        if changes:
            oracle.apply(changes)
            if step.op == "mark":
                site = changes[0][6]
                self.marks[site] = max(c[5] for c in changes)
        self.report.writes += 1
        ops = self.report.writes_by_op
        ops[step.op] = ops.get(step.op, 0) + 1

    async def _fault(self, step: FaultStep) -> None:
        fault = step.fault
        if step.start:
            self.report.faults_injected += 1
            kinds = self.report.faults_by_kind
            kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
        if isinstance(fault, Join):
            if step.start:
                await self.driver.restart(fault.peer)
        elif isinstance(fault, Crash):
            if step.start:
                await self.driver.kill(fault.peer)
            else:
                await self.driver.restart(fault.peer)
        elif isinstance(fault, Migrate):
            if step.start and fault.version > self.versions[fault.peer]:
                await self.driver.migrate(fault.peer, fault.version, fault.own_connection)
                self.versions[fault.peer] = fault.version
        elif isinstance(fault, ClockSkew):
            await self.driver.set_clock_rate(fault.peer, fault.rate if step.start else 1.0)
        elif isinstance(fault, Partition):
            if step.start:
                self.partitions[step.index] = fault
            else:
                self.partitions.pop(step.index, None)
            pairs: set[frozenset[int]] = set()
            for part in self.partitions.values():
                for i, group in enumerate(part.groups):
                    for other in part.groups[i + 1 :]:
                        pairs |= {frozenset((a, b)) for a in group for b in other}
            await self.driver.set_blocked(pairs)
        else:
            if step.start:
                self.link_faults[step.index] = fault
            else:
                self.link_faults.pop(step.index, None)
            count = self.scenario.cluster.peers
            links: dict[tuple[int, int], LinkFaults] = {}
            for index in sorted(self.link_faults):
                link_fault = self.link_faults[index]
                pairs_of = link_fault.links or tuple((a, b) for a in range(count) for b in range(a))
                for a, b in pairs_of:
                    links[min(a, b), max(a, b)] = link_fault.faults
            await self.driver.set_link_faults(links)

    async def _sample(self, oracle: _Oracle) -> None:
        up: set[int] = set()
        for index in range(len(self.names)):
            try:
                got = await self.driver.vector(index)
            except HarnessError:
                continue  # killed while it answered: down for this sample
            if got is not None:
                self.sites[index], self.cursors[index] = got
                up.add(index)
        union = union_of({str(i): c for i, c in self.cursors.items()}, await oracle.cursor())
        t = round(self._now() - self.t0, 3)
        for index, name in enumerate(self.names):
            lag = lag_of(self.sites[index], self.cursors[index], union) if index in up else None
            self.report.lag[name].append((t, lag))

    async def _sample_forever(self, oracle: _Oracle, sampling: asyncio.Event) -> None:
        """Sample until ``sampling`` is cleared (see :func:`_stop`)."""
        while sampling.is_set():
            await self._sample(oracle)
            self._tick()
            await asyncio.sleep(self.scenario.sample_interval)

    def _behind(self) -> dict[str, dict[str, int]]:
        """For each peer, the origins whose final mark it does not hold yet."""
        by_site = {site: self.names[i] for i, site in self.sites.items()}
        out: dict[str, dict[str, int]] = {}
        for index, name in enumerate(self.names):
            cursor, site = self.cursors.get(index, {}), self.sites.get(index)
            gaps = {
                by_site.get(origin, origin.hex()[:8]): version - cursor.get(origin, 0)
                for origin, version in self.marks.items()
                if origin != site and cursor.get(origin, 0) < version
            }
            if gaps:
                out[name] = gaps
        return out

    async def _converge(self, oracle: _Oracle) -> float | None:
        """Poll until every peer holds every final mark and all digests
        equal the oracle's; the loop time it happened, or None at the timeout."""
        deadline = self._now() + self.scenario.converge_timeout
        await oracle.settle()
        expected = self.report.oracle_digests = await oracle.digests()
        while True:
            vectors = [await self.driver.vector(i) for i in range(len(self.names))]
            for index, got in enumerate(vectors):
                if got is not None:
                    self.sites[index], self.cursors[index] = got
            if all(v is not None for v in vectors) and not self._behind():
                digests = [await self.driver.digests(i) for i in range(len(self.names))]
                if all(d == expected for d in digests):
                    return self._now()
            if self._now() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def _verdict(self, oracle: _Oracle, converged: bool) -> None:
        report = self.report
        report.behind = self._behind()
        for index, name in enumerate(self.names):
            digests = await self.driver.digests(index)
            report.digests[name] = digests or {}
            if digests is None:
                report.problems.append(f"{name} is down at the end")
            elif digests != report.oracle_digests:
                differ = sorted(
                    t for t in report.oracle_digests if digests.get(t) != report.oracle_digests[t]
                )
                report.problems.append(f"{name} differs from the oracle in {', '.join(differ)}")
        for name, gaps in report.behind.items():
            report.problems.append(f"{name} lacks the final versions of {', '.join(sorted(gaps))}")
        if not converged and not report.problems:
            report.problems.append("not converged within the timeout")
        report.converged = converged and not report.problems
