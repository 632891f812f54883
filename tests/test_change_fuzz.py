"""Hostile change rows never take the process down.

cr-sqlite aborts the whole process (SIGILL) on some malformed rows, which no
``try`` can catch, so these tests apply rows in a child process
(:mod:`tests.change_fuzz_worker`, a real Store with the real extension) and
fail if it dies. Hypothesis draws rows in the parent: mostly structurally
plausible ones (a real table, a real column, a packed key of the right shape,
often with a byte changed) so they reach the extension's merge paths, plus
plain junk.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.packed_pk import PackedKeyError, pack
from tests.change_fuzz_worker import TABLES, read_frame, write_frame

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class Source(Protocol):
    """Where the row generator gets its choices: Hypothesis or a seeded Random."""

    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def binary(self, max_size: int) -> bytes: ...


class HypothesisSource:
    """Choices drawn by Hypothesis, which can then shrink a failing example."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def binary(self, max_size: int) -> bytes:
        return self.data.draw(st.binary(max_size=max_size))


class RandomSource:
    """Choices from a Random that Hypothesis seeded: fast enough for 100,000s of rows."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


_EDGE_INTS = (0, 1, -1, 127, 128, 255, 256, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63))
_CHARS = "aZ0 é字\x00'\"%😀"
_EDGE_REALS = (0.0, -0.0, 1.0, -1.5, 2.0**52, 2.0**63, 1e308, math.inf, -math.inf, math.nan)


def _int(src: Source) -> int:
    if src.integer(0, 2):
        return src.choice(_EDGE_INTS)
    return src.integer(-(2**63), 2**63 - 1)


def _text(src: Source) -> str:
    return "".join(src.choice(_CHARS) for _ in range(src.integer(0, 6)))


def _real(src: Source) -> float:
    if src.integer(0, 1):
        return src.choice(_EDGE_REALS)
    return float(src.integer(-(10**6), 10**6)) / src.choice((1, 3, 7, 1024))


def _any(src: Source) -> Any:
    kind = src.integer(0, 3)
    return (_int, _real, _text, lambda s: s.binary(12))[kind](src)


# Each table of the worker's schema: its key columns with a maker of values
# they hold, and its other columns.
SHAPES: dict[str, tuple[tuple[str, ...], tuple[Callable[[Source], Any], ...], tuple[str, ...]]] = {
    "notes": (("id",), (_text,), ("body",)),
    "items": (("id",), (_int,), ("name", "score")),
    "tags": (("item", "tag"), (_int, _text), ("note",)),
    "files": (("k",), (lambda s: s.binary(12),), ("size",)),
    "points": (("x", "y"), (_real, _any), ("label",)),
    "strict_kv": (("a", "b", "c"), (_int, _text, _any), ("v",)),
}
assert set(SHAPES) == set(TABLES)

SITES = tuple(bytes([i]) * 16 for i in range(1, 5))
_EDGE_COUNTERS = (2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63))
_ODD_VALUES = ("\ud800", "a\udfffb", "x" * 300, b"", "")


def _counter(src: Source) -> int:
    return src.integer(0, 4) if src.integer(0, 1) else src.choice(_EDGE_COUNTERS)


def _value(src: Source) -> Any:
    kind = src.integer(0, 6)
    if kind == 0:
        return None
    if kind == 1:
        return src.choice(_ODD_VALUES)
    return _any(src)


def _packed(values: list[Any]) -> bytes:
    try:
        return pack(values)
    except PackedKeyError:
        return b"\x01\x05"


def make_key(src: Source, table: str, flawed: bool) -> bytes:
    """A packed key for ``table``, or when ``flawed`` a mutated one, one for
    another table, or junk."""
    good = _packed([make(src) for make in SHAPES[table][1]])
    if not flawed:
        return good
    mode = src.integer(0, 9)
    if mode <= 5:
        # One mutation of a good key: the forms the extension reads wrongly.
        at = src.integer(0, len(good) - 1)
        if mode == 0:
            return good[:at] + bytes([src.integer(0, 255)]) + good[at + 1 :]
        if mode == 1:
            return good[:at]
        if mode == 2:
            return good + src.binary(12) + b"\x00"
        if mode == 3:
            return good[:at] + good[at + 1 :]
        if mode == 4:  # the first type byte: any type, any byte count
            return good[:1] + bytes([src.integer(0, 255)]) + good[2:]
        return bytes([src.integer(0, 255)]) + good[1:]
    if mode == 6:
        return _packed([make(src) for make in SHAPES[src.choice(TABLES)][1]])
    if mode == 7:
        return b""
    if mode == 8:  # a crafted header: count, type byte, then bytes
        head = bytes([src.integer(0, 4), src.integer(0, 31) << 3 | src.integer(0, 7)])
        return head + src.binary(40)
    return src.binary(40)


def make_row(src: Source) -> list[Any]:
    """One change row: four in ten plausible in every field (a real table,
    column, key and site, small counters, so merges meet each other), the
    rest with one field flawed, or (one in ten) every field."""
    flaw = src.integer(0, 9)
    every = flaw == 9
    table = src.choice(TABLES)
    names, _, others = SHAPES[table]
    pk = make_key(src, table, flaw == 4 or every)
    if flaw == 5 or every:
        cid = src.choice((src.choice(names), _text(src), "-1", src.choice(others)))
    else:
        cid = src.choice(others) if src.integer(0, 3) else "-1"
    value = _value(src) if flaw == 6 or every else _any(src) if src.integer(0, 5) else None
    if flaw == 7 or every:
        counters = [_counter(src) for _ in range(4)]
    else:
        counters = [src.integer(0, 4), src.integer(1, 6), src.integer(0, 4), src.integer(0, 3)]
    if flaw == 8 or every:
        table = src.choice(("nope", "crsql_master", "", "items__crsql_clock", table))
    site = src.binary(20) if every else src.choice(SITES)
    col_version, version, cl, seq = counters
    return [table, pk, cid, value, col_version, version, site, cl, seq]


class Worker:
    """The child process, restarted when it dies (so Hypothesis can shrink)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.totals = [0, 0, 0]

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.Popen(
            [sys.executable, "-m", "tests.change_fuzz_worker", *self.args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def apply(self, batches: list[list[Any]]) -> list[int]:
        """Send batches; return ``[merged, refused, rejected_by_db]`` for them.
        Fail (and forget the child) if it dies or misbehaves."""
        if self.process is None:
            self.process = self._start()
        process = self.process
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            write_frame(process.stdin, batches)
            reply = read_frame(process.stdout)
        except BrokenPipeError:
            reply = None
        if reply is None:
            self.process = None
            code = process.wait(timeout=30)
            process.stdin.close()
            process.stdout.close()
            pytest.fail(f"the worker died with status {code} on {batches!r:.2000}")
        merged, refused, rejected, unexpected = reply
        assert not unexpected, unexpected
        self.totals[0] += merged
        self.totals[1] += refused
        self.totals[2] += rejected
        return [merged, refused, rejected]

    def close(self) -> int:
        """End the child; return its exit status (0: its database is intact)."""
        if self.process is None:
            return 0
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.process = None
        return code


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    child = Worker()
    yield child
    code = child.close()
    assert code == 0, f"the worker ended with status {code} (3: integrity check failed)"


@pytest.fixture(scope="module")
def file_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    child = Worker(str(tmp_path_factory.mktemp("fuzz") / "fuzz.db"))
    yield child
    code = child.close()
    assert code == 0, f"the worker ended with status {code} (3: integrity check failed)"


BATCH = 8


def _batches(rows: list[list[Any]]) -> list[list[list[Any]]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=_SUPPRESSED)
@given(data=st.data())
def test_hostile_rows_never_kill_the_process(worker: Worker, data: st.DataObject) -> None:
    # Small examples Hypothesis can shrink to the one row that kills.
    source = HypothesisSource(data)
    worker.apply(_batches([make_row(source) for _ in range(source.integer(1, 16))]))


ROWS_PER_EXAMPLE = 2_500


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=_SUPPRESSED)
@given(rng=st.randoms(use_true_random=True))
def test_a_hundred_thousand_hostile_rows_never_kill_the_process(
    worker: Worker, rng: random.Random
) -> None:
    source = RandomSource(rng)
    worker.apply(_batches([make_row(source) for _ in range(ROWS_PER_EXAMPLE)]))


def test_the_rows_reached_the_extension(worker: Worker) -> None:
    # Runs after the property tests (same module worker): the generator must
    # not only produce junk the Python checks refuse.
    merged, refused, rejected = worker.totals
    total = merged + refused + rejected
    assert total >= 100_000, worker.totals
    assert merged > total // 10, worker.totals
    assert rejected > 0, worker.totals


def test_the_reported_rows_are_refused_and_the_process_lives(worker: Worker) -> None:
    # Issue 17: an empty packed key aborted the process inside cr-sqlite;
    # b"\x00" (no columns) merged with the value 'v' taken as the key.
    for pk in (b"", b"\x00"):
        reported = ["notes", pk, "body", "v", 1, 1, os.urandom(16), 1, 0]
        assert worker.apply([[reported]]) == [0, 1, 0]


@pytest.mark.soak
@pytest.mark.timeout(1800)
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=_SUPPRESSED)
@given(rng=st.randoms(use_true_random=True))
def test_a_million_hostile_rows_never_kill_the_process(worker: Worker, rng: random.Random) -> None:
    source = RandomSource(rng)
    worker.apply(_batches([make_row(source) for _ in range(ROWS_PER_EXAMPLE)]))


@pytest.mark.soak
@pytest.mark.timeout(1800)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=_SUPPRESSED)
@given(rng=st.randoms(use_true_random=True))
def test_a_hundred_thousand_hostile_rows_never_kill_a_file_store(
    file_worker: Worker, rng: random.Random
) -> None:
    source = RandomSource(rng)
    file_worker.apply(_batches([make_row(source) for _ in range(ROWS_PER_EXAMPLE)]))
