"""Short-term memory of guild channels: the last messages said in each, whoever said them.

One :class:`Rooms` serves every persona of the process, so a message is decoded and kept once
however many personas share its channel. In each guild one persona with channel context on is the
*listener*: its gateway filter lets every message of that guild through, and each is kept here
without building a ``discord.Message``; the other personas' filters keep dropping what does not
concern them. The first time a persona answers in a channel whose messages were not all heard (the
process just started), it reads the channel's recent messages once (:meth:`Rooms.needs_backfill`).

Memory is bounded: ``per_channel`` messages per channel and ``max_channels`` channels, the least
recently active dropped first. DMs are never kept: context is for guild channels only.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import NamedTuple


class Heard(NamedTuple):
    id: int  # the message's snowflake: its order in the channel
    author_id: int
    author: str  # display name when it was said
    bot: bool
    content: str


class _Room:
    __slots__ = ("backfilled", "messages")

    def __init__(self, size: int) -> None:
        self.messages: deque[Heard] = deque(maxlen=size)
        self.backfilled = False


class Rooms:
    def __init__(self, per_channel: int = 20, max_channels: int = 10_000) -> None:
        self.per_channel = per_channel
        self.max_channels = max_channels
        self._rooms: OrderedDict[int, _Room] = OrderedDict()
        self._listeners: dict[int, list[str]] = {}  # guild -> bots with context on, in the order they joined
        self._listened: dict[str, frozenset[int]] = {}  # bot -> the guilds it is the listener of

    def __len__(self) -> int:
        return len(self._rooms)

    def _room(self, channel_id: int) -> _Room:
        room = self._rooms.get(channel_id)
        if room is None or room.messages.maxlen != self.per_channel:
            room = self._resize(channel_id, room)
        self._rooms.move_to_end(channel_id)
        return room

    def _resize(self, channel_id: int, old: _Room | None) -> _Room:
        room = _Room(self.per_channel)
        if old is not None:
            room.messages.extend(old.messages)
            room.backfilled = old.backfilled
        self._rooms[channel_id] = room
        while len(self._rooms) > self.max_channels:
            self._rooms.popitem(last=False)
        return room

    def hear(self, channel_id: int, message: Heard) -> None:
        """Keep ``message``; one heard twice (by two personas, or read back) is kept once."""
        if not self.per_channel:
            return
        messages = self._room(channel_id).messages
        if not messages or message.id > messages[-1].id:
            messages.append(message)
        elif all(kept.id != message.id for kept in messages):
            self._insert(messages, [message])

    def edit(self, channel_id: int, message_id: int, content: str) -> None:
        """A kept message was edited (a streamed answer grows by edits)."""
        room = self._rooms.get(channel_id)
        if room is None:
            return
        for index, kept in enumerate(room.messages):
            if kept.id == message_id:
                room.messages[index] = kept._replace(content=content)
                return

    def recent(self, channel_id: int, limit: int) -> list[Heard]:
        """The newest ``limit`` messages kept for the channel, oldest first."""
        room = self._rooms.get(channel_id)
        if room is None or limit <= 0:
            return []
        return list(room.messages)[-limit:]

    def needs_backfill(self, channel_id: int) -> bool:
        room = self._rooms.get(channel_id)
        return room is None or not room.backfilled

    def backfill(self, channel_id: int, messages: Iterable[Heard]) -> None:
        """Merge what was read back from the channel with what was heard meanwhile; read once."""
        room = self._room(channel_id)
        room.backfilled = True
        self._insert(room.messages, messages)

    @staticmethod
    def _insert(messages: deque[Heard], new: Iterable[Heard]) -> None:
        merged = {kept.id: kept for kept in messages}
        merged.update((message.id, message) for message in new)
        messages.clear()
        messages.extend(sorted(merged.values())[-(messages.maxlen or 0) :] if messages.maxlen else ())

    # ------------------------------------------------------------ who listens where

    def join(self, guild_id: int, bot: str) -> None:
        """``bot`` (with channel context on) is in ``guild_id`` and can listen there."""
        bots = self._listeners.setdefault(guild_id, [])
        if bot not in bots:
            bots.append(bot)
            self._elect()

    def leave(self, bot: str) -> None:
        """``bot`` stopped: another persona in its guilds listens from now on."""
        for guild_id in [g for g, bots in self._listeners.items() if bot in bots]:
            self._listeners[guild_id].remove(bot)
            if not self._listeners[guild_id]:
                del self._listeners[guild_id]
        self._elect()

    def _elect(self) -> None:
        """In each guild the first bot that joined listens; kept per bot, for its gateway filter."""
        listened: dict[str, set[int]] = {}
        for guild_id, bots in self._listeners.items():
            listened.setdefault(bots[0], set()).add(guild_id)
        self._listened = {bot: frozenset(guilds) for bot, guilds in listened.items()}

    def listened_by(self, bot: str) -> frozenset[int]:
        """The guilds where ``bot`` listens; empty for most bots, whose filter then costs what it did."""
        return self._listened.get(bot, frozenset())

    def listener(self, guild_id: int) -> str | None:
        bots = self._listeners.get(guild_id)
        return bots[0] if bots else None
