"""The one retry policy: exponential backoff with full jitter (tenacity)."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import wait_random_exponential
from tenacity.wait import wait_base

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: uniform in [0, min(maximum, initial * 2**n)]."""

    initial: float = 0.1
    maximum: float = 30.0

    def wait(self) -> wait_base:
        """A tenacity wait strategy for this policy."""
        return wait_random_exponential(multiplier=self.initial, max=self.maximum)
