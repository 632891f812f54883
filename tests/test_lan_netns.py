"""LAN discovery and TCP between network namespaces (needs root and iproute2).

Each test builds its own little LAN: one namespace holding a bridge, and one
namespace per node joined to it by a veth pair, in a private 10.213.x.0/24
subnet that exists only inside those namespaces. The root namespace is never
touched, and everything is deleted afterwards, also on failure. The nodes are
given no addresses: they must find each other by mDNS alone.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import scaled

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
]

REPO = Path(__file__).resolve().parent.parent
NODES = 3
WAIT_S = scaled(20.0)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lan:
    """Namespaces of one test LAN: ``nodes[i]`` has address ``addresses[i]`` on eth0."""

    bridge: str
    nodes: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Build a bridge namespace and NODES node namespaces; always delete them."""
    tag = secrets.token_hex(3)
    subnet = f"10.213.{secrets.randbelow(256)}"
    created = Lan(bridge=f"crp{tag}br")
    try:
        ip("netns", "add", created.bridge)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    namespaces = [created.bridge]
    try:
        ip("-n", created.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", created.bridge, "link", "set", "br0", "up")
        for i in range(NODES):
            node = f"crp{tag}n{i}"
            ip("netns", "add", node)
            namespaces.append(node)
            bridge_end = ("-n", created.bridge, "link", "add", f"p{i}", "type", "veth")
            ip(*bridge_end, "peer", "name", "eth0", "netns", node)
            ip("-n", created.bridge, "link", "set", f"p{i}", "master", "br0", "up")
            address = f"{subnet}.{i + 1}"
            ip("-n", node, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", node, "link", "set", "eth0", "multicast", "on", "up")
            ip("-n", node, "link", "set", "lo", "up")
            created.nodes.append(node)
            created.addresses.append(address)
        yield created
    finally:
        for name in reversed(namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


class Nodes:
    """``tests.lan_node`` processes, one per namespace, and the JSON events they print.

    ``{i}`` in an ``extra`` argument becomes the node's index."""

    def __init__(self, lan: Lan, extra: list[str]) -> None:
        self.events: list[list[dict[str, Any]]] = [[] for _ in lan.nodes]
        self._buffers = [b"" for _ in lan.nodes]
        self._selector = selectors.DefaultSelector()
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, namespace in enumerate(lan.nodes):
            command = ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.lan_node"]
            own = [arg.replace("{i}", str(i)) for arg in extra]
            proc = subprocess.Popen(
                [*command, "--peer-id", f"node{i}", "--seconds", str(WAIT_S * 2 + 10), *own],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            self._selector.register(proc.stdout, selectors.EVENT_READ, i)

    def read_until(self, condition: Callable[[], bool], within: float = WAIT_S) -> None:
        """Read the nodes' events until ``condition`` holds; fail after ``within``
        seconds (already scaled: ``WAIT_S`` is)."""
        deadline = time.monotonic() + within
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not met within {within} s; events: {self.events}")
            for key, _mask in self._selector.select(remaining):
                self._read(key.data, key.fileobj)

    def _read(self, index: int, stream: Any) -> None:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            self._selector.unregister(stream)
            return
        lines = (self._buffers[index] + chunk).split(b"\n")
        self._buffers[index] = lines.pop()
        self.events[index].extend(json.loads(line) for line in lines if line)

    def send(self, index: int, line: str) -> None:
        """Write one command line to node ``index``'s stdin."""
        stdin = self.procs[index].stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def seen(self, index: int, event: str) -> dict[str, dict[str, Any]]:
        return {e["peer_id"]: e for e in self.events[index] if e["event"] == event}

    def close(self) -> list[int | None]:
        """Close every stdin (the nodes then stop cleanly); kill what hangs."""
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=10))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                codes.append(None)
            assert proc.stdout is not None
            proc.stdout.close()
        self._selector.close()
        return codes


@pytest.fixture
def nodes(lan: Lan) -> Iterator[Callable[[list[str]], Nodes]]:
    started: list[Nodes] = []

    def start(extra: list[str]) -> Nodes:
        started.append(Nodes(lan, extra))
        return started[-1]

    yield start
    for group in started:
        group.close()


def test_every_namespace_discovers_every_other(
    lan: Lan, nodes: Callable[[list[str]], Nodes]
) -> None:
    group = nodes([])
    ids = [f"node{i}" for i in range(NODES)]
    group.read_until(
        lambda: all(set(group.seen(i, "found")) == set(ids) - {ids[i]} for i in range(NODES))
    )
    for i, j in itertools.permutations(range(NODES), 2):
        found = group.seen(i, "found")[ids[j]]
        assert found["addresses"] == [lan.addresses[j]]
        assert found["port"] == 9
    assert group.close() == [0] * NODES


def test_lan_transports_find_and_echo_across_namespaces(
    lan: Lan, nodes: Callable[[list[str]], Nodes]
) -> None:
    group = nodes(["--lan"])
    ids = [f"node{i}" for i in range(NODES)]
    pairs = list(itertools.combinations(range(NODES), 2))  # (smaller id, larger id)
    group.read_until(lambda: all(ids[j] in group.seen(i, "echo") for i, j in pairs))
    for i, j in pairs:
        echo = group.seen(i, "echo")[ids[j]]
        assert echo["ok"], echo
        assert group.seen(j, "ready")[ids[j]]["addresses"] == [echo["address"]]
        assert echo["address"].startswith(f"tcp://{lan.addresses[j]}:")
        assert ids[i] not in group.seen(j, "echo"), "only the smaller peer id dials"
    for j in range(NODES):
        inbound = sorted(e["host"] for e in group.events[j] if e["event"] == "inbound")
        assert inbound == sorted(lan.addresses[:j]), "dialed once by each smaller id, no other"
    assert group.close() == [0] * NODES


def move(lan: Lan, index: int) -> str:
    """Move node ``index`` to another address on the same LAN, as after a
    reconnection that got a new lease: the old address goes, then the new one comes."""
    old = lan.addresses[index]
    new = f"{old.rsplit('.', 1)[0]}.{index + 101}"
    ip("-n", lan.nodes[index], "addr", "del", f"{old}/24", "dev", "eth0")
    ip("-n", lan.nodes[index], "addr", "add", f"{new}/24", "dev", "eth0")
    return new


WATCH = ["--watch-interval", "0.3"]
SETTLE_S = 2.0
"""Longer than the startup announcements plus 1 s, so the move's cache-flush
reaches the old address record (RFC 6762 10.2)."""


def test_a_moved_node_is_seen_at_its_new_address(
    lan: Lan, nodes: Callable[[list[str]], Nodes]
) -> None:
    group = nodes(WATCH)
    ids = [f"node{i}" for i in range(NODES)]
    group.read_until(lambda: all(ids[-1] in group.seen(i, "found") for i in range(NODES - 1)))
    time.sleep(SETTLE_S)
    new = move(lan, NODES - 1)
    group.read_until(
        lambda: all(group.seen(i, "found")[ids[-1]]["addresses"] == [new] for i in range(NODES - 1))
    )
    for i in range(NODES - 1):
        assert ids[-1] not in group.seen(i, "lost"), "a move is an update, not a goodbye"
    assert group.close() == [0] * NODES


def test_lan_transports_dial_a_moved_node_at_its_new_address(
    lan: Lan, nodes: Callable[[list[str]], Nodes]
) -> None:
    group = nodes(["--lan", *WATCH])
    ids = [f"node{i}" for i in range(NODES)]
    last = NODES - 1  # the largest id: every other node dials it
    group.read_until(lambda: all(ids[last] in group.seen(i, "echo") for i in range(last)))
    time.sleep(SETTLE_S)
    new = move(lan, last)

    def echoed_at_new_address(i: int) -> bool:
        echo = group.seen(i, "echo").get(ids[last], {})
        return bool(echo.get("ok")) and echo["address"].startswith(f"tcp://{new}:")

    group.read_until(lambda: all(echoed_at_new_address(i) for i in range(last)))
    inbound = {e["host"] for e in group.events[last] if e["event"] == "inbound"}
    assert inbound == set(lan.addresses[:last]), "the others dialed in, at old and new address"
    assert group.close() == [0] * NODES


def test_peers_sync_with_a_moved_node_at_its_new_address(
    lan: Lan, nodes: Callable[[list[str]], Nodes], tmp_path: Path
) -> None:
    group = nodes(["--peer", str(tmp_path / "node{i}.db"), *WATCH])
    last = NODES - 1  # the largest id: every other node dials it

    def dialed(i: int, host: str) -> bool:
        events = [e for e in group.events[i] if e["event"] == "connected"]
        return any(
            e["remote"] == f"node{last}" and e["address"].startswith(f"tcp://{host}:")
            for e in events
        )

    group.read_until(lambda: all(dialed(i, lan.addresses[last]) for i in range(last)))
    assert not any(e["event"] == "changed" for events in group.events for e in events)
    time.sleep(SETTLE_S)
    new = move(lan, last)
    group.send(last, "insert 1 written after the move")

    def has_the_row(i: int) -> bool:
        return any(e["event"] == "changed" for e in group.events[i])

    # The row can leave node2 only through its new address: the old one is gone.
    group.read_until(
        lambda: all(dialed(i, new) and has_the_row(i) for i in range(last)), within=WAIT_S * 2
    )
    direct = [
        e
        for events in group.events[:last]
        for e in events
        if e["event"] == "changed" and e["remote"] == f"node{last}"
    ]
    assert direct
    assert all(e["address"].startswith(f"tcp://{new}:") for e in direct)
    assert group.close() == [0] * NODES
