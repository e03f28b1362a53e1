"""Who may talk to a persona, and whether a message is addressed to it.

A message is addressed to a bot when it is a DM, starts with the bot's prefix, mentions the bot or
replies to one of its messages: :func:`addressed` is that rule, applied to a raw gateway payload
(before discord.py builds a Message) and to a ``discord.Message`` (catch-up reads). The gateway
filter's text test (``discord_io/gateway_filter.py``) is a faster, looser pre-check of the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import discord

from ..config import AccessSettings


def addressed(content: str, prefix: str, *, dm: bool, mentions_me: bool, replies_to_me: bool) -> bool:
    """The rule: a DM, the bot's prefix, a mention of the bot, or a reply to it."""
    return dm or content.startswith(prefix) or mentions_me or replies_to_me


def payload_addressed(data: dict[str, Any], me: int, prefix: str, *, allow_bots: bool) -> bool:
    """:func:`addressed` on a raw MESSAGE_CREATE payload; bots' messages only with ``allow_bots``."""
    if data.get("author", {}).get("bot") and not allow_bots:
        return False
    me_text = str(me)
    referenced = data.get("referenced_message") or {}
    return addressed(
        data.get("content", ""),
        prefix,
        dm="guild_id" not in data,
        mentions_me=any(user.get("id") == me_text for user in data.get("mentions") or ()),
        replies_to_me=referenced.get("author", {}).get("id") == me_text,
    )


def mentions_me(message: discord.Message, me: int) -> bool:
    return any(user.id == me for user in message.mentions)


def replies_to_me(message: discord.Message, me: int) -> bool:
    resolved = message.reference.resolved if message.reference else None
    return isinstance(resolved, discord.Message) and resolved.author.id == me


def message_addressed(message: discord.Message, me: int, prefix: str) -> bool:
    """:func:`addressed` on a built ``discord.Message``."""
    return addressed(
        message.content,
        prefix,
        dm=message.guild is None,
        mentions_me=mentions_me(message, me),
        replies_to_me=replies_to_me(message, me),
    )


def _role_ids(author: discord.abc.User) -> set[int]:
    roles: Iterable[discord.Role] = getattr(author, "roles", ())
    return {role.id for role in roles}


def allowed(access: AccessSettings, message: discord.Message, me: int | None, bot_allowed: bool) -> bool:
    """Whether ``access`` lets this bot answer ``message`` (never its own messages); a bot's message
    only when ``bot_allowed``."""
    author = message.author
    if author.id == me:
        return False
    if author.bot and not bot_allowed:
        return False
    if message.guild is None:
        return access.dms
    if access.guilds and message.guild.id not in access.guilds:
        return False
    if access.channels and message.channel.id not in access.channels:
        return False
    return not access.roles or bool(_role_ids(author) & set(access.roles))


def is_admin(access: AccessSettings, message: discord.Message) -> bool:
    """An admin of this bot: listed in ``admins`` or holding one of ``admin_roles``."""
    return message.author.id in access.admins or bool(_role_ids(message.author) & set(access.admin_roles))
