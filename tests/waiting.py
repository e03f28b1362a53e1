"""Waiting for what no event announces: another process, Redis' timers, a thread's own retry timer."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 15.0) -> None:
    """Wait until ``condition()`` (or what it returns, awaited) holds, looking every 20 ms; fail after
    ``within`` seconds. Only for state no event reports: in-process state has its own wait helpers."""
    with anyio.fail_after(within):
        while True:
            held = condition()
            if await held if inspect.isawaitable(held) else held:
                return
            await anyio.sleep(0.02)
