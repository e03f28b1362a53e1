"""One persona's part in the community: it hears its rooms, is known to the other personas, and
asks the loop guard before answering one of them.

The shared state lives in :class:`~orchestrator.community.Community`; this is the persona's side of
it, for one incarnation of its client (it leaves the roster and the listeners when it stops).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import discord

from ..community import Community
from ..community.panel import MAX_TOPIC_CHARS, Deliver, Note, Panelist
from ..community.prompt import mention_personas, where_prompt
from ..community.rooms import Heard
from ..community.roster import Member
from ..community.speakers import heard_from_message, heard_from_payload
from ..config import BotSpec
from ..memory import Turn
from . import access
from .commands import parse_command

log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self,
        community: Community,
        client: discord.Client,
        spec: Callable[[], BotSpec],
        deliver: Deliver,
        accepts: Callable[[discord.Message], bool],
    ) -> None:
        """``deliver`` queues a panel turn in this persona's mailbox; ``accepts`` says whether it may
        speak where a message was said (its access rules)."""
        self._community = community
        self._client = client
        self._spec = spec
        self._deliver = deliver
        self._accepts = accepts

    @property
    def _bot(self) -> str:
        return self._spec().name

    def _context(self) -> int:
        return self._spec().context.channel_messages

    # ------------------------------------------------------------ arriving and leaving

    def arrived(self) -> None:
        """The client is ready: join the roster, and listen in its guilds if the persona hears rooms."""
        me = self._client.user
        if me is None:
            return
        spec = self._spec()
        self._community.roster.register(
            Member(spec.name, me.id, me.display_name, spec.prefix, deliver=self._deliver, accepts=self._accepts)
        )
        for guild in self._client.guilds:
            self.joined_guild(guild.id)

    def joined_guild(self, guild_id: int) -> None:
        """Join the guild's roster, and its listeners if the persona keeps channel context and can read
        the room: a persona without message content is sent the text of few messages, so it never
        listens for a guild (a persona with the intent there does, and their rooms are shared)."""
        self._community.roster.join_guild(self._bot, guild_id)
        spec = self._spec()
        if spec.context.channel_messages and spec.message_content:
            self._community.rooms.join(guild_id, self._bot)

    def left(self) -> None:
        self._community.roster.leave(self._bot)
        self._community.rooms.leave(self._bot)

    # ------------------------------------------------------------ hearing

    def listened(self) -> frozenset[int]:
        """The guilds whose every message this persona's gateway filter lets through."""
        return self._community.rooms.listened_by(self._bot)

    def _can_read(self, data: dict[str, Any]) -> bool:
        """Whether this persona was sent the payload's text (see :func:`access.payload_readable`); an
        unreadable message would enter the room as an empty line, and would keep another persona's
        readable copy of it out (a room keeps the first copy heard)."""
        if self._spec().message_content:
            return True
        me = self._client.user
        return me is not None and access.payload_readable(data, me.id)

    def hear(self, data: dict[str, Any]) -> None:
        """A decoded MESSAGE_CREATE payload, before discord.py builds a Message (if it does at all)."""
        if "guild_id" not in data:
            return  # DMs stay out of every room
        channel_id = int(data["channel_id"])
        if self._context() and self._can_read(data):
            self._community.rooms.hear(channel_id, heard_from_payload(data))
        author = data.get("author") or {}
        if not author.get("bot"):
            self._community.guard.human_spoke(channel_id, int(data["id"]))
        elif self._community.roster.by_user(int(author.get("id", 0))) is not None:
            self._community.guard.persona_spoke(channel_id, int(data["id"]))

    def edited(self, data: dict[str, Any]) -> None:
        """A MESSAGE_UPDATE payload: a streamed answer grows by edits."""
        if "content" in data and "id" in data and "channel_id" in data and self._can_read(data):
            self._community.rooms.edit(int(data["channel_id"]), int(data["id"]), str(data["content"]))

    async def room(
        self, message: discord.Message, channel: discord.abc.Messageable, limit: int, *, until_now: bool = False
    ) -> list[Turn]:
        """The recent messages before ``message`` (or, ``until_now``, all but it) in its ``channel``, as
        turns (this persona's own as the assistant's); the first time in a channel since the process
        started, read back from Discord."""
        if message.guild is None or limit <= 0:
            return []
        rooms = self._community.rooms
        channel_id = message.channel.id
        me = self._client.user
        if rooms.needs_backfill(channel_id):
            try:
                history = [m async for m in channel.history(limit=limit, before=message)]
            except (discord.HTTPException, aiohttp.ClientError) as exc:
                log.warning("bot %s: could not read the recent messages of channel %s (%s)", self._bot, channel_id, exc)
            else:
                if not self._spec().message_content:  # as over the gateway, whatever the portal lets REST show
                    history = [m for m in history if me is not None and access.guild_message_readable(m, me.id)]
                rooms.backfill(channel_id, [heard_from_message(m) for m in history])
        turns = []
        for heard in rooms.recent(channel_id, limit + 1):
            if heard.id == message.id or (heard.id > message.id and not until_now):
                continue
            if me is not None and heard.author_id == me.id:
                turns.append(Turn("assistant", heard.content, "", (heard.id,)))
            else:
                turns.append(Turn("user", heard.content, heard.author, (heard.id,)))
        return turns[-limit:]

    # ------------------------------------------------------------ the other personas

    def is_persona(self, user_id: int) -> bool:
        """A fellow persona of this orchestrator (not this one)."""
        member = self._community.roster.by_user(user_id)
        return member is not None and member.bot != self._bot

    def commands_another(self, content: str) -> bool:
        """Whether ``content`` is a command for another persona (which may mention this one)."""
        return any(
            parse_command(content, member.prefix) is not None
            for member in self._community.roster.members()
            if member.bot != self._bot
        )

    def others(self, message: discord.Message) -> list[Member]:
        if message.guild is None:
            return []
        return [m for m in self._community.roster.present(message.guild.id) if m.bot != self._bot]

    def system_prompt(self, persona: str, message: discord.Message) -> str:
        if message.guild is None:
            return persona
        channel = getattr(message.channel, "name", None)
        return f"{persona}\n\n{where_prompt(message.guild.name, channel, self.others(message))}"

    def posted(self, message: discord.Message, ids: tuple[int, ...], text: str) -> None:
        """This persona's answer to ``message`` was posted as ``ids``: count it, and hear it at once (the
        next panelist must see it whenever the gateway delivers it)."""
        me = self._client.user
        if message.guild is None or not ids or me is None:
            return
        for message_id in ids:
            self._community.guard.persona_spoke(message.channel.id, message_id)
        if self._context():
            self._community.rooms.hear(message.channel.id, Heard(ids[0], me.id, me.display_name, True, text))

    # ------------------------------------------------------------ panels

    def start_panel(self, message: discord.Message, argument: str, note: Note) -> str:
        """Start a panel from ``<prefix>panel [rounds] [@persona ...] topic``; what to tell the user."""
        if message.guild is None:
            return "Panels are held in server channels, not in DMs."
        rounds, mentioned, topic = parse_panel(argument)
        max_rounds = self._spec().group.max_panel_rounds
        if not topic:
            return f"Give the panel a topic, for example `{self._spec().prefix}panel 2 is free will an illusion?`."
        if len(topic) > MAX_TOPIC_CHARS:
            return f"The topic is too long ({len(topic)} characters; at most {MAX_TOPIC_CHARS})."
        if rounds > max_rounds:
            return f"A panel has at most {max_rounds} rounds here (group.max_panel_rounds)."
        roster = self._community.roster.present(message.guild.id)
        present = [m for m in roster if m.accepts is None or m.accepts(message)]
        by_id = {m.user_id: m for m in present}
        unknown = [user_id for user_id in mentioned if user_id not in by_id]
        if unknown:
            names = ", ".join(f"<@\u200b{user_id}>" for user_id in unknown)
            return f"{names} is not a persona in this channel; mention only personas that are here."
        chosen = [by_id[user_id] for user_id in dict.fromkeys(mentioned)] if mentioned else present
        panelists = [Panelist(m.bot, m.display, m.deliver) for m in chosen if m.deliver is not None]
        refusal = self._community.panels.start(message, message.channel.id, topic, rounds, panelists, note)
        if refusal is not None:
            return refusal
        names = ", ".join(p.display for p in panelists)
        plural = "s" if rounds > 1 else ""
        return f'Panel on "{topic}": {names}, {rounds} round{plural}. `{self._spec().prefix}stop` ends it.'

    def stop_panel(self, message: discord.Message) -> str:
        if self._community.panels.stop(message.channel.id):
            return "The panel stops after the turn in progress."
        return "No panel is running in this channel."

    def address(self, text: str, message: discord.Message) -> tuple[str, list[int]]:
        """``@Name`` of a persona present becomes a real mention (and the only ping allowed)."""
        return mention_personas(text, self.others(message))

    def may_answer(self, message: discord.Message) -> bool:
        """Ask the loop guard for a turn in the channel; False (logged) when it says no."""
        if message.guild is None:
            return True
        group = self._spec().group
        to_persona = self.is_persona(message.author.id)
        refusal = self._community.guard.grant(
            message.channel.id,
            message.id,
            group.max_bot_turns,
            group.max_bot_messages_per_minute,
            to_persona=to_persona,
        )
        if refusal is not None:
            log.info(
                "bot %s: not answering %s in channel %s: %s", self._bot, message.author, message.channel.id, refusal
            )
        return refusal is None


_LEADING_MENTION = re.compile(r"\s*<@!?(\d+)>")


def parse_panel(argument: str) -> tuple[int, list[int], str]:
    """``[rounds] [@persona ...] topic`` -> (rounds, mentioned user ids in order, topic)."""
    rest = argument.strip()
    rounds = 1
    first, _, after = rest.partition(" ")
    if first.isdigit():
        rounds, rest = max(1, int(first)), after.strip()
    mentioned: list[int] = []
    while match := _LEADING_MENTION.match(rest):
        mentioned.append(int(match[1]))
        rest = rest[match.end() :]
    return rounds, mentioned, rest.strip()
