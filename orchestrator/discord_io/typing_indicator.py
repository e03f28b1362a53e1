"""One bot's "typing…" indicator, coalesced per channel and kept by one task.

Discord shows "Bot is typing…" for about 10 s after ``POST /channels/{id}/typing``, or until the
bot posts a message in that channel, and it rate-limits the endpoint. So answers do not send the
POST themselves: an answer marks its channel busy with :meth:`TypingIndicator.working` (a plain
counter, no task, no await) and the bot reports each message it posts with
:meth:`TypingIndicator.sent`. The keeper, :meth:`TypingIndicator.run`, sends the POSTs:

- at once when a channel gets its first active answer;
- again ``refresh`` seconds after the last one, or after the bot posted in the channel since the
  last one, while answers are still active there;
- never more often than once per ``min_interval`` per channel, and never for a channel without
  active answers. Such channels are forgotten once ``min_interval`` has passed.

Each POST runs in a task of the keeper's own task group, at most one in flight per channel, so a
slow channel does not hold up the others. A failed POST is logged and the indicator goes on.

A POST that reached Discord after the bot's message would show "typing…" for 10 s under a finished
answer. So an answer stops counting once it starts delivering (:meth:`Work.finish`), and the bot
waits for a POST in flight in the channel before it posts there (:meth:`TypingIndicator.settle`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import anyio
import discord
from anyio.abc import TaskGroup

log = logging.getLogger(__name__)


@dataclass
class _Channel:
    active: int = 0  # answers working in the channel now
    last_post: float = -math.inf  # when the last POST was started
    stale: bool = True  # nothing shown yet, or the bot posted since the last POST
    sending: bool = False  # a POST is in flight
    settled: anyio.Event | None = None  # set when the POST in flight ends, made only if someone waits


class Work:
    """One answer's share in keeping a channel's indicator up."""

    def __init__(self, channel: _Channel) -> None:
        self._channel: _Channel | None = channel

    def finish(self) -> None:
        """The answer is delivering (or done): it no longer keeps the indicator up. Idempotent."""
        if self._channel is not None:
            self._channel.active -= 1
            self._channel = None


class TypingIndicator:
    """Shows "typing…" in every channel where at least one answer is working.

    ``send_typing(channel_id)`` sends one POST (see ``discord_io.client.typing_sender``).
    """

    def __init__(
        self,
        send_typing: Callable[[int], Awaitable[object]],
        *,
        refresh: float = 8.0,
        min_interval: float = 1.0,
        settle_timeout: float = 1.0,
    ) -> None:
        self._send_typing = send_typing
        self.refresh = refresh
        self.min_interval = min_interval
        self.settle_timeout = settle_timeout
        self._channels: dict[int, _Channel] = {}
        self._wake = anyio.Event()

    @contextmanager
    def working(self, channel_id: int) -> Iterator[Work]:
        """Mark one answer as working in ``channel_id`` until the block ends or it calls ``finish()``."""
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel()
        channel.active += 1
        if channel.active == 1:
            channel.stale = True
            self._wake.set()
        work = Work(channel)
        try:
            yield work
        finally:
            work.finish()

    async def settle(self, channel_id: int) -> None:
        """Wait until no POST is in flight in ``channel_id`` (at most ``settle_timeout`` s), so that
        none reaches Discord after the message the bot is about to post there."""
        channel = self._channels.get(channel_id)
        if channel is None or not channel.sending:
            return
        if channel.settled is None:
            channel.settled = anyio.Event()
        with anyio.move_on_after(self.settle_timeout):
            await channel.settled.wait()

    def sent(self, channel_id: int) -> None:
        """The bot posted a message in ``channel_id`` (Discord hides its indicator there)."""
        channel = self._channels.get(channel_id)
        if channel is not None and channel.active and not channel.stale:
            channel.stale = True
            self._wake.set()

    async def run(self) -> None:
        """Send the POSTs until cancelled (the owner's task group ends it)."""
        async with anyio.create_task_group() as sends:
            while True:
                wake = self._wake = anyio.Event()
                with anyio.move_on_after(self._start_due(sends)):
                    await wake.wait()

    def _start_due(self, sends: TaskGroup) -> float:
        """Start the POSTs that are due and forget idle channels; returns the seconds until the next is due."""
        now = anyio.current_time()
        next_due = math.inf
        for channel_id, channel in list(self._channels.items()):
            if channel.sending:
                continue  # the end of the POST wakes the keeper again
            if not channel.active:
                due = channel.last_post + self.min_interval
                if due <= now:
                    del self._channels[channel_id]
                else:
                    next_due = min(next_due, due)
                continue
            due = channel.last_post + (self.min_interval if channel.stale else self.refresh)
            if due <= now:
                channel.sending = True
                sends.start_soon(self._post, channel_id, channel)
            else:
                next_due = min(next_due, due)
        return next_due - now

    async def _post(self, channel_id: int, channel: _Channel) -> None:
        channel.stale, channel.last_post = False, anyio.current_time()
        try:
            await self._send_typing(channel_id)
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.debug("typing indicator in channel %s failed: %s", channel_id, exc)
        except Exception:
            log.warning("typing indicator in channel %s failed", channel_id, exc_info=True)
        finally:
            channel.sending = False
            if channel.settled is not None:
                channel.settled.set()
                channel.settled = None
            self._wake.set()
