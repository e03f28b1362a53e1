"""Slash commands end to end: real discord.py bots register and answer them on the loopback Discord,
through the same mailbox, quotas and memory as prefix commands (persona/slash.py)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from orchestrator.memory import SQLiteStore
from orchestrator.persona import bot as bot_module
from orchestrator.persona.replies import BUSY
from orchestrator.sandbox.discord_server import RestFault
from orchestrator.sandbox.discord_server.interactions import ACK_DEADLINE, TOKEN_LIFETIME, InteractionRecord
from orchestrator.sandbox.openai_server import Fault, echo_reply

from .conftest import World, token_for
from .fake_time import FakeTime
from .stores import StoreKind
from .test_imagine import decode_png

COMMANDS = ["chat", "reset", "usage", "panel"]


def puts(world: World, name: str) -> list[tuple[int | None, list[str]]]:
    """(guild or None, command names) per bulk overwrite bot ``name`` made."""
    app = world.bot_ids[name]
    return [
        (r.guild_id, [c["name"] for c in r.commands])
        for r in world.discord.interactions.registrations
        if r.application_id == app
    ]


async def run(world: World, name: str, command: str, options: dict[str, object] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    """A user runs ``/command`` on bot ``name``; returns the record once the bot has answered (or given up)."""
    record = await world.discord.interact(token_for(name), command, options or {}, **kw)  # type: ignore[arg-type]
    await world.discord.interactions.wait(record, lambda r: r.answered or bool(r.refused))
    await world.idle()
    return record


def texts(record: InteractionRecord) -> list[tuple[str, bool]]:
    return [(m.content, m.ephemeral) for m in record.messages]


async def test_commands_are_registered_once_and_again_only_when_the_set_changes(
    world: World, store_kind: StoreKind
) -> None:
    world.database = store_kind.database
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    async with world.running():
        pass
    assert puts(world, "sage") == [(None, COMMANDS)] and puts(world, "hafez") == [(None, COMMANDS)]
    async with world.running():  # the same set: nothing to register
        pass
    assert len(world.discord.interactions.registrations) == 2
    guild = world.discord.guild_id
    world.write([{"name": "sage", "commands": {"guilds": [guild]}}, {"name": "hafez", "prefix": "?"}])
    async with world.running():  # sage's set moves to one guild: registered there, the global one emptied
        pass
    assert puts(world, "sage")[1:] == [(guild, COMMANDS), (None, [])]
    assert world.discord.interactions.registered(world.bot_ids["sage"], guild) == COMMANDS
    assert world.discord.interactions.registered(world.bot_ids["sage"]) == []
    assert len(puts(world, "hafez")) == 1


async def test_a_reload_that_changes_the_commands_registers_them(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running() as app:
        world.write([{"name": "sage", "commands": {"enabled": False}}])
        (world.tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in world.env().items()))
        assert await app.reload()
        await world.discord.state.wait(lambda: True if len(puts(world, "sage")) == 2 else None, 10, "a second PUT")
    assert puts(world, "sage") == [(None, COMMANDS), (None, [])]


async def test_a_bot_with_commands_disabled_registers_none(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.write([{"name": "sage", "commands": {"enabled": False}}])
    async with world.running():
        [reply] = await world.chat("!chat still here")
    assert not world.discord.interactions.registrations
    assert reply.content


@pytest.mark.fault
async def test_a_refused_registration_is_logged_and_prefix_commands_keep_working(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    other = world.discord.add_guild("Elsewhere")
    world.write([{"name": "sage"}])
    world.discord.state.users[world.bot_ids["sage"]].guilds = frozenset({world.discord.guild_id})
    world.write([{"name": "sage", "commands": {"guilds": [other]}}])
    with caplog.at_level(logging.ERROR):
        async with world.running():
            [reply] = await world.chat("!chat hello")
    assert reply.content
    [line] = [r.getMessage() for r in caplog.records if "slash commands" in r.getMessage()]
    expected = "bot sage: could not register its slash commands (Forbidden: 403 Forbidden (error code: 50001)"
    assert line.startswith(expected), line
    assert "prefix commands keep working" in line


@pytest.mark.fault
async def test_a_database_that_cannot_remember_the_set_costs_a_registration_not_the_bot(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    SQLiteStore(Path(world.database)).close()  # the tables, so that a trigger can refuse the digests
    with contextlib.closing(sqlite3.connect(world.database)) as db, db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON command_sets BEGIN SELECT RAISE(ABORT, 'refused'); END")
    world.write([{"name": "sage"}])
    with caplog.at_level(logging.WARNING):
        async with world.running():
            [reply] = await world.chat("!chat hello")
        async with world.running():
            pass
    assert reply.content and puts(world, "sage") == [(None, COMMANDS), (None, COMMANDS)]
    expected = "bot sage: registered its slash commands but could not remember them (IntegrityError: refused)"
    assert any(r.getMessage().startswith(expected) for r in caplog.records)


@pytest.mark.fault
async def test_a_start_waits_for_a_slow_registration_only_so_long(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot_module, "REGISTER_WAIT", 0.2)
    world.discord.inject_rest(RestFault(None, "PUT", "/commands", delay=2.0))
    world.write([{"name": "sage"}])
    with caplog.at_level(logging.WARNING):
        async with world.running():
            [reply] = await world.chat("!chat hello")
    assert reply.content and not world.discord.interactions.registrations
    expected = "bot sage: Discord did not answer the registration of its slash commands within 0.2 s"
    assert any(r.getMessage().startswith(expected) for r in caplog.records)


async def test_chat_with_a_slow_model_is_deferred_then_answered_and_shares_memory_with_prefix_chat(
    world: World,
) -> None:
    clock = FakeTime()
    world.discord.interactions.clock = clock
    world.openai.sleep = clock.sleep
    world.openai.latency = 5.0  # longer than Discord's 3 s to acknowledge
    world.write([{"name": "sage"}])
    async with world.running():
        record = await run(world, "sage", "chat", {"message": "what is virtue?"})
        [prefixed] = await world.chat("!chat and what did I just ask?")
    assert record.callback_type == 5 and record.acknowledged_at is not None
    assert record.acknowledged_at - record.created < ACK_DEADLINE
    first, second = world.openai.chat_requests
    assert first.body["messages"][-1]["content"] == "alice: what is virtue?"
    [original] = record.original and [record.original]
    assert (original.content, original.ephemeral, original.loading) == (echo_reply(first.body), False, False)
    assert original.edits == [original.content]
    history = [m["content"] for m in second.body["messages"][1:-1]]
    assert history == ["alice: what is virtue?", original.content], "!chat remembers the /chat exchange"
    assert prefixed.content == echo_reply(second.body)


async def test_a_long_answer_continues_in_follow_ups(world: World) -> None:
    answer = " ".join(f"word{i:04d}" for i in range(600))  # 5,399 characters
    world.openai.queue_replies(answer)
    world.write([{"name": "sage"}])
    async with world.running():
        record = await run(world, "sage", "chat", {"message": "talk a lot"})
    shown = record.messages
    assert len(shown) == 3 and all(len(m.content) <= 2000 and not m.ephemeral for m in shown)
    assert " ".join(m.content.strip() for m in shown).split() == answer.split()
    assert record.original is shown[0] and record.followups == shown[1:]


async def test_a_streamed_answer_edits_the_original_response(world: World) -> None:
    world.openai.queue_replies("one two three four five six")
    world.write([{"name": "sage", "stream": True}])
    async with world.running():
        record = await run(world, "sage", "chat", {"message": "stream it"})
        await world.discord.interactions.wait(record, lambda r: r.text() == "one two three four five six")
    [original] = record.messages
    assert not original.ephemeral
    assert len(original.edits) >= 2 and original.edits[0] != original.edits[-1], "shown while written"


async def test_a_quota_error_is_shown_only_to_the_user(world: World) -> None:
    world.write([{"name": "sage", "user_quota": {"requests_per_minute": 1}}])
    async with world.running():
        await run(world, "sage", "chat", {"message": "one"})
        record = await run(world, "sage", "chat", {"message": "two"})
    [(text, ephemeral)] = texts(record)
    assert ephemeral and "limit" in text.lower()
    assert record.original is not None and record.original.deleted, "the public 'thinking…' is gone"
    assert len(world.openai.chat_requests) == 1


async def test_busy_and_access_refusals_are_shown_only_to_the_user(world: World) -> None:
    elsewhere = world.discord.add_channel("elsewhere")
    world.write([{"name": "sage", "mailbox_size": 1, "concurrency": 1, "access": {"channels": [elsewhere]}}])
    world.openai.latency = 0.3
    async with world.running():
        refused = await run(world, "sage", "chat", {"message": "not here"})
        records = [
            await world.discord.interact(token_for("sage"), "chat", {"message": f"flood {i}"}, channel_id=elsewhere)
            for i in range(4)
        ]
        for record in records:
            await world.discord.interactions.wait(record, lambda r: r.answered)
        await world.idle()
    assert texts(refused) == [("sage does not take commands here.", True)] and refused.callback_type == 4
    busy = [record for record in records if texts(record) == [(BUSY, True)]]
    assert len(busy) == 2, [texts(record) for record in records]
    assert len(world.openai.chat_requests) == 2


async def test_usage_and_reset_answer_only_the_user(world: World) -> None:
    bob = world.discord.add_user("bob")
    world.write([{"name": "sage", "access": {"admins": [world.discord.default_user_id]}}])
    async with world.running():
        await run(world, "sage", "chat", {"message": "remember me"})
        await run(world, "sage", "chat", {"message": "me too"}, user_id=bob)
        usage = await run(world, "sage", "usage")
        refused = await run(world, "sage", "reset", {"scope": "channel"}, user_id=bob)
        mine = await run(world, "sage", "reset", {})
        channel = await run(world, "sage", "reset", {"scope": "channel"})
    assert usage.messages[0].ephemeral and usage.messages[0].content.startswith("Usage of sage")
    assert texts(refused) == [("Only an admin of this bot can clear the whole channel's memory.", True)]
    assert texts(mine) == [("Our conversation is cleared (1 exchanges forgotten).", True)]
    assert texts(channel) == [("This channel's conversations with me are cleared (2 messages).", True)]


async def test_panel_runs_a_panel_of_the_personas_here(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}], defaults={"group": {"talk_to_personas": False}})
    async with world.running():
        record = await run(world, "sage", "panel", {"topic": "tea or coffee", "rounds": 1})
        bots = set(world.bot_ids.values())
        turns = await world.discord.wait_for_sent(2, predicate=lambda m: m.author_id in bots)
    assert texts(record) == [('Panel on "tea or coffee": sage, hafez, 1 round. `!stop` ends it.', False)]
    assert [m.author_id for m in turns] == [world.bot_ids["sage"], world.bot_ids["hafez"]]
    assert "tea or coffee" in world.openai.chat_requests[0].body["messages"][-1]["content"]


@pytest.mark.bad_input
async def test_a_missing_option_and_an_unknown_command_get_a_private_answer(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running():
        missing = await run(world, "sage", "chat")
        unknown = await run(world, "sage", "weather", {"city": "Shiraz"})
    [(text, ephemeral)] = texts(missing)
    assert ephemeral and text.startswith("/chat arrived without an option it needs")
    assert texts(unknown) == [("sage has no command /weather; its commands are /chat, /reset, /usage, /panel.", True)]
    assert not world.openai.chat_requests


@pytest.mark.bad_input
async def test_an_interaction_delivered_too_late_is_given_up(world: World, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeTime()
    world.discord.interactions.clock = clock
    world.write([{"name": "sage"}])
    with caplog.at_level(logging.WARNING):
        async with world.running():
            record = await world.discord.interact(token_for("sage"), "chat", {"message": "hi"}, delivered_after=4.0)
            await world.discord.interactions.wait(record, lambda r: bool(r.refused))
    assert record.refused == [("callback", 10062)]
    assert not world.openai.chat_requests
    expected = "bot sage: could not acknowledge /chat in time (NotFound: 404 Not Found (error code: 10062)"
    assert any(r.getMessage().startswith(expected) for r in caplog.records)


@pytest.mark.bad_input
async def test_an_answer_after_the_token_expired_is_refused_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeTime()
    world.discord.interactions.clock = clock
    world.openai.sleep = clock.sleep
    world.openai.latency = TOKEN_LIFETIME + 1
    world.write([{"name": "sage"}])
    with caplog.at_level(logging.WARNING):
        async with world.running():
            record = await run(world, "sage", "chat", {"message": "hi"})
    assert record.refused == [("edit original", 50027)]
    assert any("Invalid Webhook Token" in r.getMessage() and "sage" in r.getMessage() for r in caplog.records)


@pytest.mark.fault
async def test_commands_waiting_when_a_client_crashes_are_answered_by_the_next_incarnation(world: World) -> None:
    world.write([{"name": "flaky", "concurrency": 1}])
    world.openai.latency = 0.3
    users = [world.discord.add_user(f"user{i}") for i in range(3)]
    interactions = world.discord.interactions
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        records = [
            await world.discord.interact(token_for("flaky"), "chat", {"message": f"question {i}"}, user_id=user)
            for i, user in enumerate(users)
        ]
        for record in records:
            await interactions.wait(record, lambda r: r.original is not None)  # "thinking…"
        await world.openai.wait_for_requests(1)  # one answer in flight, two waiting
        await world.discord.drop_gateway(token_for("flaky"), code=4012)
        await supervisor.wait_until(lambda s: s.children["flaky"].restarts == 1)
        for record in records:
            await interactions.wait(record, lambda r: r.answered, timeout=20)
    for i, record in enumerate(records):
        [(text, ephemeral)] = texts(record)
        assert text.endswith(f"| question {i}") and not ephemeral


async def test_chat_in_a_dm_follows_the_dms_rule(world: World) -> None:
    world.write([{"name": "sage", "access": {"dms": True}}, {"name": "hafez", "prefix": "?"}])
    async with world.running():
        answered = await run(world, "sage", "chat", {"message": "in private"}, dm=True)
        refused = await run(world, "hafez", "chat", {"message": "in private"}, dm=True)
    [(text, ephemeral)] = texts(answered)
    assert text.endswith("| in private") and not ephemeral
    assert texts(refused) == [("hafez does not take commands here.", True)]


async def test_imagine_is_registered_only_by_a_bot_with_an_image_model_and_follows_a_reload(world: World) -> None:
    world.write([{"name": "sage", "image_model": "gpt-image-1"}, {"name": "hafez", "prefix": "?"}])
    async with world.running() as app:
        assert puts(world, "sage") == [(None, [*COMMANDS, "imagine"])]
        assert puts(world, "hafez") == [(None, COMMANDS)], "a command that could only say 'not enabled' is not shown"
        world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?", "image_model": "gpt-image-1"}])
        (world.tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in world.env().items()))
        assert await app.reload()
        await world.discord.state.wait(lambda: True if len(world.discord.interactions.registrations) == 4 else None,
                                       10, "both sets registered again")  # fmt: skip
    assert puts(world, "sage")[1:] == [(None, COMMANDS)]
    assert puts(world, "hafez")[1:] == [(None, [*COMMANDS, "imagine"])]


async def test_imagine_answers_with_the_image_as_a_file_of_the_original_response(world: World) -> None:
    world.write([{"name": "sage", "image_model": "gpt-image-1", "image_size": "64x48"}])
    async with world.running():
        record = await run(world, "sage", "imagine", {"prompt": "a red fox"})
    [request] = world.openai.image_requests
    assert request.body["prompt"] == "a red fox" and request.body["user"] == str(world.discord.default_user_id)
    [original] = record.messages
    assert original is record.original and not original.ephemeral and original.content == "> a red fox"
    [file] = original.attachments
    assert file["filename"] == "a-red-fox.png" and file["content_type"] == "image/png"
    assert (file["width"], file["height"]) == (64, 48)
    width, height, _ = decode_png(world.discord.attachment_bytes(file["url"]))
    assert (width, height) == (64, 48)
    [shown] = [m for m in world.discord.state.messages.values() if m["id"] == str(original.id)]
    assert [a["filename"] for a in shown["attachments"]] == ["a-red-fox.png"], "the channel sees the image"


async def test_imagine_refusals_are_one_line_only_the_user_sees(world: World) -> None:
    world.write([{"name": "sage", "image_model": "gpt-image-1", "image_size": "16x16",
                  "user_quota": {"images_per_day": 1}}])  # fmt: skip
    world.openai.inject_image(Fault.content_policy())
    async with world.running():
        refused = await run(world, "sage", "imagine", {"prompt": "something forbidden"})
        drawn = await run(world, "sage", "imagine", {"prompt": "a kitten"})
        over = await run(world, "sage", "imagine", {"prompt": "another kitten"})
    policy = "The model provider refused this request under its content policy. Try asking for something else."
    assert texts(refused) == [(policy, True)]
    assert refused.original is not None and refused.original.deleted, "the public 'thinking…' is gone"
    assert [a["filename"] for a in drawn.messages[0].attachments] == ["a-kitten.png"]
    [(text, ephemeral)] = texts(over)
    assert ephemeral and text.startswith("You have reached the limit of images per day; it resets in")
    assert "\n" not in text and not any(m.attachments for m in over.messages)
    assert [r.status for r in world.openai.image_requests] == [400, 200]


@pytest.mark.bad_input
async def test_imagine_on_a_bot_without_an_image_model_says_so_privately(world: World) -> None:
    """Discord may still show /imagine from before a reload that removed the bot's image_model."""
    world.write([{"name": "sage"}])
    async with world.running():
        record = await run(world, "sage", "imagine", {"prompt": "a red fox"})
    assert texts(record) == [("Image generation is not enabled for sage.", True)]
    assert world.openai.image_requests == []
