"""Time that moves only when a test says so: a clock and a sleep for :class:`~orchestrator.llm.pool.LLMPool`."""

from __future__ import annotations

import time

import anyio

from orchestrator.llm.pool import LLMPool


class FakeTime:
    """Starts at the real monotonic time (so pauses and cool-downs already set keep their meaning);
    ``sleep`` records the wait and moves the clock on instead of waiting."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()

    def install(self, pool: LLMPool) -> FakeTime:
        pool.clock, pool.sleep = self, self.sleep
        return self
