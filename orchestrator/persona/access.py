"""Who may talk to a persona, and whether a message is addressed to it.

A message is addressed to a bot when it is a DM, starts with the bot's prefix, mentions the bot or
replies to one of its messages: :func:`addressed` is that rule, applied to a raw gateway payload
(before discord.py builds a Message) and to a ``discord.Message`` (catch-up reads). The gateway
filter's text test (``discord_io/gateway_filter.py``) is a faster, looser pre-check of the same.

A bot that runs without the Message Content intent (``message_content: false``) cannot read a
prefix in a guild channel: Discord sends it the text of a guild message only when the message
mentions it, replies to it (with the reply's ping on) or is its own, and empty text otherwise. For
such a bot, in a guild, only a mention or a reply addresses it (:func:`addressed`'s ``read_all``),
and only what Discord lets it read goes into channel context (:func:`payload_readable`), whether the
text came from the gateway or from a REST read (whose content Discord blanks by the application's
intent setting in the developer portal, not by what the connection asked for).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import discord

from ..config import AccessSettings


def addressed(
    content: str, prefix: str, *, dm: bool, mentions_me: bool, replies_to_me: bool, read_all: bool = True
) -> bool:
    """The rule: a DM, the bot's prefix, a mention of the bot, or a reply to it. Without ``read_all``
    (no Message Content intent) a prefix counts in DMs only."""
    return dm or mentions_me or replies_to_me or (read_all and content.startswith(prefix))


def _payload_mentions_me(data: dict[str, Any], me_text: str) -> bool:
    return any(user.get("id") == me_text for user in data.get("mentions") or ())


def _payload_replies_to_me(data: dict[str, Any], me_text: str) -> bool:
    referenced = data.get("referenced_message") or {}
    return bool(referenced.get("author", {}).get("id") == me_text)


def payload_addressed(data: dict[str, Any], me: int, prefix: str, *, allow_bots: bool, read_all: bool = True) -> bool:
    """:func:`addressed` on a raw MESSAGE_CREATE payload; bots' messages only with ``allow_bots``."""
    if data.get("author", {}).get("bot") and not allow_bots:
        return False
    me_text = str(me)
    return addressed(
        data.get("content", ""),
        prefix,
        dm="guild_id" not in data,
        mentions_me=_payload_mentions_me(data, me_text),
        replies_to_me=_payload_replies_to_me(data, me_text),
        read_all=read_all,
    )


def payload_readable(data: dict[str, Any], me: int) -> bool:
    """Whether Discord gives a bot without the Message Content intent this message's text: a DM, its
    own message, a mention of it or a reply to it."""
    me_text = str(me)
    return (
        "guild_id" not in data
        or (data.get("author") or {}).get("id") == me_text
        or _payload_mentions_me(data, me_text)
        or _payload_replies_to_me(data, me_text)
    )


def guild_message_readable(message: discord.Message, me: int) -> bool:
    """:func:`payload_readable` on a guild channel's ``discord.Message`` read through REST."""
    return message.author.id == me or mentions_me(message, me) or replies_to_me(message, me)


def mentions_me(message: discord.Message, me: int) -> bool:
    return any(user.id == me for user in message.mentions)


def replies_to_me(message: discord.Message, me: int) -> bool:
    resolved = message.reference.resolved if message.reference else None
    return isinstance(resolved, discord.Message) and resolved.author.id == me


def message_addressed(message: discord.Message, me: int, prefix: str, *, read_all: bool = True) -> bool:
    """:func:`addressed` on a built ``discord.Message``."""
    return addressed(
        message.content,
        prefix,
        dm=message.guild is None,
        mentions_me=mentions_me(message, me),
        replies_to_me=replies_to_me(message, me),
        read_all=read_all,
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
