"""Running without the privileged Message Content intent (``message_content: false``), and a bot
that Discord refuses the intent (gateway close 4014): real discord.py bots and the openai SDK over
the loopback servers, whose Discord models the intent as Discord does."""

from __future__ import annotations

import logging

import anyio
import pytest

from orchestrator.runtime.supervisor import BotState
from orchestrator.sandbox.discord_server.state import GUILD_MESSAGES, MESSAGE_CONTENT

from .conftest import World, token_for
from .test_cli import orchestrator


async def _not_answered(world: World, token: str, message_id: int) -> bool:
    """True once the bot has handled every event up to ``message_id`` and posted no reply to it."""
    await world.discord.round_trip(token)
    await world.idle()
    return all(sent.reference_id != message_id for sent in world.discord.sent)


async def test_without_message_content_mentions_replies_and_dms_are_answered_and_prefix_commands_are_not(
    world: World,
) -> None:
    world.write([{"name": "sage", "message_content": False, "access": {"dms": True}}])
    token = token_for("sage")
    sage = world.bot_ids["sage"]
    async with world.running():
        [mentioned] = await world.chat(f"<@{sage}> what is virtue?", mentions=[sage])
        [replied] = await world.chat("and justice?", reply_to=mentioned.id)
        [direct] = await world.chat("hello in private", guild=False, dm_to=token)
        [command_in_dm] = await world.chat("!usage", guild=False, dm_to=token)
        requests = len(world.openai.chat_requests)
        command = await world.discord.post("!chat are you there?")
        assert await _not_answered(world, token, int(command["id"]))

    intents = world.discord.identified_intents[token]
    assert intents and all(not bits & MESSAGE_CONTENT and bits & GUILD_MESSAGES for bits in intents)
    assert [m.author_id for m in (mentioned, replied, direct, command_in_dm)] == [sage] * 4
    assert command_in_dm.content.startswith("Usage of sage")
    asked = [request.body["messages"][-1]["content"] for request in world.openai.chat_requests]
    assert asked == ["alice: what is virtue?", "alice: and justice?", "alice: hello in private"]
    assert len(world.openai.chat_requests) == requests


async def test_without_message_content_slash_commands_are_answered_in_a_channel(world: World) -> None:
    """A slash command's text comes with the interaction, which needs no privileged intent."""
    world.write([{"name": "sage", "message_content": False}])
    token = token_for("sage")
    async with world.running():
        record = await world.discord.interact(token, "chat", {"message": "what is virtue?"})
        await world.discord.interactions.wait(record, lambda r: r.answered)
        await world.idle()
    intents = world.discord.identified_intents[token]
    assert intents and all(not bits & MESSAGE_CONTENT for bits in intents)
    [answer] = record.messages
    assert not answer.ephemeral and "what is virtue?" in answer.content
    [request] = world.openai.chat_requests
    assert request.body["messages"][-1]["content"] == "alice: what is virtue?"


async def test_without_message_content_channel_context_keeps_only_what_the_bot_can_read(world: World) -> None:
    world.write([{"name": "sage", "message_content": False, "context": {"channel_messages": 20}}])
    token = token_for("sage")
    sage = world.bot_ids["sage"]
    async with world.running():
        said = await world.discord.post("the launch code is 1234")  # blank for sage over the gateway
        assert await _not_answered(world, token, int(said["id"]))
        question = await world.discord.post(f"<@{sage}> first question", mentions=[sage])
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(question["id"]))
        await world.idle()  # the answer read the channel back once (REST)
        bob = world.discord.add_user("bob")
        # bob answers alice, not sage: blank for sage, though sage's id is in it (the mention replied to)
        later = await world.discord.post(
            "the vault is behind the painting", author_id=bob, reply_to=int(question["id"])
        )
        assert await _not_answered(world, token, int(later["id"]))
        await world.chat(f"<@{sage}> second question", mentions=[sage])

    first, second = world.openai.chat_requests
    for request in (first, second):
        texts = [str(message["content"]) for message in request.body["messages"][1:]]
        assert not any("launch code" in text or "vault" in text for text in texts), texts
        assert all(text.strip() and not text.rstrip().endswith(":") for text in texts), texts
    said_to_sage = [m["content"] for m in second.body["messages"] if m["role"] == "user"]
    assert said_to_sage == ["alice: first question", "alice: second question"]


async def test_check_warns_that_prefix_commands_need_a_mention_in_channels_for_a_bot_without_message_content(
    world: World,
) -> None:
    path = world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?", "message_content": False}])
    line = path.read_text(encoding="utf-8").splitlines().index("  message_content: false") + 1
    result = await anyio.to_thread.run_sync(lambda: orchestrator("check", str(path), env=world.env()))
    assert result.returncode == 0, result.stderr
    warnings = [text for text in result.stdout.splitlines() if text.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: {path}:{line}: ")
    assert "'hafez' runs without the Message Content intent" in warnings[0]
    assert "'?chat'" in warnings[0] and "in DMs" in warnings[0] and "@mention" in warnings[0]


async def test_a_bot_refused_the_intent_says_what_to_do_once_and_the_others_keep_answering(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    world.discord.set_message_content_intent(token_for("sage"), False)  # off in sage's developer portal
    caplog.set_level(logging.INFO)
    async with world.running() as app:
        assert app.supervisor is not None
        child = app.supervisor.children["sage"]
        assert child.state is BotState.FAILED
        [reply] = await world.chat("?chat still there?")
        assert app.supervisor.children["hafez"].state is BotState.RUNNING

    assert reply.author_id == world.bot_ids["hafez"]
    assert world.discord.identify_count[token_for("sage")] == 1  # refused once, not retried in a loop
    for text in ("4014", "developer portal", "Message Content", "message_content: false", "bots.yaml"):
        assert text in child.last_error
    about_sage = [r for r in caplog.records if r.levelno >= logging.WARNING and "sage" in r.getMessage()]
    assert len(about_sage) == 1, [r.getMessage() for r in about_sage]
    assert about_sage[0].exc_info is None and child.last_error in about_sage[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_with_message_content_false_a_bot_refused_the_intent_runs(world: World) -> None:
    world.write([{"name": "sage", "message_content": False}])
    token = token_for("sage")
    world.discord.set_message_content_intent(token, False)
    sage = world.bot_ids["sage"]
    async with world.running() as app:
        assert app.supervisor is not None and app.supervisor.children["sage"].state is BotState.RUNNING
        with anyio.fail_after(10):
            [reply] = await world.chat(f"<@{sage}> hello", mentions=[sage])
    assert reply.author_id == sage


async def test_a_persona_without_message_content_never_listens_for_a_guild(world: World) -> None:
    hear = {"channel_messages": 20}
    world.write([
        {"name": "sage", "message_content": False, "context": hear},
        {"name": "hafez", "prefix": "?", "context": hear},
    ])  # fmt: skip
    async with world.running() as app:
        assert app.supervisor is not None
        rooms = app.supervisor.services.community.rooms
        assert rooms.listener(world.discord.guild_id) == "hafez" and not rooms.listened_by("sage")
        await world.chat("?chat first")  # hafez reads the channel back once
        await world.discord.post("the sky is green today")  # addressed to nobody: heard by the listener
        await world.chat("?chat what colour is the sky?")
    last = world.openai.chat_requests[-1]
    assert {"role": "user", "name": "alice", "content": "alice: the sky is green today"} in last.body["messages"]


async def test_setting_message_content_false_and_reloading_reconnects_without_the_intent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    for name, value in world.env().items():  # a reload reads the environment again
        monkeypatch.setenv(name, value)
    world.discord.set_message_content_intent(token_for("sage"), False)
    sage, hafez = world.bot_ids["sage"], world.bot_ids["hafez"]
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None and supervisor.children["sage"].state is BotState.FAILED
        world.write([
            {"name": "sage", "message_content": False},
            {"name": "hafez", "prefix": "?", "message_content": False},
        ])  # fmt: skip
        assert await app.reload()
        token = token_for("hafez")

        def hafez_reconnected() -> bool | None:
            session = world.discord.sessions.get(token)
            return True if len(world.discord.identified_intents[token]) == 2 and session and session.ready else None

        with anyio.fail_after(10):
            await supervisor.wait_for_state("sage", BotState.RUNNING)
            await world.discord.state.wait(hafez_reconnected, 10, "hafez identifying again")
        [from_sage] = await world.chat(f"<@{sage}> back?", mentions=[sage])
        [from_hafez] = await world.chat(f"<@{hafez}> and you?", mentions=[hafez])
    assert (from_sage.author_id, from_hafez.author_id) == (sage, hafez)
    for name in ("sage", "hafez"):
        *before, last = world.discord.identified_intents[token_for(name)]
        assert [bool(bits & MESSAGE_CONTENT) for bits in before] == [True] and not last & MESSAGE_CONTENT


async def test_without_message_content_a_command_that_mentions_the_bot_works_in_a_channel(world: World) -> None:
    world.write([{"name": "sage", "message_content": False}])
    sage = world.bot_ids["sage"]
    async with world.running():
        [reply] = await world.chat(f"!help <@{sage}>", mentions=[sage])
    assert world.openai.chat_requests == []
    assert "Talk to me: @mention me or reply to one of my messages." in reply.content
    assert "In channels I see only messages that mention me" in reply.content
    assert "`!chat <your message>`" not in reply.content


async def test_without_message_content_catch_up_answers_a_missed_mention_and_not_a_missed_prefix_command(
    world: World,
) -> None:
    world.write([{"name": "sage", "message_content": False}])
    token = token_for("sage")
    sage = world.bot_ids["sage"]
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        await world.chat(f"<@{sage}> before", mentions=[sage])
        await world.discord.drop_gateway(token, code=4012)  # a crash: the next session gets no replay
        # The REST read shows this text (the portal has the intent on), which the gateway would have blanked.
        command = await world.discord.post("!chat while you were away")
        mention = await world.discord.post(f"<@{sage}> did you miss me?", mentions=[sage])
        await supervisor.wait_until(lambda s: s.children["sage"].restarts == 1)
        await supervisor.wait_for_state("sage", BotState.RUNNING)
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(mention["id"]))
        await world.idle()
    assert not [m for m in world.discord.sent if m.reference_id == int(command["id"])]
    assert world.openai.chat_requests[-1].body["messages"][-1]["content"] == "alice: did you miss me?"
