"""The loop guard: personas may answer each other, but not for ever and not too fast.

Per channel, the guard keeps the ids of recent human messages and of recent persona messages. An
answer to a human is never held back. An answer to persona message X is given only while fewer than
``max_bot_turns`` persona messages (X included) follow the last human message before X, and fewer
than ``max_bot_messages_per_minute`` persona answers were granted in the channel in the last minute.
Message ids are Discord's snowflakes, so the count depends on the order in which messages were
said, not on the order in which each persona's connection happened to deliver them.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Callable

_MAX_CHANNELS = 10_000
_KEPT_IDS = 256  # recent ids per kind and channel: more than any max_bot_turns allows
_MAX_PER_MINUTE = 1000  # the most group.max_bot_messages_per_minute allows


class _Channel:
    __slots__ = ("granted", "humans", "personas")

    def __init__(self) -> None:
        self.humans: list[int] = []  # ids, ascending
        self.personas: list[int] = []
        self.granted: deque[float] = deque(maxlen=_MAX_PER_MINUTE)  # when persona answers were granted


def _remember(ids: list[int], message_id: int) -> None:
    index = bisect.bisect_left(ids, message_id)
    if index < len(ids) and ids[index] == message_id:
        return
    ids.insert(index, message_id)
    if len(ids) > _KEPT_IDS:
        del ids[0]


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
        _remember(self._channel(channel_id).humans, message_id)

    def persona_spoke(self, channel_id: int, message_id: int) -> None:
        _remember(self._channel(channel_id).personas, message_id)

    def grant(
        self, channel_id: int, message_id: int, max_turns: int, max_per_minute: int, *, to_persona: bool
    ) -> str | None:
        """May a persona answer message ``message_id``? None (and the answer is counted), or why not."""
        channel = self._channel(channel_id)
        now = self._clock()
        while channel.granted and channel.granted[0] <= now - 60.0:
            channel.granted.popleft()
        if to_persona:
            since = bisect.bisect_left(channel.humans, message_id)
            last_human = channel.humans[since - 1] if since else 0
            first = bisect.bisect_right(channel.personas, last_human)
            before = bisect.bisect_left(channel.personas, message_id)
            turns = before - first + 1  # the persona messages since that human one, the answered one included
            if turns >= max_turns:
                return f"{turns} persona messages since a human last spoke (group.max_bot_turns is {max_turns})"
            if len(channel.granted) >= max_per_minute:
                return (f"{len(channel.granted)} persona answers in the last minute "
                        f"(group.max_bot_messages_per_minute is {max_per_minute})")  # fmt: skip
        channel.granted.append(now)
        return None
