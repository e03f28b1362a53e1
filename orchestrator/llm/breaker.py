"""A per-provider circuit breaker: fail fast after repeated failures, probe again after a cool-down."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """``threshold`` consecutive failures open the circuit for ``cooldown`` seconds; then one probe
    request is let through (half-open): its success closes the circuit, its failure reopens it."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_started = 0.0
        self.state = BreakerState.CLOSED

    def allow(self) -> float | None:
        """None if a request may go ahead, else the seconds left before the next probe."""
        if self.state is BreakerState.CLOSED:
            return None
        now = self._clock()
        remaining = self._opened_at + self.cooldown - now
        if remaining > 0:
            return remaining
        if self._probing and now - self._probe_started < self.cooldown:
            return self._probe_started + self.cooldown - now
        # No probe out, or the last one never reported back (a 429, a 4xx, a cancelled request): probe again.
        self.state = BreakerState.HALF_OPEN
        self._probing = True
        self._probe_started = now
        return None

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def record_failure(self) -> bool:
        """Count a failure; True when this failure opened the circuit."""
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False
            return True
        return False
