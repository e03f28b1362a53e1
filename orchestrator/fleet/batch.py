"""Writes to Redis that may wait, sent in batches: one round trip for many.

A node's round trips to Redis cost it about as much CPU as the rest of its fleet work per answer,
so what need not be written before the answer goes on (a quota settle) is queued. A call the node
makes anyway carries what has queued (:meth:`WriteBehind.take`); what none took is applied in one
call ``every`` seconds after the first item queued (at once when ``size`` items have queued). Nothing
queued, nothing wakes. What is queued when the batching stops (the node stopping) is applied on the
way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class WriteBehind(Generic[T]):
    """Items queued for ``apply``, which gets them ``size`` at most to a call."""

    def __init__(self, apply: Callable[[list[T]], Awaitable[None]], *, every: float, size: int) -> None:
        self._apply = apply
        self.every = every
        self.size = size
        self._queue: list[T] | None = None  # None: not batching now (add refuses)
        self._queued = anyio.Event()  # set by the first item queued since the last look
        self._full = anyio.Event()  # set when it holds ``size``

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Batch for as long as this runs; on the way out, what is queued is applied (shielded: a node
        stopping still writes what it did) and :meth:`add` refuses again."""
        self._queue = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_forever)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            queue, self._queue = self._queue, None
            with anyio.CancelScope(shield=True):
                await self.apply(queue or [])

    def add(self, item: T) -> bool:
        """Queue ``item``; False when not batching now (the caller applies it at once)."""
        queue = self._queue
        if queue is None:
            return False
        queue.append(item)
        if len(queue) == 1:
            self._queued.set()
        if len(queue) >= self.size:
            self._full.set()
        return True

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` queued items, oldest first, off the queue: the caller sends them with a call
        of its own."""
        queue = self._queue
        if not queue:
            return []
        taken, self._queue = queue[:limit], queue[limit:]
        return taken

    async def flush(self) -> None:
        """Apply what is queued now (before a read that should count it)."""
        queue = self._queue
        if not queue:
            return
        self._queue = []
        with anyio.CancelScope(shield=True):  # taken off the queue: they reach Redis or are lost with it
            await self.apply(queue)

    async def apply(self, items: list[T]) -> None:
        """Apply ``items`` now, ``size`` to a call."""
        for start in range(0, len(items), self.size):
            await self._apply(items[start : start + self.size])

    async def _flush_forever(self) -> None:
        # One look ``every`` seconds after a first item, not a wake-up per item: under load most items
        # are taken by calls the node makes anyway, and a task switch per item would cost more.
        while True:
            await self._queued.wait()
            with anyio.move_on_after(self.every):
                await self._full.wait()
            self._queued, self._full = anyio.Event(), anyio.Event()  # the next batch's, set by it
            await self.flush()
