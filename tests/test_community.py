"""Personas in the community: they hear the room, know who speaks, answer each other within the
loop guard, and mention only fellow personas."""

from __future__ import annotations

import logging

import pytest

from orchestrator.community.guard import LoopGuard
from orchestrator.community.rooms import Heard, Rooms
from orchestrator.memory.context import speaker_name
from orchestrator.sandbox.discord_server import SentMessage
from orchestrator.sandbox.openai_server import Fault

from .conftest import World, token_for

HEAR = {"channel_messages": 20}  # the default; the test fixture turns channel context off


def request_messages(world: World, index: int = -1) -> list[dict[str, str]]:
    return world.openai.chat_requests[index].body["messages"]


def contents(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages[1:]]


# ---------------------------------------------------------------- hearing the room


async def test_a_message_for_nobody_reaches_the_model_with_its_speaker(world: World) -> None:
    world.write([{"name": "sage", "context": HEAR}])
    bob = world.discord.add_user("Bob")
    async with world.running():
        await world.discord.post("the meeting moved to friday", author_id=bob)
        await world.chat("!chat what did bob just say?")
    messages = request_messages(world)
    assert messages[1] == {"role": "user", "name": "Bob", "content": "Bob: the meeting moved to friday"}
    assert messages[-1] == {"role": "user", "name": "alice", "content": "alice: what did bob just say?"}
    assert "#general" in messages[0]["content"] and "'Sandbox'" in messages[0]["content"]


async def test_with_channel_messages_0_the_room_is_not_heard(world: World) -> None:
    world.write([{"name": "sage", "context": {"channel_messages": 0}}])
    async with world.running():
        await world.discord.post("a secret aside")
        await world.chat("!chat hello")
    assert contents(request_messages(world)) == ["alice: hello"]


async def test_a_remembered_exchange_appears_once_among_the_room(world: World) -> None:
    world.write([{"name": "sage", "context": HEAR}])
    bob = world.discord.add_user("Bob")
    async with world.running():
        [first] = await world.chat("!chat one")
        await world.discord.post("between", author_id=bob)
        await world.chat("!chat two")
    assert contents(request_messages(world)) == ["alice: one", first.content, "Bob: between", "alice: two"]


async def test_after_a_restart_the_room_is_read_back_once(world: World) -> None:
    world.write([{"name": "sage", "context": HEAR}])
    bob = world.discord.add_user("Bob")
    async with world.running():
        await world.discord.post("said before the restart", author_id=bob)
        await world.chat("!chat first")
    async with world.running():
        reads_before = len([r for r in world.discord.rest_log if r[1].endswith("/messages") and r[0] == "GET"])
        await world.chat("!chat second")
        await world.chat("!chat third")
        reads = len([r for r in world.discord.rest_log if r[1].endswith("/messages") and r[0] == "GET"])
    assert "Bob: said before the restart" in contents(request_messages(world, -2))
    assert "Bob: said before the restart" in contents(request_messages(world, -1))
    assert reads - reads_before == 1, "one REST read, on the first answer after the restart"


async def test_no_context_crosses_channels_or_dms(world: World) -> None:
    world.write([{"name": "sage", "access": {"dms": True}, "context": HEAR}])
    other = world.discord.add_channel("other")
    async with world.running():
        await world.discord.post("said in general")
        await world.chat("!chat dm question", guild=False, dm_to=token_for("sage"))
        await world.chat("!chat in other", channel_id=other)
        await world.chat("!chat in general")
    dm, in_other, in_general = (request_messages(world, i) for i in range(3))
    assert contents(dm) == ["alice: dm question"]
    assert contents(in_other) == ["alice: in other"]
    assert "alice: dm question" not in contents(in_general) and "alice: in other" not in contents(in_general)
    assert "alice: said in general" in contents(in_general)


async def test_what_another_persona_heard_where_this_one_cannot_see_never_reaches_it(world: World) -> None:
    world.bot_ids["sage"] = world.discord.add_bot(token_for("sage"), "sage", guilds=[world.discord.guild_id])
    elsewhere = world.discord.add_guild("Elsewhere")
    hidden = world.discord.add_channel("hidden", guild_id=elsewhere)
    world.write([{"name": "sage", "context": HEAR}, {"name": "hafez", "prefix": "?", "context": HEAR}])
    async with world.running():
        await world.chat("?chat hello hafez", channel_id=hidden)
        await world.discord.post("not for sage's eyes", channel_id=hidden)
        await world.chat("?chat still there?", channel_id=hidden)
        await world.chat("!chat hello")
    assert "alice: not for sage's eyes" in contents(request_messages(world, -2)), "hafez heard it"
    assert all("eyes" not in text and "hafez" not in text for text in contents(request_messages(world)))


# ---------------------------------------------------------------- personas talking


async def test_a_persona_answers_a_persona_and_the_chain_stops_at_max_bot_turns(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.persona.presence")
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}], defaults={"group": {"max_bot_turns": 3}})
    sage, hafez = world.bot_ids["sage"], world.bot_ids["hafez"]
    world.openai.queue_replies("@hafez what do you think?", "@sage I agree.", "@hafez good, and you?")
    async with world.running():
        await world.discord.post("!chat start a chat with hafez")
        third = await world.discord.wait_for_sent(3)
        marker = await world.discord.post("?chat are you there?")  # hafez answers after handling the 3rd message
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(marker["id"]))
        await world.idle()
    first, second, last = third[:3]
    assert (first.author_id, second.author_id, last.author_id) == (sage, hafez, sage)
    assert second.reference_id == first.id and last.reference_id == second.id
    assert first.allowed_mentions == {"parse": [], "users": [hafez], "replied_user": False}
    assert f"<@{hafez}>" in first.content
    assert len(world.discord.sent) == 4, [(m.author_id, m.content, m.reference_id, m.id) for m in world.discord.sent]
    assert "max_bot_turns" in caplog.text


async def test_a_human_message_gives_the_personas_a_new_allowance(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}], defaults={"group": {"max_bot_turns": 1}})
    world.openai.queue_replies("@hafez one", "@hafez two")
    async with world.running():
        await world.chat("!chat first")
        second = await world.chat("!chat second")
        await world.idle()
    assert [m.author_id for m in world.discord.sent] == [world.bot_ids["sage"]] * 2
    assert second[0].content.startswith("<@")


async def test_an_outside_bot_is_still_ignored(world: World) -> None:
    world.write([{"name": "sage"}])
    robot = world.discord.add_user("robot", bot=True)
    async with world.running():
        await world.discord.post(f"<@{world.bot_ids['sage']}> hello", author_id=robot, mentions=[world.bot_ids["sage"]])
        [marker] = await world.chat("!chat marker")
    assert world.discord.sent == [marker]


async def test_talk_to_personas_false_ignores_fellow_personas(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?", "group": {"talk_to_personas": False}}])
    world.openai.queue_replies("@hafez hello")
    async with world.running():
        await world.chat("!chat greet hafez")
        [marker] = await world.chat("?chat marker")
    assert [m.author_id for m in world.discord.sent] == [world.bot_ids["sage"], world.bot_ids["hafez"]]
    assert marker.author_id == world.bot_ids["hafez"]


@pytest.mark.bad_input
async def test_only_a_persona_present_is_mentioned_by_a_model(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?", "group": {"talk_to_personas": False}}])
    alice = world.discord.default_user_id
    world.openai.queue_replies(f"@everyone @here <@{alice}> <@&{world.discord.guild_id}> @hafez @nobody hi")
    async with world.running():
        [reply] = await world.chat("!chat mention everyone")
    hafez = world.bot_ids["hafez"]
    assert reply.allowed_mentions is not None and reply.allowed_mentions["users"] == [hafez]
    assert reply.allowed_mentions["parse"] == []
    assert f"<@{hafez}>" in reply.content and "@nobody" in reply.content
    assert f"<@{alice}>" not in reply.content and "@everyone" not in reply.content


# ---------------------------------------------------------------- units


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("display", "expected"),
    [
        ("Alice", "Alice"),
        ("Zoë K.", "Zoe_K"),
        ("a" * 80, "a" * 64),
        ("🦊🦊", None),
        ("حافظ", None),
        ("x\u202ey", "xy"),
        ("a b", "a_b"),
    ],
)
def test_speaker_names_are_sanitised_for_the_name_field(display: str, expected: str | None) -> None:
    name = speaker_name(display)
    assert len(name) <= 64 and name.replace("_", "").replace("-", "").isalnum()
    if expected is None:
        assert name.startswith("speaker_") and speaker_name(display) == name != speaker_name(display + "!")
    else:
        assert name == expected


def test_rooms_stay_bounded_and_drop_the_least_recently_active_channel() -> None:
    rooms = Rooms(per_channel=3, max_channels=2)
    for channel in (1, 2, 3):
        for i in range(5):
            rooms.hear(channel, Heard(channel * 100 + i, 7, "a", False, f"m{i}"))
    assert len(rooms) == 2 and rooms.recent(1, 10) == []
    assert [h.content for h in rooms.recent(3, 10)] == ["m2", "m3", "m4"]
    rooms.hear(3, Heard(303, 7, "a", False, "again"))  # heard twice: kept once
    assert len(rooms.recent(3, 10)) == 3


def test_the_loop_guard_counts_by_message_order_per_channel_and_per_minute() -> None:
    now = [0.0]
    guard = LoopGuard(clock=lambda: now[0])
    guard.human_spoke(1, 10)
    assert guard.grant(1, 10, 3, 100, to_persona=False) is None, "an answer to a human"
    guard.persona_spoke(1, 11)
    assert guard.grant(1, 11, 3, 100, to_persona=True) is None
    guard.persona_spoke(1, 12)
    assert guard.grant(1, 12, 3, 100, to_persona=True) is None
    guard.persona_spoke(1, 13)
    assert "max_bot_turns" in (guard.grant(1, 13, 3, 100, to_persona=True) or ""), "a 4th persona message"
    guard.human_spoke(1, 14)  # a human speaks after 13: 13 is still the 3rd since human 10
    assert guard.grant(1, 13, 3, 100, to_persona=True) is not None
    guard.persona_spoke(1, 15)
    assert guard.grant(1, 15, 3, 100, to_persona=True) is None, "a new allowance after the human message"
    assert (
        guard.grant(2, 13, 1, 100, to_persona=True) is not None and guard.grant(2, 13, 2, 100, to_persona=True) is None
    )
    guard.human_spoke(3, 1)
    assert guard.grant(3, 2, 50, 2, to_persona=True) is None
    assert guard.grant(3, 3, 50, 2, to_persona=False) is None, "an answer to a human is never held back"
    assert "per_minute" in (guard.grant(3, 4, 50, 2, to_persona=True) or "")
    now[0] = 61.0
    assert guard.grant(3, 5, 50, 2, to_persona=True) is None


# ---------------------------------------------------------------- panels


async def reply_to(world: World, text: str) -> SentMessage:
    message = await world.discord.post(text)
    [reply] = await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(message["id"]))
    return reply


def three_personas(world: World, **defaults: object) -> None:
    world.write(
        [{"name": "sage"}, {"name": "hafez", "prefix": "?"}, {"name": "rumi", "prefix": "%"}],
        defaults={"group": {"talk_to_personas": False}, **defaults},
    )


async def test_a_panel_of_three_answers_in_turn_each_seeing_the_earlier_answers(world: World) -> None:
    three_personas(world)
    async with world.running():
        command = await world.discord.post("!panel is free will an illusion?")
        answers = await world.discord.wait_for_sent(4, predicate=lambda m: m.reference_id == int(command["id"]))
    intro, *turns = answers
    assert intro.author_id == world.bot_ids["sage"] and "sage, hafez, rumi" in intro.content
    assert [m.author_id for m in turns] == [world.bot_ids[name] for name in ("sage", "hafez", "rumi")]
    third = world.openai.chat_requests[2].body["messages"]
    heard = "\n".join(m["content"] for m in third)
    assert turns[0].content in heard and turns[1].content in heard, "rumi saw sage's and hafez's answers"
    assert "is free will an illusion?" in third[-1]["content"]


async def test_a_panel_of_mentioned_personas_for_two_rounds(world: World) -> None:
    three_personas(world)
    rumi, hafez = world.bot_ids["rumi"], world.bot_ids["hafez"]
    async with world.running():
        command = await world.discord.post(f"?panel 2 <@{rumi}> <@{hafez}> tea or coffee", mentions=[rumi, hafez])
        answers = await world.discord.wait_for_sent(5, predicate=lambda m: m.reference_id == int(command["id"]))
    assert [m.author_id for m in answers[1:]] == [rumi, hafez, rumi, hafez], "\n".join(
        f"{m.author_id} {m.reference_id} {m.content[:70]}" for m in world.discord.sent
    )
    assert "Round 2 of 2" in world.openai.chat_requests[-1].body["messages"][-1]["content"]


async def test_a_failing_persona_is_skipped_and_the_panel_goes_on(world: World) -> None:
    three_personas(world)
    world.openai.inject(Fault(), Fault(status=400))  # sage answers; hafez's request is refused
    async with world.running():
        command = await world.discord.post("!panel one topic")
        answers = await world.discord.wait_for_sent(4, predicate=lambda m: m.reference_id == int(command["id"]))
    assert [m.author_id for m in answers[1:]] == [world.bot_ids[name] for name in ("sage", "hafez", "rumi")]
    assert answers[2].content and "[gpt-4o-mini]" not in answers[2].content, "hafez said why it was skipped"


async def test_stop_ends_a_panel_and_a_second_panel_is_refused_meanwhile(world: World) -> None:
    three_personas(world)
    world.openai.latency = 0.2  # turns in flight while the test speaks
    async with world.running():
        command = await world.discord.post("!panel 3 a long one")
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(command["id"]))  # the intro
        refused = await reply_to(world, "?panel another one")
        stopped = await reply_to(world, "%stop")
        world.openai.latency = 0.0
        assert world.app is not None and world.app.supervisor is not None
        panels = world.app.supervisor.services.community.panels
        await panels.wait_ended(world.discord.channel_id)
        await world.idle()
    assert "already running" in refused.content
    assert "stops after the turn in progress" in stopped.content
    turns = [m for m in world.discord.sent if m.reference_id == int(command["id"])][1:]
    assert len(turns) < 9, "the panel did not run its 9 turns"


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("!panel", "Give the panel a topic"),
        ("!panel " + "x" * 10_000, "too long (10000 characters"),
        ("!panel 9 too many rounds", "at most 3 rounds"),
        ("!panel <@{alice}> with a human", "is not a persona in this channel"),
    ],
)
async def test_a_bad_panel_request_gets_a_clear_answer(world: World, command: str, expected: str) -> None:
    three_personas(world)
    async with world.running():
        [reply] = await world.chat(command.format(alice=world.discord.default_user_id))
    assert expected in reply.content
    assert world.openai.chat_requests == []


@pytest.mark.bad_input
async def test_a_panel_in_a_dm_is_refused(world: World) -> None:
    world.write([{"name": "sage", "access": {"dms": True}}])
    async with world.running():
        [reply] = await world.chat("!panel in private", guild=False, dm_to=token_for("sage"))
    assert "not in DMs" in reply.content


def test_one_listener_per_guild_and_another_takes_over_when_it_leaves() -> None:
    rooms = Rooms()
    rooms.join(1, "sage")
    rooms.join(1, "hafez")
    rooms.join(2, "hafez")
    assert (rooms.listened_by("sage"), rooms.listened_by("hafez")) == ({1}, {2})
    assert rooms.listened_by("rumi") == frozenset(), "a bot with context off listens nowhere"
    rooms.leave("sage")
    assert (rooms.listened_by("sage"), rooms.listened_by("hafez")) == (frozenset(), {1, 2})
