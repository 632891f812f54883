"""How often this node lets others try its join secret.

A :class:`PairingGuard` is pure state with the clock as an input: no I/O, no
asyncio. The host asks :meth:`PairingGuard.begin` before it reads a joiner's
proof and reports the outcome with :meth:`PairingGuard.end`. Rules:

- **One attempt at a time per address** (the remote's host, ports aside), and
  no more attempts in flight than failures left, so that parallel guesses
  never exceed the bound below.
- **Backoff per address**: after its k-th failure in a row an address is
  refused for ``min(address_delay * 2**(k-1), max_delay)`` seconds.
- **Backoff overall**: after the k-th failure in a row from anyone, every
  address is refused for ``min(overall_delay * 2**(k-1), max_delay)`` seconds.
  A success resets both counts (for its address, and overall).
- **Expiry**: after ``max_failures`` failures against one join secret (in
  total, successes in between included), that secret is expired for good:
  even the right proof is refused, and the ``on_expired`` listeners are told.
  A different secret (set by the user) starts from zero.

A refused attempt is not a failure: the joiner's proof is never read. The
caller tells the remote the reason (:class:`~peer.errors.PairingError`'s
message) and closes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from peer.errors import PairingError
from peer.pairing import normalize_join_secret

__all__ = ["MAX_PAIRING_FAILURES", "PairingGuard", "address_key"]

MAX_PAIRING_FAILURES = 10
"""Failed proofs after which a join secret expires."""


def address_key(address: str) -> str:
    """What attempts are counted by: the host of a transport address
    (``tcp://10.0.0.2:5000`` → ``10.0.0.2``), or the whole address if it has none."""
    try:
        host = urlsplit(address).hostname
    except ValueError:
        host = None
    return host or address


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    """Failures in a row."""
    blocked_until: float = 0.0
    in_flight: bool = False


class PairingGuard:
    """Rate limit, backoff and expiry for the pairing attempts against one node.

    ``clock`` returns seconds (monotonic); the delays are in seconds. Call
    :meth:`hosting_secret` for the secret to host with, :meth:`begin` before
    reading a proof, :meth:`end` after it.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_failures: int = MAX_PAIRING_FAILURES,
        address_delay: float = 1.0,
        overall_delay: float = 0.25,
        max_delay: float = 60.0,
        max_addresses: int = 1024,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self._address_delay = address_delay
        self._overall_delay = overall_delay
        self._max_delay = max_delay
        self._max_addresses = max_addresses
        self._secret: bytes | None = None
        self._failures = 0
        self._expired = False
        self._addresses: dict[str, _Backoff] = {}
        self._overall = _Backoff()
        self._in_flight = 0
        self._listeners: list[Callable[[int, str], None]] = []

    @property
    def failures(self) -> int:
        """Failed proofs against the current join secret."""
        return self._failures

    @property
    def expired(self) -> bool:
        """Whether the last join secret seen expired (until a new one is set)."""
        return self._expired

    @property
    def in_flight(self) -> int:
        """Attempts begun and not ended."""
        return self._in_flight

    @property
    def addresses_tracked(self) -> int:
        """Addresses whose attempts are remembered (at most ``max_addresses``)."""
        return len(self._addresses)

    def expiry_reason(self) -> str:
        return (
            f"the join secret expired after {self._failures} failed pairing attempts; "
            "set a new one on this device"
        )

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0 if it may now)."""
        now = self._clock()
        record = self._addresses.get(address_key(address), _Backoff())
        return max(0.0, record.blocked_until - now, self._overall.blocked_until - now)

    def hosting_secret(self, secret: str | None) -> str | None:
        """``secret`` (the trust store's join secret), or None if it expired.

        A secret other than the last one seen starts with no failures.
        """
        if secret is None:
            return None
        key = normalize_join_secret(secret)
        if key != self._secret:
            self._secret, self._failures, self._expired = key, 0, False
        return None if self._expired else secret

    def begin(self, address: str, secret: str) -> None:
        """Reserve an attempt from ``address`` against ``secret``.

        Raises PairingError, saying why and when to retry, if the secret
        expired, the address or the node is backing off, or too many attempts
        are under way; nothing is reserved then. Otherwise call :meth:`end`.
        """
        if self.hosting_secret(secret) is None:
            raise PairingError(self.expiry_reason())
        if self._failures + self._in_flight >= self.max_failures:
            raise PairingError("too many pairing attempts are under way; retry later")
        now = self._clock()
        key = address_key(address)
        record = self._addresses.get(key)
        if record is not None and record.in_flight:
            raise PairingError("a pairing attempt from this address is under way")
        wait = max(
            record.blocked_until - now if record is not None else 0.0,
            self._overall.blocked_until - now,
        )
        if wait > 0:
            raise PairingError(f"too many failed pairing attempts; retry in {math.ceil(wait)} s")
        if record is None:
            record = self._addresses[key] = _Backoff()
            self._forget_old(now)
        record.in_flight = True
        self._in_flight += 1

    def end(self, address: str, secret: str, *, succeeded: bool | None) -> bool:
        """Release the attempt :meth:`begin` reserved, with its outcome.

        ``succeeded`` is True for a right proof, False for a wrong one, None
        when the attempt ended before a proof was checked (not a failure).
        Returns True if this failure expired the secret (the listeners were
        told).
        """
        key = address_key(address)
        record = self._addresses.setdefault(key, _Backoff())
        record.in_flight = False
        self._in_flight -= 1
        if succeeded is None or normalize_join_secret(secret) != self._secret:
            return False
        if succeeded:
            record.failures = self._overall.failures = 0
            return False
        now = self._clock()
        for backoff, delay in ((record, self._address_delay), (self._overall, self._overall_delay)):
            backoff.failures += 1
            backoff.blocked_until = now + min(delay * 2 ** (backoff.failures - 1), self._max_delay)
        self._failures += 1
        if self._failures < self.max_failures or self._expired:
            return False
        self._expired = True
        for listener in list(self._listeners):
            listener(self._failures, address)
        return True

    def on_expired(self, listener: Callable[[int, str], None]) -> Callable[[], None]:
        """Call ``listener(failures, last_address)`` when a secret expires;
        returns a function that unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _forget_old(self, now: float) -> None:
        """Keep at most ``max_addresses`` records: drop idle ones, then the oldest."""
        if len(self._addresses) <= self._max_addresses:
            return
        for key, record in list(self._addresses.items()):
            if not record.in_flight and record.blocked_until <= now:
                del self._addresses[key]
        for key in list(self._addresses)[: max(0, len(self._addresses) - self._max_addresses)]:
            if not self._addresses[key].in_flight:
                del self._addresses[key]
