"""Fixtures shared by every test: no test may leave threads behind; ``nodes``
makes TLS nodes (tests.support.Node) in the test's folder and closes them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Node, wait_until


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running after it ends."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_until(lambda: not leaked(), within=2.0)
    except AssertionError:
        raise AssertionError(f"test leaked threads: {[t.name for t in leaked()]}") from None


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
