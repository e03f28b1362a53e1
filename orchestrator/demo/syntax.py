"""What a demo line means: a channel message, a mention of a bot, a reply to the last answer, or a DM.

!chat hello         a message in #general (each bot answers its own prefix)
@sage hello         the same with a real mention of bot "sage"
> text, >text       a reply to the last answer
/dm sage hi         a direct message to bot "sage" (if its access.dms allows DMs)
/chat hello         a slash command of the first bot; /chat@hafez hello, of bot "hafez"
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

USAGE = (
    "@<bot> <text> mentions a bot, '> <text>' replies to the last answer, /dm <bot> <text> sends a DM, "
    "/chat <text> runs a slash command (/chat@<bot> <text>: another bot's)"
)


class Kind(enum.Enum):
    CHANNEL = "channel"
    MENTION = "mention"
    REPLY = "reply"
    DM = "dm"
    SLASH = "slash"


@dataclass(frozen=True)
class Line:
    kind: Kind
    text: str
    bot: str | None = None  # the bot mentioned or messaged directly (a slash command: None is the first bot)
    command: str | None = None  # a slash command's name


def parse_line(line: str, bots: Iterable[str]) -> Line:
    """Read one typed line; ``ValueError`` says what is wrong (an unknown bot, a missing text)."""
    names = {name.lower(): name for name in bots}
    stripped = line.strip()

    def bot_named(word: str) -> str:
        name = names.get(word.lower().lstrip("@").rstrip(",:"))
        if name is None:
            raise ValueError(f"no bot named {word!r} here; the bots are {', '.join(names.values())}")
        return name

    command, _, rest = stripped.partition(" ")
    if command == "/dm":
        bot, _, text = rest.strip().partition(" ")
        if not bot or not text.strip():
            raise ValueError("a DM needs a bot and a text: /dm <bot> <text>")
        return Line(Kind.DM, text.strip(), bot_named(bot))
    if command.startswith("/") and len(command) > 1:
        name, _, bot = command[1:].partition("@")
        return Line(Kind.SLASH, rest.strip(), bot_named(bot) if bot else None, command=name.lower())
    if stripped.startswith(">"):
        text = stripped[1:].strip()
        if not text:
            raise ValueError("a reply needs a text: > <text>")
        return Line(Kind.REPLY, text)
    if stripped.startswith("@") and command[1:] not in ("everyone", "here"):
        return Line(Kind.MENTION, rest.strip(), bot_named(command))
    return Line(Kind.CHANNEL, stripped)
