"""Catching up after a new session: Discord replays nothing to a new session (only to a resumed
one), so a bot reads the channels where it took messages before, from the newest one it took.

A message the bot has already replied to is skipped: in fleet mode the node that ran the bot before
may have answered messages after the position it last saved. In fleet mode a message marked answered
in Redis is skipped too (fleet/claims.py), for a reply that lies beyond what is read."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

import aiohttp
import discord

log = logging.getLogger(__name__)

CATCH_UP_LIMIT = 50  # messages read per channel


async def catch_up(
    client: discord.Client,
    taken: Mapping[int, int],
    window: float,
    take: Callable[[discord.Message], None],
    bot: str,
    answered_elsewhere: Callable[[Sequence[int]], Awaitable[set[int]]] | None = None,
) -> None:
    """Hand ``take`` every message after the newest one taken in each channel of ``taken``, oldest
    first, skipping those older than ``window`` seconds, those the bot has replied to and those
    ``answered_elsewhere`` names (fleet mode). A channel that cannot be read is logged and left. REST
    messages carry no member data, so a bot restricted to roles cannot check them."""
    oldest = discord.utils.time_snowflake(discord.utils.utcnow() - timedelta(seconds=window))
    me = client.user.id if client.user is not None else None
    for channel_id, after in taken.items():
        known = client.get_channel(channel_id)
        guild = getattr(known, "guild", None)
        channel = client.get_partial_messageable(channel_id, guild_id=guild.id if guild is not None else None)
        try:
            messages = [message async for message in channel.history(
                limit=CATCH_UP_LIMIT, after=discord.Object(max(after, oldest)), oldest_first=True
            )]  # fmt: skip
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.warning(
                "bot %s: could not read channel %s for messages missed without a session (%s)", bot, channel_id, exc
            )
            continue
        answered = {
            message.reference.message_id
            for message in messages
            if message.author.id == me and message.reference is not None
        }
        if answered_elsewhere is not None:
            answered |= await answered_elsewhere(
                [message.id for message in messages if message.author.id != me and message.id not in answered]
            )
        for message in messages:
            if message.id not in answered:
                take(message)
