"""Process mode: one OS process per peer, TCP on 127.0.0.1, real SIGKILL.

Each peer runs ``python -m peer.testing.node`` (see :mod:`peer.testing.node`
for its command protocol) with its database in the run's directory and its
log in ``p{i}.log`` beside it. Nodes start on port 0 and report the port;
the driver then tells each node whom to dial per the topology. A kill is
``os.kill(pid, SIGKILL)`` (the node may be anywhere, a merge transaction
included); a restart starts a new process on the same database file and the
same port, so the others' redials find it. Partitions and link faults are
commands to the nodes, which enforce them on their own channels.

Every child is killed and reaped by :meth:`ProcessDriver.close`, whatever
happened before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from peer.store import Change, Cursor, SqlValue
from peer.testing.database import (
    decode_changes,
    migrate_on_own_connection,
    migrations_to,
    prepare_database,
)
from peer.testing.driver import ClusterDriver, HarnessError, SessionCounts
from peer.testing.plan import Plan
from peer.testing.scenario import Join, Scenario
from transports.memory import LinkFaults

__all__ = ["ProcessDriver"]

_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
"""Seconds a node may take to start (Python start-up and imports included)."""
REQUEST_TIMEOUT = 20.0
"""Seconds a node may take to answer one command."""


class _Node:
    """One child process and its command channel."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path
        self.port = 0
        self.site_id = b""
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pipe: asyncio.ReadTransport | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Wire stdout to the dispatcher and wait for the ready line."""
        assert self.proc.stdout is not None
        lines = asyncio.StreamReader(limit=1 << 24)
        loop = asyncio.get_running_loop()
        self._pipe, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(lines), self.proc.stdout
        )
        self._reader = loop.create_task(self._dispatch(lines), name=f"harness-node-{self.name}")
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except TimeoutError:
            raise HarnessError(f"{self.name} did not start: {self.log_tail()}") from None
        self.port, self.site_id = int(ready["port"]), bytes.fromhex(ready["site_id"])

    async def _dispatch(self, lines: asyncio.StreamReader) -> None:
        try:
            while line := await lines.readline():
                message = json.loads(line)
                if message.get("event") == "ready" and not self._ready.done():
                    self._ready.set_result(message)
                    continue
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (ValueError, asyncio.LimitOverrunError) as exc:
            self._fail(f"{self.name} wrote a bad line: {exc!r}")
        finally:
            self._fail(f"{self.name} exited: {self.log_tail()}")

    def _fail(self, why: str) -> None:
        for future in [self._ready, *self._pending.values()]:
            if not future.done():
                future.set_exception(HarnessError(why))
        self._pending.clear()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command; its answer, or HarnessError (error, exit, timeout)."""
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"id": self._next_id, "op": op, **fields}).encode() + b"\n")
            stdin.flush()
            answer = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except (OSError, ValueError) as exc:
            self._pending.pop(self._next_id, None)
            raise HarnessError(f"{self.name} cannot take commands: {exc!r}") from exc
        except TimeoutError:
            self._pending.pop(self._next_id, None)
            raise HarnessError(f"{self.name} did not answer {op!r} in time") from None
        if not answer.get("ok"):
            raise HarnessError(f"{self.name} failed {op!r}: {answer.get('error')}")
        return answer

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def finish(self, *, kill: bool, grace: float = 5.0) -> None:
        """Stop the process (SIGKILL now, or ``stop`` then SIGKILL after
        ``grace``), reap it, release the pipes. Never raises HarnessError."""
        if not kill and self.proc.poll() is None:
            with contextlib.suppress(HarnessError):
                await self.request("stop")
            for _ in range(int(grace / 0.02)):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.02)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)  # immediate: the process is dead or exiting
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pipe is not None:
            self._pipe.close()
        elif self.proc.stdout is not None:
            self.proc.stdout.close()
        self._fail(f"{self.name} is stopped")


class ProcessDriver(ClusterDriver):
    """Peers ``p0 .. p{N-1}`` as child processes; databases and logs in ``directory``."""

    mode = "process"

    def __init__(self, scenario: Scenario, directory: Path) -> None:
        self.scenario, self.spec, self.directory = scenario, scenario.cluster, directory
        self.names = self.spec.names
        self._nodes: list[_Node | None] = [None] * self.spec.peers
        self._ports = [0] * self.spec.peers
        self._edges: list[tuple[int, int]] = []
        self._incarnation = [0] * self.spec.peers
        self._blocked: set[frozenset[int]] = set()
        self._faults: dict[tuple[int, int], LinkFaults] = {}
        self._rates = [1.0] * self.spec.peers
        self._counts = SessionCounts()
        self._bytes_sent = 0
        self._closed = False

    @property
    def sessions(self) -> SessionCounts:
        return self._counts

    async def start(self, plan: Plan) -> None:
        self._edges = list(plan.edges)
        for index in range(self.spec.peers):
            prepare_database(self._path(index), self.spec.schema)
        late = {f.peer for f in self.scenario.faults if isinstance(f, Join)}
        for index in sorted(late):  # started by their Join (restart), on a port known now
            self._ports[index] = _free_port()
        for index in range(self.spec.peers):
            if index not in late:
                await self._spawn(index)
        for index in range(self.spec.peers):
            if index not in late:
                await self._configure(index)

    async def write(self, peer: int, sql: str, params: Mapping[str, SqlValue]) -> list[Change]:
        answer = await self._alive(peer).request("write", sql=sql, params=dict(params))
        return decode_changes(answer["changes"])

    async def migrate(self, peer: int, version: int, own_connection: bool) -> None:
        changes = migrations_to(self.spec.schema, 0, version)
        node = self._nodes[peer]
        if node is None:  # down: its file is free
            with ThreadPoolExecutor(1, thread_name_prefix="harness-migrate") as pool:
                await asyncio.get_running_loop().run_in_executor(
                    pool, migrate_on_own_connection, self._path(peer), changes
                )
            return
        await node.request(
            "migrate",
            own_connection=own_connection,
            changes=[{"version": c.version, "sql": c.sql, "alter": list(c.alter)} for c in changes],
        )

    async def kill(self, peer: int) -> None:
        node = self._alive(peer)
        await self._collect_stats(node)
        self._nodes[peer] = None
        await node.finish(kill=True)

    async def restart(self, peer: int) -> None:
        if self._nodes[peer] is not None:
            raise HarnessError(f"{self.names[peer]} is already running")
        await self._spawn(peer)
        await self._configure(peer)

    async def set_blocked(self, pairs: set[frozenset[int]]) -> None:
        self._blocked = set(pairs)
        for index, node in enumerate(self._nodes):
            if node is not None:
                await node.request("block", names=self._blocked_for(index))

    async def set_link_faults(self, faults: Mapping[tuple[int, int], LinkFaults]) -> None:
        self._faults = dict(faults)
        for index, node in enumerate(self._nodes):
            if node is not None:
                await node.request("faults", links=self._faults_for(index))

    async def set_clock_rate(self, peer: int, rate: float) -> None:
        self._rates[peer] = rate
        node = self._nodes[peer]
        if node is not None:
            await node.request("rate", rate=rate)

    async def vector(self, peer: int) -> tuple[bytes, Cursor] | None:
        node = self._nodes[peer]
        if node is None:
            return None
        answer = await node.request("vector")
        cursor = {bytes.fromhex(o): int(v) for o, v in answer["cursor"].items()}
        return bytes.fromhex(answer["site_id"]), cursor

    async def digests(self, peer: int) -> dict[str, str] | None:
        node = self._nodes[peer]
        if node is None:
            return None
        digests: dict[str, str] = (await node.request("digests"))["digests"]
        return digests

    def traffic(self) -> dict[str, int]:
        """Complete after :meth:`close`; before it, counts only dead incarnations."""
        return {
            "bytes_sent": self._bytes_sent,
            "restarts": sum(self._incarnation) - self.spec.peers,
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for index, node in enumerate(self._nodes):
            self._nodes[index] = None
            if node is not None:
                await self._collect_stats(node)
                await node.finish(kill=False)

    # -- internals ------------------------------------------------------------------

    def _path(self, index: int) -> Path:
        return self.directory / f"{self.names[index]}.db"

    def _alive(self, peer: int) -> _Node:
        node = self._nodes[peer]
        if node is None:
            raise HarnessError(f"{self.names[peer]} is down")
        return node

    def _blocked_for(self, index: int) -> list[str]:
        others = {o for pair in self._blocked if index in pair for o in pair - {index}}
        return sorted(self.names[o] for o in others)

    def _faults_for(self, index: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (a, b), f in self._faults.items():
            if index in (a, b):
                other = b if index == a else a
                out[self.names[other]] = {
                    "drop": f.drop,
                    "duplicate": f.duplicate,
                    "reorder": f.reorder,
                    "delay": list(f.delay),
                    "bandwidth": f.bandwidth,
                }
        return out

    async def _collect_stats(self, node: _Node) -> None:
        with contextlib.suppress(HarnessError):
            stats = await node.request("stats")
            self._bytes_sent += int(stats["bytes_sent"])
            for key, value in stats["sessions"].items():
                setattr(self._counts, key, getattr(self._counts, key) + int(value))

    async def _spawn(self, index: int) -> None:
        spec, name = self.spec, self.names[index]
        self._incarnation[index] += 1
        log_path = self.directory / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "peer.testing.node",
            f"--db={self._path(index)}",
            f"--name={name}",
            f"--port={self._ports[index]}",
            f"--seed={self.scenario.seed * 1_000_003 + index * 1009 + self._incarnation[index]}",
            f"--poll-interval={spec.poll_interval}",
            f"--ping-interval={spec.ping_interval}",
            f"--idle-timeout={spec.idle_timeout}",
            f"--backoff-initial={spec.backoff.initial}",
            f"--backoff-max={spec.backoff.maximum}",
            f"--snapshot-threshold={spec.limits.snapshot_threshold}",
            f"--max-frame-bytes={spec.limits.max_frame_bytes}",
            f"--max-batch-rows={spec.limits.max_batch_rows}",
            f"--window={spec.limits.window}",
            f"--max-value-bytes={spec.limits.max_value_bytes}",
        ]
        # Popen rather than asyncio's subprocesses: the driver owns the pipes
        # (connect_read_pipe) and reaps the child itself, with no watcher thread.
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 -- fork/exec only, it does not wait
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )
        node = _Node(name, proc, log_path)
        try:
            await node.open()
        except BaseException:
            await node.finish(kill=True)
            raise
        self._nodes[index] = node
        self._ports[index] = node.port

    async def _configure(self, index: int) -> None:
        """Tell a (re)started node whom to dial and the faults in force."""
        node = self._alive(index)
        dials = {
            self.names[listener]: f"tcp://127.0.0.1:{self._ports[listener]}"
            for dialer, listener in self._edges
            if dialer == index
        }
        await node.request("block", names=self._blocked_for(index))
        await node.request("faults", links=self._faults_for(index))
        if self._rates[index] != 1.0:
            await node.request("rate", rate=self._rates[index])
        await node.request("dial", peers=dials)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a peer that
    starts late: the others dial it, and fail, until it listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
