"""The loop guard: personas may answer each other, but not for ever and not too fast.

Per channel, every persona message counts: those since a human last spoke, and those of the last
minute. An answer to a human is never held back. An answer to another persona is given only while
fewer than ``max_bot_turns`` persona messages followed the last human message and fewer than
``max_bot_messages_per_minute`` were posted in the last minute. A message is counted when it is
granted (before the provider is asked), so personas answering at once cannot overshoot together.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

_MAX_CHANNELS = 10_000
_MAX_PER_MINUTE = 1000  # the most group.max_bot_messages_per_minute allows


class _Channel:
    __slots__ = ("bot_turns", "last_human", "recent")

    def __init__(self) -> None:
        self.last_human = 0  # id of the newest human message seen
        self.bot_turns = 0  # persona messages granted since then
        self.recent: deque[float] = deque(maxlen=_MAX_PER_MINUTE)  # when persona messages were granted


class LoopGuard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._channels: OrderedDict[int, _Channel] = OrderedDict()

    def _channel(self, channel_id: int) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel()
            if len(self._channels) > _MAX_CHANNELS:
                self._channels.popitem(last=False)
        self._channels.move_to_end(channel_id)
        return channel

    def human_spoke(self, channel_id: int, message_id: int) -> None:
        """A human message: personas get a new allowance (a message seen twice counts once)."""
        channel = self._channel(channel_id)
        if message_id > channel.last_human:
            channel.last_human = message_id
            channel.bot_turns = 0

    def grant(self, channel_id: int, max_turns: int, max_per_minute: int, *, to_persona: bool) -> str | None:
        """Count one persona message in the channel; or, when it answers a persona and would break a
        limit, say why not (and count nothing)."""
        channel = self._channel(channel_id)
        now = self._clock()
        while channel.recent and channel.recent[0] <= now - 60.0:
            channel.recent.popleft()
        if to_persona and channel.bot_turns >= max_turns:
            return f"{channel.bot_turns} persona messages since a human last spoke (group.max_bot_turns)"
        if to_persona and len(channel.recent) >= max_per_minute:
            return f"{len(channel.recent)} persona messages in the last minute (group.max_bot_messages_per_minute)"
        channel.bot_turns += 1
        channel.recent.append(now)
        return None
