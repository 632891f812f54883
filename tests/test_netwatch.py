"""AddressWatch: noticing that the host's addresses changed, with an injected source."""

from __future__ import annotations

import asyncio

import pytest

from peer.errors import ConfigError, StoreError
from tests.support import wait_for
from transports.netwatch import AddressWatch


class Source:
    """Addresses a test sets by hand; ``error`` is raised by the next read."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.error: Exception | None = None
        self.reads = 0

    def __call__(self) -> list[str]:
        self.reads += 1
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return list(self.addresses)


async def _ignore(_addresses: list[str]) -> None:
    pass


def test_check_reports_only_a_changed_set() -> None:
    source = Source("10.0.0.5")
    watch = AddressWatch(source, _ignore, interval=1.0)
    assert watch.check() is None  # the first look is the baseline
    assert watch.check() is None
    source.addresses = ["10.0.0.5", "192.168.1.20"]
    assert watch.check() == ["10.0.0.5", "192.168.1.20"]
    source.addresses = ["192.168.1.20", "10.0.0.5"]
    assert watch.check() is None  # the same set in another order
    source.addresses = ["192.168.1.20"]
    assert watch.check() == ["192.168.1.20"]
    source.addresses = []
    assert watch.check() == []  # losing every address is a change too


@pytest.mark.parametrize("error", [OSError("netlink"), StoreError("odd")])
def test_a_failing_source_counts_as_no_change(error: Exception) -> None:
    source = Source("10.0.0.5")
    watch = AddressWatch(source, _ignore)
    watch.check()
    source.addresses = ["10.0.0.6"]
    source.error = error
    assert watch.check() is None
    assert watch.check() == ["10.0.0.6"]  # the last good set was kept


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ConfigError):
        AddressWatch(Source(), _ignore, interval=interval)


async def test_the_running_watch_reports_each_change_once() -> None:
    source = Source("10.0.0.5")
    changes: list[list[str]] = []
    changed = asyncio.Event()

    async def on_change(addresses: list[str]) -> None:
        changes.append(addresses)
        changed.set()
        if addresses == ["10.9.9.9"]:
            raise RuntimeError("handler bug")  # logged; the watch goes on

    watch = AddressWatch(source, on_change, interval=0.01)
    watch.start(["10.0.0.5"])
    with pytest.raises(ConfigError):
        watch.start()
    try:
        for new in (["10.9.9.9"], ["10.1.0.7", "fe80::1%2"]):
            changed.clear()
            source.addresses = new
            async with asyncio.timeout(5):
                await changed.wait()
        reads = source.reads
        await wait_for(lambda: source.reads >= reads + 5)  # several more polls, nothing new
    finally:
        await watch.stop()
    await watch.stop()  # idempotent
    assert changes == [["10.9.9.9"], ["10.1.0.7", "fe80::1%2"]]
    reads = source.reads
    # A second watch at the same interval: once it has polled five times,
    # the stopped one would have polled too.
    beside = Source("10.0.0.5")
    other = AddressWatch(beside, _ignore, interval=0.01)
    other.start()
    try:
        await wait_for(lambda: beside.reads >= 5)
    finally:
        await other.stop()
    assert source.reads == reads, "a stopped watch polls no more"


async def test_a_baseline_other_than_the_source_is_a_change_at_the_first_poll() -> None:
    source = Source("192.168.1.20")
    changes: list[list[str]] = []
    done = asyncio.Event()

    async def on_change(addresses: list[str]) -> None:
        changes.append(addresses)
        done.set()

    watch = AddressWatch(source, on_change, interval=0.01)
    watch.start(["127.0.0.1"])  # what was advertised when nothing else existed
    try:
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        await watch.stop()
    assert changes == [["192.168.1.20"]]
