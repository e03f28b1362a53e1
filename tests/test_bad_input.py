"""Bad input gets a clear answer, never a crash: odd user messages, odd model output, other bots.

Decision on messages without text (attachments, stickers): a message that carries only an
attachment or a sticker is not addressed to anyone and is ignored silently; if it *is* addressed to
a bot (``!chat``, an @mention, or a reply to the bot) a sticker alone gets the usual hint ("Write
something after `!chat` ..."), and a file is read as tests/test_attachments.py shows (an image sent
to a persona without vision: "I can't see images"); the provider is never called for either.

Every test here is marked ``bad_input`` (counted in the reliability line of the test summary).
"""

from __future__ import annotations

import re

import discord
import pytest

from orchestrator.persona.bot import PersonaBot
from orchestrator.persona.replies import APOLOGY, EMPTY_ANSWER
from orchestrator.runtime.mailbox import Job
from orchestrator.sandbox.discord_server import SentMessage
from orchestrator.sandbox.openai_server import said

from .conftest import World

pytestmark = pytest.mark.bad_input

HINT = "Write something after `!chat`"
FOUR_THOUSAND = ("lorem " * 700)[:4000]


def two_bots(world: World, *, stream: bool = False, **sage: object) -> None:
    world.write([{"name": "sage", "stream": stream, **sage}, {"name": "hafez", "prefix": "?"}])


def assert_safe_messages(messages: list[SentMessage]) -> None:
    """Within Discord's limits, pinging nobody, balanced code fences, every version of the text."""
    assert messages, "something was answered"
    for message in messages:
        assert message.allowed_mentions is not None and message.allowed_mentions.get("parse") == []
        for text in (message.content, *message.edits):
            assert 0 < len(text) <= 2000
            assert text.count("```") % 2 == 0, "every message closes the code blocks it opens"
            assert not re.search(r"@(everyone|here)|<@[!&]?\d", text), f"a live mention in {text[:80]!r}"


def squeeze(text: str) -> str:
    """Text without fences and whitespace: what must survive splitting, in order."""
    return "".join(text.replace("```python", "").replace("```", "").split())


# ---------------------------------------------------------------- what users write

USER_TEXTS = [
    pytest.param("", None, id="nothing"),
    pytest.param(" \t   ", None, id="only-whitespace"),
    pytest.param("\u200b\u200e\u200f\u202e\u2066\u2069\ufeff", None, id="only-zero-width-and-bidi-controls"),
    pytest.param(FOUR_THOUSAND, FOUR_THOUSAND, id="4000-characters"),
    pytest.param(
        "\u202eevil\u202c \u200bhello\u2069 \u2066world\u200f", "evil hello world", id="bidi-and-zero-width-mixed-in"
    ),
    pytest.param(
        "سلام hello مرحبا، می‌خواهم test 123 ۱۲۳",
        "سلام hello مرحبا، می‌خواهم test 123 ۱۲۳",
        id="persian-arabic-and-latin",
    ),
    pytest.param("👩‍👩‍👧‍👦 🇮🇷🇫🇷 👍🏽 ❤️ 🏴󠁧󠁢󠁳󠁣󠁴󠁿", "👩‍👩‍👧‍👦 🇮🇷🇫🇷 👍🏽 ❤️ 🏴󠁧󠁢󠁳󠁣󠁴󠁿", id="emoji-sequences"),
    pytest.param("```python\nprint('hi')\n```", "```python\nprint('hi')\n```", id="code-fence"),
    pytest.param("```\nnever closed", "```\nnever closed", id="unclosed-code-fence"),
    pytest.param("@everyone @here <@&123> <@!42> look", "@everyone @here <@&123> <@!42> look", id="mass-mentions"),
    pytest.param("nul\x00 bell\x07 esc\x1b[31m", "nul\x00 bell\x07 esc\x1b[31m", id="control-characters"),
    pytest.param("half \ud83d of an emoji", "half \ufffd of an emoji", id="lone-surrogate"),
]


@pytest.mark.parametrize(("text", "asked"), USER_TEXTS)
async def test_odd_user_text_gets_a_clear_answer(world: World, text: str, asked: str | None) -> None:
    two_bots(world)
    async with world.running():
        replies = await world.chat(f"!chat {text}")
        await world.chat("?chat sibling still fine")
    assert_safe_messages(replies)
    assert {m.author_id for m in replies} == {world.bot_ids["sage"]}
    if asked is None:
        assert [m.content for m in replies] == [f"{HINT}, for example `!chat hello`."]
        assert len(world.openai.chat_requests) == 1, "only the sibling asked the model"
        return
    request = world.openai.chat_requests[0].body
    assert request["messages"][-1] == {"role": "user", "name": "alice", "content": f"alice: {asked}"}
    assert APOLOGY not in [m.content for m in replies]
    assert squeeze(asked) in squeeze("".join(m.content for m in replies)).replace("\u200b", "")


@pytest.mark.parametrize(
    "post",
    [
        pytest.param({"content": "", "attachments": [{"filename": "cat.png", "size": 1024}]}, id="attachment-only"),
        pytest.param({"content": "", "sticker": True}, id="sticker-only"),
        pytest.param({"content": "look at this", "attachments": [{"filename": "a.pdf"}]}, id="attachment-with-chatter"),
    ],
)
async def test_attachments_and_stickers_not_addressed_to_a_bot_are_ignored(world: World, post: dict) -> None:
    two_bots(world)
    async with world.running():
        await world.discord.post(**post)
        [reply] = await world.chat("!chat after the attachment")  # the same bot, later: a barrier
    assert world.discord.sent == [reply]
    assert len(world.openai.chat_requests) == 1


@pytest.mark.parametrize(
    "how",
    ["command-with-attachment", "mention-with-sticker", "reply-with-attachment"],
)
async def test_attachment_or_sticker_addressed_to_a_bot_gets_an_answer_without_the_model(
    world: World, how: str
) -> None:
    two_bots(world)
    sage = world.bot_ids["sage"]
    image = [{"filename": "cat.png", "size": 2048, "content_type": "image/png"}]
    async with world.running():
        [answer] = await world.chat("!chat hello")
        if how == "command-with-attachment":
            [hint] = await world.chat("!chat", attachments=image)
        elif how == "mention-with-sticker":
            [hint] = await world.chat(f"<@{sage}>", mentions=[sage], sticker=True)
        else:
            [hint] = await world.chat("", reply_to=answer.id, attachments=image)
    expected = HINT if how == "mention-with-sticker" else "I can't see images, so I can't look at `cat.png`."
    assert hint.content.startswith(expected) and hint.author_id == sage
    assert len(world.openai.chat_requests) == 1


@pytest.mark.parametrize("allow_bots", [False, True], ids=["default-ignores-bots", "allow-bots-answers-them"])
async def test_messages_from_other_bots_are_answered_only_when_allowed(world: World, allow_bots: bool) -> None:
    two_bots(world, access={"allow_bots": allow_bots})
    other_bot = world.discord.add_user("otherbot", bot=True)
    async with world.running():
        await world.discord.post("!chat from another bot", author_id=other_bot)
        if allow_bots:
            await world.discord.wait_for_sent(predicate=lambda m: m.author_id == world.bot_ids["sage"])
        [barrier] = await world.chat("!chat from a human")
    answered = [m for m in world.discord.sent if m.author_id == world.bot_ids["sage"]]
    assert len(answered) == (2 if allow_bots else 1)
    assert barrier in answered
    asked = [said(r.body["messages"][-1]) for r in world.openai.chat_requests]
    assert ("from another bot" in asked) is allow_bots


async def test_a_bot_never_answers_itself_even_when_bots_are_allowed(world: World) -> None:
    two_bots(world, access={"allow_bots": True})
    world.openai.queue_replies("!chat answer yourself, forever")  # a model trying to start a loop
    async with world.running():
        await world.chat("!chat say the magic words")
        await world.discord.post("!chat posted with the bot's own account", author_id=world.bot_ids["sage"])
        [barrier] = await world.chat("!chat still sane?")
    assert [said(r.body["messages"][-1]) for r in world.openai.chat_requests] == ["say the magic words", "still sane?"]
    assert barrier.author_id == world.bot_ids["sage"]


# ---------------------------------------------------------------- what the model writes


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("output", ["", " \n\t\u3000\u00a0 "], ids=["empty", "only-whitespace"])
async def test_empty_model_output_is_explained(world: World, output: str, stream: bool) -> None:
    two_bots(world, stream=stream)
    world.openai.queue_replies(output)
    async with world.running():
        [reply] = await world.chat("!chat say nothing")
        [after] = await world.chat("!chat now say something")
    assert reply.content == EMPTY_ANSWER
    assert after.content.endswith("| now say something")
    second = world.openai.chat_requests[1].body["messages"]
    assert [said(m) for m in second[1:]] == ["now say something"], "an empty answer is not remembered"


PROSE = "\n\n".join(f"Paragraph {i}. " + " ".join(["lorem ipsum dolor sit amet"] * 40) for i in range(12))


def code_answer(lines: int) -> str:
    body = "\n".join(f"def f{i}(x):\n    return x * {i}  # توضیح {i}" for i in range(lines))
    return f"Here is the script:\n\n```python\n{body}\n```\n\nAnd some text after it."


MENTIONS = "Hello @everyone and @here, ping <@123456789> <@!42> and role <@&987654321>. " * 3

# Streaming writes at most 5 messages/edits per 5 s per channel, so streamed cases stay at 2-3 messages;
# the plain ones go past 10,000 characters.
HOSTILE_OUTPUTS = [
    pytest.param(PROSE, False, id="12k-characters-of-prose"),
    pytest.param("x" * 10_500, False, id="one-10k-character-word"),
    pytest.param(code_answer(250), False, id="11k-code-block-across-splits"),
    pytest.param(code_answer(90), True, id="code-block-across-splits-streamed"),
    pytest.param(MENTIONS, False, id="mass-and-role-mentions"),
    pytest.param(MENTIONS, True, id="mass-and-role-mentions-streamed"),
]


@pytest.mark.parametrize(("output", "stream"), HOSTILE_OUTPUTS)
async def test_hostile_model_output_is_split_defused_and_complete(world: World, output: str, stream: bool) -> None:
    two_bots(world, stream=stream)
    world.openai.queue_replies(output)
    async with world.running():
        messages = await world.chat("!chat go")
        await world.chat("?chat sibling still fine")
    messages = [m for m in messages if m.author_id == world.bot_ids["sage"]]
    assert_safe_messages(messages)
    assert messages[0].reference_id is not None and all(m.reference_id is None for m in messages[1:])
    assert len(messages) >= -(-len(output) // 2000)
    shown = squeeze("".join(m.content for m in messages)).replace("\u200b", "")
    assert shown == squeeze(output), "nothing lost, duplicated or reordered"
    if "```python" in output:
        assert len(messages) >= 2
        for message in messages:
            if "return x" in message.content:
                assert message.content.lstrip().startswith(("```python", "Here is")), "code is reopened as python"


async def test_model_output_with_a_lone_surrogate_is_shown_and_remembered(world: World) -> None:
    two_bots(world)
    world.openai.queue_replies("broken \ud83d emoji and a fine 😀 one")
    async with world.running():
        [shown] = await world.chat("!chat go")
        await world.chat("!chat and then?")
    assert "broken" in shown.content and "😀" in shown.content
    remembered = [said(m) for m in world.openai.chat_requests[1].body["messages"][1:]]
    assert remembered == ["go", "broken \ufffd emoji and a fine 😀 one", "and then?"]


async def test_an_error_while_taking_a_message_is_logged_and_the_connection_stays(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages are taken inside discord.py's gateway parser: an error there must not reach its loop."""
    job_for = PersonaBot._job_for

    def fragile(self: PersonaBot, message: discord.Message, *, received: float) -> Job | None:
        if "boom" in message.content:
            raise RuntimeError("a bug in taking messages")
        return job_for(self, message, received=received)

    monkeypatch.setattr(PersonaBot, "_job_for", fragile)
    world.write([{"name": "sage"}])
    async with world.running() as app:
        await world.discord.post("!chat boom")
        [reply] = await world.chat("!chat still there?")
        restarts = app.supervisor.children["sage"].restarts
    assert reply.content.endswith("| still there?")
    assert restarts == 0
    assert any("bot sage: could not take message" in r.getMessage() and r.exc_info for r in caplog.records)
