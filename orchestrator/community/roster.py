"""The personas of this orchestrator: their Discord user ids, names and guilds.

A persona registers when its client is ready and leaves when it stops; the others use the roster
to recognise a message from a fellow persona, to tell the model who else is in the channel, and to
turn a model's ``@Name`` into a real mention of that persona.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import discord

from .panel import Deliver


@dataclass
class Member:
    bot: str  # the name in bots.yaml
    user_id: int
    display: str  # the name Discord shows
    prefix: str
    guilds: set[int] = field(default_factory=set)
    deliver: Deliver | None = None  # hands this persona a panel turn
    accepts: Callable[[discord.Message], bool] | None = None  # whether it may speak where a message was said


class Roster:
    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        self._by_user: dict[int, Member] = {}

    def register(self, member: Member) -> None:
        self.leave(member.bot)
        self._members[member.bot] = member
        self._by_user[member.user_id] = member

    def leave(self, bot: str) -> None:
        member = self._members.pop(bot, None)
        if member is not None:
            self._by_user.pop(member.user_id, None)

    def join_guild(self, bot: str, guild_id: int) -> None:
        member = self._members.get(bot)
        if member is not None:
            member.guilds.add(guild_id)

    def members(self) -> list[Member]:
        return list(self._members.values())

    def by_user(self, user_id: int) -> Member | None:
        """The persona whose Discord user this is, if any."""
        return self._by_user.get(user_id)

    def present(self, guild_id: int) -> list[Member]:
        """The personas in ``guild_id``, in the order they registered."""
        return [member for member in self._members.values() if guild_id in member.guilds]
