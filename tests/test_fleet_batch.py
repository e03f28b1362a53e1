"""fleet/batch.py: queued items go ``every`` seconds after the first one queued, at once when the queue
is full, with a call that takes them, or on the way out; after that, ``add`` refuses."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from orchestrator.fleet.batch import WriteBehind


class Applied:
    """An ``apply`` that records its batches; ``await applied.next()`` waits for the next one."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self._event = anyio.Event()

    async def __call__(self, items: list[int]) -> None:
        self.batches.append(items)
        self._event.set()

    async def next(self) -> None:
        with anyio.fail_after(10):  # a hang guard, not a timing assertion
            await self._event.wait()
        self._event = anyio.Event()


async def test_a_lone_item_goes_after_every_and_so_does_one_queued_later() -> None:
    applied = Applied()
    batches = WriteBehind[int](applied, every=0.01, size=10)
    async with batches.running():
        assert batches.add(1)
        await applied.next()
        assert batches.add(2)  # the queue was empty again: this one starts the next wait
        await applied.next()
        assert applied.batches == [[1], [2]]


async def test_a_full_queue_goes_at_once() -> None:
    applied = Applied()
    batches = WriteBehind[int](applied, every=3600, size=3)
    async with batches.running():
        for item in (1, 2, 3):
            batches.add(item)
        await applied.next()
        assert applied.batches == [[1, 2, 3]]


async def test_what_a_call_took_is_not_applied_and_the_rest_goes_on_the_way_out() -> None:
    applied = Applied()
    batches = WriteBehind[int](applied, every=3600, size=10)
    async with batches.running():
        for item in (1, 2, 3):
            batches.add(item)
        assert batches.take(2) == [1, 2]
        assert applied.batches == []
    assert applied.batches == [[3]]
    assert not batches.add(4), "not batching any more: the caller applies it itself"


class Looking(WriteBehind[int]):
    """Counts the looks at the queue (each a wake-up of the batching task)."""

    looks = 0

    async def flush(self) -> None:
        self.looks += 1
        await super().flush()


async def test_nothing_queued_nothing_wakes() -> None:
    """An idle node's batching costs nothing: even with no wait at all between looks, it looks only
    once something has queued."""
    applied = Applied()
    batches = Looking(applied, every=0, size=10)
    async with batches.running():
        for _ in range(20):  # turns of the event loop, in which a looking task would look
            await anyio.lowlevel.checkpoint()
        assert batches.looks == 0
        batches.add(1)
        await applied.next()
        assert batches.looks == 1 and applied.batches == [[1]]
