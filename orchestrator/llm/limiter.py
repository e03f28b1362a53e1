"""A concurrency limiter that shares its slots among bots by weight (weighted fair queueing).

Each waiting bot has a virtual time; a freed slot goes to the waiting bot with the smallest one,
and serving a bot advances its virtual time by ``1 / weight``. A bot that floods the queue
therefore gets its weighted share and no more while others wait. The queue is bounded and every
wait has a timeout, so an overloaded provider answers "busy" instead of growing memory. The number
of slots can change at any time (:meth:`FairLimiter.resize`, driven by the provider's adaptive
limit): new slots go to waiting bots at once, slots taken away are withdrawn as they are released.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import anyio


class QueueFull(Exception):
    """Too many requests are already waiting."""


class QueueTimeout(Exception):
    """A request waited longer than its timeout for a slot."""


@dataclass
class _Waiter:
    event: anyio.Event
    granted: bool = False


@dataclass(frozen=True)
class LimiterStatistics:
    capacity: int
    in_use: int
    waiting: int


class FairLimiter:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._in_use = 0
        self._queues: dict[str, deque[_Waiter]] = {}
        self._vtime: dict[str, float] = {}
        self._clock = 0.0
        self._waiting = 0
        self._weights: dict[str, float] = {}

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(self.capacity, self._in_use, self._waiting)

    @property
    def saturated(self) -> bool:
        """Every slot is taken or a bot waits for one."""
        return self._waiting > 0 or self._in_use >= self.capacity

    def resize(self, capacity: int) -> None:
        """Use ``capacity`` slots from now on."""
        self.capacity = capacity
        while self._queues and self._in_use < self.capacity:
            self._in_use += 1
            self._grant()

    def _advance(self, key: str, weight: float) -> None:
        start = max(self._vtime.get(key, 0.0), self._clock)
        self._clock = start
        self._vtime[key] = start + 1.0 / weight

    async def acquire(self, key: str, weight: float, timeout: float) -> None:
        """Take a slot for ``key`` or raise :class:`QueueFull` / :class:`QueueTimeout`."""
        if self._in_use < self.capacity and self._waiting == 0:
            self._in_use += 1
            self._advance(key, weight)
            return
        if self._waiting >= self.max_waiting:
            raise QueueFull
        waiter = _Waiter(anyio.Event())
        self._queues.setdefault(key, deque()).append(waiter)
        self._weights[key] = weight
        self._waiting += 1
        try:
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter.granted:
                self.release()  # the slot arrived just as we gave up: pass it on
            else:
                self._remove(key, waiter)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout from None
            raise

    def _remove(self, key: str, waiter: _Waiter) -> None:
        queue = self._queues.get(key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._waiting -= 1
            if not queue:
                del self._queues[key]

    def release(self) -> None:
        """Free a slot and hand it to the waiting bot with the smallest virtual time, if it is still a slot."""
        if self._queues and self._in_use <= self.capacity:
            self._grant()
        else:
            self._in_use -= 1

    def _grant(self) -> None:
        """Give a taken slot to the waiting bot with the smallest virtual time."""
        key = min(self._queues, key=lambda k: max(self._vtime.get(k, 0.0), self._clock))
        queue = self._queues[key]
        waiter = queue.popleft()
        if not queue:
            del self._queues[key]
        self._waiting -= 1
        waiter.granted = True
        self._advance(key, self._weights[key])
        waiter.event.set()
