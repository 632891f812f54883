"""The pairing guard's rate limit, backoff and expiry, with an injected clock."""

from __future__ import annotations

import pytest

from peer.errors import PairingError
from peer.pairing import generate_join_secret
from peer.pairing_guard import PairingGuard, address_key

SECRET = generate_join_secret()
A = "tcp://10.0.0.1:50000"
A_OTHER_PORT = "tcp://10.0.0.1:50001"
B = "tcp://10.0.0.2:50000"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(guard: PairingGuard, address: str, secret: str = SECRET) -> bool:
    guard.begin(address, secret)
    return guard.end(address, secret, succeeded=False)


def test_addresses_are_counted_by_host() -> None:
    assert address_key(A) == address_key(A_OTHER_PORT) == "10.0.0.1"
    assert address_key("wss://[::1]:443/crpeer") == "::1"
    assert address_key("memory://node") == "node"


def test_failures_from_one_address_back_off_exponentially() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, address_delay=1.0, overall_delay=0.0, max_delay=8.0)
    waits = []
    for _ in range(6):
        fail(guard, A)
        waits.append(guard.blocked_for(A))
        with pytest.raises(PairingError, match="retry in"):
            guard.begin(A_OTHER_PORT, SECRET)  # another port of the same host
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert guard.failures == 6
    assert guard.in_flight == 0


def test_failures_slow_down_every_address_overall() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, address_delay=10.0, overall_delay=0.5)
    fail(guard, A)
    with pytest.raises(PairingError, match="retry in"):
        guard.begin(B, SECRET)
    clock.now += 0.5
    fail(guard, B)
    assert guard.blocked_for("tcp://10.0.0.3:1") == 1.0  # the second failure in a row: doubled
    clock.now += 1.0
    guard.begin("tcp://10.0.0.3:1", SECRET)
    guard.end("tcp://10.0.0.3:1", SECRET, succeeded=True)
    assert guard.blocked_for("tcp://10.0.0.4:1") == 0.0  # a success resets the overall backoff


def test_parallel_attempts_from_one_address_are_refused_while_one_is_under_way() -> None:
    guard = PairingGuard(clock=Clock())
    guard.begin(A, SECRET)
    for _ in range(40):
        with pytest.raises(PairingError, match="under way"):
            guard.begin(A_OTHER_PORT, SECRET)
    guard.end(A, SECRET, succeeded=None)  # closed before any proof: not a failure
    assert guard.failures == 0
    guard.begin(A, SECRET)


def test_attempts_in_flight_never_exceed_the_failures_left() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, max_failures=3, overall_delay=0.0)
    for address in ("tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.3:1"):
        guard.begin(address, SECRET)
    with pytest.raises(PairingError, match="under way"):
        guard.begin("tcp://10.0.0.4:1", SECRET)
    assert guard.in_flight == 3


def test_the_secret_expires_after_max_failures_even_for_the_right_proof() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, max_failures=10)
    expired: list[tuple[int, str]] = []
    guard.on_expired(lambda failures, address: expired.append((failures, address)))
    results = []
    for number in range(10):
        address = f"tcp://10.0.1.{number}:1"
        results.append(fail(guard, address))
        clock.now += 120.0
    assert results == [False] * 9 + [True]
    assert expired == [(10, "tcp://10.0.1.9:1")]
    assert guard.expired
    assert guard.hosting_secret(SECRET) is None
    with pytest.raises(PairingError, match="expired after 10 failed pairing attempts"):
        guard.begin("tcp://10.0.2.1:1", SECRET)
    # The secret typed differently is the same secret: still expired.
    with pytest.raises(PairingError, match="expired"):
        guard.begin("tcp://10.0.2.1:1", SECRET.lower().replace("-", ""))
    # A new secret starts from zero.
    fresh = generate_join_secret()
    assert guard.hosting_secret(fresh) == fresh
    assert not guard.expired
    assert guard.failures == 0
    guard.begin("tcp://10.0.2.1:1", fresh)


def test_successes_do_not_reset_the_count_towards_expiry() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, max_failures=2)
    fail(guard, A)
    clock.now += 120.0
    guard.begin(B, SECRET)
    guard.end(B, SECRET, succeeded=True)
    assert fail(guard, B)
    assert guard.expired


def test_an_outcome_for_a_replaced_secret_does_not_count() -> None:
    guard = PairingGuard(clock=Clock())
    guard.begin(A, SECRET)
    fresh = generate_join_secret()
    guard.hosting_secret(fresh)  # the user set a new secret meanwhile
    assert not guard.end(A, SECRET, succeeded=False)
    assert guard.failures == 0
    assert guard.in_flight == 0


def test_the_address_table_is_bounded() -> None:
    clock = Clock()
    guard = PairingGuard(clock=clock, max_addresses=8, overall_delay=0.0, max_failures=1000)
    for number in range(100):
        fail(guard, f"tcp://10.1.0.{number}:1")
    clock.now += 3600.0
    guard.begin("tcp://10.2.0.1:1", SECRET)
    assert guard.addresses_tracked <= 8
