"""How many requests a provider takes at once, learnt from its answers (additive increase, multiplicative decrease).

Growth: only while the limit is reached (every slot taken, or a bot waiting for one, when the
request was sent or when its answer came), since a limit nobody reaches says nothing about the
provider. Until the first decrease the limit grows by one per such answer, so one burst above it
teaches it the burst's size; after a decrease, by one per round trip (one per ``limit`` answers),
as TCP does after a loss.

Decrease: a 429 halves the limit (down to 1). Rising latency cuts it by a quarter, but never below
its start: LLM latency varies tenfold with the length of the answer, so latency is only trusted to
take back growth, not to throttle below what was configured. Latency is an EWMA over the last few
answers; its baseline is their running minimum, forgotten over ``baseline_memory`` seconds so that
a lasting change (longer answers, another model) is learnt, while a queue building up at the
provider within minutes is not. Answers to requests sent before the last decrease cannot cause
another one (they reflect the old limit), so a burst of 429s halves the limit once, not per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INITIAL = 16  # the start when bots.yaml sets no max_concurrency ...
CEILING = 256  # ... and the most it grows to then
OVERLOAD_BACKOFF = 0.5  # a 429 is a refusal
LATENCY_BACKOFF = 0.75  # rising latency is a hint
SMOOTHING = 0.2  # weight of the newest answer in the latency EWMA


class AIMDLimit:
    """One provider's adaptive concurrency limit, within ``[1, ceiling]``; ``limit`` is the current value."""

    def __init__(
        self,
        name: str,
        *,
        initial: int = INITIAL,
        ceiling: int = CEILING,
        latency_factor: float = 2.0,
        baseline_memory: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= initial <= ceiling:
            raise ValueError(f"the initial limit must be within [1, ceiling={ceiling}], got {initial}")
        self.name = name
        self.initial = initial
        self.ceiling = ceiling
        self.latency_factor = latency_factor
        self.baseline_memory = baseline_memory
        self._clock = clock
        self._limit = float(initial)  # fractional between whole steps of the one-per-round growth
        self._fast_until = math.inf  # grow one per answer below this, one per round above
        self._latency: float | None = None
        self._baseline = 0.0
        self._updated = 0.0
        self._decreased_at = -math.inf

    @property
    def limit(self) -> int:
        return int(self._limit)

    def set_ceiling(self, ceiling: int) -> None:
        """A new hard cap, which is also the new start (a fleet shares a configured ``max_concurrency``
        among its live nodes): the limit moves by as much as the cap, within ``[1, ceiling]``, so what
        429s took off it stays taken off."""
        if ceiling < 1:
            raise ValueError(f"the ceiling must be at least 1, got {ceiling}")
        self._limit = min(float(ceiling), max(1.0, self._limit + ceiling - self.ceiling))
        self.ceiling = self.initial = ceiling

    def succeeded(self, sent_at: float, *, saturated: bool) -> None:
        """An answer arrived for a request sent at ``sent_at``; ``saturated``: the limit was reached then."""
        now = self._clock()
        latency = self._observe(now - sent_at, now)
        if latency > self.latency_factor * self._baseline:
            if self._limit > self.initial:
                reason = f"its latency rose to {latency:.2f}s from {self._baseline:.2f}s"
                self._decrease(sent_at, max(self.initial, self._limit * LATENCY_BACKOFF), reason)
        elif saturated:
            step = 1.0 if self._limit < self._fast_until else 1.0 / self._limit
            self._limit = min(float(self.ceiling), self._limit + step)

    def overloaded(self, sent_at: float) -> None:
        """The provider refused a request sent at ``sent_at`` as too many (429)."""
        self._decrease(sent_at, max(1.0, self._limit * OVERLOAD_BACKOFF), "it answered 429")

    def _observe(self, sample: float, now: float) -> float:
        """Update the smoothed latency and its baseline; returns the smoothed latency."""
        if self._latency is None:
            latency = self._baseline = sample
        else:
            latency = self._latency + SMOOTHING * (sample - self._latency)
            forget = 1.0 - math.exp(-(now - self._updated) / self.baseline_memory)
            self._baseline = min(latency, self._baseline + forget * (latency - self._baseline))
        self._latency, self._updated = latency, now
        return latency

    def _decrease(self, sent_at: float, to: float, reason: str) -> None:
        if sent_at < self._decreased_at or int(to) == self.limit:
            return
        before = self.limit
        self._limit = self._fast_until = float(int(to))
        self._decreased_at = self._clock()
        log.info("provider %s: at most %d requests at once now (was %d): %s", self.name, self.limit, before, reason)
