"""The commands users type to a persona: ``<prefix>chat <text>`` (alias ``ask``), ``<prefix>reset
[channel]``, ``<prefix>usage``, ``<prefix>imagine <prompt>`` and ``<prefix>help``. Command names
are case-insensitive; the prefix is each bot's own.

A chat bot needs a few fixed commands, so they are read here rather than by discord.py's
``ext.commands``, whose context objects, converters (``isinstance`` against typing Protocols) and
command events cost about 8% of the CPU of a whole answer (``scripts/bench --profile``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

CommandName = Literal["chat", "reset", "usage", "help", "panel", "stop", "imagine"]

_NAMES: dict[str, CommandName] = {
    "chat": "chat",
    "ask": "chat",
    "reset": "reset",
    "usage": "usage",
    "help": "help",
    "panel": "panel",
    "stop": "stop",
    "imagine": "imagine",
}


class Command(NamedTuple):
    name: CommandName
    argument: str  # the rest of the message, stripped


def parse_command(content: str, prefix: str) -> Command | None:
    """The command in ``content``, or None when it does not start with ``prefix`` directly followed
    by a command name (as discord.py reads them: the name ends at the first whitespace)."""
    if not content.startswith(prefix):
        return None
    body = content[len(prefix) :]
    if not body or body[0].isspace():
        return None
    word, *rest = body.split(None, 1)
    name = _NAMES.get(word.lower())
    if name is None:
        return None
    return Command(name, rest[0].strip() if rest else "")
