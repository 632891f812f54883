"""Fixtures shared by every test: no test may leave threads behind; ``nodes``
makes TLS nodes (tests.support.Node) in the test's folder and closes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Node


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    """``nodes(name)``: a node with its own store, identity and trust store in
    ``tmp_path / name``; every node made is closed after the test."""
    made: list[Node] = []

    def make(name: str) -> Node:
        node = Node(tmp_path / name, name)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
