"""Streamed answers on Discord: send the first words at once, then edit as the model writes.

Discord allows about five message sends/edits per five seconds in a channel. Every stream of a
bot in one channel draws from the same :class:`EditBudget`, so five answers streaming at once
still stay within the limit: an update that finds the budget empty is skipped (the text is kept
and shown by the next update), and the final text always waits for the budget. An update that
fails is reported and skipped the same way; a failed final update raises. Text past 2000
characters continues in a new message with the same splitting rules as a plain answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .text import neutralize_mentions, split_message

CUT_NOTE = "\n\n*(The answer was cut off: the model provider stopped in the middle. Please ask again.)*"


class EditBudget:
    """At most ``rate`` Discord writes per ``per`` seconds, in a sliding window.

    A write's stamp is taken when it starts and moved to when it finished (:meth:`done`), so the
    window also holds as Discord measures it, on arrival, however long the request took.
    """

    def __init__(self, rate: int = 5, per: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.per = per
        self._clock = clock
        self._stamps: list[list[float]] = []

    def wait_time(self) -> float:
        now = self._clock()
        self._stamps = [stamp for stamp in self._stamps if now - stamp[0] < self.per]
        if len(self._stamps) < self.rate:
            return 0.0
        return min(stamp[0] for stamp in self._stamps) + self.per - now

    def try_take(self, *, keep: int = 0) -> list[float] | None:
        """A stamp for a write that may start now, or None when fewer than ``keep`` + 1 writes are left."""
        if self.wait_time() > 0 or len(self._stamps) + keep >= self.rate:
            return None
        stamp = [self._clock()]
        self._stamps.append(stamp)
        return stamp

    async def take(self) -> list[float]:
        while (stamp := self.try_take()) is None:  # noqa: ASYNC110 - waits for time to pass, not for an event
            await anyio.sleep(self.wait_time())
        return stamp

    def done(self, stamp: list[float]) -> None:
        stamp[0] = self._clock()


class EditBudgets:
    """One :class:`EditBudget` per channel, for the channels a bot used recently (bounded)."""

    def __init__(self, rate: int = 5, per: float = 5.0, max_channels: int = 1024) -> None:
        self.rate, self.per, self.max_channels = rate, per, max_channels
        self._budgets: OrderedDict[int, EditBudget] = OrderedDict()

    def for_channel(self, channel_id: int) -> EditBudget:
        budget = self._budgets.get(channel_id)
        if budget is None:
            budget = self._budgets[channel_id] = EditBudget(self.rate, self.per)
            while len(self._budgets) > self.max_channels:
                self._budgets.popitem(last=False)
        self._budgets.move_to_end(channel_id)
        return budget


Send = Callable[[str, bool], Awaitable[Any]]  # (text, is_first) -> a message with ``edit(content=...)``


class StreamingReply:
    """Shows a growing answer as a reply plus follow-ups, within the channel's edit budget.
    ``on_failed_update`` hears of each intermediate update that failed (and was skipped)."""

    def __init__(
        self,
        send: Send,
        budget: EditBudget,
        *,
        on_failed_update: Callable[[Exception], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._budget = budget
        self._on_failed_update = on_failed_update
        self._clock = clock
        self._interval = budget.per / budget.rate  # one update per interval per stream at most
        self._last_write = float("-inf")
        self._messages: list[Any] = []
        self._shown: list[str] = []
        self.text = ""

    @property
    def started(self) -> bool:
        return bool(self._messages)

    @property
    def message_ids(self) -> tuple[int, ...]:
        """The ids of the messages showing the answer so far."""
        return tuple(message.id for message in self._messages)

    async def feed(self, piece: str) -> None:
        """Add model output; update Discord now if the budget allows, else later."""
        self.text += piece
        if not self._messages:
            if self.text.strip():
                await self._sync(force=True)  # the first words appear as soon as they exist
            return
        if self._clock() - self._last_write >= self._interval:
            await self._sync(force=False)

    async def finish(self, *, cut: bool = False) -> None:
        """Make Discord show exactly the whole answer (plus a note when the stream was cut)."""
        if cut and not self.text.endswith(CUT_NOTE):  # idempotent: a failed finish may be retried
            self.text = self.text.rstrip() + CUT_NOTE
        await self._sync(force=True)

    async def _sync(self, *, force: bool) -> None:
        chunks = split_message(neutralize_mentions(self.text))
        for index, chunk in enumerate(chunks):
            if index < len(self._shown) and self._shown[index] == chunk:
                continue
            # intermediate updates leave one write free so the final text is never kept waiting
            stamp = await self._budget.take() if force else self._budget.try_take(keep=1)
            if stamp is None:
                return
            self._last_write = self._clock()
            try:
                if index < len(self._messages):
                    await self._messages[index].edit(content=chunk)
                    self._shown[index] = chunk
                else:
                    self._messages.append(await self._send(chunk, index == 0))
                    self._shown.append(chunk)
            except Exception as exc:
                if force:
                    raise
                self._on_failed_update(exc)
                return  # skipped: the next update (or finish) shows the text
            finally:
                self._budget.done(stamp)
