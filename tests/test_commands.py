"""Reading the commands users type: what discord.py's ext.commands read before, without its cost."""

from __future__ import annotations

import pytest

from orchestrator.persona.commands import Command, parse_command


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("!chat hello there", Command("chat", "hello there")),
        ("!CHAT  hello  ", Command("chat", "hello")),
        ("!Ask what?", Command("chat", "what?")),
        ("!chat\nline one\nline two", Command("chat", "line one\nline two")),
        ("!chat", Command("chat", "")),
        ("!reset", Command("reset", "")),
        ("!reset channel", Command("reset", "channel")),
        ("!usage", Command("usage", "")),
        ("!chat سلام دنیا", Command("chat", "سلام دنیا")),
    ],
)
def test_commands_are_read(content: str, expected: Command) -> None:
    assert parse_command(content, "!") == expected


@pytest.mark.parametrize("content", ["hello !chat hi", "! chat hi", "!", "!chatty hi", "!helpme", "?chat hi", ""])
def test_not_a_command(content: str) -> None:
    assert parse_command(content, "!") is None


def test_a_multi_character_prefix() -> None:
    assert parse_command("hafez> chat شعر", "hafez> ") == Command("chat", "شعر")
    assert parse_command("hafez>  chat شعر", "hafez> ") is None  # the name must follow the prefix directly
