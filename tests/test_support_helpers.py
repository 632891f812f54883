"""The shared test helpers: ``wait_for``, ``wait_until`` and the timeout scale factor."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests import support
from tests.support import holds_within, scaled, wait_for, wait_until


async def test_wait_for_returns_as_soon_as_the_condition_holds() -> None:
    loop = asyncio.get_running_loop()
    ready_at = loop.time() + 0.1
    await wait_for(lambda: loop.time() >= ready_at, within=10.0)
    assert loop.time() >= ready_at


async def test_wait_for_awaits_an_async_predicate_each_time() -> None:
    calls: list[int] = []

    async def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    async def never() -> bool:
        return False

    await wait_for(third_call, within=10.0, interval=0.001)
    assert len(calls) == 3
    with pytest.raises(AssertionError, match="not reached"):
        await wait_for(never, within=0.05)


async def test_wait_for_fails_after_the_scaled_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "TIMEOUT_SCALE", 4.0)
    assert scaled(0.05) == pytest.approx(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match=r"not reached within 0\.2 s"):
        await wait_for(lambda: False, within=0.05)
    assert loop.time() - started >= 0.2


def test_wait_until_blocks_until_the_condition_holds_then_fails_after_the_scaled_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ready_at = time.monotonic() + 0.1
    wait_until(lambda: time.monotonic() >= ready_at, within=10.0)
    assert time.monotonic() >= ready_at
    monkeypatch.setattr(support, "TIMEOUT_SCALE", 4.0)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not reached within 0\.2 s"):
        wait_until(lambda: False, within=0.05)
    assert time.monotonic() - started >= 0.2


def test_holds_within_says_whether_the_condition_came_to_hold_instead_of_raising() -> None:
    ready_at = time.monotonic() + 0.05
    assert holds_within(lambda: time.monotonic() >= ready_at, within=10.0)
    assert time.monotonic() >= ready_at
    assert not holds_within(lambda: False, within=0.05)


@pytest.mark.parametrize(("raw", "scale"), [("1", 1.0), ("2.5", 2.5), ("10", 10.0)])
def test_the_scale_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, scale: float
) -> None:
    monkeypatch.setenv("CRPEER_TEST_TIMEOUT_SCALE", raw)
    assert support._timeout_scale() == scale


def test_the_scale_defaults_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPEER_TEST_TIMEOUT_SCALE", raising=False)
    assert support._timeout_scale() == 1.0


@pytest.mark.parametrize("raw", ["0", "-2", "fast", "", "inf", "nan"])
def test_a_bad_scale_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CRPEER_TEST_TIMEOUT_SCALE", raw)
    with pytest.raises(ValueError, match="CRPEER_TEST_TIMEOUT_SCALE must be a positive number"):
        support._timeout_scale()
