"""What a persona is told about the room it speaks in, and how its answer addresses other personas."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .roster import Member


def where_prompt(guild: str | None, channel: str | None, others: Sequence[Member]) -> str:
    """A paragraph for the system prompt: where the persona is and which other personas are there."""
    place = f"#{channel}" if channel else "a channel"
    lines = [f"You are in {place} on the Discord server {guild!r}." if guild else f"You are in {place} on Discord."]
    lines.append("Messages from people are prefixed with their name.")
    if others:
        names = ", ".join(f"{member.display} (write @{member.display} to address them)" for member in others)
        lines.append(f"Other AI personas here: {names}.")
    return " ".join(lines)


def mention_personas(text: str, others: Sequence[Member]) -> tuple[str, list[int]]:
    """Turn ``@Name`` of a persona present into a real mention of it; returns the text and the user
    ids mentioned (the only ones the post may ping)."""
    mentioned: list[int] = []
    for member in sorted(others, key=lambda m: len(m.display), reverse=True):  # "@Ann" must not eat "@Anna"
        pattern = re.compile(rf"@{re.escape(member.display)}(?![\w-])", re.IGNORECASE)
        text, count = pattern.subn(f"<@{member.user_id}>", text)
        if count:
            mentioned.append(member.user_id)
    return text, mentioned
