"""Who said a message: display names from a raw gateway payload or a built ``discord.Message``."""

from __future__ import annotations

from typing import Any

import discord

from ..discord_io.attachments import with_notes
from .rooms import Heard


def payload_display_name(data: dict[str, Any]) -> str:
    """The name Discord shows for the author of a raw message payload: server nickname, then global
    display name, then user name."""
    author = data.get("author") or {}
    member = data.get("member") or {}
    return str(member.get("nick") or author.get("global_name") or author.get("username") or "someone")


def heard_from_payload(data: dict[str, Any]) -> Heard:
    author = data.get("author") or {}
    content = str(data.get("content", ""))
    if attachments := data.get("attachments"):  # kept as their names, never their bytes
        content = with_notes(content, [(str(a.get("filename", "")), a.get("content_type")) for a in attachments])
    return Heard(int(data["id"]), int(author.get("id", 0)), payload_display_name(data), bool(author.get("bot")),
                 content)  # fmt: skip


def heard_from_message(message: discord.Message) -> Heard:
    author = message.author
    content = with_notes(message.content, [(a.filename, a.content_type) for a in message.attachments])
    return Heard(message.id, author.id, author.display_name, author.bot, content)
